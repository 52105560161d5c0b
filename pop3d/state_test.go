package pop3d

import (
	"strings"
	"testing"
)

// TestCommandStates sends every command, with good and bad arguments, in
// every state, and checks the status line and that the session goes on.
func TestCommandStates(t *testing.T) {
	st := openStore(t)
	appendMessages(t, st, alice, [][]byte{makeMessage(1, 300), makeMessage(2, 300), makeMessage(3, 300)})
	ts := startServer(t, st, nil)

	const (
		authorization = "AUTHORIZATION"
		afterUser     = "AUTHORIZATION after USER"
		transaction   = "TRANSACTION" // logged in as alice, message 2 marked deleted
	)
	tests := []struct {
		state string
		line  string
		want  string // prefix of the status line
		multi bool   // a multi-line body follows
		end   bool   // the session ends
	}{
		{authorization, "CAPA", "+OK", true, false},
		{authorization, "capa", "+OK", true, false},
		{authorization, "CAPA x", "-ERR", false, false},
		{authorization, "USER " + alice, "+OK", false, false},
		{authorization, "USER", "-ERR", false, false},
		{authorization, "USER a b", "-ERR", false, false},
		{authorization, "PASS " + alicePass, "-ERR", false, false},
		{authorization, "AUTH", "+OK", true, false},
		{authorization, "AUTH PLAIN " + plainIR("", alice, alicePass), "+OK", false, false},
		{authorization, "auth plain " + plainIR(alice, alice, alicePass), "+OK", false, false},
		{authorization, "AUTH PLAIN " + plainIR("", alice, "wrong"), "-ERR [AUTH]", false, false},
		{authorization, "AUTH PLAIN " + plainIR(bob, alice, alicePass), "-ERR [AUTH]", false, false},
		{authorization, "AUTH PLAIN !!!", "-ERR", false, false},
		{authorization, "AUTH PLAIN " + plainIR("", alice, alicePass) + " x", "-ERR", false, false},
		{authorization, "AUTH CRAM-MD5", "-ERR", false, false},
		{authorization, "STLS", "-ERR", false, false}, // no TLS configured
		{authorization, "QUIT", "+OK", false, true},
		{authorization, "STAT", "-ERR", false, false},
		{authorization, "LIST", "-ERR", false, false},
		{authorization, "LIST 1", "-ERR", false, false},
		{authorization, "RETR 1", "-ERR", false, false},
		{authorization, "DELE 1", "-ERR", false, false},
		{authorization, "NOOP", "-ERR", false, false},
		{authorization, "RSET", "-ERR", false, false},
		{authorization, "TOP 1 1", "-ERR", false, false},
		{authorization, "UIDL", "-ERR", false, false},
		{authorization, "UIDL 1", "-ERR", false, false},
		{authorization, "APOP " + alice + " c4c9334bac560ecc979e58001b3e22fb", "-ERR", false, false},
		{authorization, "XYZZY", "-ERR", false, false},
		{authorization, "", "-ERR", false, false},
		{authorization, " STAT", "-ERR", false, false},
		{authorization, "STAT\x00", "-ERR", false, false},

		{afterUser, "PASS " + alicePass, "+OK", false, false},
		{afterUser, "pass " + alicePass, "+OK", false, false},
		{afterUser, "PASS wrong", "-ERR [AUTH]", false, false},
		{afterUser, "PASS", "-ERR", false, false},
		{afterUser, "USER " + bob, "+OK", false, false},
		{afterUser, "CAPA", "+OK", true, false},
		{afterUser, "QUIT", "+OK", false, true},
		{afterUser, "STAT", "-ERR", false, false},

		{transaction, "STAT", "+OK 2 ", false, false},
		{transaction, "STAT 1", "-ERR", false, false},
		{transaction, "LIST", "+OK", true, false},
		{transaction, "LIST 1", "+OK 1 ", false, false},
		{transaction, "LIST 2", "-ERR", false, false},
		{transaction, "LIST 4", "-ERR", false, false},
		{transaction, "LIST 0", "-ERR", false, false},
		{transaction, "LIST -1", "-ERR", false, false},
		{transaction, "LIST +1", "-ERR", false, false},
		{transaction, "LIST x", "-ERR", false, false},
		{transaction, "LIST 99999999999999999999", "-ERR", false, false},
		{transaction, "LIST 1 2", "-ERR", false, false},
		{transaction, "RETR 1", "+OK", true, false},
		{transaction, "RETR 3", "+OK", true, false},
		{transaction, "RETR 2", "-ERR", false, false},
		{transaction, "RETR 4", "-ERR", false, false},
		{transaction, "RETR", "-ERR", false, false},
		{transaction, "RETR 1 1", "-ERR", false, false},
		{transaction, "DELE 1", "+OK", false, false},
		{transaction, "DELE 2", "-ERR", false, false},
		{transaction, "DELE 4", "-ERR", false, false},
		{transaction, "DELE", "-ERR", false, false},
		{transaction, "NOOP", "+OK", false, false},
		{transaction, "NOOP 1", "-ERR", false, false},
		{transaction, "RSET", "+OK maildrop has 3 messages", false, false},
		{transaction, "RSET 1", "-ERR", false, false},
		{transaction, "TOP 1 0", "+OK", true, false},
		{transaction, "TOP 1 5", "+OK", true, false},
		{transaction, "TOP 2 0", "-ERR", false, false},
		{transaction, "TOP 1", "-ERR", false, false},
		{transaction, "TOP 1 -1", "-ERR", false, false},
		{transaction, "TOP 1 x", "-ERR", false, false},
		{transaction, "TOP", "-ERR", false, false},
		{transaction, "UIDL", "+OK", true, false},
		{transaction, "UIDL 1", "+OK 1 ", false, false},
		{transaction, "UIDL 2", "-ERR", false, false},
		{transaction, "UIDL 9", "-ERR", false, false},
		{transaction, "UIDL 1 2", "-ERR", false, false},
		{transaction, "CAPA", "+OK", true, false},
		{transaction, "USER " + alice, "-ERR", false, false},
		{transaction, "PASS " + alicePass, "-ERR", false, false},
		{transaction, "AUTH PLAIN " + plainIR("", alice, alicePass), "-ERR", false, false},
		{transaction, "AUTH", "-ERR", false, false},
		{transaction, "STLS", "-ERR", false, false},
		{transaction, "APOP a b", "-ERR", false, false},
		{transaction, "XYZZY", "-ERR", false, false},
		{transaction, "", "-ERR", false, false},
		// Last: it removes message 2.
		{transaction, "QUIT", "+OK", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.state+"/"+tt.line, func(t *testing.T) {
			c := dial(t, ts.addr)
			switch tt.state {
			case afterUser:
				c.ok("USER " + alice)
			case transaction:
				c.login(alice, alicePass)
				c.ok("DELE 2")
			}
			got := c.cmd(tt.line)
			if !strings.HasPrefix(got, tt.want) {
				t.Fatalf("%q in %s: got %q, want %q...", tt.line, tt.state, got, tt.want)
			}
			if tt.multi {
				c.body()
			}
			if tt.end {
				if !c.closed() {
					t.Fatal("connection still open after QUIT")
				}
				return
			}
			// The session goes on, in step.
			if got := c.cmd("CAPA"); !strings.HasPrefix(got, "+OK") {
				t.Fatalf("CAPA after %q: %q", tt.line, got)
			}
			c.body()
			// RSET (an error outside TRANSACTION) so that QUIT removes
			// nothing; QUIT frees the maildrop before it answers.
			c.cmd("RSET")
			c.ok("QUIT")
		})
	}
	// Only the last case removed anything: message 2.
	msgs, _ := storedMessages(t, st, alice)
	if len(msgs) != 2 {
		t.Errorf("%d messages left, want 2 (message 2 removed by the QUIT case)", len(msgs))
	}
}
