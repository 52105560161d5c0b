package relay

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
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

// faultyStore is the relay's store with calls that fail when told, and a
// record of what QueueLeaseDomains gave.
type faultyStore struct {
	*mailstore.Store
	mu          sync.Mutex
	failRemove  int           // QueueRemove calls to fail; negative: all
	removeDelay time.Duration // how long a failing QueueRemove takes (a slow store)
	failRelease int           // ReleaseRelaySlot calls to fail
	failAcquire func() bool
	leasedIDs   map[int64]int // times QueueLeaseDomains gave each entry
	leaseCalls  int
}

var errInjected = errors.New("injected store failure")

func faulty(a *alpha) *faultyStore {
	f := &faultyStore{Store: a.store, leasedIDs: map[int64]int{}}
	a.relay.q = f
	return f
}

func (f *faultyStore) QueueLeaseDomains(ctx context.Context, due time.Time, limit, maxDomains int, owner string, ttl time.Duration, skip ...string) ([]mailstore.QueueEntry, error) {
	got, err := f.Store.QueueLeaseDomains(ctx, due, limit, maxDomains, owner, ttl, skip...)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.leaseCalls++
	for _, e := range got {
		f.leasedIDs[e.ID]++
	}
	return got, err
}

func (f *faultyStore) QueueRemove(ctx context.Context, id int64) error {
	f.mu.Lock()
	fail := f.failRemove != 0
	if f.failRemove > 0 {
		f.failRemove--
	}
	delay := f.removeDelay
	f.mu.Unlock()
	if fail {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return fmt.Errorf("remove queue entry %d: %w", id, ctx.Err())
		}
		return fmt.Errorf("remove queue entry %d: %w", id, errInjected)
	}
	return f.Store.QueueRemove(ctx, id)
}

func (f *faultyStore) ReleaseRelaySlot(ctx context.Context, domain string, slot int, owner string) error {
	f.mu.Lock()
	fail := f.failRelease > 0
	if fail {
		f.failRelease--
	}
	f.mu.Unlock()
	if fail {
		return fmt.Errorf("release relay slot %d of %s: %w", slot, domain, errInjected)
	}
	return f.Store.ReleaseRelaySlot(ctx, domain, slot, owner)
}

func (f *faultyStore) AcquireRelaySlot(ctx context.Context, domain string, limit int, owner string, ttl time.Duration) (int, bool, error) {
	f.mu.Lock()
	fail := f.failAcquire != nil && f.failAcquire()
	f.mu.Unlock()
	if fail {
		return 0, false, fmt.Errorf("acquire relay slot of %s: %w", domain, errInjected)
	}
	return f.Store.AcquireRelaySlot(ctx, domain, limit, owner, ttl)
}

func (f *faultyStore) stats() (calls int, leased map[int64]int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.leaseCalls, maps.Clone(f.leasedIDs)
}

// A relay busy with a domain never leases the domain's new entries, not
// even for a moment: they stay free for another frontend at every poll.
func TestBusyRelayLeavesNewEntries(t *testing.T) {
	d, mx := betaMX(t)
	inData, release := mx.holdData(100)
	a := newAlpha(t, d, mx.addr.Port(), func(c *Config) { c.PollInterval = 10 * time.Millisecond; c.MaxConnsPerDomain = 1 })
	f := faulty(a)
	subjects := []string{"busy first"}
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), subjects[0])
	stop := runRelays(t, a)
	select {
	case <-inData:
	case <-time.After(30 * time.Second):
		t.Fatal("relay a never sent")
	}
	first := queue(t, a.store)
	if len(first) != 1 {
		t.Fatalf("%d entries queued, want 1", len(first))
	}
	for i := range 5 {
		s := fmt.Sprintf("busy second %d", i)
		submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), s)
		subjects = append(subjects, s)
	}
	var fresh []int64
	for _, e := range queue(t, a.store) {
		if e.ID != first[0].ID {
			fresh = append(fresh, e.ID)
		}
	}
	calls0, _ := f.stats()
	deadline := time.Now().Add(30 * time.Second)
	for {
		a.relay.Kick()
		calls, _ := f.stats()
		if calls >= calls0+10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("relay a stopped looking at the queue")
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, leased := f.stats()
	for _, id := range fresh {
		if leased[id] > 0 {
			t.Errorf("entry %d of the busy domain leased %d times by the busy relay", id, leased[id])
		}
	}
	close(release)
	waitQueueEmpty(t, a)
	stop()
	receivedOnce(t, mx, subjects)
}

