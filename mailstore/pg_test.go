package mailstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// postgresPass skips a test of several frontends on one PostgreSQL
// database outside the suite's PostgreSQL pass.
func postgresPass(t *testing.T) {
	t.Helper()
	if !onPostgres() {
		t.Skip("runs in the PostgreSQL pass")
	}
}

// frontends opens n Stores on one fresh database, as n `postern serve`
// processes would, with example.test local and user u@example.test.
func frontends(t *testing.T, n int) ([]*Store, User) {
	t.Helper()
	db := newTestDB(t)
	var out []*Store
	for range n {
		s := db.open(t, Options{PasswordCost: FastPasswordHash})
		t.Cleanup(func() { s.Close() })
		out = append(out, s)
	}
	ctx := context.Background()
	if err := out[0].AddDomain(ctx, "example.test"); err != nil {
		t.Fatal(err)
	}
	return out, addUser(t, out[0], "u@example.test")
}

func TestSchemaVersionsInStep(t *testing.T) {
	if got, want := pgBaseVersion+len(pgMigrations), len(migrations); got != want {
		t.Fatalf("PostgreSQL schema reaches version %d, SQLite's %d", got, want)
	}
}

func TestBackendAndDescribe(t *testing.T) {
	s := openTest(t)
	info, err := s.Describe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.Backend != testBackend || s.Backend() != testBackend {
		t.Errorf("backend %q / %q, want %q", info.Backend, s.Backend(), testBackend)
	}
	if info.ServerVersion == "" {
		t.Error("no server version")
	}
	if info.SchemaVersion != len(migrations) {
		t.Errorf("schema version %d, want %d", info.SchemaVersion, len(migrations))
	}
	if onPostgres() {
		// Debian's postgresql ships pg_trgm: the text index must be there.
		var n int
		err := s.readRow(context.Background(), `SELECT count(*) FROM pg_indexes
			WHERE tablename = 'body_text' AND indexdef LIKE '%gin_trgm_ops%'`).Scan(&n)
		if err != nil || !s.trgm || n != 2 {
			t.Errorf("trigram indexes: %d (%v), flag %v; want 2", n, err, s.trgm)
		}
	}
}

func TestOnCommitReportsGroupCommits(t *testing.T) {
	var commits, requests atomic.Int64
	s := newTestDB(t).open(t, Options{PasswordCost: FastPasswordHash, OnCommit: func(c CommitInfo) {
		if c.Err == nil && c.Duration > 0 {
			commits.Add(1)
			requests.Add(int64(c.Requests))
		}
	}})
	defer s.Close()
	ctx := context.Background()
	if err := s.AddDomain(ctx, "example.test"); err != nil {
		t.Fatal(err)
	}
	addUser(t, s, "u@example.test")
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Deliver(ctx, "x@remote.test", []string{"u@example.test"}, testMessage(i)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	// Domain, user and 20 deliveries, in however many commits; the
	// indexer's commits may add more. OnCommit runs once a batch has
	// answered: the last may still be on its way.
	for deadline := time.Now().Add(5 * time.Second); requests.Load() < 22 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if requests.Load() < 22 || commits.Load() < 1 || commits.Load() > requests.Load() {
		t.Fatalf("%d commits carrying %d requests, want at least 22 requests", commits.Load(), requests.Load())
	}
}

// pgExec runs statements on the database dsn through database/sql and
// returns the connection pool, closed at Cleanup.
func pgExec(t *testing.T, dsn, statements string) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.Exec(statements); err != nil {
		t.Fatalf("%s: %v", statements, err)
	}
	return db
}

// wantOpenPostgresError fails the test unless OpenPostgres on dsn fails
// with want.
func wantOpenPostgresError(t *testing.T, dsn string, want error) {
	t.Helper()
	s, err := OpenPostgres(context.Background(), dsn, Options{})
	if s != nil {
		s.Close()
	}
	if !errors.Is(err, want) {
		t.Fatalf("OpenPostgres: %v, want %v", err, want)
	}
}

