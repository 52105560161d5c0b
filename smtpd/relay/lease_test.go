package relay

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/smtpd/msgauth/msgauthtest"
)

// runRelays runs the relays until stop is called.
func runRelays(t *testing.T, relays ...*alpha) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, a := range relays {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.relay.Run(ctx)
		}()
	}
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

// waitQueueEmpty waits until every entry has left the queue.
func waitQueueEmpty(t *testing.T, a *alpha) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for len(queue(t, a.store)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d entries still queued", len(queue(t, a.store)))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// receivedOnce checks that the MX got each of the subjects exactly once.
func receivedOnce(t *testing.T, mx *testMX, subjects []string) {
	t.Helper()
	count := map[string]int{}
	for _, r := range mx.received() {
		for _, line := range strings.Split(string(r.data), "\r\n") {
			if s, ok := strings.CutPrefix(line, "Subject: "); ok {
				count[s]++
			}
		}
	}
	for _, s := range subjects {
		if count[s] != 1 {
			t.Errorf("%q received %d times, want once", s, count[s])
		}
	}
	if got := len(mx.received()); got != len(subjects) {
		t.Errorf("received %d messages, want %d", got, len(subjects))
	}
}

// Two relays on one queue (two frontends of one store) deliver each
// entry exactly once.
func TestRelaysShareQueue(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	mx := newTestMX(t, "127.0.0.1:0")
	d.Add(t, "beta.test. MX 10 mx.beta.test.", "mx.beta.test. A 127.0.0.1", "gamma.test. MX 10 mx.beta.test.")
	fast := func(c *Config) { c.PollInterval = 20 * time.Millisecond; c.MaxMessagesPerConn = 7 }
	a := newAlpha(t, d, mx.addr.Port(), fast)
	b := newAlphaOn(t, a.store, a.clock, d, mx.addr.Port(), fast)
	if a.relay.cfg.LeaseOwner == b.relay.cfg.LeaseOwner {
		t.Fatalf("two relays with one lease owner %q", a.relay.cfg.LeaseOwner)
	}
	stop := runRelays(t, a, b)
	var subjects []string
	for i := range 150 {
		to := "bob@beta.test"
		if i%3 == 0 {
			to = "carol@gamma.test"
		}
		s := fmt.Sprintf("shared %d", i)
		submit(t, a.store, envelope("alice@alpha.test", to), s)
		subjects = append(subjects, s)
		if i%10 == 0 {
			a.relay.Kick()
			b.relay.Kick()
		}
	}
	a.relay.Kick()
	b.relay.Kick()
	waitQueueEmpty(t, a)
	stop()
	receivedOnce(t, mx, subjects)
	if !strings.Contains(a.log.String(), "delivered") || !strings.Contains(b.log.String(), "delivered") {
		t.Logf("one relay delivered everything (allowed, but the test then shows less)")
	}
}

// The per-domain connection limit holds across relays: while one holds
// every slot of a domain, another with entries for it opens no
// connection and waits; then it delivers them.
func TestRelaySlotsAcrossRelays(t *testing.T) {
	d, mx := betaMX(t)
	inData, release := mx.holdData(100)
	limit := func(c *Config) { c.PollInterval = 20 * time.Millisecond; c.MaxConnsPerDomain = 2 }
	a := newAlpha(t, d, mx.addr.Port(), limit)
	b := newAlphaOn(t, a.store, a.clock, d, mx.addr.Port(), limit)
	var subjects []string
	for i := range 10 {
		s := fmt.Sprintf("first %d", i)
		submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), s)
		subjects = append(subjects, s)
	}
	runRelays(t, a)
	for range 2 {
		select {
		case <-inData:
		case <-time.After(30 * time.Second):
			t.Fatal("relay a did not open its two connections")
		}
	}
	// More mail for the domain: a, busy with it, leaves it to b.
	for i := range 10 {
		s := fmt.Sprintf("second %d", i)
		submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), s)
		subjects = append(subjects, s)
	}
	a.relay.Kick()
	stop := runRelays(t, b)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(b.log.String(), "connection slot of the domain is taken") {
		if time.Now().After(deadline) {
			t.Fatal("relay b never waited for a connection slot")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if conns, active := mx.stats(); conns != 2 || active != 2 {
		t.Fatalf("%d connections (%d at once) while relay a holds both slots of two, want 2", conns, active)
	}
	close(release)
	waitQueueEmpty(t, a)
	stop()
	receivedOnce(t, mx, subjects)
	if !strings.Contains(b.log.String(), "delivered") {
		t.Error("relay b delivered nothing")
	}
}

// A relay renews the leases of the entries it is delivering: an attempt
// that outlasts LeaseTTL keeps them, and another relay on the store does
// not send them too.
func TestLeaseRenewedDuringLongAttempt(t *testing.T) {
	d, mx := betaMX(t)
	inData, release := mx.holdData(10)
	// The store's clock is the real one: leases lapse in real time.
	st := newStore(t, nil, []string{"alpha.test"}, "alice@alpha.test")
	short := func(c *Config) { c.LeaseTTL = time.Second; c.MaxConnsPerDomain = 1 }
	a := newAlphaOn(t, st, nil, d, mx.addr.Port(), short)
	b := newAlphaOn(t, st, nil, d, mx.addr.Port(), short, func(c *Config) { c.MaxConnsPerDomain = 4 })
	var subjects []string
	for i := range 3 {
		s := fmt.Sprintf("long %d", i)
		submit(t, st, envelope("alice@alpha.test", "bob@beta.test"), s)
		subjects = append(subjects, s)
	}
	stop := runRelays(t, a)
	select {
	case <-inData:
	case <-time.After(30 * time.Second):
		t.Fatal("relay a never sent")
	}
	// Three times the lease while a's first attempt hangs.
	time.Sleep(3 * time.Second)
	b.runOnce(t)
	if conns, _ := mx.stats(); conns != 1 {
		t.Errorf("%d connections: relay b took entries relay a was delivering", conns)
	}
	close(release)
	waitQueueEmpty(t, a)
	stop()
	receivedOnce(t, mx, subjects)
	if strings.Contains(a.log.String(), "lease of a queue entry in progress lost") {
		t.Errorf("relay a lost a lease:\n%s", a.log.String())
	}
}

// A relay that stops gives back the leases of the entries it did not
// deliver: another relay takes them at once, not after LeaseTTL.
func TestStoppingRelayReleasesLeases(t *testing.T) {
	d, mx := betaMX(t)
	inData, release := mx.holdData(10)
	one := func(c *Config) { c.MaxConnsPerDomain = 1 }
	a := newAlpha(t, d, mx.addr.Port(), one) // the store's clock stands still: no lease lapses
	b := newAlphaOn(t, a.store, a.clock, d, mx.addr.Port(), one)
	for i := range 3 {
		submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), fmt.Sprintf("stopped %d", i))
	}
	stop := runRelays(t, a)
	select {
	case <-inData:
	case <-time.After(30 * time.Second):
		t.Fatal("relay a never sent")
	}
	stop()
	close(release)
	b.runOnce(t)
	if q := queue(t, a.store); len(q) != 0 {
		t.Fatalf("%d entries left after relay b's run: relay a kept their leases", len(q))
	}
	if !strings.Contains(b.log.String(), "delivered") {
		t.Error("relay b delivered nothing")
	}
}
