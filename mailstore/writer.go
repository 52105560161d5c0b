package mailstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// maxBatch bounds how many requests share one transaction, so that one
// commit never holds callers for long.
const maxBatch = 512

// pgMaxBatch is maxBatch on PostgreSQL. Each request runs in a savepoint,
// a subtransaction; past 64 of them in one transaction PostgreSQL's
// snapshots overflow their subtransaction cache and every backend's
// visibility checks slow down, so a batch stays below that.
const pgMaxBatch = 60

// writer owns the single write connection and applies requests in group
// commits: whatever arrived while the previous commit was being synced goes
// into the next transaction.
type writer struct {
	s     *Store
	d     *dialect
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
	// savepointRuns is how many more batches run with a savepoint per
	// request from the start (run); only touched by the writer goroutine.
	savepointRuns int

	// usageBySum makes quota checks sum the user's messages, as before
	// the usage counter (schema 7); only the benchmark that compares the
	// two sets it, before any write.
	usageBySum bool

	// index is poked after a commit that stored a new body, for the
	// full-text indexer (fulltext.go).
	index chan struct{}
	// start is the monotonic origin of lastWrite and foreBusy, so that a
	// step of the wall clock moves neither.
	start time.Time
	// lastWrite is when (since start) the last request other than the
	// indexer's was queued: the indexer, when it gives way, waits for a
	// pause in such writes, not merely for an empty queue (group commit
	// empties it between waves).
	lastWrite atomic.Int64
	// foreBusy is the time the writer has spent on batches holding a
	// request other than the indexer's, backBusy on batches of the
	// indexer's alone: together they tell how busy other writes keep the
	// writer, which decides whether the indexer gives way at all
	// (fulltext.go).
	foreBusy, backBusy atomic.Int64
}

// sinceStart is the monotonic time since the writer started.
func (w *writer) sinceStart() time.Duration { return time.Since(w.start) }

// busy reports whether writes other than the indexer's are queued or came
// within the last window.
func (w *writer) busy(window time.Duration) bool {
	return len(w.reqs) > 0 || int64(w.sinceStart())-w.lastWrite.Load() < int64(window)
}

// load is the time spent so far on batches with writes other than the
// indexer's (fore) and on the indexer's alone (back).
func (w *writer) load() (fore, back time.Duration) {
	return time.Duration(w.foreBusy.Load()), time.Duration(w.backBusy.Load())
}

// indexKick tells the indexer there is work, without waiting.
func (w *writer) indexKick() {
	select {
	case w.index <- struct{}{}:
	default:
	}
}

type writeReq struct {
	ctx        context.Context
	fn         func(*wtx) error
	done       chan error
	tx         *wtx
	locks      lockHint
	background bool // the full-text indexer's (doBackground)
}

// lockHint names the mailbox rows a request will change, so that on
// PostgreSQL a batch locks them all first, in ascending ID order: two
// frontends' batches then never wait for each other in a cycle.
type lockHint struct {
	mailboxes []int64
	users     []int64 // every mailbox of these users
}

// wtx is what a request sees: the shared transaction plus its own list of
// changes, published only if the transaction commits and the request
// succeeded.
type wtx struct {
	w       *writer
	changes []Change
	after   []func()
}

func newWriter(s *Store, db *sql.DB, maxAge time.Duration) (*writer, error) {
	w := &writer{
		start:   time.Now(),
		s:       s,
		d:       s.d,
		db:      db,
		feed:    s.feed,
		reqs:    make(chan *writeReq, 4*maxBatch),
		done:    make(chan struct{}),
		stmts:   make(map[string]*sql.Stmt),
		keep:    newKeeper(),
		log:     s.log,
		now:     s.now,
		maxAge:  maxAge,
		orphans: make(map[int64]orphan),
		index:   make(chan struct{}, 1),
	}
	if err := w.connect(); err != nil {
		return nil, err
	}
	go w.loop()
	return w, nil
}

// connect takes the write connection and makes its orphan log.
func (w *writer) connect() error {
	conn, err := w.db.Conn(context.Background())
	if err != nil {
		return fmt.Errorf("connect writer: %w", err)
	}
	schema := orphanLogSchema
	if w.d.pg {
		schema = pgOrphanLogSchema
	}
	if _, err := conn.ExecContext(context.Background(), schema); err != nil {
		conn.Close()
		return fmt.Errorf("create orphan log: %w", err)
	}
	if !w.d.pg {
		// The full-text index merges its segments 8 at a time instead
		// of FTS5's 4: on mail-like text the indexer then takes about
		// 0.7 of the time per body (BenchmarkIndexBodies), for searches
		// within a few percent. A setting of the index, not a schema
		// change: set at each start, older binaries read it as well.
		if _, err := conn.ExecContext(context.Background(), "INSERT INTO body_text(body_text, rank) VALUES ('automerge', 8)"); err != nil {
			conn.Close()
			return fmt.Errorf("tune the full-text index: %w", err)
		}
	}
	w.conn = conn
	return nil
}

