package imapd

import (
	"io"
	"strings"
	"testing"
	"time"
)

// TestRefusedLineWithLiteral: a command refused before its end is read
// (too long, a bare CR, no tag) whose line announces a non-synchronizing
// literal has its data sent at once by the client; that data must never
// run as commands, so the session ends. A literal too large to count gets
// NO [TOOBIG] and never "+".
func TestRefusedLineWithLiteral(t *testing.T) {
	env := newEnv(t)
	cases := []struct{ name, line, want string }{
		{"too long", "a1 SELECT " + strings.Repeat("x", 60<<10) + " {14+}\r\n", "a1 BAD [TOOBIG]"},
		{"bad tag", "(a2 SELECT {14+}\r\n", "BAD [CLIENTBUG]"},
		{"bare CR", "a3 SELECT x\ry {14+}\r\n", "a3 BAD [CLIENTBUG]"},
		{"20 digits", "a4 LOGIN {99999999999999999999+}\r\n", "a4 NO [TOOBIG]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rc := dialRaw(t, env.addr)
			rc.send(tc.line + "zz CAPABILITY\r\n")
			rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
			rest, _ := io.ReadAll(rc.c)
			all := append(rc.b, rest...)
			if !strings.Contains(string(all), tc.want) {
				t.Errorf("answer %q lacks %q", all, tc.want)
			}
			if strings.Contains(string(all), "zz OK") {
				t.Errorf("literal data ran as a command: %q", all)
			}
		})
	}
	t.Run("20 digits, synchronizing", func(t *testing.T) {
		rc := dialRaw(t, env.addr)
		rc.send("a5 LOGIN {99999999999999999999}\r\n")
		line := rc.readLine()
		if !strings.HasPrefix(line, "a5 NO [TOOBIG]") {
			t.Fatalf("got %q, want a5 NO [TOOBIG] and no +", line)
		}
	})
}

// TestAppendBeforeLogin: an APPEND before login is refused before "+",
// so no message is read for it.
func TestAppendBeforeLogin(t *testing.T) {
	env := newEnv(t)
	rc := dialRaw(t, env.addr)
	rc.send("a APPEND INBOX {1000}\r\n")
	if line := rc.readLine(); !strings.HasPrefix(line, "a BAD") {
		t.Fatalf("APPEND before login: %q, want BAD before any +", line)
	}
	rc.send("b NOOP\r\n")
	if line := rc.readLine(); !strings.HasPrefix(line, "b OK") {
		t.Fatalf("NOOP after the refused APPEND: %q", line)
	}
}
