package mailstore

import (
	"fmt"
	"sync"
	"time"
)

// Keeping expunged bodies for the sessions that may still address them.
//
// RFC 2180 4.1: a session that has not yet been told of an expunge may
// still FETCH the message, so its body must stay readable until every such
// session has caught up. The triggers keep bodies.refs; a body whose count
// reaches zero in a commit is logged (temp.orphan_log, on the write
// connection only) and remembered in memory with the commit's epoch (the
// number of commits so far). The writer deletes it in a later transaction
// once every open Hold has synced at or after that epoch, or once it has
// waited maxAge. A new delivery of the same content before then reuses the
// row (storeBody finds it by hash and the trigger raises refs again); the
// delete checks refs, so a revived body stays.
//
// Ordering that makes this safe:
//   - a commit's changes are published to the feed before the epoch
//     counter moves past it, so a holder that syncs at epoch E has had
//     every change of commits up to E published to it;
//   - a Hold starts at the epoch current when it is made, and the holder
//     reads the mailbox after that, so it cannot see a message whose body
//     was orphaned at or before that epoch.

const (
	// defaultHoldMaxAge is how long a body no message uses is kept for a
	// Hold that does not sync; after it, readers get ErrNotFound.
	defaultHoldMaxAge = 24 * time.Hour
	// sweepDelay gathers the sweeps that Sync, Close and commits ask for
	// into one transaction (most ride along with the next write anyway).
	sweepDelay = 100 * time.Millisecond
	// sweepInterval is how often the writer looks for bodies past
	// maxAge when nothing else wakes it.
	sweepInterval = time.Minute
	// maxSweep bounds the bodies deleted in one transaction, so that a
	// large expunge does not make the next commit slow; the rest go in
	// the following ones.
	maxSweep = 256
)

// keeper tracks the open Holds and the commit epoch.
type keeper struct {
	mu    sync.Mutex
	epoch uint64 // commits published so far
	holds map[*Hold]struct{}
	kick  chan struct{} // wakes the writer to sweep; capacity 1
}

func newKeeper() *keeper {
	return &keeper{holds: make(map[*Hold]struct{}), kick: make(chan struct{}, 1)}
}

// poke asks the writer to sweep soon, without waiting.
func (k *keeper) poke() {
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

// advance moves the epoch past a commit whose changes are published and
// returns the commit's epoch.
func (k *keeper) advance() uint64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.epoch++
	return k.epoch
}

// floor is the oldest epoch an open Hold has synced at; ok is false when
// no Hold is open.
func (k *keeper) floor() (epoch uint64, ok bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for h := range k.holds {
		if !ok || h.epoch < epoch {
			epoch, ok = h.epoch, true
		}
	}
	return epoch, ok
}

// Hold is a reader that may still address any message that existed when
// it last synced: an IMAP session's selected mailbox, a POP3 maildrop.
// While it is open, the bodies of messages expunged since then stay
// readable (RFC 2180 4.1), for at most a day (Options.HoldMaxAge).
type Hold struct {
	k     *keeper
	epoch uint64 // guarded by k.mu
}

// Hold registers a reader. Take it before reading the message list that
// the session will address (SELECT, the POP3 maildrop listing), and Close
// it when the session stops addressing those messages. A Store that is
// closed gives an inert Hold.
func (s *Store) Hold() *Hold {
	k := s.w.keep
	k.mu.Lock()
	defer k.mu.Unlock()
	h := &Hold{k: k, epoch: k.epoch}
	k.holds[h] = struct{}{}
	return h
}

// Sync tells the store that the holder has caught up: bodies orphaned
// before now no longer need keeping for it. Every expunge those bodies
// belong to was published to the change feed before Sync returns, so the
// safe order is: Sync, then take every pending change from the
// Subscription and tell the client every expunge among them before the
// session reads a body again. A session that may not send EXPUNGE at that
// moment (during FETCH, STORE or SEARCH, RFC 3501 7.4.1) must not Sync.
// Sync after Close does nothing.
func (h *Hold) Sync() {
	h.k.mu.Lock()
	_, open := h.k.holds[h]
	if open {
		h.epoch = h.k.epoch
	}
	h.k.mu.Unlock()
	if open {
		h.k.poke()
	}
}

