package console

import (
	"context"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore/limits"
)

func TestConsoleAdmin(t *testing.T) {
	kicked := 0
	e := startWeb(t, func(c *Config) {
		c.DNSRecords = func(_ context.Context, d string) (string, error) { return d + ". 3600 IN MX 10 mail." + d + ".\n", nil }
		c.QueueKick = func() { kicked++ }
	})
	ctx := context.Background()
	b := e.browser(t)
	if b.login("alice@example.test", testPassword) != http.StatusSeeOther {
		t.Fatal("login failed")
	}
	code, _, page := b.do("GET", "/admin", nil, nil)
	if code != 200 || !strings.Contains(page, "bob@example.test") || !strings.Contains(page, "console sessions: 1") {
		t.Fatalf("admin page: %d\n%s", code, page)
	}
	steps := []struct {
		path string
		form url.Values
	}{
		{"/admin/users", url.Values{"op": {"add"}, "address": {"carol@example.test"}, "password": {"long enough"}}},
		{"/admin/users", url.Values{"op": {"quota"}, "address": {"carol@example.test"}, "quota_mib": {"2"}}},
		{"/admin/users", url.Values{"op": {"admin"}, "address": {"carol@example.test"}}},
		{"/admin/users", url.Values{"op": {"disable"}, "address": {"bob@example.test"}}},
		{"/admin/aliases", url.Values{"op": {"add"}, "alias": {"team@example.test"}, "targets": {"alice@example.test, carol@example.test"}}},
		{"/admin/domains", url.Values{"op": {"add"}, "domain": {"second.test"}}},
	}
	for _, s := range steps {
		code, hdr, _ := b.post(s.path, s.form)
		if code != http.StatusSeeOther || !strings.Contains(hdr.Get("Location"), "ok=") {
			t.Fatalf("POST %s %v: %d %s", s.path, s.form, code, hdr.Get("Location"))
		}
	}
	carol := mustUser(t, e, "carol@example.test")
	if carol.QuotaBytes != 2<<20 || !carol.Admin {
		t.Errorf("carol: %+v", carol)
	}
	if !mustUser(t, e, "bob@example.test").Disabled {
		t.Error("bob not disabled")
	}
	if res, err := e.store.Resolve(ctx, "team@example.test"); err != nil || len(res.Users) != 2 {
		t.Errorf("alias: %+v %v", res, err)
	}
	if ok, _ := e.store.IsLocalDomain(ctx, "second.test"); !ok {
		t.Error("domain not added")
	}
	// An admin cannot lock themselves out.
	if _, hdr, _ := b.post("/admin/users", url.Values{"op": {"disable"}, "address": {"alice@example.test"}}); !strings.Contains(hdr.Get("Location"), "err=") {
		t.Error("alice disabled herself")
	}
	// The queue: retry and delete.
	d, err := e.store.Deliver(ctx, "alice@example.test", []string{"dave@remote.test"}, []byte("Subject: q\r\n\r\nq\r\n"))
	if err != nil || len(d.Queued) != 1 {
		t.Fatalf("queue: %+v %v", d, err)
	}
	id := d.Queued[0].QueueID
	if err := e.store.QueueDefer(ctx, id, time.Now().Add(time.Hour), "451 later", false); err != nil {
		t.Fatal(err)
	}
	if _, _, page := b.do("GET", "/admin", nil, nil); !strings.Contains(page, "dave@remote.test") || !strings.Contains(page, "451 later") {
		t.Fatalf("queue not shown:\n%s", page)
	}
	idS := strconv.FormatInt(id, 10)
	if code, _, _ := b.post("/admin/queue", url.Values{"op": {"retry"}, "id": {idS}}); code != http.StatusSeeOther || kicked != 1 {
		t.Fatalf("retry: %d, kicked %d", code, kicked)
	}
	if due, _ := e.store.Queue(ctx, time.Now().Add(time.Minute), 0); len(due) != 1 {
		t.Fatalf("after retry %d entries due, want 1", len(due))
	}
	b.post("/admin/queue", url.Values{"op": {"delete"}, "id": {idS}})
	if all, _ := e.store.Queue(ctx, time.Time{}, 0); len(all) != 0 {
		t.Fatalf("after delete %d entries", len(all))
	}
	// DNS records of a local domain only.
	if code, _, body := b.do("GET", "/admin/dns?domain=example.test", nil, nil); code != 200 || !strings.Contains(body, "IN MX 10 mail.example.test.") {
		t.Fatalf("dns: %d %s", code, body)
	}
	if code, _, _ := b.do("GET", "/admin/dns?domain=elsewhere.test", nil, nil); code != http.StatusNotFound {
		t.Fatalf("dns of a foreign domain: %d", code)
	}
	// bob, disabled, is logged out at once and cannot log in.
	bob := e.browser(t)
	if bob.login("bob@example.test", testPassword) == http.StatusSeeOther {
		t.Fatal("disabled bob logged in")
	}
}

