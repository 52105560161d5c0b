package pop3d

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/storetest"
)

// openFrontends opens two Stores on one database of the given backend
// ("sqlite" or "postgres"), as two frontends do: the first has the test
// users; the second's clock runs an hour ahead, so every lease the first
// takes has already run out for it and it can take the maildrop from
// under a session, as a frontend does after the session's renewals
// failed for a whole lease.
func openFrontends(t *testing.T, backend string) (st, ahead *mailstore.Store) {
	t.Helper()
	ctx := context.Background()
	opts := mailstore.Options{PasswordCost: mailstore.FastPasswordHash}
	aheadOpts := opts
	aheadOpts.Now = func() time.Time { return time.Now().Add(time.Hour) }
	var open func(mailstore.Options) (*mailstore.Store, error)
	switch backend {
	case "sqlite":
		path := filepath.Join(t.TempDir(), "postern.db")
		open = func(o mailstore.Options) (*mailstore.Store, error) { return mailstore.Open(path, o) }
	case "postgres":
		dsn := storetest.PostgresDSN(t)
		open = func(o mailstore.Options) (*mailstore.Store, error) { return mailstore.OpenPostgres(ctx, dsn, o) }
	default:
		t.Fatalf("unknown backend %q", backend)
	}
	for _, o := range []struct {
		st   **mailstore.Store
		opts mailstore.Options
	}{{&st, opts}, {&ahead, aheadOpts}} {
		s, err := open(o.opts)
		if err != nil {
			t.Fatalf("open %s store: %v", backend, err)
		}
		t.Cleanup(func() { s.Close() })
		*o.st = s
		if s == st {
			addTestUsers(t, st)
		}
	}
	return st, ahead
}

// TestLeaseLostEndsSession: a session whose maildrop lease was taken by
// another frontend answers its next command with -ERR [IN-USE] and ends
// without UPDATE: the message it marked stays (RFC 1939 section 8).
func TestLeaseLostEndsSession(t *testing.T) {
	for _, backend := range []string{"sqlite", "postgres"} {
		for _, next := range []string{"QUIT", "NOOP", "RETR 2"} {
			t.Run(backend+"/"+strings.Fields(next)[0], func(t *testing.T) {
				ctx := context.Background()
				const lease = 1500 * time.Millisecond // renewed every 500 ms
				st, ahead, ts, c := deletionOnFrontend(t, backend, lease)
				u, _ := takeMaildrop(t, ahead)
				// By then a renewal has found the lease taken, or the lease
				// has run out: either way the session knows.
				time.Sleep(lease)
				if got := c.cmd(next); !strings.HasPrefix(got, "-ERR [IN-USE]") {
					t.Fatalf("%s after the lease was lost: %q, want -ERR [IN-USE]", next, got)
				}
				checkEndedWithLeaseLost(t, st, ts, c)
				// The other frontend's lease is untouched by the session's end.
				if _, err := ahead.LockMaildrop(ctx, u.ID, "third", time.Minute); err == nil {
					t.Errorf("the other frontend's lease was given back by the session that lost it")
				}
			})
		}
	}
}

// TestLeaseHeldAcrossRenewals: a session idle for several lease lengths
// keeps its maildrop (the store renews the lease in time), shuts out
// another frontend all along, and its QUIT removes what it marked.
func TestLeaseHeldAcrossRenewals(t *testing.T) {
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			ctx := context.Background()
			st, _ := openFrontends(t, backend)
			appendMessages(t, st, alice, [][]byte{makeMessage(1, 300), makeMessage(2, 300)})
			const lease = 1500 * time.Millisecond
			ts := startServer(t, st, func(cfg *Config) { cfg.MaildropLease = lease })
			c := dial(t, ts.addr)
			c.login(alice, alicePass)
			c.ok("DELE 1")
			u, err := st.UserByAddress(ctx, alice)
			if err != nil {
				t.Fatal(err)
			}
			// Asked often: the lease is renewed in place, never given
			// back for a moment.
			for end := time.Now().Add(3 * lease); time.Now().Before(end); time.Sleep(lease / 10) {
				if l, err := st.LockMaildrop(ctx, u.ID, "other frontend", lease); err == nil {
					l.Release()
					t.Fatal("another frontend took the maildrop of a session that holds it")
				}
			}
			if got := c.ok("QUIT"); !strings.Contains(got, "(1 messages deleted)") {
				t.Errorf("QUIT: %q", got)
			}
			if msgs, _ := storedMessages(t, st, alice); len(msgs) != 1 {
				t.Errorf("%d messages left, want 1", len(msgs))
			}
		})
	}
}

