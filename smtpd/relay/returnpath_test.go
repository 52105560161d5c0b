package relay

import (
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

func TestWithoutReturnPath(t *testing.T) {
	for in, want := range map[string]string{
		"Return-Path: <a@alpha.test>\r\nReceived: x\r\n\r\nbody\r\n":              "Received: x\r\n\r\nbody\r\n",
		"return-path: <a@alpha.test>\r\n\t(folded)\r\nSubject: s\r\n\r\nbody\r\n": "Subject: s\r\n\r\nbody\r\n",
		"Received: x\r\nReturn-Path: <a@alpha.test>\r\n\r\nbody\r\n":              "Received: x\r\nReturn-Path: <a@alpha.test>\r\n\r\nbody\r\n",
		"Subject: no return path\r\n\r\nbody\r\n":                                 "Subject: no return path\r\n\r\nbody\r\n",
		"":                                 "",
		"Return-Path: <>\r\n":              "",
		strings.Repeat("x", 5000) + "\r\n": strings.Repeat("x", 5000) + "\r\n",
	} {
		got, err := io.ReadAll(withoutReturnPath(strings.NewReader(in)))
		if err != nil || string(got) != want {
			t.Errorf("withoutReturnPath(%.40q) = %.40q (%v), want %.40q", in, got, err, want)
		}
	}
}

// RFC 5321 4.2.1: 4xx is temporary and 5xx permanent, except a 552 to
// RCPT, which 4.5.3.1.10 says to treat as temporary.
func TestReplyAttemptClass(t *testing.T) {
	for _, c := range []struct {
		stage     string
		code      int
		permanent bool
	}{
		{"RCPT TO", 450, false},
		{"RCPT TO", 550, true},
		{"RCPT TO", 552, false},
		{"end of data", 552, true},
		{"MAIL FROM", 421, false},
	} {
		a := replyAttempt("mx.test", c.stage, &smtp.SMTPError{Code: c.code, Message: "x"})
		if !a.failed() || a.Permanent != c.permanent {
			t.Errorf("%s %d: %v, want permanent %v", c.stage, c.code, a, c.permanent)
		}
	}
}
