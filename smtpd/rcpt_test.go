package smtpd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/storetest"
)

// RCPT decides locality and resolution from one store read
// (resolveRecipient); every kind of address gets the reply it got when
// the domain was looked up on its own.
func TestRecipientLocality(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	must(t, e.store.AddAlias(ctx, "out@example.test", "Carol.Far@Remote.TEST"))
	// An alias whose one target is remote and spelled like an address
	// of ours differing only in case is still local.
	must(t, e.store.AddDomain(ctx, "other.test"))
	must(t, e.store.AddAlias(ctx, "x@other.test", "X@Remote.test"))

	mx := e.dial(t, e.mx)
	mx.cmd("EHLO client.example.test", "250")
	mx.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	for _, tt := range []struct{ rcpt, want string }{
		{"<ALICE@Example.TEST>", "250 "},
		{"<out@example.test>", "250 "},
		{"<x@other.test>", "250 "},
		{"<nobody@example.test>", "550 5.1.1 "},
		// A local part the store cannot take: no such user in a local
		// domain, relay denied elsewhere.
		{`<"a<b"@example.test>`, "550 5.1.1 "},
		{`<"a<b"@remote.test>`, "554 5.7.1 "},
		{"<carol@remote.test>", "554 5.7.1 "},
		{"<carol@Remote.Test>", "554 5.7.1 "},
	} {
		if r := mx.cmd("RCPT TO:"+tt.rcpt, ""); !strings.HasPrefix(r, tt.want) {
			t.Errorf("MX RCPT TO:%s: %q, want %q", tt.rcpt, r, tt.want)
		}
	}
	if r := mx.data(simpleMessage("locality")); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("DATA: %q", r)
	}
	q := e.queue(t)
	got := map[string]bool{}
	for _, x := range q {
		got[x.Recipient] = true
	}
	if len(q) != 2 || !got["Carol.Far@remote.test"] || !got["X@remote.test"] {
		t.Fatalf("queue %+v, want the two aliases' remote targets only", q)
	}
	if n := len(e.inbox(t, alice)); n != 1 {
		t.Errorf("alice has %d messages, want 1", n)
	}

	sub := e.dial(t, e.sub)
	sub.cmd("EHLO client.example.test", "250")
	sub.cmd("AUTH PLAIN "+plainAuth(alice, alicePassword), "235 ")
	sub.cmd("MAIL FROM:<"+alice+">", "250 ")
	for _, tt := range []struct{ rcpt, want string }{
		{"<Dave@Far.TEST>", "250 "},
		{`<"a<b"@remote.test>`, "553 5.1.3 "},
		{"<a@[192.0.2.1]>", "553 5.1.3 "},
		{`<"a<b"@example.test>`, "550 5.1.1 "},
		{"<nobody@example.test>", "550 5.1.1 "},
	} {
		if r := sub.cmd("RCPT TO:"+tt.rcpt, ""); !strings.HasPrefix(r, tt.want) {
			t.Errorf("submission RCPT TO:%s: %q, want %q", tt.rcpt, r, tt.want)
		}
	}
}

// A user or domain removed stops taking mail at RCPT once the answer
// kept for the address (dirCacheTTL; TestRecipientCache shows the
// delivery refuses meanwhile) has lapsed, and a refusal is never kept: the
// domain's removal shows at once.
func TestRecipientDomainRemoved(t *testing.T) {
	clock := storetest.NewClock()
	e := newTestEnv(t, func(c *Config) { c.Now = clock.Now })
	ctx := context.Background()
	must(t, e.store.AddDomain(ctx, "gone.test"))
	_, err := e.store.AddUser(ctx, "u@gone.test", "pw")
	must(t, err)
	c := e.dial(t, e.mx)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("MAIL FROM:<u@gone.test>", "250 ")
	c.cmd("RCPT TO:<u@gone.test>", "250 ")
	c.cmd("RSET", "250 ")
	must(t, e.store.DeleteUser(ctx, "u@gone.test"))
	clock.Advance(dirCacheTTL)
	c.cmd("MAIL FROM:<u@gone.test>", "250 ")
	c.cmd("RCPT TO:<u@gone.test>", "550 5.1.1 ")
	c.cmd("RSET", "250 ")
	must(t, e.store.DeleteDomain(ctx, "gone.test"))
	c.cmd("MAIL FROM:<u@gone.test>", "250 ")
	c.cmd("RCPT TO:<u@gone.test>", "554 5.7.1 ")
	if n := strings.Count(e.logs.String(), `msg="unauthenticated sender in a local domain"`); n < 2 {
		t.Errorf("local sender logged %d times, want at least 2", n)
	}
}

// TestLocalOnlyAtDelivery: a recipient RCPT found local, whose user and
// domain are removed before the end of DATA, is refused rather than
// queued for relay: a client that did not authenticate never gets mail
// relayed. The delivery uses RCPT's resolution (the user, by id), so the
// refusal is the user's: 550 5.1.1.
func TestLocalOnlyAtDelivery(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	must(t, e.store.AddDomain(ctx, "going.test"))
	_, err := e.store.AddUser(ctx, "u@going.test", "pw")
	must(t, err)
	c := e.dial(t, e.mx)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	c.cmd("RCPT TO:<u@going.test>", "250 ")
	c.cmd("DATA", "354")
	must(t, e.store.DeleteUser(ctx, "u@going.test"))
	must(t, e.store.DeleteDomain(ctx, "going.test"))
	c.send("Subject: late\r\n\r\nhello\r\n.")
	c.expect("550 5.1.1 ")
	if q, err := e.store.Queue(ctx, time.Time{}, 0); err != nil || len(q) != 0 {
		t.Fatalf("queue after the refusal: %d entries, %v: want none", len(q), err)
	}
}

