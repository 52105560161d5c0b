package mailstore

// The relay queue shared by every frontend of a store (schema 12).
//
// A relay takes due entries with QueueLease: each is leased to one owner
// (a name for the relay process) until a time, and no other owner takes
// it before then. The owner renews the leases of entries it is still
// working on (QueueRenew) and ends them when it gives an entry back
// without an attempt (QueueRelease). QueueRemove deletes an entry with
// its lease; QueueDefer ends the lease (a trigger of schema 12 clears it
// whenever an attempt is counted), so that the entry is due for anyone at
// its next attempt. An owner that dies stops renewing: its entries come
// back to the others when their leases end.
//
// The per-destination-domain connection limit of the relay holds across
// frontends the same way: a connection is a leased slot row (domain,
// slot) with slot below the limit (AcquireRelaySlot, RenewRelaySlots,
// ReleaseRelaySlot).
//
// Leases are stamped with the store's clock (Options.Now); frontends'
// clocks must agree to well within a lease's ttl.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// leaseColumns are queueColumns as an UPDATE ... RETURNING of the queue
// table gives them (no join there: the size is a subquery).
const leaseColumns = "id, sender, recipient, domain, body_id, (SELECT b.size FROM bodies b WHERE b.id = queue.body_id), " +
	"attempts, next_attempt, created, last_error, delay_warned, env_id, ret, notify, orcpt, lease_owner, lease_until"

// skipLocked ends the SELECT that picks the entries to lease: on
// PostgreSQL, rows another frontend's transaction is leasing (or
// changing) right now are passed over rather than waited for; the one
// SQLite writer needs nothing.
func (d *dialect) skipLocked() string {
	if d.pg {
		return " FOR UPDATE SKIP LOCKED"
	}
	return ""
}

// QueueLease takes up to limit entries due at or before due (oldest
// first; limit 0: no limit) that no other owner holds a lease on, leases
// them to owner until ttl from now, and returns them. Entries owner
// already leases are taken again (their lease is extended), so that one
// relay may look at the queue again while it delivers. Entries whose
// domain (QueueEntry.Domain, compared exactly) is one of skipDomains are
// left alone, leased or not: a relay names the domains whose delivery
// job is running, so that it never holds entries it will not try now and
// another frontend takes them instead; the list may be of any length.
// On PostgreSQL the entries are picked with SELECT ... FOR UPDATE SKIP
// LOCKED inside the writer's transaction, so that Stores leasing at the
// same moment never get the same entry; on SQLite the single writer
// serialises them. It is QueueLeaseDomains with no bound on the domains.
func (s *Store) QueueLease(ctx context.Context, due time.Time, limit int, owner string, ttl time.Duration, skipDomains ...string) ([]QueueEntry, error) {
	return s.QueueLeaseDomains(ctx, due, limit, 0, owner, ttl, skipDomains...)
}

