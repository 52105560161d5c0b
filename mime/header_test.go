package mime

import (
	"errors"
	"strings"
	"testing"
)

func TestReadHeader(t *testing.T) {
	tests := []struct {
		name     string
		msg      string
		ok       bool
		received int
		subject  string
	}{
		{"simple", "From: a@b.example\r\nSubject: hi\r\n\r\nbody\r\n", true, 0, "hi"},
		{"empty message", "", true, 0, ""},
		{"empty header", "\r\nbody only\r\n", true, 0, ""},
		{"header only", "Subject: no body\r\n", true, 0, "no body"},
		{"folded", "Subject: one\r\n two\r\n\r\n", true, 0, "one two"},
		{"bare lf", "Subject: lf\n\nbody\n", true, 0, "lf"},
		{"received", "Received: from a by b; date\r\nReceived: from c\r\n by d; date\r\nSubject: x\r\n\r\n", true, 2, "x"},
		{"received any case", "RECEIVED: x\r\nreceived: y\r\n\r\n", true, 2, ""},
		{"no colon", "From: a@b.example\r\nthis is not a header\r\n\r\n", false, 0, ""},
		{"starts with space", " Subject: x\r\n\r\n", false, 0, ""},
		{"space in name", "Sub ject: x\r\n\r\n", false, 0, ""},
		{"non-ascii name", "Sübject: x\r\n\r\n", false, 0, ""},
		{"mbox from line", "From a@b Mon Jan 1 00:00:00 2024\r\nSubject: x\r\n\r\n", false, 0, ""},
		{"utf8 value", "Subject: Grüße\r\n\r\n", true, 0, "Grüße"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ReadHeader([]byte(tt.msg))
			if tt.ok != (err == nil) {
				t.Fatalf("error %v, want ok=%v", err, tt.ok)
			}
			if err != nil {
				if !errors.Is(err, ErrMalformedHeader) {
					t.Errorf("error %v does not wrap ErrMalformedHeader", err)
				}
				if strings.Contains(err.Error(), "not a header") {
					t.Errorf("error %q quotes the message", err)
				}
				return
			}
			if n := CountReceived(h); n != tt.received {
				t.Errorf("CountReceived = %d, want %d", n, tt.received)
			}
			if got := h.Get("Subject"); got != tt.subject {
				t.Errorf("Subject %q, want %q", got, tt.subject)
			}
		})
	}
}
