package mime

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzParseIMAPData: no input makes the structure walk panic, and what it
// computes always survives MarshalBinary and UnmarshalBinary.
func FuzzParseIMAPData(f *testing.F) {
	for _, tc := range structureCorpus {
		f.Add([]byte(crlf(tc.msg)))
	}
	f.Add([]byte("Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n--a--\r\n"))
	f.Add([]byte("To: a:b:c;;, <<>>, \"\\\r\n\r\n"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		d, err := ParseIMAPData(bytes.NewReader(msg))
		if err != nil {
			t.Fatal(err)
		}
		if d.Size != int64(len(msg)) || d.HeaderSize > d.Size {
			t.Fatalf("size %d header %d for %d bytes", d.Size, d.HeaderSize, len(msg))
		}
		raw, err := d.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var back IMAPData
		if err := back.UnmarshalBinary(raw); err != nil {
			t.Fatal(err)
		}
		if render(back.BodyStructure) != render(d.BodyStructure) {
			t.Fatal("round trip changed the structure")
		}
		MessageText(bytes.NewReader(msg), true, func(string) bool { return true })
		EnvelopeAddressList(strings.ToValidUTF8(string(msg), ""))
		for _, part := range [][]int{nil, {1}, {2, 1}, {1, 1, 1}} {
			if data, _, err := BinarySection(bytes.NewReader(msg), part); err != nil || len(data) > 2*len(msg)+64 {
				t.Fatalf("BINARY %v: %d octets, %v", part, len(data), err)
			}
		}
	})
}
