package mime

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestCanonicalText(t *testing.T) {
	long := strings.Repeat("x", MaxLineLength)
	tests := []struct {
		name, in, want string
		err            error
	}{
		{"empty", "", "", nil},
		{"crlf", "a\r\nb\r\n", "a\r\nb\r\n", nil},
		{"no final line end", "a\r\nb", "a\r\nb", nil},
		{"bare lf", "a\nb\n", "a\r\nb\r\n", nil},
		{"bare cr", "a\rb\r", "a\r\nb\r\n", nil},
		{"cr cr lf", "a\r\r\nb", "a\r\n\r\nb", nil},
		{"lf first", "\nx", "\r\nx", nil},
		{"mixed", "a\r\nb\nc\rd\r\n", "a\r\nb\r\nc\r\nd\r\n", nil},
		{"smuggling dot", "a\n.\nMAIL FROM:<x@y>\r\n", "a\r\n.\r\nMAIL FROM:<x@y>\r\n", nil},
		{"998 octets", long + "\r\n", long + "\r\n", nil},
		{"998 octets at end", long, long, nil},
		{"999 octets", long + "x\r\nok\r\n", "", ErrLineTooLong},
		{"999 octets at end", long + "x", "", ErrLineTooLong},
		{"999 octets with lf", "a\n" + long + "x\n", "", ErrLineTooLong},
		{"cr splits a long line", long + "\r" + long, long + "\r\n" + long, nil},
		{"nul", "a\r\nb\x00c\r\n", "", ErrNUL},
		{"utf8", "Grüße\r\n", "Grüße\r\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := CanonicalText([]byte(tt.in))
			if !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			if err == nil && string(got) != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestCanonicalTextDoesNotCopyClean(t *testing.T) {
	in := []byte("Subject: x\r\n\r\nbody\r\n")
	out, err := CanonicalText(in)
	if err != nil {
		t.Fatal(err)
	}
	if &out[0] != &in[0] {
		t.Error("a message already in CRLF form was copied")
	}
}

func TestCanonicalTextLargeMessage(t *testing.T) {
	line := bytes.Repeat([]byte("0123456789"), 7)
	var msg []byte
	for len(msg) < 8<<20 {
		msg = append(msg, line...)
		msg = append(msg, '\n')
	}
	out, err := CanonicalText(msg)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(out, []byte("\r\n")) != bytes.Count(msg, []byte("\n")) {
		t.Error("line count changed")
	}
}

// Many bare CRs and no LF, as a BDAT chunk may carry: each becomes CRLF.
// (BenchmarkCanonicalTextBareCRs shows the cost is linear.)
func TestCanonicalTextManyBareCRs(t *testing.T) {
	msg := append([]byte("Subject: x\r\n\r\n"), bytes.Repeat([]byte("x\r"), 1<<20)...)
	out, err := CanonicalText(msg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(out, []byte("x\r\nx\r\n")) || len(out) != len(msg)+1<<20 {
		t.Fatalf("canonical form: %d bytes, ends %q", len(out), out[len(out)-8:])
	}
}

// BenchmarkCanonicalTextBareCRs reports the cost per byte of a message
// of bare CRs at two sizes: equal ns/byte means linear.
func BenchmarkCanonicalTextBareCRs(b *testing.B) {
	for _, size := range []int{64 << 10, 1 << 20} {
		msg := append([]byte("Subject: x\r\n\r\n"), bytes.Repeat([]byte("x\r"), size/2)...)
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			for i := 0; i < b.N; i++ {
				if _, err := CanonicalText(msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
