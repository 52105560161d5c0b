package mailstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// openTest opens a fresh store in a temporary directory with a local
// domain example.test.
func openTest(t testing.TB) *Store {
	t.Helper()
	return openTestWith(t, Options{PasswordCost: FastPasswordHash})
}

// openTestWith is openTest with options.
func openTestWith(t testing.TB, opts Options) *Store {
	t.Helper()
	s := newTestDB(t).open(t, opts)
	t.Cleanup(func() { s.Close() })
	if err := s.AddDomain(context.Background(), "example.test"); err != nil {
		t.Fatal(err)
	}
	return s
}

func addUser(t testing.TB, s *Store, address string) User {
	t.Helper()
	u, err := s.AddUser(context.Background(), address, "secret-"+address)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func inbox(t testing.TB, s *Store, u User) Mailbox {
	t.Helper()
	mb, err := s.MailboxByName(context.Background(), u.ID, "inbox")
	if err != nil {
		t.Fatal(err)
	}
	return mb
}

func testMessage(n int) []byte {
	return []byte(fmt.Sprintf("From: a@example.test\r\nTo: b@example.test\r\nSubject: test %d\r\n\r\nBody %d\r\n", n, n))
}

// sweepNow runs a write transaction, which deletes the unreferenced
// bodies that no Hold needs (those of earlier commits).
func (s *Store) sweepNow(t testing.TB) {
	t.Helper()
	if err := s.w.do(context.Background(), func(*wtx) error { return nil }); err != nil {
		t.Fatal(err)
	}
}

// bodyExists reports whether a body row is there after a sweep.
func (s *Store) bodyExists(ctx context.Context, bodyID int64) bool {
	if err := s.w.do(ctx, func(*wtx) error { return nil }); err != nil {
		panic(err)
	}
	var n int
	if err := s.readRow(ctx, "SELECT count(*) FROM bodies WHERE id = ?", bodyID).Scan(&n); err != nil {
		panic(err)
	}
	return n > 0
}

func TestNewUserMailboxes(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "Alice@Example.TEST")
	if u.Address != "alice@example.test" {
		t.Errorf("address %q, want lower-cased", u.Address)
	}
	boxes, err := s.Mailboxes(ctx, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"INBOX": "", "Sent": `\Sent`, "Drafts": `\Drafts`, "Trash": `\Trash`, "Junk": `\Junk`, "Archive": `\Archive`}
	if len(boxes) != len(want) {
		t.Fatalf("got %d mailboxes, want %d: %+v", len(boxes), len(want), boxes)
	}
	for _, mb := range boxes {
		use, ok := want[mb.Name]
		if !ok || mb.SpecialUse != use {
			t.Errorf("mailbox %q special use %q, want %q (known %v)", mb.Name, mb.SpecialUse, use, ok)
		}
		if !mb.Subscribed || mb.UIDNext != 1 || mb.UIDValidity == 0 {
			t.Errorf("mailbox %q: %+v", mb.Name, mb)
		}
	}
	if _, err := s.AddUser(ctx, "alice@example.test", "x"); !errors.Is(err, ErrExists) {
		t.Errorf("second add: %v, want ErrExists", err)
	}
	if _, err := s.AddUser(ctx, "bob@elsewhere.test", "x"); !errors.Is(err, ErrNotLocal) {
		t.Errorf("add in non-local domain: %v, want ErrNotLocal", err)
	}
}

