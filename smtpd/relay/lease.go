package relay

// The queue shared by every frontend of a store: the relay delivers only
// entries it has leased (mailstore.QueueLease), renews the leases of the
// entries in its running jobs every LeaseTTL/3, and opens a connection to
// a domain only while it holds one of the domain's MaxConnsPerDomain
// slots leased in the store (mailstore.AcquireRelaySlot). A frontend that
// dies stops renewing: its entries and slots are free again after
// LeaseTTL, and its entries are then delivered by the others.
//
// A relay leases no entry of a domain whose job it runs (QueueLease's
// skipDomains): new mail for a busy domain is for another frontend, or
// for this one when the job ends. It renews only the slots it holds, so
// that one whose release failed lapses. An entry delivered but not
// removed (the store failed) is never tried again by this relay: it keeps
// the lease while the relay runs and its removal is retried; after a stop
// the lease lapses, and another frontend may send it again (a duplicate,
// logged, rather than a loss).

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"time"

	"github.com/postern/postern/mailstore"
)

// leaseStore is what the relay asks of the store for its leases, its
// connection slots and the end of an attempt: *mailstore.Store; tests put
// a wrapper in Relay.q that makes some calls fail.
type leaseStore interface {
	QueueLeaseDomains(ctx context.Context, due time.Time, limit, maxDomains int, owner string, ttl time.Duration, skipDomains ...string) ([]mailstore.QueueEntry, error)
	QueueRenew(ctx context.Context, ids []int64, owner string, ttl time.Duration) ([]int64, error)
	QueueRelease(ctx context.Context, ids []int64, owner string) error
	QueueRemove(ctx context.Context, id int64) error
	QueueDefer(ctx context.Context, id int64, next time.Time, lastError string, delayWarned bool) error
	AcquireRelaySlot(ctx context.Context, domain string, limit int, owner string, ttl time.Duration) (int, bool, error)
	RenewRelaySlots(ctx context.Context, owner string, slots []mailstore.RelaySlot, ttl time.Duration) ([]mailstore.RelaySlot, error)
	ReleaseRelaySlot(ctx context.Context, domain string, slot int, owner string) error
}

const (
	// defaultLeaseTTL outlasts a renewal interval (LeaseTTL/3) many times
	// over, so a busy store delaying one renewal loses no lease; it is
	// also how long a dead frontend's entries wait for another.
	defaultLeaseTTL = 5 * time.Minute
	// minLeaseTTL keeps renewals (every LeaseTTL/3) from flooding the
	// store.
	minLeaseTTL = time.Second
	// slotWaitMax bounds the wait between two looks for a free connection
	// slot of a domain whose slots other frontends hold.
	slotWaitMax = 2 * time.Second
)

// defaultLeaseOwner names this process, unique among the relays of a
// store: several frontends may run on one host, and one process may run
// more than one relay (tests do).
func defaultLeaseOwner() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return fmt.Sprintf("%s:%d/%s", host, os.Getpid(), newID())
}

// releaseLeases gives back the leases of entries the relay will not try
// now, so that another frontend may.
func (r *Relay) releaseLeases(ctx context.Context, ids []int64) {
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	if err := r.q.QueueRelease(ctx, ids, r.cfg.LeaseOwner); err != nil {
		// They lapse after LeaseTTL instead.
		r.log.Warn("relay: cannot release queue leases", "entries", len(ids), "err", err)
	}
}

// renewLeases renews, every LeaseTTL/3 until the returned stop is called,
// the leases of the entries in running jobs and of those delivered but
// not removed (whose removal it retries), and of the connection slots
// held.
func (r *Relay) renewLeases() (stop func()) {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(r.cfg.LeaseTTL / 3)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			r.renewOnce()
		}
	}()
	return func() {
		close(done)
		<-stopped
	}
}

// renewOnce renews the leases of the entries and of the connection
// slots, each with a deadline of its own (a renewal interval), and only
// then retries the removals of the entries delivered but not removed,
// within what is left of the interval: retries against a store that
// fails slowly never hold up a renewal, so that no lease lapses while its
// entry or connection is in use.
func (r *Relay) renewOnce() {
	start := time.Now()
	interval := r.cfg.LeaseTTL / 3
	r.mu.Lock()
	ids := make([]int64, 0, len(r.leased)+len(r.unrecorded))
	for id := range r.leased {
		ids = append(ids, id)
	}
	var unrecorded []int64
	for id := range r.unrecorded {
		if !r.leased[id] {
			ids = append(ids, id)
		}
		unrecorded = append(unrecorded, id)
	}
	slots := make([]mailstore.RelaySlot, 0, len(r.slotsHeld))
	for sl := range r.slotsHeld {
		slots = append(slots, sl)
	}
	r.mu.Unlock()
	r.renewEntries(ids, interval)
	r.renewSlots(slots, interval)
	// Delivered but not removed: try again, until the next renewal is due.
	ctx, cancel := context.WithDeadline(context.Background(), start.Add(interval))
	defer cancel()
	r.retryRemovals(ctx, unrecorded)
}

