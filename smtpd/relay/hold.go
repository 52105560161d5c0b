package relay

// Config.Hold: outbound mail stays in the queue until an administrator
// releases it, as a mail catcher keeps it, for test environments.
//
// The queue has no column for "held", so the relay marks a held entry in
// what it has: it defers the entry far into the future with a last error
// that starts with HoldNote. `postern queue retry ID` makes the entry due
// without changing its last error; a due entry whose last error starts
// with HoldNote has therefore been released, and is delivered. Any other
// due entry (new, or due for a retry after a released attempt failed) is
// held. Holding counts as an attempt in the entry's attempts.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/postern/postern/mailstore"
)

// HoldNote starts the last error of an entry held by Config.Hold.
const HoldNote = "held (relay.hold)"

// holdFor is how far ahead a held entry is deferred: in effect, until it
// is released. The queue keeps times as Unix nanoseconds, good until 2262.
const holdFor = 100 * 365 * 24 * time.Hour

// IsHeld reports whether e is held by Config.Hold and not yet released.
func IsHeld(e mailstore.QueueEntry, now time.Time) bool {
	return strings.HasPrefix(e.LastError, HoldNote) && e.NextAttempt.After(now)
}

// released reports whether a due entry was held and has been released.
func released(e mailstore.QueueEntry) bool {
	return strings.HasPrefix(e.LastError, HoldNote)
}

// holdEntries defers each due entry that is not released and returns the
// released ones, which are to be delivered.
func (r *Relay) holdEntries(ctx context.Context, entries []mailstore.QueueEntry) []mailstore.QueueEntry {
	var deliver []mailstore.QueueEntry
	for _, e := range entries {
		if released(e) {
			deliver = append(deliver, e)
			continue
		}
		note := HoldNote
		if e.LastError != "" {
			note += "; last error: " + e.LastError
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
		err := r.store.QueueDefer(sctx, e.ID, r.cfg.Now().Add(holdFor), lastError(errors.New(note)), e.DelayWarned)
		cancel()
		if err != nil {
			r.log.Error("relay: cannot hold queue entry", "queue_id", e.ID, "err", err)
			continue
		}
		r.log.Info("held", "from", e.Sender, "to", e.Recipient,
			"queue_id", e.ID, "release", fmt.Sprintf("postern queue retry %d", e.ID))
	}
	return deliver
}

// releaseHeld makes every held entry due: with Hold off, what an earlier
// run held goes out.
func (r *Relay) releaseHeld(ctx context.Context) {
	entries, err := r.store.Queue(ctx, time.Time{}, 0)
	if err != nil {
		r.log.Error("relay: cannot read the queue to release held entries", "err", err)
		return
	}
	now := r.cfg.Now()
	for _, e := range entries {
		if !IsHeld(e, now) {
			continue
		}
		if err := r.store.QueueRetry(ctx, e.ID); err != nil {
			r.log.Error("relay: cannot release held queue entry", "queue_id", e.ID, "err", err)
			continue
		}
		r.log.Info("released held entry: relay.hold is off", "queue_id", e.ID, "to", e.Recipient)
	}
}
