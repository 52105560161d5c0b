package smtpd

import (
	"context"
	"strings"
	"testing"
)

// On submission, every address in From and Sender must be one the user
// may send as (RFC 5322 3.6.2), whatever the display name says.
func TestSubmissionAuthors(t *testing.T) {
	e := newTestEnv(t)
	must(t, e.store.AddAlias(context.Background(), "alice.smith@example.test", alice))
	c := e.dial(t, e.sub)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("AUTH PLAIN "+plainAuth(alice, alicePassword), "235 ")
	tests := []struct {
		name, header, want string
	}{
		{"own address", "From: Alice <alice@example.test>", "250 "},
		{"own address, bare", "From: alice@example.test", "250 "},
		{"own address, other case", "From: ALICE@Example.TEST", "250 "},
		{"own address, folded", "From: Alice Example\r\n <alice@example.test>", "250 "},
		{"alias", "From: Alice Smith <alice.smith@example.test>", "250 "},
		{"alias reaching her and others", "From: Team <team@example.test>", "250 "},
		{"two own addresses", "From: alice@example.test, Alice Smith <alice.smith@example.test>", "250 "},
		{"sender is hers", "From: alice@example.test\r\nSender: alice.smith@example.test", "250 "},
		{"other user", "From: Bob <bob@example.test>", "553 5.7.1 "},
		{"remote address", "From: Carol <carol@remote.test>", "553 5.7.1 "},
		{"forwarding alias to a remote address", "From: fwd@example.test", "553 5.7.1 "},
		{"no such user", "From: nobody@example.test", "553 5.7.1 "},
		{"display name is her address", `From: "alice@example.test" <bob@example.test>`, "553 5.7.1 "},
		{"encoded display name is her address", "From: =?utf-8?q?alice@example.test?= <bob@example.test>", "553 5.7.1 "},
		{"comment is her address", "From: bob@example.test (alice@example.test)", "553 5.7.1 "},
		{"hers and another's", "From: alice@example.test, bob@example.test", "553 5.7.1 "},
		{"another's after hers, folded", "From: alice@example.test,\r\n bob@example.test", "553 5.7.1 "},
		{"second From field", "From: alice@example.test\r\nFrom: bob@example.test", "553 5.7.1 "},
		{"sender is another's", "From: alice@example.test\r\nSender: bob@example.test", "553 5.7.1 "},
		{"unreadable", "From: alice@example.test <", "553 5.7.1 "},
		{"empty", "From: ", "553 5.7.1 "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.cmd("MAIL FROM:<"+alice+">", "250 ")
			c.cmd("RCPT TO:<"+bob+">", "250 ")
			msg := tt.header + "\r\nTo: bob@example.test\r\nSubject: " + tt.name + "\r\n\r\nHi.\r\n"
			if r := c.data(msg); !strings.HasPrefix(r, tt.want) {
				t.Errorf("%q: %q, want %q", tt.header, r, tt.want)
			}
		})
	}
	want := 0
	for _, tt := range tests {
		if tt.want == "250 " {
			want++
		}
	}
	if n := len(e.inbox(t, bob)); n != want {
		t.Errorf("bob has %d messages, want %d", n, want)
	}
	// The MX takes mail from anyone's name: that is for SPF and DMARC.
	m := e.dial(t, e.mx)
	m.cmd("EHLO client.example.test", "250")
	m.cmd("MAIL FROM:<bob@example.test>", "250 ")
	m.cmd("RCPT TO:<"+alice+">", "250 ")
	if r := m.data(messageFrom(bob, "inbound")); !strings.HasPrefix(r, "250 ") {
		t.Errorf("MX: %q", r)
	}
	if !strings.Contains(e.logs.String(), `msg="unauthenticated sender in a local domain"`) {
		t.Error("the local sender claim is not logged")
	}
}

// The Received field of a submitted message names the user who logged in.
func TestReceivedNamesUser(t *testing.T) {
	e := newTestEnv(t)
	must(t, e.store.AddAlias(context.Background(), "alice.smith@example.test", alice))
	msg := messageFrom("alice.smith@example.test", "received")
	if err := e.submit(t, alice, alicePassword, "alice.smith@example.test", []string{bob}, msg); err != nil {
		t.Fatal(err)
	}
	got := e.inbox(t, bob)
	if len(got) != 1 {
		t.Fatalf("%d messages", len(got))
	}
	prefix := trimTrace(t, got[0], msg)
	if !strings.Contains(prefix, "Received: from ") ||
		!strings.Contains(prefix, "\r\n\t(Authenticated sender: alice@example.test)\r\n\tby mx.example.test with ESMTPA id ") {
		t.Errorf("Received does not name the user:\n%s", prefix)
	}
	// Nothing of the kind on the MX.
	m := e.dial(t, e.mx)
	m.cmd("EHLO client.example.test", "250")
	m.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	m.cmd("RCPT TO:<"+bob+">", "250 ")
	if r := m.data(simpleMessage("inbound")); !strings.HasPrefix(r, "250 ") {
		t.Fatal(r)
	}
	if b := e.inbox(t, bob)[1]; strings.Contains(string(b), "Authenticated sender") {
		t.Errorf("MX message names a user:\n%.400s", b)
	}
}

func TestWithAuthenticatedSender(t *testing.T) {
	field := "Received: from a.test ([192.0.2.1])\r\n\tby b.test with ESMTPA id x; date\r\n"
	got := withAuthenticatedSender(field, `o(d)d\x@example.test`)
	want := "Received: from a.test ([192.0.2.1])\r\n\t(Authenticated sender: o\\(d\\)d\\\\x@example.test)\r\n\tby b.test with ESMTPA id x; date\r\n"
	if got != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

// RFC 5321 4.5.1: "RCPT TO:<Postmaster>" without a domain is taken.
func TestBarePostmaster(t *testing.T) {
	e := newTestEnv(t)
	c := e.dial(t, e.mx)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	c.cmd("RCPT TO:<Postmaster>", "550 5.1.1 ") // nobody is postmaster yet
	must(t, e.store.AddAlias(context.Background(), "postmaster@example.test", alice))
	c.cmd("RCPT TO:<Postmaster>", "250 ")
	if r := c.data(simpleMessage("to the postmaster")); !strings.HasPrefix(r, "250 ") {
		t.Fatal(r)
	}
	if n := len(e.inbox(t, alice)); n != 1 {
		t.Errorf("alice has %d messages, want 1", n)
	}
}
