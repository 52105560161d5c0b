package relay

import (
	"context"
	"strings"
	"testing"

	"github.com/postern/postern/smtpd/msgauth/msgauthtest"
)

// With Hold, mail stays queued until QueueRetry releases it; a relay
// without Hold releases what an earlier one held.
func TestHold(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	beta := newStore(t, nil, []string{"beta.test"}, "bob@beta.test")
	mx := newTestMX(t, "127.0.0.1:0")
	mx.store = beta
	d.Add(t, "beta.test. MX 10 mx.beta.test.", "mx.beta.test. A 127.0.0.1")
	a := newAlpha(t, d, mx.addr.Port(), func(c *Config) { c.Hold = true })
	ctx := context.Background()

	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "first")
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "second")
	a.runOnce(t)
	q := queue(t, a.store)
	if len(q) != 2 {
		t.Fatalf("queue: %+v", q)
	}
	for _, e := range q {
		if !IsHeld(e, a.clock.Now()) || !strings.HasPrefix(e.LastError, HoldNote) {
			t.Errorf("entry not held: %+v", e)
		}
	}
	a.runOnce(t)
	if n := len(mx.received()); n != 0 {
		t.Fatalf("the MX got %d messages while held", n)
	}

	// Releasing one delivers that one only.
	if err := a.store.QueueRetry(ctx, q[0].ID); err != nil {
		t.Fatal(err)
	}
	a.runOnce(t)
	if n := len(mx.received()); n != 1 {
		t.Fatalf("the MX got %d messages after one release", n)
	}
	q = queue(t, a.store)
	if len(q) != 1 || !IsHeld(q[0], a.clock.Now()) {
		t.Fatalf("queue after one release: %+v", q)
	}

	// Hold off: what was held goes out.
	b := newAlphaOn(t, a.store, a.clock, d, mx.addr.Port())
	b.relay.releaseHeld(ctx)
	b.runOnce(t)
	if n := len(mx.received()); n != 2 {
		t.Fatalf("the MX got %d messages after hold was turned off", n)
	}
	if q := queue(t, a.store); len(q) != 0 {
		t.Errorf("queue: %+v", q)
	}
}