// QueueLeaseDomains is QueueLease taking the entries of at most
// maxDomains distinct domains (0: no bound): of the limit takeable
// entries due first (what QueueLease looks at), those of the domains
// whose oldest entry among them is due first. A relay asks for as many domains as it has free
// connections, so that the frontends of one store share a backlog of
// many domains rather than the first to look taking it all. The
// statement's text is the same whatever the values (one prepared
// statement). On PostgreSQL two frontends leasing at the same moment
// may choose the same domains; the second then skips the entries the
// first locked and may get fewer domains than it asked for, which its
// next look at the queue makes up.
func (s *Store) QueueLeaseDomains(ctx context.Context, due time.Time, limit, maxDomains int, owner string, ttl time.Duration, skipDomains ...string) ([]QueueEntry, error) {
	if owner == "" {
		return nil, errors.New("lease queue entries: empty owner")
	}
	if limit <= 0 {
		limit = math.MaxInt32
	}
	if maxDomains <= 0 {
		maxDomains = math.MaxInt32
	}
	ttl = max(ttl, minLeaseTTL)
	skip, skipArg, err := s.d.notInDomains(skipDomains)
	if err != nil {
		return nil, fmt.Errorf("lease queue entries for %s: %w", owner, err)
	}
	var out []QueueEntry
	err = s.w.do(ctx, func(t *wtx) error {
		out = out[:0]
		now := s.now()
		// oldest is what the lease looks at, as bounded as before: the
		// limit oldest takeable entries (locked on PostgreSQL, skipping
		// those another frontend is leasing). Of those, it takes the
		// entries of the maxDomains domains due first. The cost of a
		// lease stays that of reading limit entries however large the
		// backlog.
		rows, err := t.query(`WITH oldest AS (SELECT id, domain, next_attempt FROM queue
				WHERE next_attempt <= ? AND (lease_until < ? OR lease_owner = ?)`+skip+`
				ORDER BY next_attempt, id LIMIT ?`+s.d.skipLocked()+`)
			UPDATE queue SET lease_owner = ?, lease_until = ?
			WHERE id IN (SELECT id FROM oldest WHERE domain IN (SELECT domain FROM oldest
				GROUP BY domain ORDER BY min(next_attempt), min(id) LIMIT ?))
			RETURNING `+leaseColumns,
			due.UnixNano(), now.UnixNano(), owner, skipArg, limit,
			owner, now.Add(ttl).UnixNano(), maxDomains)
		if err != nil {
			return fmt.Errorf("lease queue entries for %s: %w", owner, err)
		}
		defer rows.Close()
		for rows.Next() {
			e, err := scanQueueEntry(rows)
			if err != nil {
				return fmt.Errorf("lease queue entries for %s: %w", owner, err)
			}
			out = append(out, e)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("lease queue entries for %s: %w", owner, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// RETURNING gives no order.
	slices.SortFunc(out, func(a, b QueueEntry) int {
		if c := a.NextAttempt.Compare(b.NextAttempt); c != 0 {
			return c
		}
		return int(a.ID - b.ID)
	})
	return out, nil
}

// QueueRenew extends to ttl from now the leases owner holds on the
// entries ids. It returns the ids owner no longer holds (delivered and
// removed, deferred, or, after a lease lapsed, taken by another owner).
func (s *Store) QueueRenew(ctx context.Context, ids []int64, owner string, ttl time.Duration) (lost []int64, err error) {
	if len(ids) == 0 {
		return nil, nil
	}
	ttl = max(ttl, minLeaseTTL)
	err = s.w.do(ctx, func(t *wtx) error {
		until := s.now().Add(ttl).UnixNano()
		held, err := t.leaseUpdate("UPDATE queue SET lease_until = ?", until, ids, owner)
		if err != nil {
			return fmt.Errorf("renew %d queue leases of %s: %w", len(ids), owner, err)
		}
		lost = lost[:0]
		for _, id := range ids {
			if !held[id] {
				lost = append(lost, id)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return lost, nil
}

// QueueRelease ends the leases owner holds on the entries ids, without
// counting an attempt: they are due for any owner again at once (an
// entry a stopping relay did not try, say).
func (s *Store) QueueRelease(ctx context.Context, ids []int64, owner string) error {
	if len(ids) == 0 {
		return nil
	}
	return s.w.do(ctx, func(t *wtx) error {
		if _, err := t.leaseUpdate("UPDATE queue SET lease_owner = '', lease_until = ?", 0, ids, owner); err != nil {
			return fmt.Errorf("release %d queue leases of %s: %w", len(ids), owner, err)
		}
		return nil
	})
}

// notInDomains is the condition of QueueLease that leaves out the
// entries of domains, with its one argument: the whole list is a single
// parameter (a text array on PostgreSQL, a JSON array read by json_each
// on SQLite), so that the statement's text is the same whatever the
// list's length, and the writer prepares it once (wtx.stmt keeps every
// text it prepares), and the list has no length limit but the
// parameter's size.
func (d *dialect) notInDomains(domains []string) (string, any, error) {
	if domains == nil {
		domains = []string{}
	}
	if d.pg {
		return " AND domain <> ALL(?)", domains, nil
	}
	list, err := json.Marshal(domains)
	if err != nil {
		return "", nil, fmt.Errorf("domains to skip %q: %w", domains, err)
	}
	return " AND domain NOT IN (SELECT value FROM json_each(?))", string(list), nil
}

// leaseUpdate runs set (an UPDATE of queue with one ? for arg) on those
// of ids owner leases, and returns the ids it changed.
func (t *wtx) leaseUpdate(set string, arg int64, ids []int64, owner string) (map[int64]bool, error) {
	changed := make(map[int64]bool, len(ids))
	if t.w.d.pg {
		rows, err := t.query(set+" WHERE id = ANY(?) AND lease_owner = ? RETURNING id", arg, ids, owner)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				return nil, err
			}
			changed[id] = true
		}
		return changed, rows.Err()
	}
	for _, id := range ids {
		res, err := t.exec(set+" WHERE id = ? AND lease_owner = ?", arg, id, owner)
		if err != nil {
			return nil, err
		}
		if n, _ := res.RowsAffected(); n > 0 {
			changed[id] = true
		}
	}
	return changed, nil
}

// AcquireRelaySlot leases one of the limit connection slots of a
// destination domain to owner until ttl from now, across every frontend
// of the store: ok is false when all of them are leased by live owners
// (this one included). The slot is renewed with RenewRelaySlots and given
// back with ReleaseRelaySlot; one whose owner died is free again when its
// lease ends.
func (s *Store) AcquireRelaySlot(ctx context.Context, domain string, limit int, owner string, ttl time.Duration) (slot int, ok bool, err error) {
	if owner == "" {
		return 0, false, errors.New("acquire relay slot: empty owner")
	}
	domain = strings.ToLower(domain)
	ttl = max(ttl, minLeaseTTL)
	err = s.w.do(ctx, func(t *wtx) error {
		slot, ok = 0, false
		now := s.now()
		// Slots above the limit are left by owners with a larger limit
		// (another frontend's configuration): they count too.
		var above int
		if err := t.queryRow("SELECT count(*) FROM relay_slots WHERE domain = ? AND slot >= ? AND expires >= ?",
			domain, limit, now.UnixNano()).Scan(&above); err != nil {
			return fmt.Errorf("acquire relay slot of %s for %s: %w", domain, owner, err)
		}
		for i := 0; i < limit-above; i++ {
			res, err := t.exec(`INSERT INTO relay_slots (domain, slot, owner, expires) VALUES (?, ?, ?, ?)
				ON CONFLICT (domain, slot) DO UPDATE SET owner = excluded.owner, expires = excluded.expires
				WHERE relay_slots.expires < ?`, domain, i, owner, now.Add(ttl).UnixNano(), now.UnixNano())
			if err != nil {
				return fmt.Errorf("acquire relay slot %d of %s for %s: %w", i, domain, owner, err)
			}
			if n, _ := res.RowsAffected(); n > 0 {
				slot, ok = i, true
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return 0, false, err
	}
	return slot, ok, nil
}

// RelaySlot names one connection slot of a destination domain, as
// AcquireRelaySlot gave it.
type RelaySlot struct {
	Domain string
	Slot   int
}

// RenewRelaySlots extends to ttl from now the leases owner holds on the
// slots named, and no others: a slot its holder lost track of (its
// release failed) is not renewed and is free again when its lease ends.
// It returns the slots named that owner no longer holds (released, or
// lapsed and taken by another owner).
func (s *Store) RenewRelaySlots(ctx context.Context, owner string, slots []RelaySlot, ttl time.Duration) (lost []RelaySlot, err error) {
	if len(slots) == 0 {
		return nil, nil
	}
	ttl = max(ttl, minLeaseTTL)
	err = s.w.do(ctx, func(t *wtx) error {
		lost = lost[:0]
		until := s.now().Add(ttl).UnixNano()
		for _, sl := range slots {
			res, err := t.exec("UPDATE relay_slots SET expires = ? WHERE domain = ? AND slot = ? AND owner = ?",
				until, strings.ToLower(sl.Domain), sl.Slot, owner)
			if err != nil {
				return fmt.Errorf("renew relay slot %d of %s for %s: %w", sl.Slot, sl.Domain, owner, err)
			}
			if n, _ := res.RowsAffected(); n == 0 {
				lost = append(lost, sl)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return lost, nil
}

// ReleaseRelaySlot gives back a slot AcquireRelaySlot gave owner; a slot
// that owner no longer holds is left alone.
func (s *Store) ReleaseRelaySlot(ctx context.Context, domain string, slot int, owner string) error {
	domain = strings.ToLower(domain)
	return s.w.do(ctx, func(t *wtx) error {
		if _, err := t.exec("DELETE FROM relay_slots WHERE domain = ? AND slot = ? AND owner = ?", domain, slot, owner); err != nil {
			return fmt.Errorf("release relay slot %d of %s for %s: %w", slot, domain, owner, err)
		}
		return nil
	})
}
