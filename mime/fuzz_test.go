package mime

import (
	"bytes"
	"net/netip"
	"testing"
	"time"
)

// FuzzMessage runs the checks smtpd makes on every message it receives.
func FuzzMessage(f *testing.F) {
	f.Add([]byte("From: a@b.example\r\nSubject: hi\r\n\r\nbody\r\n"))
	f.Add([]byte("Subject: x\n\n.\nMAIL FROM:<a@b>\n"))
	f.Add([]byte("Received: a\r\nReceived: b\r\n\r\n"))
	f.Add([]byte(" bad\r\n\r\n"))
	f.Add([]byte("a\rb\r\r\n\x00"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		out, err := CanonicalText(msg)
		if err != nil {
			return
		}
		if bytes.IndexByte(out, 0) >= 0 {
			t.Fatal("NUL passed")
		}
		for i, c := range out {
			if c == '\n' && (i == 0 || out[i-1] != '\r') || c == '\r' && (i+1 == len(out) || out[i+1] != '\n') {
				t.Fatalf("bare line end at %d in %q", i, out)
			}
		}
		for _, line := range bytes.Split(out, []byte("\r\n")) {
			if len(line) > MaxLineLength {
				t.Fatalf("line of %d octets passed", len(line))
			}
		}
		again, err := CanonicalText(out)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("not idempotent: %v", err)
		}
		h, err := ReadHeader(out)
		if err != nil {
			return
		}
		if CountReceived(h) > h.Len() {
			t.Fatal("more Received fields than fields")
		}
	})
}

// FuzzReceivedField checks that whatever a client says in HELO or RCPT,
// the Received field stays one well-formed field (no header injection).
func FuzzReceivedField(f *testing.F) {
	f.Add("client.example", "user@example.com")
	f.Add("[192.0.2.1]", "")
	f.Add("x\r\nBcc: victim@example.com", "a\r\nX: y@example.com")
	f.Add("(comment", `"quoted\"@x`)
	f.Fuzz(func(t *testing.T, helo, rcpt string) {
		r := Received{
			Helo: helo, ClientIP: netip.MustParseAddr("192.0.2.1"), By: "mx.example.com",
			With: "ESMTP", ID: "x1", For: rcpt, Date: time.Unix(0, 0).UTC(),
		}
		field := r.Field() + ReturnPath(rcpt)
		out, err := CanonicalText([]byte(field))
		if err != nil {
			t.Fatalf("field fails the text checks: %v: %q", err, field)
		}
		if !bytes.Equal(out, []byte(field)) {
			t.Fatalf("bare line end in %q", field)
		}
		h, err := ReadHeader([]byte(field + "\r\n"))
		if err != nil {
			t.Fatalf("%v: %q", err, field)
		}
		want := 2
		if ReturnPath(rcpt) == "" {
			want = 1
		}
		if h.Len() != want || CountReceived(h) != 1 {
			t.Fatalf("%d fields in %q", h.Len(), field)
		}
	})
}
