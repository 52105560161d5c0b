package pop3d

import (
	"bufio"
	"bytes"
	"net/textproto"
	"strings"
	"testing"
)

// FuzzDotWriter checks dotWriter against textproto's DotWriter, the
// reference, on bodies with CRLF line ends as the mailstore keeps them,
// written in pieces of every size.
func FuzzDotWriter(f *testing.F) {
	for _, seed := range []string{
		"a\r\n", ".\r\n", "..\r\n", ".a\r\n.b\r\nc\r\n", "no line end", "x\r\n.", "\r\n\r\n.\r\n",
		"Subject: x\r\n\r\n.\r\n..\r\n...\r\n. \r\nend",
	} {
		f.Add(seed, 1)
		f.Add(seed, 3)
	}
	f.Fuzz(func(t *testing.T, body string, piece int) {
		// Only CRLF line ends, and not empty: the cases where the two
		// writers must agree.
		body = strings.NewReplacer("\r\n", "\r\n", "\r", "", "\n", "").Replace(body)
		if body == "" || piece <= 0 {
			return
		}
		var want bytes.Buffer
		dw := textproto.NewWriter(bufio.NewWriter(&want)).DotWriter()
		dw.Write([]byte(body))
		dw.Close()

		var got bytes.Buffer
		w := newDotWriter(bufio.NewWriter(&got))
		for p := []byte(body); len(p) > 0; {
			n := min(piece, len(p))
			if m, err := w.Write(p[:n]); m != n || err != nil {
				t.Fatalf("Write: %d, %v", m, err)
			}
			p = p[n:]
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if got.String() != want.String() {
			t.Fatalf("body %q in pieces of %d:\n got %q\nwant %q", body, piece, got.String(), want.String())
		}
		if w.n != int64(len(body)) {
			t.Fatalf("counted %d octets, want %d", w.n, len(body))
		}
	})
}

// TestDotWriterEmpty: an empty body is only the terminator (textproto's
// DotWriter would send an empty line first, one line more than the
// message has).
func TestDotWriterEmpty(t *testing.T) {
	var got bytes.Buffer
	w := newDotWriter(bufio.NewWriter(&got))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got.String() != ".\r\n" {
		t.Errorf("empty body: %q", got.String())
	}
}

// TestDotWriterBareLF: a "." after a bare LF is stuffed too, so that a
// client that splits lines at LF never sees a terminator in a message.
func TestDotWriterBareLF(t *testing.T) {
	var got bytes.Buffer
	w := newDotWriter(bufio.NewWriter(&got))
	w.Write([]byte("a\n.\r\nb"))
	w.Close()
	if want := "a\n..\r\nb\r\n.\r\n"; got.String() != want {
		t.Errorf("got %q, want %q", got.String(), want)
	}
}
