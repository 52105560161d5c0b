package imapd

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/mailstore/limits"
	"github.com/postern/postern/mailstore/storetest"
)

// FuzzSession sends hostile input through a real connection, after
// login and SELECT: the server must never answer SERVERBUG nor panic,
// and must go on serving. The seeds (testdata/fuzz/FuzzSession) are the
// inputs that once got SERVERBUG or hung.
func FuzzSession(f *testing.F) {
	logs := &storetest.SyncBuffer{}
	env := newEnv(f, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
		c.Limits.MaxConnectionsPerAddress = 1000
		c.Limits.LoginTimeout = 2 * time.Second
		c.Limits.IdleTimeout = 2 * time.Second
		c.Shared.Logins = limits.NewLogins(limits.LoginPolicy{FailureDelay: -1, MaxFailures: 1 << 30})
	})
	env.deliver(f, testMessage(1, "fuzz"))
	for _, s := range []string{
		"a NOOP\r\n",
		"a FETCH 1:* (BODY[] ENVELOPE BODYSTRUCTURE BINARY[1]<0.10>)\r\n",
		"a SEARCH OR FROM x (TO y) NOT SUBJECT {3+}\r\nabc\r\n",
		"a APPEND INBOX {5+}\r\nhello\r\n",
		"a IDLE\r\nDONE\r\n",
		"a COPY 1 INBOX\r\nb MOVE 1:* INBOX\r\nc FETCH 1:* (FLAGS BINARY.SIZE[1] BINARY.PEEK[]<3.7>)\r\n",
		"a SEARCH NEW OLD RECENT UNSEEN FROM sender\r\nb STATUS INBOX (RECENT)\r\nc LSUB \"\" %\r\n",
		"a SUBSCRIBE no/such/name\r\nb LSUB \"\" *\r\nc LIST (SUBSCRIBED RECURSIVEMATCH) \"\" % RETURN (CHILDREN STATUS (MESSAGES))\r\nd UNSUBSCRIBE no/such/name\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		logs.Reset()
		c, err := net.Dial("tcp", env.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(waitTimeout))
		io.WriteString(c, "L LOGIN u@example.test \"secret pw\"\r\nS SELECT INBOX\r\n")
		c.Write(input)
		c.(*net.TCPConn).CloseWrite()
		out, err := io.ReadAll(c)
		if err != nil && !errors.Is(err, syscall.ECONNRESET) { // a reset: the server hung up with input unread
			t.Fatalf("reading the answers: %v (after %q)", err, out)
		}
		if strings.Contains(string(out), "SERVERBUG") {
			t.Errorf("SERVERBUG in %q", out)
		}
		if l := logs.String(); strings.Contains(l, "panic") || strings.Contains(l, "level=ERROR") {
			t.Errorf("server logged:\n%s", l)
		}
		// Still serving.
		rc := dialRaw(t, env.addr)
		if got := rc.cmd("n", "NOOP"); !strings.HasPrefix(got[len(got)-1], "n OK") {
			t.Fatalf("NOOP on a new connection = %q", got)
		}
	})
}
