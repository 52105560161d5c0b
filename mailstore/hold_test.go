package mailstore

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/mailstore/storetest"
)

// bigMessage spans several chunks, so that reading it needs more than the
// query OpenBody makes.
func bigMessage(n int) []byte {
	return []byte(fmt.Sprintf("Subject: big %d\r\n\r\n%s\r\n", n, strings.Repeat(fmt.Sprintf("line %d\r\n", n), 3*chunkSize/8)))
}

// bodyRows counts the rows a body leaves in every table that holds its
// data.
func bodyRows(t testing.TB, s *Store, bodyID int64) int {
	t.Helper()
	var n int
	err := s.readRow(context.Background(), `SELECT (SELECT count(*) FROM bodies WHERE id = ?) + (SELECT count(*) FROM body_chunks WHERE body_id = ?)
		+ (SELECT count(*) FROM body_meta WHERE body_id = ?)`, bodyID, bodyID, bodyID).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// unreferenced counts body rows that no message or queue entry uses, and
// chunk or meta rows without a body.
func unreferenced(t testing.TB, s *Store) int {
	t.Helper()
	var n int
	err := s.readRow(context.Background(), `SELECT (SELECT count(*) FROM bodies b WHERE NOT EXISTS (SELECT 1 FROM messages WHERE body_id = b.id)
			AND NOT EXISTS (SELECT 1 FROM queue WHERE body_id = b.id))
		+ (SELECT count(*) FROM body_chunks c WHERE NOT EXISTS (SELECT 1 FROM bodies WHERE id = c.body_id))
		+ (SELECT count(*) FROM body_meta m WHERE NOT EXISTS (SELECT 1 FROM bodies WHERE id = m.body_id))`).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func appendMsg(t testing.TB, s *Store, mailboxID int64, msg []byte) Message {
	t.Helper()
	m, err := s.Append(context.Background(), mailboxID, nil, time.Time{}, msg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestHoldKeepsExpungedBody(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	mb := inbox(t, s, addUser(t, s, "u@example.test"))
	msg := bigMessage(1)
	m := appendMsg(t, s, mb.ID, msg)
	if err := s.SetBodyMeta(ctx, m.BodyID, "test", []byte("derived")); err != nil {
		t.Fatal(err)
	}
	h := s.Hold()
	defer h.Close()
	// A Body opened before the expunge reads on after it.
	early, err := s.OpenBody(ctx, m.BodyID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.StoreFlags(ctx, mb.ID, UIDs(m.UID), FlagsAdd, []string{FlagDeleted}); err != nil {
		t.Fatal(err)
	}
	if gone, err := s.Expunge(ctx, mb.ID, nil); err != nil || len(gone) != 1 {
		t.Fatalf("expunge: %v %v", gone, err)
	}
	// A Hold taken after the expunge does not keep the body; the first
	// one does, through any number of sweeps.
	late := s.Hold()
	defer late.Close()
	late.Sync()
	for range 3 {
		s.sweepNow(t)
	}
	got, err := s.ReadBody(ctx, m.BodyID)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("body while held: %d bytes, %v", len(got), err)
	}
	if meta, ok, err := s.BodyMeta(ctx, m.BodyID, "test"); err != nil || !ok || string(meta) != "derived" {
		t.Fatalf("meta while held: %q %v %v", meta, ok, err)
	}

	h.Sync()
	s.sweepNow(t)
	if _, err := s.OpenBody(ctx, m.BodyID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open body after sync and sweep: %v, want ErrNotFound", err)
	}
	if _, err := s.ReadBody(ctx, m.BodyID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read body after sync and sweep: %v, want ErrNotFound", err)
	}
	if _, err := io.ReadAll(early); !errors.Is(err, ErrNotFound) {
		t.Fatalf("reading on an open body after it went: %v, want ErrNotFound", err)
	}
	if n := bodyRows(t, s, m.BodyID); n != 0 {
		t.Fatalf("%d rows of the body left", n)
	}
	if n := unreferenced(t, s); n != 0 {
		t.Fatalf("%d unreferenced rows", n)
	}
}

// Sync and Close wake the writer: the body goes without another write.
func TestHoldReleaseSweepsWithoutWrites(t *testing.T) {
	for _, release := range []string{"sync", "close"} {
		t.Run(release, func(t *testing.T) {
			s := openTest(t)
			ctx := context.Background()
			mb := inbox(t, s, addUser(t, s, "u@example.test"))
			m := appendMsg(t, s, mb.ID, testMessage(1))
			h := s.Hold()
			if _, err := s.DeleteMessages(ctx, mb.ID, []uint32{m.UID}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * sweepDelay)
			if bodyRows(t, s, m.BodyID) == 0 {
				t.Fatal("body deleted while held")
			}
			if release == "sync" {
				h.Sync()
			} else {
				h.Close()
				h.Close() // idempotent
				h.Sync()  // does nothing after Close
			}
			deadline := time.Now().Add(10 * time.Second)
			for bodyRows(t, s, m.BodyID) != 0 {
				if time.Now().After(deadline) {
					t.Fatal("body still there 10 s after its last holder let go")
				}
				time.Sleep(10 * time.Millisecond)
			}
			h.Close()
		})
	}
}

func TestHoldCloseFromManyGoroutines(t *testing.T) {
	s := openTest(t)
	h := s.Hold()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.Sync()
			h.Close()
		}()
	}
	wg.Wait()
	if _, held := s.w.keep.floor(); held {
		t.Fatal("a closed Hold is still counted")
	}
}

// A delivery of the same content while the body waits revives it.
func TestHoldRedeliveryRevivesBody(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	mb := inbox(t, s, u)
	msg := bigMessage(2)
	m := appendMsg(t, s, mb.ID, msg)
	h := s.Hold()
	if _, err := s.DeleteMessages(ctx, mb.ID, []uint32{m.UID}); err != nil {
		t.Fatal(err)
	}
	s.sweepNow(t)
	d, err := s.Deliver(ctx, "x@remote.test", []string{u.Address}, msg)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := s.Messages(ctx, mb.ID, UIDs(d.Stored[0].UID))
	if err != nil || len(msgs) != 1 {
		t.Fatalf("redelivered message: %v %v", msgs, err)
	}
	if msgs[0].BodyID != m.BodyID {
		t.Fatalf("redelivery stored body %d, want the waiting body %d reused", msgs[0].BodyID, m.BodyID)
	}
	h.Sync()
	h.Close()
	s.sweepNow(t)
	s.sweepNow(t)
	got, err := s.ReadBody(ctx, m.BodyID)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("revived body: %d bytes, %v", len(got), err)
	}
	// Its last reference going again, with no Hold, frees it.
	if _, err := s.DeleteMessages(ctx, mb.ID, []uint32{msgs[0].UID}); err != nil {
		t.Fatal(err)
	}
	s.sweepNow(t)
	if n := bodyRows(t, s, m.BodyID); n != 0 {
		t.Fatalf("%d rows left after the revived body's last message went", n)
	}
	if n := unreferenced(t, s); n != 0 {
		t.Fatalf("%d unreferenced rows", n)
	}
}

// A Hold that never syncs keeps a body for HoldMaxAge, not longer.
func TestHoldMaxAge(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := newTestDB(t).open(t, Options{PasswordCost: FastPasswordHash, Now: clock, HoldMaxAge: time.Hour})
	defer s.Close()
	ctx := context.Background()
	if err := s.AddDomain(ctx, "example.test"); err != nil {
		t.Fatal(err)
	}
	mb := inbox(t, s, addUser(t, s, "u@example.test"))
	m := appendMsg(t, s, mb.ID, testMessage(1))
	h := s.Hold()
	defer h.Close()
	if _, err := s.DeleteMessages(ctx, mb.ID, []uint32{m.UID}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	now = now.Add(59 * time.Minute)
	mu.Unlock()
	s.sweepNow(t)
	if _, err := s.ReadBody(ctx, m.BodyID); err != nil {
		t.Fatalf("body before the cap: %v", err)
	}
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	s.sweepNow(t)
	if _, err := s.ReadBody(ctx, m.BodyID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("body after the cap: %v, want ErrNotFound", err)
	}
	if n := bodyRows(t, s, m.BodyID); n != 0 {
		t.Fatalf("%d rows left", n)
	}
}

// Many sessions expunge and read at once; a reader that holds, lists and
// reads before it syncs never meets a missing body.
func TestHoldRace(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	mb := inbox(t, s, addUser(t, s, "u@example.test"))
	const writers, readers = 4, 6
	rounds := 60
	if testing.Short() {
		rounds = 15
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errc := make(chan error, writers+readers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				// A few contents only, so that deliveries revive
				// waiting bodies.
				m, err := s.Append(ctx, mb.ID, nil, time.Time{}, testMessage((w*rounds+i)%7))
				if err != nil {
					errc <- err
					return
				}
				if _, err := s.DeleteMessages(ctx, mb.ID, []uint32{m.UID - 1, m.UID - 3}); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	var rwg sync.WaitGroup
	for range readers {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			h := s.Hold()
			defer h.Close()
			for {
				select {
				case <-stop:
					return
				default:
				}
				h.Sync()
				msgs, err := s.Messages(ctx, mb.ID, nil)
				if err != nil {
					errc <- err
					return
				}
				for _, m := range msgs {
					b, err := s.ReadBody(ctx, m.BodyID)
					if err != nil {
						errc <- fmt.Errorf("uid %d, listed while held: %w", m.UID, err)
						return
					}
					if int64(len(b)) != m.Size {
						errc <- fmt.Errorf("uid %d: %d bytes, want %d", m.UID, len(b), m.Size)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	rwg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	s.sweepNow(t)
	s.sweepNow(t)
	if n := unreferenced(t, s); n != 0 {
		t.Fatalf("%d unreferenced rows after every Hold closed", n)
	}
	if err := s.IntegrityCheck(ctx); err != nil {
		t.Fatal(err)
	}
}

// holdChild (args: the database) expunges messages under an open Hold,
// prints "ready" and waits to be killed.
func holdChild(args []string) int {
	s, err := openLocation(args[0], Options{PasswordCost: FastPasswordHash})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	ctx := context.Background()
	u, err := s.UserByAddress(ctx, "u@example.test")
	if err == nil {
		var mb Mailbox
		if mb, err = s.MailboxByName(ctx, u.ID, "INBOX"); err == nil {
			_ = s.Hold()
			_, err = s.DeleteMessages(ctx, mb.ID, []uint32{1, 2, 3})
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 4
	}
	fmt.Println("ready")
	time.Sleep(time.Minute)
	return 5
}

// Bodies kept for a Hold when the process dies are deleted at the next
// Open.
func TestCrashWhileHeldSweepsAtOpen(t *testing.T) {
	ctx := context.Background()
	tdb := newTestDB(t)
	path := tdb.location()
	s := tdb.open(t, Options{PasswordCost: FastPasswordHash})
	if err := s.AddDomain(ctx, "example.test"); err != nil {
		t.Fatal(err)
	}
	u := addUser(t, s, "u@example.test")
	mb := inbox(t, s, u)
	var ids []int64
	for i := range 4 {
		ids = append(ids, appendMsg(t, s, mb.ID, bigMessage(i)).BodyID)
	}
	s.Close()

	child := storetest.StartChild(t, "hold", path)
	line, err := bufio.NewReader(child.Stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("child: %q %v", line, err)
	}
	child.Kill()
	// The child's Hold kept the three bodies: they are in the file.
	driver, dsn := "sqlite", "file:"+path+"?mode=ro"
	if onPostgres() {
		driver, dsn = "pgx", path
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	var kept int
	err = db.QueryRow("SELECT count(*) FROM bodies WHERE refs <= 0").Scan(&kept)
	db.Close()
	if err != nil || kept != 3 {
		t.Fatalf("%d unreferenced bodies left by the killed process (%v), want 3", kept, err)
	}

	s = tdb.open(t, Options{PasswordCost: FastPasswordHash})
	defer s.Close()
	if err := s.IntegrityCheck(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids[:3] {
		if n := bodyRows(t, s, id); n != 0 {
			t.Errorf("body %d: %d rows left after restart", id, n)
		}
	}
	if n := unreferenced(t, s); n != 0 {
		t.Errorf("%d unreferenced rows after restart", n)
	}
	if got, err := s.ReadBody(ctx, ids[3]); err != nil || !bytes.Equal(got, bigMessage(3)) {
		t.Errorf("the message left: %d bytes, %v", len(got), err)
	}
}

// Bodies whose messages go with their mailbox or user (ON DELETE CASCADE)
// wait for the Holds like expunged ones.
func TestHoldCoversCascadedDeletes(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	other, err := s.CreateMailbox(ctx, u.ID, "Other", "")
	if err != nil {
		t.Fatal(err)
	}
	a := appendMsg(t, s, other.ID, testMessage(1))
	b := appendMsg(t, s, inbox(t, s, u).ID, testMessage(2))
	h := s.Hold()
	if err := s.DeleteMailbox(ctx, u.ID, "Other"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteUser(ctx, u.Address); err != nil {
		t.Fatal(err)
	}
	s.sweepNow(t)
	for _, m := range []Message{a, b} {
		if _, err := s.ReadBody(ctx, m.BodyID); err != nil {
			t.Fatalf("body %d while held: %v", m.BodyID, err)
		}
	}
	h.Close()
	s.sweepNow(t)
	if n := unreferenced(t, s); n != 0 {
		t.Fatalf("%d unreferenced rows after the Hold closed", n)
	}
	var n int
	if err := s.readRow(context.Background(), "SELECT count(*) FROM bodies").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d bodies left (%v)", n, err)
	}
}