// renewEntries renews the leases of the entries ids, waiting at most
// timeout for the store.
func (r *Relay) renewEntries(ids []int64, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	lost, err := r.q.QueueRenew(ctx, ids, r.cfg.LeaseOwner, r.cfg.LeaseTTL)
	if err != nil {
		r.log.Warn("relay: cannot renew queue leases", "entries", len(ids), "err", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range lost {
		// Delivered, deferred or failed since the list was taken: its
		// lease ended with it. Still in a job: its lease lapsed (this
		// process stalled for LeaseTTL) and another frontend may try it
		// too. If its attempt has started, a duplicate, not a loss; if
		// not, the job leaves it alone (withoutLostLeases).
		if r.leased[id] && !r.lostLease[id] {
			r.log.Warn("relay: lease of a queue entry in progress lost", "queue_id", id)
			r.lostLease[id] = true
		}
	}
}

// renewSlots renews the leases of the connection slots held, waiting at
// most timeout for the store. Only the slots this relay holds: one whose
// release failed is no longer among them and lapses after LeaseTTL.
func (r *Relay) renewSlots(slots []mailstore.RelaySlot, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	lostSlots, err := r.q.RenewRelaySlots(ctx, r.cfg.LeaseOwner, slots, r.cfg.LeaseTTL)
	if err != nil {
		r.log.Warn("relay: cannot renew connection slots", "slots", len(slots), "err", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, sl := range lostSlots {
		if r.slotsHeld[sl] > 0 {
			// Lapsed (this process stalled) and maybe taken: the
			// domain may get one connection more than its limit until
			// this one closes.
			r.log.Warn("relay: lease of a connection slot in use lost", "domain", sl.Domain, "slot", sl.Slot)
		}
	}
}

// acquireSlot leases one of the connection slots of w's domain, waiting
// while every slot is held by other frontends and w has no connection
// open. It fails when ctx ends or when w has a connection (which then
// carries this worker's messages too).
func (r *Relay) acquireSlot(ctx context.Context, w *workList) (int, bool) {
	wait := 50 * time.Millisecond
	logged := false
	for {
		slot, ok, err := r.q.AcquireRelaySlot(ctx, w.domain, r.cfg.MaxConnsPerDomain, r.cfg.LeaseOwner, r.cfg.LeaseTTL)
		if ok {
			r.mu.Lock()
			r.slotsHeld[mailstore.RelaySlot{Domain: w.domain, Slot: slot}]++
			r.mu.Unlock()
			return slot, true
		}
		if err != nil && ctx.Err() == nil && !logged {
			r.log.Warn("relay: cannot lease a connection slot", "domain", w.domain, "err", err)
			logged = true
		}
		w.mu.Lock()
		live := w.live
		w.mu.Unlock()
		if live > 0 {
			return 0, false
		}
		if err == nil && !logged {
			r.log.Info("relay: every connection slot of the domain is taken; waiting",
				"domain", w.domain, "max_conns_per_domain", r.cfg.MaxConnsPerDomain)
			logged = true
		}
		// A jitter, so that waiting frontends do not ask together.
		d := time.Duration(float64(wait) * (0.5 + rand.Float64()))
		select {
		case <-ctx.Done():
			return 0, false
		case <-time.After(d):
		}
		wait = min(2*wait, slotWaitMax)
	}
}

// releaseSlot gives back a connection slot acquireSlot leased.
func (r *Relay) releaseSlot(ctx context.Context, domain string, slot int) {
	key := mailstore.RelaySlot{Domain: domain, Slot: slot}
	r.mu.Lock()
	if r.slotsHeld[key]--; r.slotsHeld[key] <= 0 {
		delete(r.slotsHeld, key)
	}
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	if err := r.q.ReleaseRelaySlot(ctx, domain, slot, r.cfg.LeaseOwner); err != nil {
		// No longer renewed (renewOnce): it lapses after LeaseTTL.
		r.log.Warn("relay: cannot release a connection slot", "domain", domain, "slot", slot, "err", err)
	}
}

// skipDomains are the domains whose jobs run, for QueueLease to leave
// out: all of them, however many (QueueLease takes the list as one
// parameter), so that the entries of running jobs never fill the batch
// dispatch leases and keep out the entries of domains waiting for a job.
func (r *Relay) skipDomains() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.active))
	for d := range r.active {
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}
