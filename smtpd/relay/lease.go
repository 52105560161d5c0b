package relay

// The queue shared by every frontend of a store: the relay delivers only
// entries it has leased (mailstore.QueueLease), renews the leases of the
// entries in its running jobs every LeaseTTL/3, and opens a connection to
// a domain only while it holds one of the domain's MaxConnsPerDomain
// slots leased in the store (mailstore.AcquireRelaySlot). A frontend that
// dies stops renewing: its entries and slots are free again after
// LeaseTTL, and its entries are then delivered by the others.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"time"

	"github.com/postern/postern/mailstore"
)

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

// entryIDs are the IDs of entries.
func entryIDs(entries []mailstore.QueueEntry) []int64 {
	ids := make([]int64, len(entries))
	for i, e := range entries {
		ids[i] = e.ID
	}
	return ids
}

// releaseLeases gives back the leases of entries the relay will not try
// now, so that another frontend may.
func (r *Relay) releaseLeases(ctx context.Context, ids []int64) {
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	if err := r.store.QueueRelease(ctx, ids, r.cfg.LeaseOwner); err != nil {
		// They lapse after LeaseTTL instead.
		r.log.Warn("relay: cannot release queue leases", "entries", len(ids), "err", err)
	}
}

// renewLeases renews, every LeaseTTL/3 until the returned stop is called,
// the leases of the entries in running jobs and of the connection slots
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

func (r *Relay) renewOnce() {
	r.mu.Lock()
	ids := make([]int64, 0, len(r.leased))
	for id := range r.leased {
		ids = append(ids, id)
	}
	slots := r.slotsHeld
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.LeaseTTL/3)
	defer cancel()
	lost, err := r.store.QueueRenew(ctx, ids, r.cfg.LeaseOwner, r.cfg.LeaseTTL)
	if err != nil {
		r.log.Warn("relay: cannot renew queue leases", "entries", len(ids), "err", err)
	}
	r.mu.Lock()
	for _, id := range lost {
		// Delivered, deferred or failed since the list was taken: its
		// lease ended with it. Still in a job: its lease lapsed (this
		// process stalled for LeaseTTL) and another frontend may try it
		// too; a duplicate, not a loss.
		if r.leased[id] {
			r.log.Warn("relay: lease of a queue entry in progress lost", "queue_id", id)
		}
	}
	r.mu.Unlock()
	if slots > 0 {
		if err := r.store.RenewRelaySlots(ctx, r.cfg.LeaseOwner, r.cfg.LeaseTTL); err != nil {
			r.log.Warn("relay: cannot renew connection slots", "slots", slots, "err", err)
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
		slot, ok, err := r.store.AcquireRelaySlot(ctx, w.domain, r.cfg.MaxConnsPerDomain, r.cfg.LeaseOwner, r.cfg.LeaseTTL)
		if ok {
			r.mu.Lock()
			r.slotsHeld++
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
	r.mu.Lock()
	r.slotsHeld--
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	if err := r.store.ReleaseRelaySlot(ctx, domain, slot, r.cfg.LeaseOwner); err != nil {
		// It lapses after LeaseTTL instead.
		r.log.Warn("relay: cannot release a connection slot", "domain", domain, "slot", slot, "err", err)
	}
}
