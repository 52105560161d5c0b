package mailstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// maxBatch bounds how many requests share one transaction, so that one
// commit never holds callers for long.
const maxBatch = 512

// writer owns the single write connection and applies requests in group
// commits: whatever arrived while the previous commit was being synced goes
// into the next transaction.
type writer struct {
	db    *sql.DB
	conn  *sql.Conn // the one write connection, used only by loop
	feed  *feed
	reqs  chan *writeReq
	mu    sync.RWMutex // held for reading while sending on reqs
	shut  bool
	done  chan struct{}
	stmts map[string]*sql.Stmt // only touched by the writer goroutine

	keep    *keeper
	log     *slog.Logger
	now     func() time.Time
	maxAge  time.Duration
	orphans map[int64]orphan // bodies waiting for deletion; only touched by the writer goroutine

	// usageBySum makes quota checks sum the user's messages, as before
	// the usage counter (schema 7); only the benchmark that compares the
	// two sets it, before any write.
	usageBySum bool

	// index is poked after a commit that stored a new body, for the
	// full-text indexer (fulltext.go).
	index chan struct{}
}

// indexKick tells the indexer there is work, without waiting.
func (w *writer) indexKick() {
	select {
	case w.index <- struct{}{}:
	default:
	}
}

type writeReq struct {
	ctx  context.Context
	fn   func(*wtx) error
	done chan error
	tx   *wtx
}

// wtx is what a request sees: the shared transaction plus its own list of
// changes, published only if the transaction commits and the request
// succeeded.
type wtx struct {
	w       *writer
	changes []Change
	after   []func()
}

func newWriter(db *sql.DB, f *feed, log *slog.Logger, now func() time.Time, maxAge time.Duration) (*writer, error) {
	w := &writer{
		db:      db,
		feed:    f,
		reqs:    make(chan *writeReq, 4*maxBatch),
		done:    make(chan struct{}),
		stmts:   make(map[string]*sql.Stmt),
		keep:    newKeeper(),
		log:     log,
		now:     now,
		maxAge:  maxAge,
		orphans: make(map[int64]orphan),
		index:   make(chan struct{}, 1),
	}
	conn, err := db.Conn(context.Background())
	if err != nil {
		return nil, fmt.Errorf("connect writer: %w", err)
	}
	if _, err := conn.ExecContext(context.Background(), orphanLogSchema); err != nil {
		conn.Close()
		return nil, fmt.Errorf("create orphan log: %w", err)
	}
	w.conn = conn
	go w.loop()
	return w, nil
}