func TestConsoleSessionExpiry(t *testing.T) {
	e := startWeb(t, func(c *Config) { c.SessionIdle = time.Minute; c.MaxSessions = 2 })
	now := time.Now()
	e.srv.web.mu.Lock()
	e.srv.web.now = func() time.Time { return now }
	e.srv.web.mu.Unlock()
	b := e.browser(t)
	if b.login("bob@example.test", testPassword) != http.StatusSeeOther {
		t.Fatal("login failed")
	}
	now = now.Add(2 * time.Minute)
	if code, _, _ := b.do("GET", "/mail", nil, nil); code != http.StatusSeeOther {
		t.Fatalf("after the idle time: %d, want a redirect to log in", code)
	}
	// Bounded: a third login drops the least recently used.
	for range 3 {
		e.browser(t).login("bob@example.test", testPassword)
		now = now.Add(time.Second)
	}
	if n := e.srv.Sessions(); n != 2 {
		t.Fatalf("%d sessions, want at most 2", n)
	}
}

// TestConsoleAdminBlocked: the admin page lists the client addresses the
// shared login record blocks, and Unblock lifts one.
func TestConsoleAdminBlocked(t *testing.T) {
	logins := limits.NewLogins(limits.LoginPolicy{MaxFailures: 2, FailureDelay: -1})
	e := startWeb(t, func(c *Config) { c.Logins = logins })
	attacker := netip.MustParseAddr("192.0.2.7")
	for range 2 {
		logins.Check(context.Background(), limits.Attempt{Protocol: "imap", Remote: attacker, User: "bob@example.test"},
			func(context.Context) (bool, error) { return false, nil })
	}
	b := e.browser(t)
	if b.login("alice@example.test", testPassword) != http.StatusSeeOther {
		t.Fatal("login failed")
	}
	if _, _, page := b.do("GET", "/admin", nil, nil); !strings.Contains(page, "192.0.2.7/32") || !strings.Contains(page, "1 client addresses") {
		t.Fatalf("admin page does not list the blocked address:\n%s", page)
	}
	if code, hdr, _ := b.post("/admin/unblock", url.Values{"address": {"192.0.2.7"}}); code != http.StatusSeeOther || !strings.Contains(hdr.Get("Location"), "ok=") {
		t.Fatalf("unblock: %d %s", code, hdr.Get("Location"))
	}
	if logins.Blocked(attacker) {
		t.Fatal("still blocked after Unblock")
	}
	if _, _, page := b.do("GET", "/admin", nil, nil); strings.Contains(page, "192.0.2.7/32") {
		t.Fatal("admin page lists the address after Unblock")
	}
	if code, hdr, _ := b.post("/admin/unblock", url.Values{"address": {"not an address"}}); code != http.StatusSeeOther || !strings.Contains(hdr.Get("Location"), "err=") {
		t.Fatalf("unblock of garbage: %d %s", code, hdr.Get("Location"))
	}
}

// An operation no admin form knows is refused with 400 and changes
// nothing.
func TestConsoleAdminUnknownOperation(t *testing.T) {
	e := startWeb(t, nil)
	b := e.browser(t)
	if b.login("alice@example.test", testPassword) != http.StatusSeeOther {
		t.Fatal("login failed")
	}
	for path, form := range map[string]url.Values{
		"/admin/users":   {"op": {"drop"}, "address": {"bob@example.test"}},
		"/admin/domains": {"op": {"drop"}, "domain": {"example.test"}},
		"/admin/aliases": {"op": {"drop"}, "alias": {"team@example.test"}},
		"/admin/queue":   {"op": {"drop"}, "id": {"1"}},
	} {
		if code, _, body := b.post(path, form); code != http.StatusBadRequest || !strings.Contains(body, "unknown operation") {
			t.Errorf("POST %s op=drop: %d %q, want 400 unknown operation", path, code, body)
		}
	}
	if ok, _ := e.store.IsLocalDomain(context.Background(), "example.test"); !ok {
		t.Error("an unknown operation removed the domain")
	}
}
