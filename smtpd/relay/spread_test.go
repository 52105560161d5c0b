package relay

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/storetest"
	"github.com/postern/postern/smtpd/msgauth/msgauthtest"
)

// frontendStores opens n Stores on one database, as n frontends would:
// on SQLite one Store shared (the single writer), on PostgreSQL a Store
// each on a fresh database (skipped without a server unless
// POSTERN_REQUIRE_INTEROP=1). alpha.test and alice are set up.
func frontendStores(t *testing.T, backend string, n int, clock *storetest.Clock) []*mailstore.Store {
	t.Helper()
	if backend == "sqlite" {
		st := newStore(t, clock, []string{"alpha.test"}, "alice@alpha.test")
		out := make([]*mailstore.Store, n)
		for i := range out {
			out[i] = st
		}
		return out
	}
	dsn := storetest.PostgresDSN(t)
	opts := mailstore.Options{PasswordCost: mailstore.FastPasswordHash, Now: clock.Now}
	var out []*mailstore.Store
	for range n {
		st, err := mailstore.OpenPostgres(context.Background(), dsn, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		out = append(out, st)
	}
	ctx := context.Background()
	if err := out[0].AddDomain(ctx, "alpha.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := out[0].AddUser(ctx, "alice@alpha.test", "pw"); err != nil {
		t.Fatal(err)
	}
	return out
}

// spreadDomains serves n destination domains d00.test... through the
// MX, and queues two messages to each; it returns their subjects.
func spreadDomains(t *testing.T, d *msgauthtest.DNS, st *mailstore.Store, n int) []string {
	t.Helper()
	var subjects []string
	for i := range n {
		domain := fmt.Sprintf("d%02d.test", i)
		d.Add(t, domain+". MX 10 mx.beta.test.")
		for j := range 2 {
			s := fmt.Sprintf("spread %s %d", domain, j)
			submit(t, st, envelope("alice@alpha.test", "bob@"+domain), s)
			subjects = append(subjects, s)
		}
	}
	return subjects
}

// leasedDomains is the domains of the queue's entries each owner holds.
func leasedDomains(t *testing.T, st *mailstore.Store, now time.Time) map[string]map[string]bool {
	t.Helper()
	out := map[string]map[string]bool{}
	for _, e := range queue(t, st) {
		if !e.Leased(now) {
			continue
		}
		if out[e.LeaseOwner] == nil {
			out[e.LeaseOwner] = map[string]bool{}
		}
		out[e.LeaseOwner][e.Domain] = true
	}
	return out
}

func forBackends(t *testing.T, test func(t *testing.T, backend string)) {
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) { test(t, backend) })
	}
}

// Two relays on one store with many due domains: the first to look
// takes only as many domains as it has connections, the other takes
// the next ones, and both deliver a share; every message arrives once.
func TestRelaysSpreadDomains(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		d, mx := betaMX(t)
		inData, release := mx.holdData(100)
		clock := storetest.NewClock()
		stores := frontendStores(t, backend, 2, clock)
		// No polls: only the start and jobs' ends make a relay look.
		cfg := func(c *Config) { c.PollInterval = time.Hour; c.MaxConns = 3 }
		a := newAlphaOn(t, stores[0], clock, d, mx.addr.Port(), cfg)
		b := newAlphaOn(t, stores[1], clock, d, mx.addr.Port(), cfg)
		const domains = 12
		subjects := spreadDomains(t, d, stores[0], domains)
		wait := func(n int, who string) {
			t.Helper()
			for range n {
				select {
				case <-inData:
				case <-time.After(30 * time.Second):
					t.Fatalf("relay %s did not open its connections", who)
				}
			}
		}
		runRelays(t, a)
		wait(3, "a")
		owners := leasedDomains(t, stores[0], clock.Now())
		if n := len(owners[a.relay.cfg.LeaseOwner]); n != 3 || len(owners) != 1 {
			t.Fatalf("relay a with 3 connections, all busy, leased the entries of %d domains (owners %v), want 3", n, owners)
		}
		runRelays(t, b)
		wait(3, "b")
		owners = leasedDomains(t, stores[0], clock.Now())
		if na, nb := len(owners[a.relay.cfg.LeaseOwner]), len(owners[b.relay.cfg.LeaseOwner]); na != 3 || nb != 3 {
			t.Fatalf("relays a and b leased the entries of %d and %d domains, want 3 each", na, nb)
		}
		for dom := range owners[b.relay.cfg.LeaseOwner] {
			if owners[a.relay.cfg.LeaseOwner][dom] {
				t.Fatalf("domain %s leased by both relays", dom)
			}
		}
		close(release)
		waitQueueEmpty(t, a)
		receivedOnce(t, mx, subjects)
		for name, r := range map[string]*alpha{"a": a, "b": b} {
			if n := strings.Count(r.log.String(), "msg=delivered"); n < 6 {
				t.Errorf("relay %s delivered %d messages, want at least its first 3 domains' 6", name, n)
			}
		}
	})
}

// A relay alone still delivers a backlog of more domains than it has
// connections: Run looks at the queue again as each job ends (with no
// poll in the test's time), and RunOnce takes more as its jobs end.
func TestRelayAloneDrainsManyDomains(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		t.Run("Run", func(t *testing.T) {
			d, mx := betaMX(t)
			clock := storetest.NewClock()
			st := frontendStores(t, backend, 1, clock)[0]
			a := newAlphaOn(t, st, clock, d, mx.addr.Port(), func(c *Config) { c.PollInterval = time.Hour; c.MaxConns = 2 })
			subjects := spreadDomains(t, d, st, 15)
			runRelays(t, a)
			waitQueueEmpty(t, a)
			receivedOnce(t, mx, subjects)
		})
		t.Run("RunOnce", func(t *testing.T) {
			d, mx := betaMX(t)
			clock := storetest.NewClock()
			st := frontendStores(t, backend, 1, clock)[0]
			a := newAlphaOn(t, st, clock, d, mx.addr.Port(), func(c *Config) { c.MaxConns = 2 })
			subjects := spreadDomains(t, d, st, 15)
			a.runOnce(t)
			if q := queue(t, st); len(q) != 0 {
				t.Fatalf("%d entries left after one RunOnce", len(q))
			}
			receivedOnce(t, mx, subjects)
		})
	})
}