func TestUIDsAscendAndSurviveReopen(t *testing.T) {
	ctx := context.Background()
	db := newTestDB(t)
	s := db.open(t, Options{PasswordCost: FastPasswordHash})
	if err := s.AddDomain(ctx, "example.test"); err != nil {
		t.Fatal(err)
	}
	u := addUser(t, s, "u@example.test")
	mb := inbox(t, s, u)
	var last uint32
	for i := 0; i < 5; i++ {
		m, err := s.Append(ctx, mb.ID, nil, time.Time{}, testMessage(i))
		if err != nil {
			t.Fatal(err)
		}
		if m.UID <= last {
			t.Fatalf("uid %d after %d", m.UID, last)
		}
		last = m.UID
	}
	// Expunge the newest: its UID must not come back.
	if _, err := s.StoreFlags(ctx, mb.ID, UIDs(last), FlagsAdd, []string{FlagDeleted}); err != nil {
		t.Fatal(err)
	}
	gone, err := s.Expunge(ctx, mb.ID, nil)
	if err != nil || len(gone) != 1 || gone[0] != last {
		t.Fatalf("expunge: %v %v", gone, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = db.open(t, Options{PasswordCost: FastPasswordHash})
	defer s.Close()
	mb2 := inbox(t, s, u)
	if mb2.UIDValidity != mb.UIDValidity {
		t.Errorf("UIDVALIDITY changed across reopen: %d -> %d", mb.UIDValidity, mb2.UIDValidity)
	}
	m, err := s.Append(ctx, mb.ID, nil, time.Time{}, testMessage(9))
	if err != nil {
		t.Fatal(err)
	}
	if m.UID != last+1 {
		t.Errorf("uid after reopen %d, want %d (never reuse %d)", m.UID, last+1, last)
	}
}

func TestModSeqRisesOnFlagChange(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	mb := inbox(t, s, u)
	m, err := s.Append(ctx, mb.ID, []string{"$Important"}, time.Time{}, testMessage(1))
	if err != nil {
		t.Fatal(err)
	}
	prev := m.ModSeq
	steps := []struct {
		op    FlagOp
		flags []string
		want  []string
	}{
		{FlagsAdd, []string{FlagSeen}, []string{FlagSeen, "$Important"}},
		{FlagsAdd, []string{"work"}, []string{FlagSeen, "$Important", "work"}},
		{FlagsRemove, []string{"$important"}, []string{FlagSeen, "work"}},
		{FlagsSet, []string{FlagFlagged, FlagAnswered}, []string{FlagAnswered, FlagFlagged}},
	}
	for _, st := range steps {
		out, err := s.StoreFlags(ctx, mb.ID, UIDs(m.UID), st.op, st.flags)
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != 1 || fmt.Sprint(out[0].Flags) != fmt.Sprint(st.want) {
			t.Fatalf("after %v %v: %+v, want flags %v", st.op, st.flags, out, st.want)
		}
		if out[0].ModSeq <= prev {
			t.Errorf("modseq %d did not rise from %d", out[0].ModSeq, prev)
		}
		prev = out[0].ModSeq
		mbNow, _ := s.MailboxByID(ctx, mb.ID)
		if mbNow.HighestModSeq != prev {
			t.Errorf("HIGHESTMODSEQ %d, want %d", mbNow.HighestModSeq, prev)
		}
	}
	// A no-op change keeps MODSEQ.
	out, err := s.StoreFlags(ctx, mb.ID, UIDs(m.UID), FlagsAdd, []string{FlagFlagged})
	if err != nil || out[0].ModSeq != prev {
		t.Errorf("no-op store changed modseq %d -> %d (%v)", prev, out[0].ModSeq, err)
	}
	mbNow, _ := s.MailboxByID(ctx, mb.ID)
	if fmt.Sprint(mbNow.Keywords) != "[$Important work]" {
		t.Errorf("mailbox keywords %v", mbNow.Keywords)
	}
	if _, err := s.StoreFlags(ctx, mb.ID, UIDs(m.UID), FlagsAdd, []string{"bad keyword"}); !errors.Is(err, ErrInvalidName) {
		t.Errorf("bad keyword: %v", err)
	}
}

func TestBodyStoredOnceAndFreedWithLastMessage(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	users := []User{addUser(t, s, "a@example.test"), addUser(t, s, "b@example.test"), addUser(t, s, "c@example.test")}
	msg := testMessage(1)
	d, err := s.Deliver(ctx, "sender@remote.test", []string{"a@example.test", "B@example.test", "c@example.test"}, msg)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Stored) != 3 || len(d.Failed) != 0 {
		t.Fatalf("delivery %+v", d)
	}
	var bodyIDs []int64
	var bodies int
	if err := s.readRow(context.Background(), "SELECT count(*) FROM bodies").Scan(&bodies); err != nil {
		t.Fatal(err)
	}
	if bodies != 1 {
		t.Fatalf("%d bodies stored, want 1", bodies)
	}
	for _, u := range users {
		msgs, err := s.Messages(ctx, inbox(t, s, u).ID, nil)
		if err != nil || len(msgs) != 1 {
			t.Fatalf("%s: %v %v", u.Address, msgs, err)
		}
		got, err := s.ReadBody(ctx, msgs[0].BodyID)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("body of %s: %q %v", u.Address, got, err)
		}
		bodyIDs = append(bodyIDs, msgs[0].BodyID)
	}
	if bodyIDs[0] != bodyIDs[1] || bodyIDs[1] != bodyIDs[2] {
		t.Fatalf("body ids differ: %v", bodyIDs)
	}
	for i, u := range users {
		mb := inbox(t, s, u)
		if _, err := s.DeleteMessages(ctx, mb.ID, []uint32{1}); err != nil {
			t.Fatal(err)
		}
		if exists := s.bodyExists(ctx, bodyIDs[0]); exists != (i < 2) {
			t.Fatalf("after removing %d of 3 copies, body exists = %v", i+1, exists)
		}
	}
}