// A connection slot whose release failed is no longer renewed with the
// slots the relay still holds: it lapses after LeaseTTL.
func TestLeakedSlotLapses(t *testing.T) {
	d, mx := betaMX(t)
	a := newAlpha(t, d, mx.addr.Port(), func(c *Config) { c.MaxConnsPerDomain = 1; c.LeaseTTL = time.Minute })
	f := faulty(a)
	f.failRelease = 1
	ctx := context.Background()
	// A slot of another domain the relay holds (a connection open there).
	if _, ok := a.relay.acquireSlot(ctx, &workList{domain: "held.test"}); !ok {
		t.Fatal("no slot of held.test")
	}
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "leaked slot")
	a.runOnce(t)
	if !strings.Contains(a.log.String(), "cannot release a connection slot") {
		t.Fatalf("the slot release did not fail:\n%s", a.log.String())
	}
	for range 3 {
		a.clock.Advance(a.relay.cfg.LeaseTTL / 2)
		a.relay.renewOnce()
	}
	if _, ok, err := a.store.AcquireRelaySlot(ctx, "beta.test", 1, "other", time.Minute); err != nil || !ok {
		t.Errorf("beta.test's leaked slot still held after 1.5 LeaseTTL: %v %v", ok, err)
	}
	if _, ok, err := a.store.AcquireRelaySlot(ctx, "held.test", 1, "other", time.Minute); err != nil || ok {
		t.Errorf("held.test's slot, held and renewed, was free: %v %v", ok, err)
	}
}

// An entry delivered but not removed (the store failed) is not sent
// again by the relay: its next look at the queue removes it.
func TestDeliveredNotRemovedNotSentAgain(t *testing.T) {
	d, mx := betaMX(t)
	a := newAlpha(t, d, mx.addr.Port())
	f := faulty(a)
	f.failRemove = 1
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "remove failed")
	a.runOnce(t)
	if q := queue(t, a.store); len(q) != 1 || q[0].LeaseOwner != a.relay.cfg.LeaseOwner {
		t.Fatalf("after the failed removal: queue %+v, want the entry leased by the relay", q)
	}
	a.runOnce(t)
	a.runOnce(t)
	if q := queue(t, a.store); len(q) != 0 {
		t.Errorf("%d entries queued, want the delivered one removed", len(q))
	}
	receivedOnce(t, mx, []string{"remove failed"})
}