// A PostgreSQL database with other tables, or one a newer Postern wrote,
// is refused and left as it was.
func TestPostgresRefusesForeignAndNewer(t *testing.T) {
	postgresPass(t)
	ctx := context.Background()
	foreign := postgresDSN(t)
	db := pgExec(t, foreign, "CREATE TABLE recipes (name TEXT); INSERT INTO recipes VALUES ('soup')")
	wantOpenPostgresError(t, foreign, ErrNotPostern)
	var tables int
	if err := db.QueryRow("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()").Scan(&tables); err != nil || tables != 1 {
		t.Fatalf("foreign database has %d tables after the refusal (%v), want 1", tables, err)
	}

	newer := postgresDSN(t)
	s, err := OpenPostgres(ctx, newer, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	pgExec(t, newer, "UPDATE meta SET value = value + 1 WHERE key = 'schema_version'")
	wantOpenPostgresError(t, newer, ErrSchemaTooNew)
	if _, err := OpenPostgres(ctx, "postgres://127.0.0.1:1/x?sslmode=disable&connect_timeout=2", Options{}); err == nil {
		t.Fatal("open on a closed port succeeded")
	}
}

// Two frontends on one database delivering at once to one mailbox: UIDs
// are unique and ascend in commit order, every message is there once,
// and the counters agree with the messages.
func TestFrontendsDeliverConcurrently(t *testing.T) {
	postgresPass(t)
	ctx := context.Background()
	fe, u := frontends(t, 2)
	const per = 150
	var mu sync.Mutex
	uidOf := map[int]uint32{}
	var wg sync.WaitGroup
	for f, s := range fe {
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < per; i += 8 {
					n := f*per + i
					d, err := s.Deliver(ctx, "x@remote.test", []string{"u@example.test"}, testMessage(n))
					if err != nil {
						t.Errorf("frontend %d message %d: %v", f, n, err)
						return
					}
					mu.Lock()
					uidOf[n] = d.Stored[0].UID
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	mb := inbox(t, fe[1], u)
	msgs, err := fe[1].Messages(ctx, mb.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2*per {
		t.Fatalf("%d messages, want %d", len(msgs), 2*per)
	}
	seen := map[uint32]bool{}
	var uids []uint32
	for _, m := range msgs {
		if seen[m.UID] {
			t.Fatalf("uid %d twice", m.UID)
		}
		seen[m.UID] = true
		uids = append(uids, m.UID)
	}
	if !sort.SliceIsSorted(uids, func(i, j int) bool { return uids[i] < uids[j] }) || uids[len(uids)-1] >= mb.UIDNext {
		t.Fatalf("uids not below UIDNEXT %d", mb.UIDNext)
	}
	for n, uid := range uidOf {
		if !seen[uid] {
			t.Fatalf("message %d acknowledged as uid %d, which is not there", n, uid)
		}
		b, err := fe[0].ReadBody(ctx, msgs[sort.Search(len(msgs), func(i int) bool { return msgs[i].UID >= uid })].BodyID)
		if err != nil || string(b) != string(testMessage(n)) {
			t.Fatalf("uid %d holds %.30q (%v), want message %d", uid, b, err, n)
		}
	}
	if mb.HighestModSeq < uint64(2*per) {
		t.Errorf("HIGHESTMODSEQ %d after %d deliveries", mb.HighestModSeq, 2*per)
	}
	if err := fe[0].IntegrityCheck(ctx); err != nil {
		t.Fatal(err)
	}
}

// The same message delivered through two frontends is stored once.
func TestBodyDedupAcrossFrontends(t *testing.T) {
	postgresPass(t)
	ctx := context.Background()
	fe, _ := frontends(t, 2)
	addUser(t, fe[1], "v@example.test")
	msg := testMessage(7)
	var wg sync.WaitGroup
	for i, s := range fe {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rcpt := []string{"u@example.test", "v@example.test"}[i]
			for range 10 {
				if _, err := s.Deliver(ctx, "x@remote.test", []string{rcpt}, msg); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	var bodies, refs int
	if err := fe[0].readRow(ctx, "SELECT count(*), sum(refs) FROM bodies").Scan(&bodies, &refs); err != nil {
		t.Fatal(err)
	}
	if bodies != 1 || refs != 20 {
		t.Fatalf("%d bodies with %d references, want 1 with 20", bodies, refs)
	}
	if err := fe[1].IntegrityCheck(ctx); err != nil {
		t.Fatal(err)
	}
}

// waitChanges collects a subscription's changes until want of them came
// or the deadline passed.
func waitChanges(t *testing.T, sub *Subscription, want int, within time.Duration) []Change {
	t.Helper()
	var got []Change
	deadline := time.After(within)
	for len(got) < want {
		select {
		case <-sub.Pending:
			overflow, c := sub.Get()
			if overflow {
				t.Fatal("feed overflowed")
			}
			got = append(got, c...)
		case <-deadline:
			t.Fatalf("%d changes within %v, want %d: %+v", len(got), within, want, got)
		}
	}
	return got
}

// A Subscription on one frontend sees a delivery, a flag change and an
// expunge made through another, each within a second, in order, and
// nothing twice.
func TestFeedAcrossFrontends(t *testing.T) {
	postgresPass(t)
	ctx := context.Background()
	fe, u := frontends(t, 2)
	a, b := fe[0], fe[1]
	mb := inbox(t, a, u)
	sub := a.Subscribe(mb.ID)
	defer sub.Close()

	d, err := b.Deliver(ctx, "x@remote.test", []string{"u@example.test"}, testMessage(1))
	if err != nil {
		t.Fatal(err)
	}
	uid := d.Stored[0].UID
	c := waitChanges(t, sub, 1, time.Second)
	if c[0].Kind != ChangeAdded || c[0].UID != uid || c[0].MailboxID != mb.ID {
		t.Fatalf("after delivery: %+v", c)
	}
	if _, err := b.StoreFlags(ctx, mb.ID, UIDs(uid), FlagsAdd, []string{FlagDeleted}); err != nil {
		t.Fatal(err)
	}
	c = waitChanges(t, sub, 1, time.Second)
	if c[0].Kind != ChangeFlags || c[0].UID != uid || len(c[0].Flags) != 1 || c[0].Flags[0] != FlagDeleted {
		t.Fatalf("after flag change: %+v", c)
	}
	if _, err := b.Expunge(ctx, mb.ID, nil); err != nil {
		t.Fatal(err)
	}
	c = waitChanges(t, sub, 1, time.Second)
	if c[0].Kind != ChangeExpunged || c[0].UID != uid {
		t.Fatalf("after expunge: %+v", c)
	}
	// A change through A itself arrives once, synchronously.
	if _, err := a.Append(ctx, mb.ID, nil, time.Time{}, testMessage(2)); err != nil {
		t.Fatal(err)
	}
	if _, c := sub.Get(); len(c) != 1 || c[0].Kind != ChangeAdded {
		t.Fatalf("own append: %+v", c)
	}
	time.Sleep(200 * time.Millisecond) // its notification comes back too
	if _, c := sub.Get(); len(c) != 0 {
		t.Fatalf("own append published again: %+v", c)
	}
	// A mailbox deleted through B is gone for A's subscribers.
	mb2, err := b.CreateMailbox(ctx, u.ID, "Lists", "")
	if err != nil {
		t.Fatal(err)
	}
	sub2 := a.Subscribe(mb2.ID)
	defer sub2.Close()
	if err := b.DeleteMailbox(ctx, u.ID, "Lists"); err != nil {
		t.Fatal(err)
	}
	if c := waitChanges(t, sub2, 1, time.Second); c[0].Kind != ChangeMailboxGone {
		t.Fatalf("after delete: %+v", c)
	}
}

// A listener that loses its connection re-reads what changed meanwhile.
func TestFeedSurvivesLostListener(t *testing.T) {
	postgresPass(t)
	ctx := context.Background()
	fe, u := frontends(t, 2)
	a, b := fe[0], fe[1]
	mb := inbox(t, a, u)
	sub := a.Subscribe(mb.ID)
	defer sub.Close()
	// Cut every LISTEN connection (A's listener among them) and
	// deliver while it reconnects.
	res, err := b.rdb.ExecContext(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN%'`)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n < 1 {
		t.Fatalf("terminated %d listeners", n)
	}
	for i := range 3 {
		if _, err := b.Deliver(ctx, "x@remote.test", []string{"u@example.test"}, testMessage(i)); err != nil {
			t.Fatal(err)
		}
	}
	c := waitChanges(t, sub, 3, 5*time.Second)
	for i, ch := range c {
		if ch.Kind != ChangeAdded || ch.UID != uint32(i+1) {
			t.Fatalf("change %d: %+v", i, ch)
		}
	}
}

// Expunge tombstones older than the bound go; newer ones stay.
func TestTombstonesExpire(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1700000000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := newTestDB(t).open(t, Options{PasswordCost: FastPasswordHash, Now: clock})
	defer s.Close()
	if err := s.AddDomain(ctx, "example.test"); err != nil {
		t.Fatal(err)
	}
	mb := inbox(t, s, addUser(t, s, "u@example.test"))
	for i := range 2 {
		appendMsg(t, s, mb.ID, testMessage(i))
	}
	if _, err := s.DeleteMessages(ctx, mb.ID, []uint32{1}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	now = now.Add(tombstoneMaxAge - time.Hour)
	mu.Unlock()
	if _, err := s.DeleteMessages(ctx, mb.ID, []uint32{2}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	// What the writer's minute tick runs.
	if err := s.w.do(ctx, (*wtx).dropOldTombstones); err != nil {
		t.Fatal(err)
	}
	var uids []uint32
	rows, err := s.read(ctx, "SELECT uid FROM expunged WHERE mailbox_id = ? ORDER BY uid", mb.ID)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var u uint32
		rows.Scan(&u)
		uids = append(uids, u)
	}
	rows.Close()
	if fmt.Sprint(uids) != "[2]" {
		t.Fatalf("tombstones left: %v, want [2]", uids)
	}
}

// A transaction that loses a deadlock (SQLSTATE 40P01) is run again
// whole, its requests from scratch, and answered once; one that keeps
// losing fails after maxRetries.
func TestDeadlockRetried(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	mb := inbox(t, s, u)
	var runs atomic.Int32
	err := s.w.do(ctx, func(t *wtx) error {
		if runs.Add(1) == 1 {
			if _, err := t.exec("UPDATE mailboxes SET keywords = 'lost' WHERE id = ?", mb.ID); err != nil {
				return err
			}
			return fmt.Errorf("some statement: %w", &pgconn.PgError{Code: sqlstateDeadlock})
		}
		return nil
	})
	if err != nil || runs.Load() != 2 {
		t.Fatalf("%v after %d runs, want success after 2", err, runs.Load())
	}
	if got := inbox(t, s, u); len(got.Keywords) != 0 {
		t.Fatalf("the lost attempt's change stayed: %v", got.Keywords)
	}
	runs.Store(0)
	err = s.w.do(ctx, func(t *wtx) error {
		runs.Add(1)
		return &pgconn.PgError{Code: sqlstateSerialization}
	})
	if !retryable(err) || runs.Load() != maxRetries {
		t.Fatalf("%v after %d runs, want the serialization failure after %d", err, runs.Load(), maxRetries)
	}
	// The store still works.
	appendMsg(t, s, mb.ID, testMessage(1))
}

// A maildrop leased through one Store is refused through another on the
// same database until released, or until the lease of a Store that
// stopped renewing it (closed, as after SIGKILL) ends.
func TestMaildropLease(t *testing.T) {
	ctx := context.Background()
	db := newTestDB(t)
	a := db.open(t, Options{PasswordCost: FastPasswordHash})
	b := db.open(t, Options{PasswordCost: FastPasswordHash})
	defer b.Close()
	if err := a.AddDomain(ctx, "example.test"); err != nil {
		t.Fatal(err)
	}
	u := addUser(t, a, "u@example.test")
	const ttl = 3 * time.Second // renewed every second: slack for a busy machine
	lease, err := a.LockMaildrop(ctx, u.ID, "a", ttl)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.LockMaildrop(ctx, u.ID, "b", ttl); !errors.Is(err, ErrLocked) {
		t.Fatalf("second lock: %v, want ErrLocked", err)
	}
	// Held past its first ttl: renewed.
	time.Sleep(2 * ttl)
	if _, err := b.LockMaildrop(ctx, u.ID, "b", ttl); !errors.Is(err, ErrLocked) {
		t.Fatalf("lock after the holder renewed: %v, want ErrLocked", err)
	}
	lease.Release()
	lease.Release()
	relB, err := b.LockMaildrop(ctx, u.ID, "b", ttl)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	relB.Release()
	// A holder that stops renewing (its process gone) frees it in ttl.
	if _, err := a.LockMaildrop(ctx, u.ID, "a", ttl); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if _, err := b.LockMaildrop(ctx, u.ID, "b", ttl); !errors.Is(err, ErrLocked) {
		t.Fatalf("lock right after the holder died: %v, want ErrLocked", err)
	}
	deadline := time.Now().Add(5 * ttl)
	for {
		rel, err := b.LockMaildrop(ctx, u.ID, "b", ttl)
		if err == nil {
			rel.Release()
			break
		}
		if !errors.Is(err, ErrLocked) || time.Now().After(deadline) {
			t.Fatalf("lock after the dead holder's lease: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A writer whose connection was cut (the server restarted it, say)
// connects again: at most the requests in flight fail, later ones work.
func TestWriterReconnects(t *testing.T) {
	postgresPass(t)
	ctx := context.Background()
	fe, u := frontends(t, 2)
	a, b := fe[0], fe[1]
	mb := inbox(t, a, u)
	var writerPID int
	if err := a.w.do(ctx, func(t *wtx) error {
		return t.queryRow("SELECT pg_backend_pid()").Scan(&writerPID)
	}); err != nil {
		t.Fatal(err)
	}
	var ok bool
	if err := b.readRow(ctx, "SELECT pg_terminate_backend(?)", writerPID).Scan(&ok); err != nil || !ok {
		t.Fatalf("terminate the writer's backend %d: %v %v", writerPID, ok, err)
	}
	time.Sleep(100 * time.Millisecond)
	a.Append(ctx, mb.ID, nil, time.Time{}, testMessage(1)) // may fail: its connection is gone
	if _, err := a.Append(ctx, mb.ID, nil, time.Time{}, testMessage(2)); err != nil {
		t.Fatalf("append after reconnecting: %v", err)
	}
}

// Copying and expunging more messages than one statement takes: every
// message once, usage and reference counts right.
func TestLargeCopyAndExpunge(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	u := addUser(t, s, "u@example.test")
	mb := inbox(t, s, u)
	const n = 2*maxRowsPerStatement + 7
	err := s.w.do(ctx, func(t *wtx) error {
		var msgs []Message
		h, err := t.head(mb.ID)
		if err != nil {
			return err
		}
		first := h.uidnext
		if err := t.bump(mb.ID, &h, n, nil); err != nil {
			return err
		}
		for i := range n {
			body := prepareBody(testMessage(i % 10))
			id, err := t.storeBody(body)
			if err != nil {
				return err
			}
			msgs = append(msgs, Message{MailboxID: mb.ID, UID: first + uint32(i), ModSeq: h.modseq, Flags: []string{FlagDeleted},
				InternalDate: time.Unix(int64(i), 0), Size: int64(len(body.data)), BodyID: id})
		}
		return t.insertMessages(msgs)
	})
	if err != nil {
		t.Fatal(err)
	}
	used, _, _ := s.Usage(ctx, u.ID)
	arch, err := s.MailboxByName(ctx, u.ID, "Archive")
	if err != nil {
		t.Fatal(err)
	}
	pairs, err := s.Copy(ctx, mb.ID, nil, arch.ID)
	if err != nil || len(pairs) != n {
		t.Fatalf("copy: %d pairs, %v", len(pairs), err)
	}
	if used2, _, _ := s.Usage(ctx, u.ID); used2 != 2*used {
		t.Fatalf("usage %d after the copy, want %d", used2, 2*used)
	}
	gone, err := s.Expunge(ctx, mb.ID, nil)
	if err != nil || len(gone) != n || !sort.SliceIsSorted(gone, func(i, j int) bool { return gone[i] < gone[j] }) {
		t.Fatalf("expunge: %d uids, %v", len(gone), err)
	}
	if used3, _, _ := s.Usage(ctx, u.ID); used3 != used {
		t.Fatalf("usage %d after the expunge, want %d", used3, used)
	}
	var refs int
	if err := s.readRow(ctx, "SELECT sum(refs) FROM bodies").Scan(&refs); err != nil || refs != n {
		t.Fatalf("%d references (%v), want %d", refs, err, n)
	}
	if err := s.IntegrityCheck(ctx); err != nil {
		t.Fatal(err)
	}
}

// Bytes PostgreSQL text cannot hold (NUL, invalid UTF-8) in a message, a
// search needle or a remote server's reply are no error, and the message
// is still found.
func TestOddBytes(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	u := addUser(t, s, "u@example.test")
	msg := []byte("From: a@remote.test\r\nSubject: caf\xe9 \x00 menu\r\n\r\nnul \x00 here, caf\xe9 there\r\n")
	d, err := s.Deliver(ctx, "x@remote.test", []string{u.Address}, msg)
	if err != nil {
		t.Fatal(err)
	}
	waitIndexed(t, s)
	for _, needle := range []string{"caf\xe9 there", "menu", "nul \x00"} {
		got, err := s.Search(ctx, d.Stored[0].MailboxID, &SearchCriteria{MayContain: []string{needle}})
		if err != nil || len(got) != 1 {
			t.Errorf("search %q: %d messages, %v; want the message", needle, len(got), err)
		}
	}
	q, err := s.Deliver(ctx, u.Address, []string{"r@remote.test"}, testMessage(1))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.QueueDefer(ctx, q.Queued[0].QueueID, time.Now(), "550 caf\xe9 \x00 closed", false); err != nil {
		t.Fatal(err)
	}
}

// In one batch, requests that fail (by returning an error after writing,
// or by a failing statement) leave nothing, and the others commit.
func TestFailingRequestsInOneBatch(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	gate, running := make(chan struct{}), make(chan struct{})
	blocked := make(chan error, 1)
	go func() {
		blocked <- s.w.do(ctx, func(*wtx) error { close(running); <-gate; return nil })
	}()
	<-running // the writer is busy: what comes now waits for the next batch
	var once sync.Once
	open := func() { once.Do(func() { close(gate) }) }
	defer open()
	const n = 12
	results := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = s.w.do(ctx, func(t *wtx) error {
				if _, err := t.exec("INSERT INTO domains (name) VALUES (?)", fmt.Sprintf("d%d.test", i)); err != nil {
					return err
				}
				switch i % 4 {
				case 1:
					return errors.New("refused after writing")
				case 2:
					_, err := t.exec("INSERT INTO domains (name) VALUES ('example.test')") // exists
					return err
				}
				return nil
			})
		}()
	}
	for deadline := time.Now().Add(10 * time.Second); len(s.w.reqs) < n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests queued, want %d", len(s.w.reqs), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	open()
	wg.Wait()
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
	domains, err := s.Domains(ctx)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, d := range domains {
		have[d] = true
	}
	for i, err := range results {
		ok := i%4 == 0 || i%4 == 3
		if (err == nil) != ok || have[fmt.Sprintf("d%d.test", i)] != ok {
			t.Errorf("request %d: %v, domain stored %v", i, err, have[fmt.Sprintf("d%d.test", i)])
		}
	}
}

// TestDescribePostgresDoesNotMigrate: describing an empty database
// reports schema 0 and leaves it empty; a Postern database reports its
// version.
func TestDescribePostgresDoesNotMigrate(t *testing.T) {
	postgresPass(t)
	ctx := context.Background()
	db := newTestDB(t)
	info, err := DescribePostgres(ctx, db.dsn)
	if err != nil || info.SchemaVersion != 0 || info.ServerVersion == "" || info.Backend != "postgres" {
		t.Fatalf("empty database: %+v, %v", info, err)
	}
	again, err := DescribePostgres(ctx, db.dsn)
	if err != nil || again.SchemaVersion != 0 {
		t.Fatalf("described twice: %+v, %v: the first created a schema", again, err)
	}
	s := db.open(t, Options{PasswordCost: FastPasswordHash})
	s.Close()
	if info, err = DescribePostgres(ctx, db.dsn); err != nil || info.SchemaVersion != len(migrations) {
		t.Fatalf("Postern database: %+v, %v; want schema %d", info, err, len(migrations))
	}
}