func TestConcurrentDeliveries(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	const workers, each = 50, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if _, err := s.Deliver(ctx, "x@remote.test", []string{u.Address}, testMessage(w*1000+i)); err != nil {
					errs <- err
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	msgs, err := s.Messages(ctx, inbox(t, s, u).ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != workers*each {
		t.Fatalf("%d messages stored, want %d", len(msgs), workers*each)
	}
	seen := map[string]bool{}
	for i, m := range msgs {
		if m.UID != uint32(i+1) {
			t.Fatalf("message %d has uid %d", i, m.UID)
		}
		b, err := s.ReadBody(ctx, m.BodyID)
		if err != nil {
			t.Fatal(err)
		}
		if seen[string(b)] {
			t.Fatalf("message stored twice: %q", b)
		}
		seen[string(b)] = true
	}
}

func TestFailingRequestDoesNotFailItsGroup(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	mb := inbox(t, s, u)
	var wg sync.WaitGroup
	results := make([]error, 40)
	for i := range results {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if i%2 == 0 {
				_, results[i] = s.Append(ctx, mb.ID, []string{`\Bogus`}, time.Time{}, testMessage(i))
				return
			}
			// Fails inside the writer: the mailbox does not exist.
			if i%4 == 1 {
				_, results[i] = s.Append(ctx, 999999, nil, time.Time{}, testMessage(i))
				return
			}
			_, results[i] = s.Append(ctx, mb.ID, nil, time.Time{}, testMessage(i))
		}(i)
	}
	wg.Wait()
	good := 0
	for i, err := range results {
		switch {
		case i%2 == 0 && !errors.Is(err, ErrInvalidName), i%4 == 1 && !errors.Is(err, ErrNotFound):
			t.Errorf("request %d: %v", i, err)
		case i%4 == 3 && err != nil:
			t.Errorf("good request %d failed: %v", i, err)
		case i%4 == 3:
			good++
		}
	}
	st, err := s.Status(ctx, mb.ID)
	if err != nil {
		t.Fatal(err)
	}
	if int(st.Messages) != good {
		t.Errorf("%d messages stored, want %d", st.Messages, good)
	}
}

func TestRefusesForeignAndFutureFiles(t *testing.T) {
	sqliteOnly(t)
	dir := t.TempDir()
	ctx := context.Background()
	// A future Postern schema.
	future := filepath.Join(dir, "future.db")
	s, err := Open(future, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	setUserVersion(t, future, len(migrations)+1)
	// A SQLite database of another program.
	foreign := filepath.Join(dir, "foreign.db")
	makeForeignDB(t, foreign)
	// Not a database at all.
	text := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(text, []byte("Dear diary, today I stored no mail.\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		want error
	}{{future, ErrSchemaTooNew}, {foreign, ErrNotPostern}, {text, ErrNotPostern}} {
		before := snapshot(t, dir)
		s, err := Open(c.path, Options{})
		if err == nil {
			s.Close()
			t.Errorf("%s: opened", c.path)
			continue
		}
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.path, err, c.want)
		}
		if after := snapshot(t, dir); after != before {
			t.Errorf("%s: files changed:\n%s\n->\n%s", c.path, before, after)
		}
	}
	_ = ctx
}

func TestAuthenticate(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	if _, err := s.Authenticate(ctx, "U@example.test", "secret-u@example.test"); err != nil {
		t.Fatalf("good password: %v", err)
	}
	// Cached now; a second login also works.
	if got, err := s.Authenticate(ctx, "u@example.test", "secret-u@example.test"); err != nil || got.ID != u.ID {
		t.Fatalf("cached login: %v %v", got, err)
	}
	for _, c := range []struct{ user, pass string }{
		{"u@example.test", "wrong"},
		{"u@example.test", ""},
		{"nobody@example.test", "secret-u@example.test"},
		{"not an address", "x"},
	} {
		if _, err := s.Authenticate(ctx, c.user, c.pass); !errors.Is(err, ErrAuthFailed) {
			t.Errorf("%q/%q: %v, want ErrAuthFailed", c.user, c.pass, err)
		}
	}
	if err := s.SetPassword(ctx, u.Address, "new"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, u.Address, "secret-u@example.test"); !errors.Is(err, ErrAuthFailed) {
		t.Errorf("old password after change: %v", err)
	}
	if _, err := s.Authenticate(ctx, u.Address, "new"); err != nil {
		t.Errorf("new password: %v", err)
	}
	if err := s.SetDisabled(ctx, u.Address, true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, u.Address, "new"); !errors.Is(err, ErrAuthFailed) {
		t.Errorf("disabled user: %v", err)
	}
	if err := s.DeleteUser(ctx, u.Address); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, u.Address, "new"); !errors.Is(err, ErrAuthFailed) {
		t.Errorf("deleted user: %v", err)
	}
}