// reconnect replaces a write connection that broke (PostgreSQL restarted,
// say); the next transaction uses the new one.
func (w *writer) reconnect() {
	for _, st := range w.stmts {
		st.Close()
	}
	clear(w.stmts)
	w.conn.Raw(func(any) error { return driver.ErrBadConn }) // drop it from the pool
	w.conn.Close()
	if err := w.connect(); err != nil {
		w.log.Error("reconnect writer", "err", err)
		// Keep a connection object so that the next attempt fails
		// cleanly and tries again.
		if conn, cerr := w.db.Conn(context.Background()); cerr == nil {
			w.conn = conn
		}
	}
}

// do runs fn in the next write transaction and returns its error, or the
// commit's. It returns only once the outcome is durable. fn may run more
// than once (see doLocked); only the last run's writes and changes count.
func (w *writer) do(ctx context.Context, fn func(*wtx) error) error {
	return w.doLocked(ctx, lockHint{}, fn)
}

// doBackground is do for the full-text indexer's own writes, which do not
// count as the writes it gives way to (writer.busy).
func (w *writer) doBackground(ctx context.Context, fn func(*wtx) error) error {
	return w.submit(ctx, lockHint{}, fn, true)
}

// doLocked is do for a request that changes the mailboxes locks names.
// fn may run more than once (the batch is run again when another of its
// requests fails, and on PostgreSQL when it loses a deadlock); it must
// start from scratch each time.
func (w *writer) doLocked(ctx context.Context, locks lockHint, fn func(*wtx) error) error {
	return w.submit(ctx, locks, fn, false)
}

