package mailstore

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// leaseClock is a settable clock shared by the Stores of a test.
type leaseClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *leaseClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *leaseClock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// leaseStores opens n Stores on one database (n frontends) with the
// clock, and queues count messages to remote.test through the first.
func leaseStores(t *testing.T, n, count int, clock *leaseClock) []*Store {
	t.Helper()
	db := newTestDB(t)
	var out []*Store
	for range n {
		s := db.open(t, Options{PasswordCost: FastPasswordHash, Now: clock.Now})
		t.Cleanup(func() { s.Close() })
		out = append(out, s)
	}
	ctx := context.Background()
	for i := range count {
		if _, err := out[0].Deliver(ctx, "s@example.test", []string{fmt.Sprintf("r%d@remote.test", i)}, testMessage(i)); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// One owner's leased entries are not given to another until the lease
// ends; the owner gets them again; renew keeps them; release, defer and
// remove end the lease.
func TestQueueLease(t *testing.T) {
	ctx := context.Background()
	clock := &leaseClock{now: time.Unix(1700000000, 0)}
	s := leaseStores(t, 1, 4, clock)[0]
	const ttl = time.Minute
	due := clock.Now().Add(time.Hour)
	a, err := s.QueueLease(ctx, due, 2, "a", ttl)
	if err != nil || len(a) != 2 {
		t.Fatalf("lease a: %+v %v", a, err)
	}
	if a[0].ID >= a[1].ID || a[0].Recipient != "r0@remote.test" || a[0].Size == 0 || a[0].Domain != "remote.test" {
		t.Fatalf("leased entries %+v", a)
	}
	b, err := s.QueueLease(ctx, due, 0, "b", ttl)
	if err != nil || len(b) != 2 || b[0].ID == a[0].ID || b[0].ID == a[1].ID || b[1].ID == a[0].ID || b[1].ID == a[1].ID {
		t.Fatalf("lease b: %+v %v", b, err)
	}
	if c, err := s.QueueLease(ctx, due, 0, "c", ttl); err != nil || len(c) != 0 {
		t.Fatalf("lease c with all leased: %+v %v", c, err)
	}
	// The owner takes its own again.
	if again, err := s.QueueLease(ctx, due, 0, "a", ttl); err != nil || len(again) != 2 || again[0].ID != a[0].ID {
		t.Fatalf("lease a again: %+v %v", again, err)
	}
	// Renewed past the first ttl: still a's.
	clock.add(ttl / 2)
	lost, err := s.QueueRenew(ctx, []int64{a[0].ID, a[1].ID, b[0].ID}, "a", ttl)
	if err != nil || len(lost) != 1 || lost[0] != b[0].ID {
		t.Fatalf("renew: lost %v, %v; want [%d]", lost, err, b[0].ID)
	}
	clock.add(ttl/2 + time.Second)
	// b's lapsed, a's renewed.
	c, err := s.QueueLease(ctx, due, 0, "c", ttl)
	if err != nil || len(c) != 2 || c[0].ID != b[0].ID || c[1].ID != b[1].ID {
		t.Fatalf("lease c after b's lapsed: %+v %v", c, err)
	}
	if lost, err := s.QueueRenew(ctx, []int64{b[0].ID}, "b", ttl); err != nil || len(lost) != 1 {
		t.Fatalf("renew of a lapsed and taken lease: lost %v, %v", lost, err)
	}
	// Release: due for anyone at once, no attempt counted.
	if err := s.QueueRelease(ctx, []int64{a[0].ID}, "a"); err != nil {
		t.Fatal(err)
	}
	// A deferred entry's lease ends with it; it is due for anyone when
	// the retry time comes.
	if err := s.QueueDefer(ctx, a[1].ID, clock.Now().Add(time.Second), "451 later", false); err != nil {
		t.Fatal(err)
	}
	d, err := s.QueueLease(ctx, clock.Now().Add(2*time.Second), 0, "d", ttl)
	if err != nil || len(d) != 2 || d[0].ID != a[0].ID || d[0].Attempts != 0 || d[1].ID != a[1].ID || d[1].Attempts != 1 || d[1].LastError != "451 later" {
		t.Fatalf("lease d after release and defer: %+v %v", d, err)
	}
	// Removal takes the entry and its lease.
	if err := s.QueueRemove(ctx, d[0].ID); err != nil {
		t.Fatal(err)
	}
	all, err := s.Queue(ctx, time.Time{}, 0)
	if err != nil || len(all) != 3 {
		t.Fatalf("queue: %d entries, %v", len(all), err)
	}
	// Not yet due entries are not leased.
	if e, err := s.QueueLease(ctx, time.Unix(0, 0), 0, "e", ttl); err != nil || len(e) != 0 {
		t.Fatalf("lease of nothing due: %+v %v", e, err)
	}
}

// Stores on one database (frontends) leasing at the same time never get
// the same entry, and between them get every entry; the leases of one
// that stops (dies) are taken over when they end.
func TestQueueLeaseConcurrentFrontends(t *testing.T) {
	ctx := context.Background()
	clock := &leaseClock{now: time.Now()}
	const n, count, ttl = 3, 300, time.Minute
	stores := leaseStores(t, n, count, clock)
	due := clock.Now().Add(time.Hour)
	var mu sync.Mutex
	owner := map[int64]string{}
	var wg sync.WaitGroup
	errs := make(chan error, n*4)
	for i, s := range stores {
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				name := fmt.Sprintf("fe%d", i)
				for k := range 40 {
					// A fresh owner each time: an owner takes its own
					// leased entries again.
					who := fmt.Sprintf("%s-w%d-%d", name, w, k)
					got, err := s.QueueLease(ctx, due, 7, who, ttl)
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					for _, e := range got {
						if o, ok := owner[e.ID]; ok {
							mu.Unlock()
							errs <- fmt.Errorf("entry %d leased to %s and to %s", e.ID, o, who)
							return
						}
						owner[e.ID] = who
					}
					mu.Unlock()
					if len(got) == 0 {
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(owner) != count {
		t.Fatalf("%d entries leased, want %d", len(owner), count)
	}
	// fe0 dies: its workers' leases end after ttl and fe1 takes them.
	dead := map[int64]bool{}
	for id, o := range owner {
		if o[:3] == "fe0" {
			dead[id] = true
		}
	}
	stores[0].Close()
	if got, _ := stores[1].QueueLease(ctx, due, 0, "fe1-late", ttl); len(got) != 0 {
		t.Fatalf("took %d entries before the leases ended", len(got))
	}
	clock.add(ttl + time.Second)
	got, err := stores[1].QueueLease(ctx, due, 0, "fe1-late", ttl)
	if err != nil {
		t.Fatal(err)
	}
	// Every lease lapsed (nobody renewed): all are taken over.
	if len(got) != count {
		t.Fatalf("took over %d entries, want %d", len(got), count)
	}
	for _, e := range got {
		delete(dead, e.ID)
	}
	if len(dead) != 0 {
		t.Fatalf("%d of the dead frontend's entries not taken over", len(dead))
	}
}

// A domain's relay slots are shared by every Store on the database: no
// more than the limit are held at once, a released one is free again, and
// a dead owner's is free when its lease ends.
func TestRelaySlots(t *testing.T) {
	ctx := context.Background()
	clock := &leaseClock{now: time.Unix(1700000000, 0)}
	stores := leaseStores(t, 2, 0, clock)
	a, b := stores[0], stores[1]
	const ttl = time.Minute
	var held []int
	for i := range 2 {
		slot, ok, err := a.AcquireRelaySlot(ctx, "Remote.test", 3, "a", ttl)
		if err != nil || !ok {
			t.Fatalf("a's slot %d: %v %v", i, ok, err)
		}
		held = append(held, slot)
	}
	slot, ok, err := b.AcquireRelaySlot(ctx, "remote.test", 3, "b", ttl)
	if err != nil || !ok || slot == held[0] || slot == held[1] {
		t.Fatalf("b's slot %d %v %v (a holds %v)", slot, ok, err, held)
	}
	if _, ok, err := b.AcquireRelaySlot(ctx, "remote.test", 3, "b", ttl); err != nil || ok {
		t.Fatalf("a fourth slot of three: %v %v", ok, err)
	}
	// A lower limit elsewhere: none free.
	if _, ok, _ := b.AcquireRelaySlot(ctx, "remote.test", 2, "b", ttl); ok {
		t.Fatal("slot over a limit of 2 with 3 held")
	}
	// Another domain is not affected.
	if _, ok, err := b.AcquireRelaySlot(ctx, "other.test", 1, "b", ttl); err != nil || !ok {
		t.Fatalf("slot of another domain: %v %v", ok, err)
	}
	if err := a.ReleaseRelaySlot(ctx, "remote.test", held[0], "a"); err != nil {
		t.Fatal(err)
	}
	if s, ok, err := b.AcquireRelaySlot(ctx, "remote.test", 3, "b", ttl); err != nil || !ok || s != held[0] {
		t.Fatalf("released slot: %d %v %v", s, ok, err)
	}
	// a renews its remaining slot; b stops renewing (dies).
	clock.add(ttl / 2)
	if lost, err := a.RenewRelaySlots(ctx, "a", []RelaySlot{{"remote.test", held[1]}}, ttl); err != nil || len(lost) != 0 {
		t.Fatalf("renew a's slot %d: lost %v, %v", held[1], lost, err)
	}
	clock.add(ttl/2 + time.Second)
	var got []int
	for {
		s, ok, err := a.AcquireRelaySlot(ctx, "remote.test", 3, "a2", ttl)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		got = append(got, s)
	}
	if len(got) != 2 {
		t.Fatalf("took over %v of the dead owner's two slots", got)
	}
	for _, s := range got {
		if s == held[1] {
			t.Fatalf("took a's renewed slot %d", s)
		}
	}
}

// RenewRelaySlots renews only the slots named: one the owner lost track
// of (its release failed) lapses after its lease, though the owner
// renews its others; and it says which named slots the owner no longer
// holds.
func TestRenewRelaySlotsNamedOnly(t *testing.T) {
	ctx := context.Background()
	clock := &leaseClock{now: time.Unix(1700000000, 0)}
	s := leaseStores(t, 1, 0, clock)[0]
	const ttl = time.Minute
	kept, ok, err := s.AcquireRelaySlot(ctx, "remote.test", 2, "a", ttl)
	if err != nil || !ok {
		t.Fatalf("first slot: %v %v", ok, err)
	}
	leaked, ok, err := s.AcquireRelaySlot(ctx, "remote.test", 2, "a", ttl)
	if err != nil || !ok {
		t.Fatalf("second slot: %v %v", ok, err)
	}
	other, ok, err := s.AcquireRelaySlot(ctx, "Other.test", 1, "a", ttl)
	if err != nil || !ok {
		t.Fatalf("slot of other.test: %v %v", ok, err)
	}
	for range 3 {
		clock.add(ttl / 2)
		lost, err := s.RenewRelaySlots(ctx, "a", []RelaySlot{{"Remote.test", kept}, {"other.test", other}}, ttl)
		if err != nil || len(lost) != 0 {
			t.Fatalf("renew: lost %v, %v", lost, err)
		}
	}
	// The leaked slot lapsed; the renewed ones did not.
	slot, ok, err := s.AcquireRelaySlot(ctx, "remote.test", 2, "b", ttl)
	if err != nil || !ok || slot != leaked {
		t.Fatalf("b's slot %d %v %v, want the leaked slot %d", slot, ok, err, leaked)
	}
	if _, ok, err := s.AcquireRelaySlot(ctx, "remote.test", 2, "b", ttl); err != nil || ok {
		t.Fatalf("a's renewed slot of remote.test taken: %v %v", ok, err)
	}
	if _, ok, err := s.AcquireRelaySlot(ctx, "other.test", 1, "b", ttl); err != nil || ok {
		t.Fatalf("a's renewed slot of other.test taken: %v %v", ok, err)
	}
	// Named but no longer a's: reported lost, and left with b.
	lost, err := s.RenewRelaySlots(ctx, "a", []RelaySlot{{"remote.test", kept}, {"remote.test", leaked}}, ttl)
	if err != nil || len(lost) != 1 || lost[0] != (RelaySlot{"remote.test", leaked}) {
		t.Fatalf("renew after the lapse: lost %v, %v", lost, err)
	}
	if lost, err := s.RenewRelaySlots(ctx, "a", nil, ttl); err != nil || len(lost) != 0 {
		t.Fatalf("renew nothing: %v %v", lost, err)
	}
}

// QueueLease leaves alone the entries of the domains it is told to skip,
// whoever holds them, and leases the others as usual.
func TestQueueLeaseSkipDomains(t *testing.T) {
	ctx := context.Background()
	clock := &leaseClock{now: time.Unix(1700000000, 0)}
	s := leaseStores(t, 1, 3, clock)[0]
	for i := range 2 {
		if _, err := s.Deliver(ctx, "s@example.test", []string{fmt.Sprintf("o%d@other.test", i)}, testMessage(10+i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Deliver(ctx, "s@example.test", []string{"t@third.test"}, testMessage(20)); err != nil {
		t.Fatal(err)
	}
	const ttl = time.Minute
	due := clock.Now().Add(time.Hour)
	got, err := s.QueueLease(ctx, due, 0, "a", ttl, "remote.test", "third.test")
	if err != nil {
		t.Fatal(err)
	}
	if d := entryDomains(got); len(got) != 2 || d["other.test"] != 2 {
		t.Fatalf("leased %v skipping remote.test and third.test, want other.test's 2", d)
	}
	// a's own leases are skipped too, and the skipped entries are free.
	got, err = s.QueueLease(ctx, due, 0, "a", ttl, "other.test")
	if err != nil {
		t.Fatal(err)
	}
	if d := entryDomains(got); len(got) != 4 || d["remote.test"] != 3 || d["third.test"] != 1 {
		t.Fatalf("leased %v skipping other.test, want remote.test's 3 and third.test's 1", d)
	}
	if got, err := s.QueueLease(ctx, due, 0, "b", ttl); err != nil || len(got) != 0 {
		t.Fatalf("b leased %d of a's entries: %v", len(got), err)
	}
}

// writerStatements is how many statements the Store's writer keeps
// prepared (read on the writer, which alone touches them).
func writerStatements(t *testing.T, s *Store) int {
	t.Helper()
	var n int
	if err := s.w.do(context.Background(), func(t *wtx) error { n = len(t.w.stmts); return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// QueueLease is one statement text whatever the number of domains to
// skip: the writer keeps each text it prepares, so a text per list
// length would pile up. Long lists (well past SQLite's and
// PostgreSQL's limits on the number of parameters of one statement)
// still leave their domains out.
func TestQueueLeaseSkipDomainsOneStatement(t *testing.T) {
	ctx := context.Background()
	clock := &leaseClock{now: time.Unix(1700000000, 0)}
	s := leaseStores(t, 1, 3, clock)[0]
	due := clock.Now().Add(time.Hour)
	skip := func(n int, with ...string) []string {
		out := make([]string, 0, n+len(with))
		for i := range n {
			out = append(out, fmt.Sprintf("d%05d.example", i))
		}
		return append(out, with...)
	}
	if _, err := s.QueueLease(ctx, due, 10, "a", time.Minute, skip(1, "remote.test")...); err != nil {
		t.Fatal(err)
	}
	before := writerStatements(t, s)
	for _, n := range []int{0, 1, 2, 3, 17, 100, 500, 501} {
		if got, err := s.QueueLease(ctx, due, 10, "a", time.Minute, skip(n, "remote.test")...); err != nil || len(got) != 0 {
			t.Fatalf("lease skipping %d domains and remote.test: %d entries, %v", n+1, len(got), err)
		}
	}
	if _, err := s.QueueLease(ctx, due, 10, "a", time.Minute); err != nil {
		t.Fatal(err)
	}
	if after := writerStatements(t, s); after != before {
		t.Errorf("the writer prepared %d statements more for lists of other lengths, want none", after-before)
	}
	// 70,000 domains: more than a statement's parameters may be on either
	// backend (SQLite 32,766; PostgreSQL 65,535).
	if got, err := s.QueueLease(ctx, due, 10, "a", time.Minute, skip(70000, "remote.test")...); err != nil || len(got) != 0 {
		t.Fatalf("lease skipping 70,001 domains with remote.test: %d entries, %v", len(got), err)
	}
	if got, err := s.QueueLease(ctx, due, 10, "a", time.Minute, skip(70000)...); err != nil || len(got) != 3 {
		t.Fatalf("lease skipping 70,000 other domains: %d entries, %v; want remote.test's 3", len(got), err)
	}
	// Names that need quoting in JSON or SQL are compared as they are.
	odd := []string{`a"b.test`, `c\d.test`, "e'f.test", "ünï.test", ""}
	if got, err := s.QueueLease(ctx, due, 10, "a", time.Minute, odd...); err != nil || len(got) != 3 {
		t.Fatalf("lease skipping odd names: %d entries, %v; want remote.test's 3", len(got), err)
	}
	if got, err := s.QueueLease(ctx, due, 10, "a", time.Minute, append(odd, "remote.test")...); err != nil || len(got) != 0 {
		t.Fatalf("lease skipping odd names and remote.test: %d entries, %v", len(got), err)
	}
}

// QueueLeaseDomains takes every takeable entry of at most maxDomains
// domains, those due first, up to limit entries in all; the text of its
// statement is the same whatever the bounds.
func TestQueueLeaseDomains(t *testing.T) {
	ctx := context.Background()
	clock := &leaseClock{now: time.Unix(1700000000, 0)}
	s := leaseStores(t, 1, 0, clock)[0]
	// Due order: a (2 entries), b, c (3 entries), d; a's second entry is
	// due after c's first, and is still leased with a.
	queue := func(rcpt string, n int) {
		t.Helper()
		if _, err := s.Deliver(ctx, "s@example.test", []string{rcpt}, testMessage(n)); err != nil {
			t.Fatal(err)
		}
		clock.add(time.Second)
	}
	queue("x@a.test", 1)
	queue("x@b.test", 2)
	queue("x@c.test", 3)
	queue("y@a.test", 4)
	queue("y@c.test", 5)
	queue("z@c.test", 6)
	queue("x@d.test", 7)
	const ttl = time.Minute
	due := clock.Now().Add(time.Hour)
	got, err := s.QueueLeaseDomains(ctx, due, 0, 2, "a", ttl)
	if err != nil {
		t.Fatal(err)
	}
	before := writerStatements(t, s)
	if d := entryDomains(got); len(got) != 3 || d["a.test"] != 2 || d["b.test"] != 1 {
		t.Fatalf("first 2 domains: leased %v, want a.test's 2 and b.test's 1", d)
	}
	if got[0].Recipient != "x@a.test" || got[1].Recipient != "x@b.test" || got[2].Recipient != "y@a.test" {
		t.Fatalf("leased in the order %s, %s, %s; want due order", got[0].Recipient, got[1].Recipient, got[2].Recipient)
	}
	// Another owner gets the next domain; the limit bounds its entries.
	got, err = s.QueueLeaseDomains(ctx, due, 2, 1, "b", ttl)
	if err != nil {
		t.Fatal(err)
	}
	if d := entryDomains(got); len(got) != 2 || d["c.test"] != 2 {
		t.Fatalf("1 domain, 2 entries: leased %v, want 2 of c.test's", d)
	}
	// Skipped domains do not count: c.test (b's third entry is free but
	// skipped) is passed over for d.test.
	got, err = s.QueueLeaseDomains(ctx, due, 0, 1, "c", ttl, "c.test")
	if err != nil {
		t.Fatal(err)
	}
	if d := entryDomains(got); len(got) != 1 || d["d.test"] != 1 {
		t.Fatalf("1 domain skipping c.test: leased %v, want d.test's 1", d)
	}
	got, err = s.QueueLeaseDomains(ctx, due, 0, 5, "c", ttl)
	if err != nil {
		t.Fatal(err)
	}
	if d := entryDomains(got); len(got) != 2 || d["c.test"] != 1 || d["d.test"] != 1 {
		t.Fatalf("5 domains for c: leased %v, want c.test's free one and c's own d.test", d)
	}
	// Owner a's own entries count as one of its domains.
	got, err = s.QueueLeaseDomains(ctx, due, 0, 1, "a", ttl)
	if err != nil {
		t.Fatal(err)
	}
	if d := entryDomains(got); len(got) != 2 || d["a.test"] != 2 {
		t.Fatalf("a again, 1 domain: leased %v, want its a.test's 2", d)
	}
	if _, err := s.QueueLease(ctx, due, 10, "e", ttl); err != nil {
		t.Fatal(err)
	}
	if after := writerStatements(t, s); after != before {
		t.Errorf("the writer prepared %d statements more for other bounds, want none", after-before)
	}
}

// Frontends leasing a few domains at a time, at the same moment, never
// get the same entry, get at most the domains they ask for, and between them get
// every entry (PostgreSQL: SKIP LOCKED under the domain choice).
func TestQueueLeaseDomainsConcurrentFrontends(t *testing.T) {
	ctx := context.Background()
	clock := &leaseClock{now: time.Unix(1700000000, 0)}
	const n, ndomains, perDomain, ttl = 3, 60, 3, time.Minute
	stores := leaseStores(t, n, 0, clock)
	for d := range ndomains {
		var rcpts []string
		for i := range perDomain {
			rcpts = append(rcpts, fmt.Sprintf("r%d@d%02d.test", i, d))
		}
		if _, err := stores[0].Deliver(ctx, "s@example.test", rcpts, testMessage(d)); err != nil {
			t.Fatal(err)
		}
		clock.add(time.Millisecond)
	}
	due := clock.Now().Add(time.Hour)
	var mu sync.Mutex
	owner := map[int64]string{}
	byDomain := map[string]map[string]int{} // domain: owner: entries
	var wg sync.WaitGroup
	errs := make(chan error, n*3)
	for i, s := range stores {
		for w := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := range 100 {
					who := fmt.Sprintf("fe%d-w%d-%d", i, w, k)
					got, err := s.QueueLeaseDomains(ctx, due, 0, 2, who, ttl)
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					ds := map[string]bool{}
					for _, e := range got {
						if o, ok := owner[e.ID]; ok {
							mu.Unlock()
							errs <- fmt.Errorf("entry %d leased to %s and to %s", e.ID, o, who)
							return
						}
						owner[e.ID] = who
						ds[e.Domain] = true
						if byDomain[e.Domain] == nil {
							byDomain[e.Domain] = map[string]int{}
						}
						byDomain[e.Domain][who]++
					}
					mu.Unlock()
					if len(ds) > 2 {
						errs <- fmt.Errorf("%s leased %d domains, want at most 2", who, len(ds))
						return
					}
					if len(got) == 0 {
						if rest, err := s.QueueLease(ctx, due, 0, who+"-check", ttl); err != nil || len(rest) != 0 {
							// Another's SKIP LOCKED may have left this
							// one nothing while entries remain: go on.
							if err != nil {
								errs <- err
								return
							}
							_ = s.QueueRelease(ctx, ids(rest), who+"-check")
							continue
						}
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(owner) != ndomains*perDomain {
		t.Fatalf("%d entries leased, want %d", len(owner), ndomains*perDomain)
	}
	if len(byDomain) != ndomains {
		t.Fatalf("%d domains leased, want %d", len(byDomain), ndomains)
	}
}

func ids(es []QueueEntry) []int64 {
	out := make([]int64, 0, len(es))
	for _, e := range es {
		out = append(out, e.ID)
	}
	return out
}

// entryDomains counts queue entries by domain.
func entryDomains(es []QueueEntry) map[string]int {
	m := map[string]int{}
	for _, e := range es {
		m[e.Domain]++
	}
	return m
}