// do runs fn in the next write transaction and returns its error, or the
// commit's. It returns only once the outcome is durable.
func (w *writer) do(ctx context.Context, fn func(*wtx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	req := &writeReq{ctx: ctx, fn: fn, done: make(chan error, 1)}
	w.mu.RLock()
	if w.shut {
		w.mu.RUnlock()
		return ErrClosed
	}
	w.reqs <- req
	w.mu.RUnlock()
	// The request is not abandoned when ctx ends: the caller must learn
	// whether it committed.
	return <-req.done
}

func (w *writer) close() error {
	w.mu.Lock()
	if !w.shut {
		w.shut = true
		close(w.reqs)
	}
	w.mu.Unlock()
	<-w.done
	for _, st := range w.stmts {
		st.Close()
	}
	w.conn.Close()
	return w.db.Close()
}

func (w *writer) loop() {
	defer close(w.done)
	batch := make([]*writeReq, 0, maxBatch)
	tick := time.NewTicker(sweepInterval)
	defer tick.Stop()
	var soon <-chan time.Time // armed while a sweep may have work
	for {
		var again bool
		select {
		case req, ok := <-w.reqs:
			if !ok {
				return
			}
			batch = append(batch[:0], req)
		gather:
			for len(batch) < maxBatch {
				select {
				case r, ok := <-w.reqs:
					if !ok {
						break gather
					}
					batch = append(batch, r)
				default:
					break gather
				}
			}
			again = w.run(batch)
		case <-w.keep.kick:
			again = true
		case <-soon:
			soon = nil
			again = w.sweepAlone()
		case <-tick.C:
			again = w.sweepAlone()
		}
		if again && soon == nil && len(w.orphans) > 0 {
			soon = time.After(sweepDelay)
		}
	}
}

// sweepAlone deletes, in a transaction of its own, the orphans no Hold
// needs, when there are any; it reports whether more wait.
func (w *writer) sweepAlone() (more bool) {
	ids, more := w.deletable()
	if len(ids) == 0 {
		return false
	}
	t := &wtx{w: w}
	if _, err := t.exec("BEGIN IMMEDIATE"); err != nil {
		w.log.Error("sweep unreferenced bodies", "err", err)
		return false
	}
	if err := t.sweep(ids); err != nil {
		t.exec("ROLLBACK")
		w.log.Error("sweep unreferenced bodies", "err", err)
		return false
	}
	if _, err := t.exec("COMMIT"); err != nil {
		t.exec("ROLLBACK")
		w.log.Error("sweep unreferenced bodies", "err", err)
		return false
	}
	for _, id := range ids {
		delete(w.orphans, id)
	}
	w.keep.advance()
	return more
}

// run applies one batch in one transaction. Statements run under a
// background context: interrupting a statement would make SQLite roll back
// the whole transaction, other requests included, so a request's context
// is only checked before the request starts. The transaction also deletes
// the unreferenced bodies no Hold needs any more. run reports whether a
// sweep may have work: bodies lost their last reference, or more were
// deletable than one transaction takes.
func (w *writer) run(batch []*writeReq) (sweepAgain bool) {
	errs := make([]error, len(batch))
	ctl := &wtx{w: w}
	fail := func(what string, err error) {
		ctl.exec("ROLLBACK")
		for _, r := range batch {
			r.done <- fmt.Errorf("%s: %w", what, err)
		}
	}
	if _, err := ctl.exec("BEGIN IMMEDIATE"); err != nil {
		fail("begin write transaction", err)
		return false
	}
	swept, more := w.deletable()
	if len(swept) > 0 {
		// In a savepoint of its own: a failed sweep must not fail the
		// requests; the bodies stay for a later one.
		if _, err := ctl.exec("SAVEPOINT sweep"); err != nil {
			fail("savepoint", err)
			return false
		}
		if err := ctl.sweep(swept); err != nil {
			w.log.Error("sweep unreferenced bodies", "err", err)
			swept = nil
			if _, err := ctl.exec("ROLLBACK TO sweep"); err != nil {
				fail("roll back failed sweep", err)
				return false
			}
		}
		if _, err := ctl.exec("RELEASE sweep"); err != nil {
			fail("release savepoint", err)
			return false
		}
	}
	for i, r := range batch {
		if err := r.ctx.Err(); err != nil {
			errs[i] = err
			continue
		}
		r.tx = &wtx{w: w}
		if _, err := ctl.exec("SAVEPOINT req"); err != nil {
			fail("savepoint", err)
			return false
		}
		errs[i] = r.fn(r.tx)
		if errs[i] != nil {
			// If SQLite already rolled the transaction back (it does on
			// some errors), this fails and so does the batch.
			if _, err := ctl.exec("ROLLBACK TO req"); err != nil {
				fail("roll back failed request", err)
				return false
			}
		}
		if _, err := ctl.exec("RELEASE req"); err != nil {
			fail("release savepoint", err)
			return false
		}
	}
	orphaned, err := ctl.takeOrphans()
	if err != nil {
		fail("collect unreferenced bodies", err)
		return false
	}
	if _, err := ctl.exec("COMMIT"); err != nil {
		fail("commit", err)
		return false
	}
	for i, r := range batch {
		if errs[i] == nil && r.tx != nil {
			w.feed.publish(r.tx.changes)
			for _, f := range r.tx.after {
				f()
			}
		}
	}
	// Published first, then the epoch moves: see hold.go.
	epoch := w.keep.advance()
	for _, id := range swept {
		delete(w.orphans, id)
	}
	now := w.now()
	for _, id := range orphaned {
		w.orphans[id] = orphan{epoch: epoch, since: now}
	}
	for i, r := range batch {
		r.done <- errs[i]
	}
	return more || len(orphaned) > 0
}

// stmt returns a statement prepared once on the write connection.
func (t *wtx) stmt(query string) (*sql.Stmt, error) {
	st, ok := t.w.stmts[query]
	if !ok {
		var err error
		st, err = t.w.conn.PrepareContext(context.Background(), query)
		if err != nil {
			return nil, fmt.Errorf("prepare %q: %w", query, err)
		}
		t.w.stmts[query] = st
	}
	return st, nil
}

func (t *wtx) exec(query string, args ...any) (sql.Result, error) {
	st, err := t.stmt(query)
	if err != nil {
		return nil, err
	}
	return st.Exec(args...)
}

// row is a single-row result, or the error that prevented the query.
type row struct {
	r   *sql.Row
	err error
}

func (r row) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	return r.r.Scan(dest...)
}

func (t *wtx) queryRow(query string, args ...any) row {
	st, err := t.stmt(query)
	if err != nil {
		return row{err: err}
	}
	return row{r: st.QueryRow(args...)}
}

func (t *wtx) query(query string, args ...any) (*sql.Rows, error) {
	st, err := t.stmt(query)
	if err != nil {
		return nil, err
	}
	return st.Query(args...)
}

// notify records a change to publish after the commit.
func (t *wtx) notify(c Change) { t.changes = append(t.changes, c) }

// afterCommit runs f once the transaction is durable.
func (t *wtx) afterCommit(f func()) { t.after = append(t.after, f) }

// affected reports ErrNotFound when res changed no row.
func affected(res sql.Result, what string) error {
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if n == 0 {
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	return nil
}

// isNoRows reports whether err is sql.ErrNoRows, which never leaves the
// package.
func isNoRows(err error) bool { return errors.Is(err, sql.ErrNoRows) }