// TestLeaseExpiresUnrenewed: a lease none of whose renewals got through
// for its length (a store that did not answer: here another process
// holds SQLite's write lock) is lost, even though nobody took it, and
// even once the store answers again.
func TestLeaseExpiresUnrenewed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "postern.db")
	st := openStoreAt(t, path, true)
	appendMessages(t, st, alice, [][]byte{makeMessage(1, 300), makeMessage(2, 300)})
	const lease = time.Second
	ts := startServer(t, st, func(cfg *Config) { cfg.MaildropLease = lease })
	c := dial(t, ts.addr)
	c.login(alice, alicePass)
	c.ok("DELE 1")

	// Another process takes the database's write lock: the store's
	// renewals wait for it.
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatalf("take the write lock: %v", err)
	}
	time.Sleep(lease + lease/2)
	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatalf("give the write lock back: %v", err)
	}
	// The renewal that waited may go through now: too late.
	time.Sleep(lease / 2)
	if got := c.cmd("QUIT"); !strings.HasPrefix(got, "-ERR [IN-USE]") {
		t.Fatalf("QUIT after the lease ran out unrenewed: %q, want -ERR [IN-USE]", got)
	}
	if !c.closed() {
		t.Errorf("connection still open after the lease was lost")
	}
	if !strings.Contains(ts.logs.String(), `detail="maildrop lease lost, nothing removed"`) {
		t.Errorf("the session's end does not say the lease was lost")
	}
	if msgs, _ := storedMessages(t, st, alice); len(msgs) != 2 {
		t.Errorf("%d messages left, want 2", len(msgs))
	}
}

// TestQuitFencedByLease: a lease taken by another frontend just before
// QUIT, before any renewal could notice, still keeps the session out of
// UPDATE: the removal is fenced by the lease in the store's transaction.
func TestQuitFencedByLease(t *testing.T) {
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			st, ahead, ts, c := deletionOnFrontend(t, backend, time.Hour)
			_, other := takeMaildrop(t, ahead)
			if got := c.cmd("QUIT"); !strings.HasPrefix(got, "-ERR [IN-USE]") {
				t.Fatalf("QUIT after the lease was taken: %q, want -ERR [IN-USE]", got)
			}
			checkEndedWithLeaseLost(t, st, ts, c)
			if err := other.Err(); err != nil {
				t.Errorf("the other frontend's lease: %v", err)
			}
		})
	}
}

// deletionOnFrontend starts a frontend on backend whose maildrop lease
// lasts lease, with two messages for alice, logs alice in and marks the
// first deleted; ahead is a second frontend on the same store.
func deletionOnFrontend(t *testing.T, backend string, lease time.Duration) (st, ahead *mailstore.Store, ts *testServer, c *client) {
	t.Helper()
	st, ahead = openFrontends(t, backend)
	appendMessages(t, st, alice, [][]byte{makeMessage(1, 300), makeMessage(2, 300)})
	ts = startServer(t, st, func(cfg *Config) { cfg.MaildropLease = lease })
	c = dial(t, ts.addr)
	c.login(alice, alicePass)
	c.ok("DELE 1")
	return st, ahead, ts, c
}

// takeMaildrop takes alice's maildrop through the other frontend ahead,
// as if its lease had passed to that frontend; it is given back when the
// test ends.
func takeMaildrop(t *testing.T, ahead *mailstore.Store) (mailstore.User, *mailstore.MaildropLease) {
	t.Helper()
	ctx := context.Background()
	u, err := ahead.UserByAddress(ctx, alice)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ahead.LockMaildrop(ctx, u.ID, "other frontend", time.Minute)
	if err != nil {
		t.Fatalf("the other frontend's lock: %v", err)
	}
	t.Cleanup(other.Release)
	return u, other
}

// checkEndedWithLeaseLost checks that a session that lost its maildrop's
// lease was closed, said why, and removed nothing it had marked.
func checkEndedWithLeaseLost(t *testing.T, st *mailstore.Store, ts *testServer, c *client) {
	t.Helper()
	if !c.closed() {
		t.Errorf("connection still open after the lease was lost")
	}
	if !strings.Contains(ts.logs.String(), `detail="maildrop lease lost, nothing removed"`) {
		t.Errorf("the session's end does not say the lease was lost")
	}
	if msgs, _ := storedMessages(t, st, alice); len(msgs) != 2 {
		t.Errorf("%d messages left, want 2: a session without the maildrop removed what it marked", len(msgs))
	}
}