// A stopping relay gives back only the entries it did not try: one
// delivered whose removal failed keeps its lease, so that another
// frontend does not send it again at once.
func TestStopKeepsLeaseOfDeliveredEntry(t *testing.T) {
	d, mx := betaMX(t)
	inData, release := make(chan struct{}, 10), make(chan struct{})
	var n atomic.Int32
	mx.mu.Lock()
	mx.onData = func() {
		if n.Add(1) >= 2 {
			inData <- struct{}{}
			<-release
		}
	}
	mx.mu.Unlock()
	one := func(c *Config) { c.MaxConnsPerDomain = 1 }
	a := newAlpha(t, d, mx.addr.Port(), one) // the store's clock stands still: no lease lapses
	b := newAlphaOn(t, a.store, a.clock, d, mx.addr.Port(), one)
	f := faulty(a)
	f.failRemove = -1
	for i := range 3 {
		submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), fmt.Sprintf("kept %d", i))
	}
	stop := runRelays(t, a)
	select {
	case <-inData:
	case <-time.After(30 * time.Second):
		t.Fatal("relay a never sent its second message")
	}
	stop()
	close(release)
	b.runOnce(t)
	q := queue(t, a.store)
	if len(q) != 1 || q[0].LeaseOwner != a.relay.cfg.LeaseOwner {
		t.Fatalf("queue after relay b's run: %+v; want only the delivered entry, leased by relay a", q)
	}
	count := 0
	for _, r := range mx.received() {
		if strings.Contains(string(r.data), "Subject: kept 0\r\n") {
			count++
		}
	}
	if count != 1 {
		t.Errorf("the entry delivered before the stop was received %d times, want once", count)
	}
	if !strings.Contains(a.log.String(), "stopping with a delivered or reported entry still queued") {
		t.Errorf("relay a did not log the entry it kept:\n%s", a.log.String())
	}
	// Its lease lapses: then it is another frontend's (a duplicate).
	a.clock.Advance(a.relay.cfg.LeaseTTL + time.Second)
	b.runOnce(t)
	if q := queue(t, a.store); len(q) != 0 {
		t.Errorf("%d entries queued after the lease lapsed", len(q))
	}
}

// Whatever the store answers when a connection slot is asked for, every
// transaction of a job is tried in that job: none is left leased for a
// later look at the queue.
func TestSlotFailuresStrandNothing(t *testing.T) {
	d, mx := betaMX(t)
	a := newAlpha(t, d, mx.addr.Port(), func(c *Config) { c.MaxConnsPerDomain = 4; c.MaxMessagesPerConn = 2 })
	f := faulty(a)
	var calls int
	f.failAcquire = func() bool { calls++; return calls%2 == 0 }
	var subjects []string
	for i := range 40 {
		s := fmt.Sprintf("strand %d", i)
		submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), s)
		subjects = append(subjects, s)
	}
	a.runOnce(t)
	if q := queue(t, a.store); len(q) != 0 {
		t.Fatalf("%d entries left after one run", len(q))
	}
	if strings.Contains(a.log.String(), "left untried") {
		t.Errorf("a job left transactions untried:\n%s", a.log.String())
	}
	receivedOnce(t, mx, subjects)
}

// next and handBack agree: once the last open connection of a job has
// found the list empty, nothing is handed back to it.
func TestWorkListHandBack(t *testing.T) {
	w := &workList{domain: "beta.test", live: 1}
	tx := &transaction{domain: "beta.test"}
	if w.next(true) != nil || w.live != 0 {
		t.Fatalf("empty list: live %d after the last live worker left", w.live)
	}
	if w.handBack(tx) {
		t.Fatal("handed back to a job with no open connection")
	}
	w.live = 1
	if !w.handBack(tx) || w.next(true) != tx || w.live != 1 {
		t.Fatalf("hand back to the open connection: live %d, txs %d", w.live, len(w.txs))
	}
}