// Close ends the hold. It is idempotent and safe from any goroutine.
func (h *Hold) Close() {
	h.k.mu.Lock()
	_, open := h.k.holds[h]
	delete(h.k.holds, h)
	h.k.mu.Unlock()
	if open {
		h.k.poke()
	}
}

// orphan is a body with no reference left, waiting for its deletion.
type orphan struct {
	epoch uint64    // the commit that dropped its last reference
	since time.Time // when that commit happened, for maxAge
}

// deletable lists at most maxSweep orphans that no open Hold can still
// address, and reports whether more are deletable beyond those. Only the
// writer goroutine calls it.
func (w *writer) deletable() (ids []int64, more bool) {
	if len(w.orphans) == 0 {
		return nil, false
	}
	floor, held := w.keep.floor()
	expired := w.now().Add(-w.maxAge)
	for id, o := range w.orphans {
		if held && o.epoch > floor && o.since.After(expired) {
			continue
		}
		if len(ids) == maxSweep {
			return ids, true
		}
		ids = append(ids, id)
	}
	return ids, false
}

// sweep deletes the given orphans inside the current transaction, unless
// a delivery revived them. The caller forgets them once it commits.
func (t *wtx) sweep(ids []int64) error {
	for _, id := range ids {
		// body_chunks and body_meta go with the row (ON DELETE CASCADE).
		if _, err := t.exec("DELETE FROM bodies WHERE id = ? AND refs <= 0", id); err != nil {
			return fmt.Errorf("delete unreferenced body %d: %w", id, err)
		}
	}
	return nil
}

// takeOrphans returns the bodies whose last reference went in this
// transaction (so far) and empties the log.
func (t *wtx) takeOrphans() ([]int64, error) {
	rows, err := t.query("SELECT body_id FROM " + t.w.d.orphanLog())
	if err != nil {
		return nil, fmt.Errorf("read orphan log: %w", err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read orphan log: %w", err)
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read orphan log: %w", err)
	}
	if len(ids) > 0 {
		if _, err := t.exec("DELETE FROM " + t.w.d.orphanLog()); err != nil {
			return nil, fmt.Errorf("clear orphan log: %w", err)
		}
	}
	return ids, nil
}

// noteOrphan logs a body that this transaction stored but nothing came to
// use, so that the sweep deletes it like any other.
func (t *wtx) noteOrphan(bodyID int64) error {
	if _, err := t.exec("INSERT INTO "+t.w.d.orphanLog()+" (body_id) SELECT id FROM bodies WHERE id = ? AND refs <= 0 ON CONFLICT DO NOTHING", bodyID); err != nil {
		return fmt.Errorf("log unreferenced body %d: %w", bodyID, err)
	}
	return nil
}

// orphanLogSchema is created on the write connection only: the log is
// per connection and lives with the write transaction (a request rolled
// back to its savepoint takes its entries with it).
const orphanLogSchema = `
CREATE TEMP TABLE orphan_log (body_id INTEGER PRIMARY KEY);
CREATE TEMP TRIGGER orphan_logger AFTER UPDATE OF refs ON main.bodies
	WHEN NEW.refs <= 0 AND OLD.refs > 0 BEGIN
	INSERT OR IGNORE INTO orphan_log (body_id) VALUES (NEW.id);
END;
`

// pgOrphanLogSchema is orphanLogSchema on PostgreSQL: the trigger is in
// the schema (postern_body_orphaned) and writes here when this
// connection has the table.
const pgOrphanLogSchema = `CREATE TEMP TABLE IF NOT EXISTS orphan_log (body_id BIGINT PRIMARY KEY)`
