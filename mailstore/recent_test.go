package mailstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"path/filepath"
	"sync"
	"testing"
)

func claim(t testing.TB, s *Store, mailboxID int64) (first, last uint32) {
	t.Helper()
	first, last, err := s.ClaimRecent(context.Background(), mailboxID)
	if err != nil {
		t.Fatal(err)
	}
	return first, last
}

func TestClaimRecent(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	mb := inbox(t, s, u)
	if first, last := claim(t, s, mb.ID); first <= last {
		t.Fatalf("empty mailbox: claimed %d:%d", first, last)
	}
	for i := range 3 {
		appendMsg(t, s, mb.ID, testMessage(i))
	}
	if first, last := claim(t, s, mb.ID); first != 1 || last != 3 {
		t.Fatalf("first claim %d:%d, want 1:3", first, last)
	}
	if first, last := claim(t, s, mb.ID); first <= last {
		t.Fatalf("second claim %d:%d, want none", first, last)
	}
	// Expunged before anyone claimed it: the range still covers it.
	if _, err := s.Deliver(ctx, "x@remote.test", []string{u.Address}, testMessage(10)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteMessages(ctx, mb.ID, []uint32{4}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Deliver(ctx, "x@remote.test", []string{u.Address}, testMessage(11)); err != nil {
		t.Fatal(err)
	}
	if first, last := claim(t, s, mb.ID); first != 4 || last != 5 {
		t.Fatalf("claim after deliveries %d:%d, want 4:5", first, last)
	}
	if first, last := claim(t, s, mb.ID); first <= last {
		t.Fatalf("claim again %d:%d, want none", first, last)
	}
	// Every mailbox has its own mark.
	other, err := s.CreateMailbox(ctx, u.ID, "Other", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Copy(ctx, mb.ID, nil, other.ID); err != nil {
		t.Fatal(err)
	}
	if first, last := claim(t, s, other.ID); first != 1 || last != 4 {
		t.Fatalf("claim in the copy's mailbox %d:%d, want 1:4", first, last)
	}
	if _, _, err := s.ClaimRecent(ctx, 9999); !errors.Is(err, ErrNotFound) {
		t.Fatalf("claim in an unknown mailbox: %v", err)
	}
}

// Sessions claiming while mail arrives each get distinct UIDs, and every
// UID goes to exactly one of them.
func TestClaimRecentConcurrent(t *testing.T) {
	s := openTest(t)
	mb := inbox(t, s, addUser(t, s, "u@example.test"))
	const claimers, messages = 6, 60
	var mu sync.Mutex
	claimed := map[uint32]int{}
	done := make(chan struct{})
	var wg sync.WaitGroup
	errc := make(chan error, claimers)
	for range claimers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				first, last, err := s.ClaimRecent(context.Background(), mb.ID)
				if err != nil {
					errc <- err
					return
				}
				mu.Lock()
				for uid := first; uid <= last && first <= last; uid++ {
					claimed[uid]++
				}
				mu.Unlock()
			}
		}()
	}
	for i := range messages {
		appendMsg(t, s, mb.ID, testMessage(i))
	}
	close(done)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	first, last := claim(t, s, mb.ID)
	for uid := first; uid <= last && first <= last; uid++ {
		claimed[uid]++
	}
	for uid := uint32(1); uid <= messages; uid++ {
		if claimed[uid] != 1 {
			t.Errorf("uid %d claimed %d times", uid, claimed[uid])
		}
	}
	if len(claimed) != messages {
		t.Errorf("%d UIDs claimed, want %d", len(claimed), messages)
	}
}

// A version-3 store is migrated: its mail is not new, new mail is, and an
// expunged body now waits for the sessions that hold it.
func TestMigratesFromVersion3(t *testing.T) {
	sqliteOnly(t)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "postern.db")
	msg := testMessage(1)
	sum := sha256.Sum256(msg)
	db := oldSchemaDB(t, path, 3,
		"INSERT INTO domains (name) VALUES ('example.test')",
		"INSERT INTO users (address, password_hash, created) VALUES ('u@example.test', 'x', 0)",
		"INSERT INTO mailboxes (user_id, name, uidvalidity, uidnext, highestmodseq) VALUES (1, 'INBOX', 7, 3, 3)",
		"INSERT INTO mailboxes (user_id, name, uidvalidity) VALUES (1, 'Empty', 8)",
	)
	if _, err := db.Exec("INSERT INTO bodies (sha256, size) VALUES (?, ?)", sum[:], len(msg)); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("INSERT INTO body_chunks (body_id, seq, data) VALUES (1, 0, ?)", msg); err != nil {
		t.Fatal(err)
	}
	for uid := 1; uid <= 2; uid++ {
		if _, err := db.Exec("INSERT INTO messages (mailbox_id, uid, modseq, internal_date, size, body_id) VALUES (1, ?, ?, 0, ?, 1)",
			uid, uid+1, len(msg)); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	s := openMigrated(t, path)
	if first, last := claim(t, s, 1); first <= last {
		t.Fatalf("mail from before the upgrade claimed as recent: %d:%d", first, last)
	}
	if first, last := claim(t, s, 2); first <= last {
		t.Fatalf("empty mailbox: claimed %d:%d", first, last)
	}
	if _, err := s.Deliver(ctx, "x@remote.test", []string{"u@example.test"}, testMessage(2)); err != nil {
		t.Fatal(err)
	}
	if first, last := claim(t, s, 1); first != 3 || last != 3 {
		t.Fatalf("claim after delivery %d:%d, want 3:3", first, last)
	}
	// The migrated triggers no longer delete: a Hold keeps the body.
	h := s.Hold()
	if _, err := s.DeleteMessages(ctx, 1, []uint32{1, 2}); err != nil {
		t.Fatal(err)
	}
	s.sweepNow(t)
	if got, err := s.ReadBody(ctx, 1); err != nil || string(got) != string(msg) {
		t.Fatalf("held body after migration: %q %v", got, err)
	}
	h.Close()
	s.sweepNow(t)
	if _, err := s.ReadBody(ctx, 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("body after release: %v, want ErrNotFound", err)
	}
	if n := unreferenced(t, s); n != 0 {
		t.Fatalf("%d unreferenced rows", n)
	}
}

// RecentMark reads the mark that ClaimRecent moves, and moves nothing.
func TestRecentMark(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	mb := inbox(t, s, addUser(t, s, "u@example.test"))
	for i := range 3 {
		appendMsg(t, s, mb.ID, testMessage(i))
	}
	for range 2 {
		if mark, err := s.RecentMark(ctx, mb.ID); err != nil || mark != 0 {
			t.Fatalf("mark before any claim: %d, %v", mark, err)
		}
	}
	claim(t, s, mb.ID)
	appendMsg(t, s, mb.ID, testMessage(4))
	if mark, err := s.RecentMark(ctx, mb.ID); err != nil || mark != 3 {
		t.Fatalf("mark after a claim: %d, %v; want 3", mark, err)
	}
	if first, last := claim(t, s, mb.ID); first != 4 || last != 4 {
		t.Fatalf("claim after reading the mark %d:%d, want 4:4", first, last)
	}
	if _, err := s.RecentMark(ctx, 9999); !errors.Is(err, ErrNotFound) {
		t.Fatalf("mark of an unknown mailbox: %v", err)
	}
}
