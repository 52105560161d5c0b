package main

import (
	"strings"
	"testing"

	"github.com/postern/postern/smtpd/msgauth/msgauthtest"
)

// mxTestDNS serves zone records on loopback and returns its address.
// Names without records get NXDOMAIN.
func mxTestDNS(t *testing.T, records ...string) string {
	t.Helper()
	d := msgauthtest.NewDNS(t)
	d.Add(t, records...)
	return d.Addr
}

func TestMXCommand(t *testing.T) {
	server := mxTestDNS(t,
		"beta.test. MX 20 mx2.beta.test.",
		"beta.test. MX 10 mx1.beta.test.",
		"mx1.beta.test. A 127.0.0.1",
		"mx1.beta.test. AAAA ::1",
		"mx2.beta.test. A 127.0.0.2",
		"nullmx.test. MX 0 .",
		"implicit.test. A 127.0.0.4",
		"dangling.test. MX 5 gone.dangling.test.",
	)
	tests := []struct {
		domain string
		code   int
		want   []string // lines of stdout, blanks squashed (stderr when code != 0)
	}{
		{"beta.test", exitOK, []string{
			"Server: " + server,
			"beta.test mail exchanger = 10 mx1.beta.test.\nbeta.test mail exchanger = 20 mx2.beta.test.",
			"mx1.beta.test internet address = 127.0.0.1\nmx1.beta.test has AAAA address ::1\nmx2.beta.test internet address = 127.0.0.2",
		}},
		{"nullmx.test", exitOK, []string{"nullmx.test mail exchanger = 0 .", "nullmx.test accepts no mail (null MX, RFC 7505)"}},
		{"implicit.test", exitOK, []string{"implicit MX, RFC 5321 5.1", "implicit.test internet address = 127.0.0.4"}},
		{"dangling.test", exitOK, []string{"dangling.test mail exchanger = 5 gone.dangling.test.", "gone.dangling.test no address:", "NXDOMAIN"}},
		{"nosuch.test", exitFailure, []string{"postern: mx: nosuch.test: NXDOMAIN"}},
	}
	for _, tt := range tests {
		t.Run(tt.domain, func(t *testing.T) {
			code, out, errOut := runFunc(cmdMX, "-dns", server, tt.domain)
			text := out
			if tt.code != exitOK {
				text = errOut
			}
			if code != tt.code {
				t.Fatalf("exit %d, want %d; stdout %q stderr %q", code, tt.code, out, errOut)
			}
			for _, w := range tt.want {
				if !strings.Contains(squash(text), w) {
					t.Errorf("output lacks %q:\n%s", w, text)
				}
			}
		})
	}
	for _, args := range [][]string{{}, {"-dns", "nonsense", "beta.test"}, {"a.test", "b.test"}} {
		if code, _, _ := runFunc(cmdMX, args...); code != exitUsage {
			t.Errorf("mx %v: exit %d, want %d", args, code, exitUsage)
		}
	}
}