// TestPasswordStamp: the stamp is stable while the password is, changes
// with it (the web console ends sessions on that), and is not the stored
// hash.
func TestPasswordStamp(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	first, err := s.PasswordStamp(ctx, "U@Example.test")
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.PasswordStamp(ctx, u.Address)
	if err != nil || !bytes.Equal(first, again) {
		t.Fatalf("stamp changed without a password change: %x %x %v", first, again, err)
	}
	var hash string
	if err := s.readRow(ctx, "SELECT password_hash FROM users WHERE id = ?", u.ID).Scan(&hash); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(first, []byte(hash)) || len(first) != 32 {
		t.Fatalf("stamp %x is not a digest of the hash", first)
	}
	if err := s.SetPassword(ctx, u.Address, "another"); err != nil {
		t.Fatal(err)
	}
	if after, err := s.PasswordStamp(ctx, u.Address); err != nil || bytes.Equal(after, first) {
		t.Fatalf("stamp after a password change: %x %v (was %x)", after, err, first)
	}
	if _, err := s.PasswordStamp(ctx, "nobody@example.test"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown user: %v", err)
	}
}

// The writer counts as busy while writes other than the indexer's come
// in (the indexer gives way to them), and the indexer's own writes do not
// make it busy.
func TestWriterBusyIgnoresIndexer(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	const window = time.Hour
	s.w.lastWrite.Store(-int64(2 * time.Hour)) // long before
	if err := s.w.doBackground(ctx, func(*wtx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if s.w.busy(window) {
		t.Fatal("the indexer's own write made the writer busy")
	}
	addUser(t, s, "u@example.test")
	if !s.w.busy(window) {
		t.Fatal("a write other than the indexer's did not make the writer busy")
	}
	if s.w.busy(0) {
		t.Fatal("busy with an empty queue and no window")
	}
}

// The indexer gives way only to a writer other writes keep busy: a
// steady trickle (flag changes, a few deliveries a second) leaves it at
// full speed, and its own batches, however long, do not hide a burst.
func TestWriterSaturated(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		elapsed, fore, back time.Duration
		want                bool
	}{
		{100 * ms, 10 * ms, 0, false},     // 10% load
		{100 * ms, 90 * ms, 0, true},      // a burst
		{35 * ms, 5 * ms, 30 * ms, true},  // a burst between full-speed batches
		{35 * ms, 1 * ms, 30 * ms, false}, // a trickle between them
		{30 * ms, 0, 30 * ms, false},      // the indexer alone
		{0, 0, 0, false},
	} {
		if got := writerSaturated(c.elapsed, c.fore, c.back); got != c.want {
			t.Errorf("elapsed %v, other writes %v, indexer %v: saturated %v, want %v", c.elapsed, c.fore, c.back, got, c.want)
		}
	}
}

// The indexer also gives way when the process uses most of its cores
// while other writes come in.
func TestCPUSaturated(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		elapsed, cpu time.Duration
		cores        int
		want         bool
	}{
		{100 * ms, 190 * ms, 2, true},
		{100 * ms, 120 * ms, 2, false},
		{100 * ms, 90 * ms, 1, true},
		{0, 10 * ms, 2, false},
	} {
		if got := cpuSaturated(c.elapsed, c.cpu, c.cores); got != c.want {
			t.Errorf("elapsed %v, CPU %v on %d cores: saturated %v, want %v", c.elapsed, c.cpu, c.cores, got, c.want)
		}
	}
}

