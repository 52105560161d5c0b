package smtpd

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/storetest"
)

// The sender-domain answers are reused for dirCacheTTL, then asked again;
// the domains remembered stay bounded whatever senders claim.
func TestSenderDomainsCache(t *testing.T) {
	clock := storetest.NewClock()
	e := newTestEnv(t, func(c *Config) { c.Now = clock.Now })
	ctx := context.Background()
	if local, err := e.srv.isLocalSenderDomain(ctx, "new.test"); err != nil || local {
		t.Fatalf("before the domain exists: %v %v", local, err)
	}
	must(t, e.store.AddDomain(ctx, "new.test"))
	if local, _ := e.srv.isLocalSenderDomain(ctx, "new.test"); local {
		t.Fatal("the answer was not reused within its time")
	}
	clock.Advance(dirCacheTTL)
	if local, err := e.srv.isLocalSenderDomain(ctx, "new.test"); err != nil || !local {
		t.Fatalf("after dirCacheTTL: %v %v, want the domain local", local, err)
	}
	for i := range 3 * maxDirCache {
		if _, err := e.srv.isLocalSenderDomain(ctx, fmt.Sprintf("d%d.test", i)); err != nil {
			t.Fatal(err)
		}
		if n := e.srv.senderDomains.len(); n > maxDirCache {
			t.Fatalf("%d domains remembered, at most %d", n, maxDirCache)
		}
	}
}

// Recipients' resolutions are reused across connections for dirCacheTTL
// (an alias changed shows late), but never a refusal, nor an answer a
// quota limits, and a user deleted meanwhile gets nothing.
func TestRecipientCache(t *testing.T) {
	clock := storetest.NewClock()
	e := newTestEnv(t, func(c *Config) { c.Now = clock.Now })
	ctx := context.Background()
	rcpt := func(to, want string) *raw {
		c := e.dial(t, e.mx)
		c.cmd("EHLO client.example.test", "250")
		c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
		c.cmd("RCPT TO:<"+to+">", want)
		return c
	}
	send := func(to, want string) {
		t.Helper()
		c := rcpt(to, "250 ")
		if r := c.data(simpleMessage("to " + to)); !strings.HasPrefix(r, want) {
			t.Fatalf("DATA for %s: %q, want %q", to, r, want)
		}
	}

	// An alias answer is reused: removing one of its targets shows only
	// after dirCacheTTL.
	send(team, "250 ")
	must(t, e.store.DeleteAlias(ctx, team, alice))
	send(team, "250 ")
	if a, b := len(e.inbox(t, alice)), len(e.inbox(t, bob)); a != 2 || b != 2 {
		t.Fatalf("within the cache's time: alice %d, bob %d messages, want 2 and 2", a, b)
	}
	clock.Advance(dirCacheTTL)
	send(team, "250 ")
	if a, b := len(e.inbox(t, alice)), len(e.inbox(t, bob)); a != 2 || b != 3 {
		t.Fatalf("after dirCacheTTL: alice %d, bob %d messages, want 2 and 3", a, b)
	}

	// A refusal is not reused: a user added shows at once.
	rcpt("carol@example.test", "550 5.1.1 ")
	_, err := e.store.AddUser(ctx, "carol@example.test", "pw")
	must(t, err)
	send("carol@example.test", "250 ")

	// A user deleted while its answer is kept: accepted at RCPT, but the
	// delivery gives it nothing.
	must(t, e.store.DeleteUser(ctx, "carol@example.test"))
	send("carol@example.test", "550 5.1.1 ")

	// An answer a quota limits is asked again each time: once the mailbox
	// is full, RCPT refuses at once.
	_, err = e.store.AddUser(ctx, "dave@example.test", "pw")
	must(t, err)
	must(t, e.store.SetQuota(ctx, "dave@example.test", 1<<20))
	send("dave@example.test", "250 ")
	u, err := e.store.UserByAddress(ctx, "dave@example.test")
	must(t, err)
	used, _, err := e.store.Usage(ctx, u.ID)
	must(t, err)
	must(t, e.store.SetQuota(ctx, "dave@example.test", used))
	rcpt("dave@example.test", "552 5.2.2 ")

	for i := range 3 * maxDirCache {
		e.srv.recipients.put("u"+strconv.Itoa(i)+"@example.test", mailstore.Resolution{})
		if n := e.srv.recipients.len(); n > maxDirCache {
			t.Fatalf("%d recipients remembered, at most %d", n, maxDirCache)
		}
	}
}

func (c *dirCache[V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