// TestLocalOnlyAliasDomainRemoved: an alias that forwards to a remote
// address, accepted at RCPT from a client that did not authenticate, is
// resolved again at the end of DATA (RCPT's resolution reaches a remote
// address, which LocalOnly does not trust); its domain removed meanwhile,
// the address is no longer local and the message is refused with 554
// 5.7.1, not relayed.
func TestLocalOnlyAliasDomainRemoved(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	must(t, e.store.AddDomain(ctx, "going.test"))
	must(t, e.store.AddAlias(ctx, "fwd@going.test", "someone@far.test"))
	c := e.dial(t, e.mx)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	c.cmd("RCPT TO:<fwd@going.test>", "250 ")
	c.cmd("DATA", "354")
	must(t, e.store.DeleteDomain(ctx, "going.test"))
	c.send("Subject: late\r\n\r\nhello\r\n.")
	c.expect("554 5.7.1 ")
	if q, err := e.store.Queue(ctx, time.Time{}, 0); err != nil || len(q) != 0 {
		t.Fatalf("queue after the refusal: %d entries, %v: want none", len(q), err)
	}
}

// TestUserDeletedAfterRcpt: a local user deleted between RCPT and the end
// of DATA gets nothing although RCPT's resolution named them: 550 5.1.1,
// and the other recipient of the same message still gets it.
func TestUserDeletedAfterRcpt(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	_, err := e.store.AddUser(ctx, "carol@example.test", "pw")
	must(t, err)
	c := e.dial(t, e.mx)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	c.cmd("RCPT TO:<carol@example.test>", "250 ")
	c.cmd("DATA", "354")
	must(t, e.store.DeleteUser(ctx, "carol@example.test"))
	c.send("Subject: late\r\n\r\nhello\r\n.")
	c.expect("550 5.1.1 ")

	_, err = e.store.AddUser(ctx, "dave@example.test", "pw")
	must(t, err)
	c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	c.cmd("RCPT TO:<dave@example.test>", "250 ")
	c.cmd("RCPT TO:<"+alice+">", "250 ")
	c.cmd("DATA", "354")
	must(t, e.store.DeleteUser(ctx, "dave@example.test"))
	c.send("Subject: half\r\n\r\nhello\r\n.")
	c.expect("250 ")
	u, err := e.store.UserByAddress(ctx, alice)
	must(t, err)
	in, err := e.store.MailboxByName(ctx, u.ID, "INBOX")
	must(t, err)
	st, err := e.store.Status(ctx, in.ID)
	must(t, err)
	if st.Messages != 1 {
		t.Fatalf("alice has %d messages, want 1", st.Messages)
	}
}

// TestDuplicateRecipients: a recipient given twice counts once, both
// among a few recipients and among many (where a set keeps the check),
// as the log line's count and the Received field's "for" show.
func TestDuplicateRecipients(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	c := e.dial(t, e.mx)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	c.cmd("RCPT TO:<"+alice+">", "250 ")
	c.cmd("RCPT TO:<"+strings.ToUpper(alice)+">", "250 ")
	if r := c.data(simpleMessage("twice")); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("DATA: %q", r)
	}
	got := e.inbox(t, alice)
	if len(got) != 1 || !strings.Contains(string(got[0]), "for <"+alice+">") {
		t.Fatalf("alice's inbox after one recipient given twice: %d messages, want 1 with Received for her", len(got))
	}
	const many = 20
	c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	for i := range many {
		a := fmt.Sprintf("u%d@example.test", i)
		_, err := e.store.AddUser(ctx, a, "pw")
		must(t, err)
		c.cmd("RCPT TO:<"+a+">", "250 ")
		c.cmd("RCPT TO:<"+alice+">", "250 ")
	}
	if r := c.data(simpleMessage("many")); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("DATA: %q", r)
	}
	if want := fmt.Sprintf("recipients=%d ", many+1); !strings.Contains(e.logs.String(), want) {
		t.Errorf("log has no %q", want)
	}
	if !strings.Contains(e.logs.String(), "recipients=1 ") {
		t.Errorf("log has no recipients=1")
	}
}

// TestUserDisabledAfterRcpt: a user disabled between RCPT and the end of
// DATA gets nothing (a disabled user receives no mail), nor does a
// user's Junk delivery.
func TestUserDisabledAfterRcpt(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	_, err := e.store.AddUser(ctx, "erin@example.test", "pw")
	must(t, err)
	c := e.dial(t, e.mx)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	c.cmd("RCPT TO:<erin@example.test>", "250 ")
	c.cmd("DATA", "354")
	must(t, e.store.SetDisabled(ctx, "erin@example.test", true))
	c.send("Subject: late\r\n\r\nhello\r\n.")
	c.expect("550 5.1.1 ")
	u, err := e.store.UserByAddress(ctx, "erin@example.test")
	must(t, err)
	in, err := e.store.MailboxByName(ctx, u.ID, "INBOX")
	must(t, err)
	if st, err := e.store.Status(ctx, in.ID); err != nil || st.Messages != 0 {
		t.Fatalf("the disabled user's INBOX holds %d messages (%v), want 0", st.Messages, err)
	}
	res, err := e.store.Resolve(ctx, alice)
	must(t, err)
	must(t, e.store.SetDisabled(ctx, alice, true))
	_, err = e.store.DeliverEnvelope(ctx, mailstore.Envelope{Sender: "s@elsewhere.test", SpecialUse: `\Junk`,
		Recipients: []mailstore.Recipient{{Address: alice, Resolved: &res}}}, []byte("Subject: junk\r\n\r\nx\r\n"))
	if !errors.Is(err, mailstore.ErrNoSuchUser) {
		t.Fatalf("Junk delivery to a user disabled after resolving: %v, want ErrNoSuchUser", err)
	}
}