// Under load the indexer leaves a small backlog alone (searches read it)
// for at most indexDeferMax, and indexes one at or above the bound as
// before; without load it indexes whatever waits.
func TestIndexDefers(t *testing.T) {
	for _, c := range []struct {
		saturated bool
		backlog   int64
		deferred  time.Duration
		want      bool
	}{
		{true, 1, 0, true},
		{true, indexDeferBacklog - 1, indexDeferMax - time.Millisecond, true},
		{true, indexDeferBacklog, 0, false}, // counted up to the bound: at least that many
		{true, 1, indexDeferMax, false},     // waited long enough
		{false, 1, 0, false},
		{false, indexDeferBacklog - 1, 0, false},
		{false, indexDeferBacklog, 0, false},
	} {
		if got := indexDefers(c.saturated, c.backlog, indexDeferBacklog, c.deferred); got != c.want {
			t.Errorf("under load %v, backlog %d, deferred %v: defers %v, want %v", c.saturated, c.backlog, c.deferred, got, c.want)
		}
	}
}

// A batch runs without savepoints until one of its requests fails; then
// it runs again with them, and so do the next savepointBatches batches,
// so that a request that keeps failing does not make every batch run
// twice.
func TestFailedRequestMakesNextBatchesTakeSavepoints(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	runs := func() int {
		t.Helper()
		var n int
		if err := s.w.do(ctx, func(t *wtx) error { n = t.w.savepointRuns; return nil }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := runs(); n != 0 {
		t.Fatalf("savepoint runs before any failure: %d", n)
	}
	// Hold the writer so that a failing and a good request share the
	// next batch.
	release := holdWriter(t, s)
	results := make(chan error, 2)
	go func() { results <- s.w.do(ctx, func(*wtx) error { return errors.New("refused") }) }()
	go func() {
		results <- s.w.do(ctx, func(t *wtx) error {
			_, err := t.exec("INSERT INTO domains (name) VALUES ('kept.test')")
			return err
		})
	}()
	release(2)
	failed := 0
	for range 2 {
		if err := <-results; err != nil {
			failed++
		}
	}
	if failed != 1 {
		t.Fatalf("%d requests failed, want 1", failed)
	}
	if d, err := s.Domains(ctx); err != nil || !slices.Contains(d, "kept.test") {
		t.Fatalf("the good request's write: %v %v", d, err)
	}
	// This look is itself a batch, which takes one of the runs (the
	// store's own upkeep may have taken one more).
	if n := runs(); n < savepointBatches-2 || n > savepointBatches-1 {
		t.Fatalf("savepoint runs after a failure: %d, want %d", n, savepointBatches-1)
	}
	for range savepointBatches {
		runs()
	}
	if n := runs(); n != 0 {
		t.Fatalf("savepoint runs after %d more batches: %d", savepointBatches, n)
	}
}

// The writer's load counts batches with other writes apart from the
// indexer's own.
func TestWriterLoadSplitsIndexer(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	// The writer adds a batch's time once the batch is over, just after
	// it has answered: wait for it.
	settled := func(ok func(fore, back time.Duration) bool) (time.Duration, time.Duration) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			fore, back := s.w.load()
			if ok(fore, back) || time.Now().After(deadline) {
				return fore, back
			}
		}
	}
	fore0, back0 := s.w.load()
	if err := s.w.doBackground(ctx, func(*wtx) error { time.Sleep(20 * time.Millisecond); return nil }); err != nil {
		t.Fatal(err)
	}
	fore1, back1 := settled(func(_, back time.Duration) bool { return back-back0 >= 20*time.Millisecond })
	// Other writes of the store (opening it, its upkeep) may end
	// meanwhile, but none as long as the indexer's.
	if back1-back0 < 20*time.Millisecond || fore1-fore0 >= 20*time.Millisecond {
		t.Fatalf("after the indexer's write: other %v -> %v, indexer %v -> %v", fore0, fore1, back0, back1)
	}
	if err := s.w.do(ctx, func(*wtx) error { time.Sleep(20 * time.Millisecond); return nil }); err != nil {
		t.Fatal(err)
	}
	fore2, back2 := settled(func(fore, _ time.Duration) bool { return fore-fore1 >= 20*time.Millisecond })
	if fore2-fore1 < 20*time.Millisecond || back2-back1 >= 20*time.Millisecond {
		t.Fatalf("after another write: other %v -> %v, indexer %v -> %v", fore1, fore2, back1, back2)
	}
}

