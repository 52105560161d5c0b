package relay

import (
	"io"
	"strings"
	"testing"
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