// Entries of a running job whose leases were lost (another frontend
// holds them now) are not started by the job: only the one in progress
// when the leases were lost goes out.
func TestLostLeaseNotStarted(t *testing.T) {
	d, mx := betaMX(t)
	inData, release := mx.holdData(10)
	a := newAlpha(t, d, mx.addr.Port(), func(c *Config) { c.MaxConnsPerDomain = 1 })
	ctx := context.Background()
	for i := range 3 {
		submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), fmt.Sprintf("lost %d", i))
	}
	stop := runRelays(t, a)
	select {
	case <-inData:
	case <-time.After(30 * time.Second):
		t.Fatal("relay a never sent")
	}
	// The job tries its entries in order: the first is in progress. The
	// others pass to another owner, as after a stall of LeaseTTL.
	q := queue(t, a.store)
	if len(q) != 3 {
		t.Fatalf("%d entries queued, want 3", len(q))
	}
	others := []int64{q[1].ID, q[2].ID}
	if err := a.store.QueueRelease(ctx, others, a.relay.cfg.LeaseOwner); err != nil {
		t.Fatal(err)
	}
	if got, err := a.store.QueueLease(ctx, a.clock.Now(), 0, "thief", time.Hour); err != nil || len(got) != 2 {
		t.Fatalf("thief leased %d: %v", len(got), err)
	}
	a.relay.renewOnce()
	close(release)
	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(a.log.String(), "not trying a queue entry whose lease was lost") < 2 {
		if time.Now().After(deadline) {
			t.Fatal("relay a never skipped the entries it lost")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for len(queue(t, a.store)) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d entries queued, want the thief's 2", len(queue(t, a.store)))
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	receivedOnce(t, mx, []string{"lost 0"})
	for _, e := range queue(t, a.store) {
		if e.LeaseOwner != "thief" {
			t.Errorf("entry %d leased by %q, want the thief", e.ID, e.LeaseOwner)
		}
	}
}

// onNthData makes the MX hold the DATA of the nth message it gets and of
// every later one (each says so on inData) until release is closed.
func onNthData(mx *testMX, nth int32) (inData, release chan struct{}) {
	inData, release = make(chan struct{}, 10), make(chan struct{})
	var n atomic.Int32
	mx.mu.Lock()
	mx.onData = func() {
		if n.Add(1) >= nth {
			inData <- struct{}{}
			<-release
		}
	}
	mx.mu.Unlock()
	return inData, release
}

// Removals that fail slowly (the store is degraded for that statement)
// are retried after the renewals, within what is left of the renewal
// interval: the connection slot in use keeps its lease, and another
// frontend opens no second connection to a domain limited to one.
func TestSlowRemovalsKeepSlotLeased(t *testing.T) {
	d, mx := betaMX(t)
	inData, release := onNthData(mx, 3)
	st := newStore(t, nil, []string{"alpha.test"}, "alice@alpha.test")
	cfg := func(c *Config) { c.LeaseTTL = 1500 * time.Millisecond; c.MaxConnsPerDomain = 1 }
	a := newAlphaOn(t, st, nil, d, mx.addr.Port(), cfg)
	b := newAlphaOn(t, st, nil, d, mx.addr.Port(), cfg)
	f := faulty(a)
	f.failRemove, f.removeDelay = -1, 400*time.Millisecond
	for i := range 3 {
		submit(t, st, envelope("alice@alpha.test", "bob@beta.test"), fmt.Sprintf("slot %d", i))
	}
	stop := runRelays(t, a)
	select {
	case <-inData:
	case <-time.After(30 * time.Second):
		t.Fatal("relay a never sent its third message")
	}
	// Two delivered entries wait for removal (800 ms of retries a round,
	// more than the 500 ms renewal interval) while the third is sent,
	// for twice LeaseTTL.
	time.Sleep(3 * time.Second)
	submit(t, st, envelope("alice@alpha.test", "bob@beta.test"), "slot b")
	done := make(chan struct{})
	go func() { defer close(done); b.relay.RunOnce(context.Background()) }()
	select {
	case <-inData:
		t.Errorf("relay b opened a second connection to a domain limited to one")
	case <-time.After(3 * time.Second):
	}
	close(release)
	<-done
	stop()
	if strings.Contains(a.log.String(), "lost") {
		t.Errorf("relay a lost a lease:\n%s", a.log.String())
	}
}

// However many delivered entries wait for a removal that fails slowly,
// a renewal round does not outlast the renewal interval: the leases of
// those entries and of the one in progress hold while relay a works, and
// relay b, looking at the queue all the while, sends none of them again.
func TestSlowRemovalsKeepEntriesLeased(t *testing.T) {
	d, mx := betaMX(t)
	inData, release := onNthData(mx, 5)
	st := newStore(t, nil, []string{"alpha.test"}, "alice@alpha.test")
	a := newAlphaOn(t, st, nil, d, mx.addr.Port(), func(c *Config) { c.LeaseTTL = 1500 * time.Millisecond; c.MaxConnsPerDomain = 1 })
	b := newAlphaOn(t, st, nil, d, mx.addr.Port(), func(c *Config) {
		c.LeaseTTL = 1500 * time.Millisecond
		c.MaxConnsPerDomain = 4
		c.PollInterval = 50 * time.Millisecond
	})
	f := faulty(a)
	f.failRemove, f.removeDelay = -1, time.Second
	var subjects []string
	for i := range 5 {
		s := fmt.Sprintf("entry %d", i)
		subjects = append(subjects, s)
		submit(t, st, envelope("alice@alpha.test", "bob@beta.test"), s)
	}
	stopA := runRelays(t, a)
	select {
	case <-inData:
	case <-time.After(30 * time.Second):
		t.Fatal("relay a never sent its fifth message")
	}
	// Four entries wait for removal: 4 s of retries, more than LeaseTTL.
	stopB := runRelays(t, b)
	select {
	case <-inData:
		t.Errorf("relay b sent an entry relay a holds")
	case <-time.After(5 * time.Second):
	}
	close(release)
	stopB()
	stopA()
	receivedOnce(t, mx, subjects)
	if strings.Contains(a.log.String(), "lost") {
		t.Errorf("relay a lost a lease:\n%s", a.log.String())
	}
}

// In a transaction of two recipients, one entry removed and the other's
// removal failed (and later retried): while the job goes on, neither is
// reported as a lease in progress lost.
func TestRemovedEntriesNotReportedLost(t *testing.T) {
	d, mx := betaMX(t)
	var n atomic.Int32
	mx.mu.Lock()
	mx.onData = func() {
		if n.Add(1) == 2 {
			time.Sleep(2 * time.Second) // several renewals
		}
	}
	mx.mu.Unlock()
	st := newStore(t, nil, []string{"alpha.test"}, "alice@alpha.test")
	a := newAlphaOn(t, st, nil, d, mx.addr.Port(), func(c *Config) { c.LeaseTTL = time.Second; c.MaxConnsPerDomain = 1 })
	f := faulty(a)
	f.failRemove = 1
	submit(t, st, envelope("alice@alpha.test", "bob@beta.test", "carol@beta.test"), "two recipients")
	submit(t, st, envelope("alice@alpha.test", "dave@beta.test"), "slow one")
	a.runOnce(t)
	if !strings.Contains(a.log.String(), "finished entry removed from the queue at last") {
		t.Errorf("the failed removal was not retried:\n%s", a.log.String())
	}
	if strings.Contains(a.log.String(), "lease of a queue entry in progress lost") {
		t.Errorf("false lease-lost warning:\n%s", a.log.String())
	}
	if q := queue(t, st); len(q) != 0 {
		t.Errorf("%d entries queued, want none", len(q))
	}
}

// With more running jobs than a batch of entries (each with an entry
// queued, older than the rest), a look at the queue still leases the
// entries of a domain without a job: the running jobs' domains are all
// left out of the lease, none of their entries fills the batch.
func TestManyRunningJobsLeaveRoomForNewDomains(t *testing.T) {
	d, mx := betaMX(t)
	a := newAlpha(t, d, mx.addr.Port())
	busy := make([]string, maxBatch+500)
	for i := range busy {
		busy[i] = fmt.Sprintf("r@busy%04d.test", i)
	}
	submit(t, a.store, envelope("alice@alpha.test", busy...), "busy")
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "new domain")
	a.relay.mu.Lock()
	for _, addr := range busy {
		_, domain, _ := strings.Cut(addr, "@")
		a.relay.active[domain] = true
	}
	a.relay.mu.Unlock()
	f := faulty(a)
	a.runOnce(t)
	receivedOnce(t, mx, []string{"new domain"})
	if _, leased := f.stats(); len(leased) != 1 {
		t.Errorf("the relay leased %d entries, want only the new domain's", len(leased))
	}
	for _, e := range queue(t, a.store) {
		if e.LeaseOwner != "" {
			t.Fatalf("entry %d of a running job's domain leased by %q", e.ID, e.LeaseOwner)
		}
	}
}