func (w *writer) submit(ctx context.Context, locks lockHint, fn func(*wtx) error, background bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !background {
		w.lastWrite.Store(int64(w.sinceStart()))
	}
	req := &writeReq{ctx: ctx, fn: fn, done: make(chan error, 1), locks: locks, background: background}
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
			limit := maxBatch
			if w.d.pg {
				limit = pgMaxBatch
			}
		gather:
			for len(batch) < limit {
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
			began := time.Now()
			again = w.run(batch)
			if slices.ContainsFunc(batch, func(r *writeReq) bool { return !r.background }) {
				w.foreBusy.Add(int64(time.Since(began)))
			} else {
				w.backBusy.Add(int64(time.Since(began)))
			}
		case <-w.keep.kick:
			again = true
		case <-soon:
			soon = nil
			again = w.sweepAlone()
		case <-tick.C:
			again = w.sweepAlone()
			w.dropTombstones()
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
	if _, err := t.exec(w.d.begin()); err != nil {
		w.log.Error("sweep unreferenced bodies", "err", err)
		if w.d.pg {
			w.reconnect()
		}
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

// tombstoneMaxAge is how long an expunged UID is remembered (expunged):
// long enough for every frontend's change feed to have read it.
const tombstoneMaxAge = 7 * 24 * time.Hour

// dropTombstones forgets expunges older than tombstoneMaxAge, in a
// transaction of its own (it runs on the writer goroutine).
func (w *writer) dropTombstones() {
	req := &writeReq{ctx: context.Background(), done: make(chan error, 1), fn: (*wtx).dropOldTombstones}
	w.run([]*writeReq{req})
	if err := <-req.done; err != nil {
		w.log.Warn("drop old expunge tombstones", "err", err)
	}
}

func (t *wtx) dropOldTombstones() error {
	_, err := t.exec("DELETE FROM expunged WHERE at < ?", t.w.now().Add(-tombstoneMaxAge).Unix())
	if err != nil {
		return fmt.Errorf("drop old expunge tombstones: %w", err)
	}
	return nil
}

// maxRetries bounds how often a batch that lost a deadlock (PostgreSQL,
// SQLSTATE 40P01 or 40001) is run again before its requests fail.
const maxRetries = 8

// run applies one batch in one transaction. Statements run under a
// background context: interrupting a statement would make SQLite roll back
// the whole transaction, other requests included, so a request's context
// is only checked before the request starts. The transaction also deletes
// the unreferenced bodies no Hold needs any more. run reports whether a
// sweep may have work: bodies lost their last reference, or more were
// deletable than one transaction takes.
func (w *writer) run(batch []*writeReq) (sweepAgain bool) {
	// A savepoint per request is what lets one request fail without
	// undoing the others, but it costs: on PostgreSQL two round trips a
	// request, most of a delivery's; on SQLite two statements and a
	// statement journal that copies every page the request changes
	// (some 15% of the writer's time on deliveries). Requests rarely
	// fail, so a batch first runs without them, and only when a request
	// fails is it rolled back and run again with them (the failed
	// request's statements must go, the others' stay). Either way a
	// request's fn may run more than once, from scratch. After a failure
	// the next batches take savepoints from the start, so that requests
	// that keep failing (a client repeating a refused command) waste at
	// most one run in savepointBatches+1. A request alone in its batch
	// never needs one: when it fails, the transaction is rolled back and
	// that is its answer (runOnce).
	savepoints := len(batch) > 1 && w.savepointRuns > 0
	if w.savepointRuns > 0 {
		w.savepointRuns--
	}
	for attempt := 0; ; attempt++ {
		start := time.Now()
		sweepAgain, err, retry := w.runOnce(batch, savepoints)
		if errors.Is(err, errRolledBack) {
			return sweepAgain // no commit to report
		}
		if w.s.onCommit != nil && !errors.Is(err, errRequestFailed) {
			w.s.onCommit(CommitInfo{Requests: len(batch), Duration: time.Since(start), Err: err})
		}
		if errors.Is(err, errRequestFailed) {
			savepoints = true
			w.savepointRuns = savepointBatches
			attempt--
			continue
		}
		if !retry {
			return sweepAgain
		}
		if attempt+1 >= maxRetries {
			for _, r := range batch {
				r.done <- fmt.Errorf("write transaction retried %d times: %w", maxRetries, err)
			}
			return false
		}
		w.log.Debug("write transaction lost a race, running it again", "attempt", attempt+1, "err", err)
		// A little random wait, growing, so that the two sides of a
		// deadlock do not meet again at once.
		time.Sleep(time.Duration(1+mrand.IntN(5<<attempt)) * time.Millisecond)
	}
}

// savepointBatches is how many batches after one whose request failed
// run with savepoints from the start.
const savepointBatches = 8

// errRequestFailed: a request failed in a batch run without savepoints;
// the batch was rolled back, to run again with them.
var errRequestFailed = errors.New("a request failed without a savepoint")

// errRolledBack: the one request of a batch failed and the transaction
// was rolled back; the request has its answer, and nothing was committed.
var errRolledBack = errors.New("the batch's one request failed")

// runOnce runs the batch once, each request in a savepoint of its own or
// (savepoints false) not. When the transaction lost a race that running
// it again may win (retry), or a request failed without a savepoint
// (errRequestFailed), nothing was answered; otherwise every request has
// its answer (errRolledBack: the batch's one request failed, and nothing
// was committed).
func (w *writer) runOnce(batch []*writeReq, savepoints bool) (sweepAgain bool, txErr error, retry bool) {
	errs := make([]error, len(batch))
	ctl := &wtx{w: w}
	abort := func(what string, err error) (bool, error, bool) {
		ctl.exec("ROLLBACK")
		err = fmt.Errorf("%s: %w", what, err)
		if retryable(err) {
			return false, err, true
		}
		if w.d.pg && errors.Is(err, driver.ErrBadConn) {
			w.reconnect()
		}
		for _, r := range batch {
			r.done <- err
		}
		return false, err, false
	}
	if _, err := ctl.exec(w.d.begin()); err != nil {
		if w.d.pg {
			// The connection may have broken while idle.
			w.reconnect()
			if _, err = ctl.exec(w.d.begin()); err != nil {
				return abort("begin write transaction", err)
			}
		} else {
			return abort("begin write transaction", err)
		}
	}
	if w.d.pg {
		if err := ctl.lockRows(batch); err != nil {
			return abort("lock mailboxes", err)
		}
	}
	swept, more := w.deletable()
	if len(swept) > 0 {
		// In a savepoint of its own: a failed sweep must not fail the
		// requests; the bodies stay for a later one.
		if _, err := ctl.exec("SAVEPOINT sweep"); err != nil {
			return abort("savepoint", err)
		}
		if err := ctl.sweep(swept); err != nil {
			if retryable(err) {
				return abort("sweep unreferenced bodies", err)
			}
			w.log.Error("sweep unreferenced bodies", "err", err)
			swept = nil
			if _, err := ctl.exec("ROLLBACK TO sweep"); err != nil {
				return abort("roll back failed sweep", err)
			}
		}
		if _, err := ctl.exec("RELEASE sweep"); err != nil {
			return abort("release savepoint", err)
		}
	}
	for i, r := range batch {
		r.tx = nil
		if err := r.ctx.Err(); err != nil {
			errs[i] = err
			continue
		}
		r.tx = &wtx{w: w}
		if !savepoints {
			if errs[i] = r.fn(r.tx); errs[i] != nil {
				if retryable(errs[i]) {
					return abort("request", errs[i])
				}
				ctl.exec("ROLLBACK")
				if len(batch) > 1 {
					return false, errRequestFailed, false
				}
				// Alone: nothing else to keep. The sweep was undone
				// with it; its bodies are still orphans, for the next.
				r.done <- errs[i]
				return len(swept) > 0, errRolledBack, false
			}
			continue
		}
		if _, err := ctl.exec("SAVEPOINT req"); err != nil {
			return abort("savepoint", err)
		}
		errs[i] = r.fn(r.tx)
		if errs[i] != nil {
			if retryable(errs[i]) {
				return abort("request", errs[i])
			}
			// If SQLite already rolled the transaction back (it does on
			// some errors), this fails and so does the batch.
			if _, err := ctl.exec("ROLLBACK TO req"); err != nil {
				return abort("roll back failed request", err)
			}
		}
		if _, err := ctl.exec("RELEASE req"); err != nil {
			return abort("release savepoint", err)
		}
	}
	orphaned, err := ctl.takeOrphans()
	if err != nil {
		return abort("collect unreferenced bodies", err)
	}
	if w.d.pg {
		if err := ctl.notifyChanges(batch, errs); err != nil {
			return abort("notify changes", err)
		}
	}
	if _, err := ctl.exec("COMMIT"); err != nil {
		return abort("commit", err)
	}
	for i, r := range batch {
		if errs[i] == nil && r.tx != nil {
			if w.d.pg {
				w.s.listen.published(r.tx.changes)
			} else {
				w.feed.publish(r.tx.changes)
			}
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
	return more || len(orphaned) > 0, nil, false
}

// lockRows locks, in ascending ID order, the mailbox rows the batch's
// requests said they change (PostgreSQL only).
func (t *wtx) lockRows(batch []*writeReq) error {
	var boxes, users []int64
	for _, r := range batch {
		boxes = append(boxes, r.locks.mailboxes...)
		users = append(users, r.locks.users...)
	}
	if len(boxes) == 0 && len(users) == 0 {
		return nil
	}
	rows, err := t.query("SELECT id FROM mailboxes WHERE id = ANY(?) OR user_id = ANY(?) ORDER BY id FOR UPDATE", boxes, users)
	if err != nil {
		return err
	}
	for rows.Next() {
	}
	rows.Close()
	return rows.Err()
}

// notifyChanges tells the other frontends, through NOTIFY (delivered at
// commit), which mailboxes changed and up to which MODSEQ (PostgreSQL
// only). It is only a hint: each frontend reads what changed itself.
func (t *wtx) notifyChanges(batch []*writeReq, errs []error) error {
	top := map[int64]uint64{}
	for i, r := range batch {
		if errs[i] != nil || r.tx == nil {
			continue
		}
		for _, c := range r.tx.changes {
			top[c.MailboxID] = max(top[c.MailboxID], c.ModSeq)
		}
	}
	for id, modseq := range top {
		if _, err := t.exec("SELECT pg_notify(?, ?)", pgChannel, itoa(id)+" "+strconv.FormatUint(modseq, 10)); err != nil {
			return err
		}
	}
	return nil
}

// stmt returns a statement prepared once on the write connection.
func (t *wtx) stmt(query string) (*sql.Stmt, error) {
	st, ok := t.w.stmts[query]
	if !ok {
		var err error
		st, err = t.w.conn.PrepareContext(context.Background(), t.w.d.rebind(query))
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
	return st.Exec(t.w.d.args(args)...)
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
	return row{r: st.QueryRow(t.w.d.args(args)...)}
}

func (t *wtx) query(query string, args ...any) (*sql.Rows, error) {
	st, err := t.stmt(query)
	if err != nil {
		return nil, err
	}
	return st.Query(t.w.d.args(args)...)
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
