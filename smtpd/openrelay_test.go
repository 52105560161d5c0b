package smtpd

import (
	"strings"
	"testing"
)

// TestOpenRelay tries the tricks that have made servers relay for
// strangers. Every one must be refused, and nothing may reach the queue.
func TestOpenRelay(t *testing.T) {
	e := newTestEnv(t)
	tricks := []struct {
		name, helo, from, rcpt string
	}{
		{"plain remote", "", "", "<carol@remote.test>"},
		{"no angle brackets", "", "", "carol@remote.test"},
		{"space after colon", "", "", " <carol@remote.test>"},
		{"upper-case remote domain", "", "", "<carol@REMOTE.TEST>"},
		{"trailing-dot domain", "", "", "<carol@remote.test.>"},
		{"local domain as a prefix", "", "", "<carol@example.test.remote.test>"},
		{"subdomain of a local domain", "", "", "<carol@mail.example.test>"},
		{"percent hack", "", "", "<carol%remote.test@example.test>"},
		{"percent hack, upper case", "", "", "<carol%REMOTE.TEST@EXAMPLE.TEST>"},
		{"percent hack, double", "", "", "<carol%remote.test%example.test@example.test>"},
		{"bang path", "", "", "<remote.test!carol@example.test>"},
		{"bang path without domain", "", "", "<remote.test!carol>"},
		{"source route to remote", "", "", "<@example.test:carol@remote.test>"},
		{"source route list to remote", "", "", "<@example.test,@mx.example.test:carol@remote.test>"},
		{"quoted at-sign", "", "", `<"carol@remote.test"@example.test>`},
		{"quoted percent hack", "", "", `<"carol%remote.test"@example.test>`},
		{"quoted local part to remote", "", "", `<"alice@example.test"@remote.test>`},
		{"two at-signs", "", "", "<carol@remote.test@example.test>"},
		{"two at-signs reversed", "", "", "<alice@example.test@remote.test>"},
		{"IPv4 literal", "", "", "<carol@[192.0.2.1]>"},
		{"own IP literal", "", "", "<alice@[127.0.0.1]>"},
		{"IPv6 literal", "", "", "<carol@[IPv6:2001:db8::1]>"},
		{"decimal IP domain", "", "", "<carol@3221225985>"},
		{"port in domain", "", "", "<carol@remote.test:25>"},
		{"percent in domain", "", "", "<carol@remote.test%example.test>"},
		{"postmaster elsewhere", "", "", "<postmaster@remote.test>"},
		{"bare postmaster", "", "", "<postmaster>"},
		{"local sender", "", "<alice@example.test>", "<carol@remote.test>"},
		{"null sender", "", "<>", "<carol@remote.test>"},
		{"AUTH= parameter", "", "<alice@example.test> AUTH=alice@example.test", "<carol@remote.test>"},
		{"local HELO name", "mx.example.test", "", "<carol@remote.test>"},
		{"ORCPT naming a local user", "", "", "<carol@remote.test> ORCPT=rfc822;alice@example.test"},
		{"NUL in address", "", "", "<carol@remote.test\x00@example.test>"},
		{"non-ASCII look-alike dot", "", "<s@elsewhere.test> SMTPUTF8", "<carol@remote\uff0etest>"},
		{"non-ASCII without SMTPUTF8", "", "", "<carol@remöte.test>"},
	}
	for _, tt := range tricks {
		t.Run(tt.name, func(t *testing.T) {
			c := e.dial(t, e.mx)
			helo := tt.helo
			if helo == "" {
				helo = "client.example.test"
			}
			c.cmd("EHLO "+helo, "250")
			from := tt.from
			if from == "" {
				from = "<s@elsewhere.test>"
			}
			c.cmd("MAIL FROM:"+from, "250 ")
			r := c.cmd("RCPT TO:"+tt.rcpt, "")
			if !strings.HasPrefix(r, "5") {
				t.Fatalf("RCPT TO:%s: %q, want a refusal", tt.rcpt, r)
			}
			t.Logf("%s -> %s", tt.rcpt, r)
			// Even with an acceptable recipient next to it, nothing is
			// queued for the refused one.
			c.cmd("RCPT TO:<"+alice+">", "250 ")
			if r := c.data(simpleMessage("relay")); !strings.HasPrefix(r, "250 ") {
				t.Fatal(r)
			}
		})
	}
	if q := e.queue(t); len(q) != 0 {
		t.Fatalf("queued for relay: %+v", q)
	}
	if n := len(e.inbox(t, alice)); n != len(tricks) {
		t.Errorf("alice has %d messages, want %d", n, len(tricks))
	}
	// Submission without AUTH relays nothing either.
	c := e.dial(t, e.sub)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("MAIL FROM:<s@elsewhere.test>", "530 5.7.0 ")
	c.cmd("RCPT TO:<carol@remote.test>", "502 5.5.1 ")
}