// A request alone in its batch runs without a savepoint: when it fails,
// its writes are rolled back and it gets its error, and the next batches
// take no savepoints for it.
func TestLoneRequestFailsWithoutSavepoint(t *testing.T) {
	ctx := context.Background()
	var commits atomic.Int64
	s := openTestWith(t, Options{PasswordCost: FastPasswordHash, OnCommit: func(CommitInfo) { commits.Add(1) }})
	refused := errors.New("refused")
	// Many times over: the store's own upkeep may commit meanwhile, but
	// far fewer times than this.
	const tries = 20
	before := commits.Load()
	for range tries {
		err := s.w.do(ctx, func(t *wtx) error {
			if _, err := t.exec("INSERT INTO domains (name) VALUES ('undone.test')"); err != nil {
				return err
			}
			return refused
		})
		if !errors.Is(err, refused) {
			t.Fatalf("lone failing request: %v, want its own error", err)
		}
	}
	// Nothing was committed, and OnCommit (metrics) says nothing of it.
	if n := commits.Load() - before; n >= tries/2 {
		t.Fatalf("%d commits reported for %d requests rolled back", n, tries)
	}
	if d, err := s.Domains(ctx); err != nil || slices.Contains(d, "undone.test") {
		t.Fatalf("the failed request's write stayed: %v %v", d, err)
	}
	var n int
	if err := s.w.do(ctx, func(t *wtx) error { n = t.w.savepointRuns; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("savepoint runs after a lone failure: %d, want 0", n)
	}
}

// A delivery that reaches nobody (over quota) fails without failing its
// batch: it writes nothing, the others in the batch are stored, and no
// batch runs again with savepoints for it.
func TestUndeliverableDoesNotFailBatch(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	fullUser, roomUser := addUser(t, s, "full@example.test"), addUser(t, s, "room@example.test")
	if err := s.SetQuota(ctx, "full@example.test", 1); err != nil {
		t.Fatal(err)
	}
	release := holdWriter(t, s)
	full, room := make(chan error, 1), make(chan error, 1)
	go func() {
		_, err := s.Deliver(ctx, "s@elsewhere.test", []string{"full@example.test"}, testMessage(1))
		full <- err
	}()
	go func() {
		_, err := s.Deliver(ctx, "s@elsewhere.test", []string{"room@example.test"}, testMessage(2))
		room <- err
	}()
	release(2)
	if err := <-full; !errors.Is(err, ErrOverQuota) {
		t.Fatalf("delivery over quota: %v, want ErrOverQuota", err)
	}
	if err := <-room; err != nil {
		t.Fatalf("delivery with room: %v", err)
	}
	var n int
	if err := s.w.do(ctx, func(t *wtx) error { n = t.w.savepointRuns; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("savepoint runs after an undeliverable message: %d, want 0", n)
	}
	for u, want := range map[User]uint32{fullUser: 0, roomUser: 1} {
		st, err := s.Status(ctx, inbox(t, s, u).ID)
		if err != nil {
			t.Fatal(err)
		}
		if st.Messages != want || st.UIDNext != want+1 {
			t.Fatalf("%s: %d messages, UIDNEXT %d; want %d and %d", u.Address, st.Messages, st.UIDNext, want, want+1)
		}
	}
	var bodies int
	if err := s.readRow(ctx, "SELECT count(*) FROM bodies").Scan(&bodies); err != nil {
		t.Fatal(err)
	}
	if bodies != 1 {
		t.Fatalf("%d bodies stored, want 1 (nothing for the undeliverable message)", bodies)
	}
}

// holdWriter keeps the writer busy with a request of its own, so that
// the requests made next share one batch; release(n) waits until n of
// them are queued and lets the writer go on.
func holdWriter(t *testing.T, s *Store) (release func(n int)) {
	t.Helper()
	gate, running := make(chan struct{}), make(chan struct{})
	blocked := make(chan error, 1)
	go func() {
		blocked <- s.w.do(context.Background(), func(*wtx) error { close(running); <-gate; return nil })
	}()
	<-running
	return func(n int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); len(s.w.reqs) < n; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d requests queued, want %d", len(s.w.reqs), n)
			}
		}
		close(gate)
		if err := <-blocked; err != nil {
			t.Fatal(err)
		}
	}
}
