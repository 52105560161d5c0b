package mailstore

import (
	"context"
	"errors"
	"testing"
	"time"
)

// leaseFrontends opens two Stores on one fresh database: the first with
// clock (nil: the real one), the second an hour ahead of the real clock,
// so every lease the first takes has run out for it and it can take the
// maildrop from under the first's holder, as a frontend does after the
// holder's renewals failed for a whole lease. The user u@example.test
// has messages 1..n in the INBOX.
func leaseFrontends(t *testing.T, clock func() time.Time, n int) (s, ahead *Store, u User, mb Mailbox) {
	t.Helper()
	db := newTestDB(t)
	s = db.open(t, Options{PasswordCost: FastPasswordHash, Now: clock})
	t.Cleanup(func() { s.Close() })
	ahead = db.open(t, Options{PasswordCost: FastPasswordHash, Now: func() time.Time { return time.Now().Add(time.Hour) }})
	t.Cleanup(func() { ahead.Close() })
	if err := s.AddDomain(context.Background(), "example.test"); err != nil {
		t.Fatal(err)
	}
	u = addUser(t, s, "u@example.test")
	mb = inbox(t, s, u)
	for i := range n {
		appendMsg(t, s, mb.ID, testMessage(i+1))
	}
	return s, ahead, u, mb
}

// waitLost waits up to limit for the lease's Lost channel.
func waitLost(t *testing.T, l *MaildropLease, limit time.Duration) {
	t.Helper()
	select {
	case <-l.Lost():
	case <-time.After(limit):
		t.Fatalf("lease not declared lost after %s (Err: %v)", limit, l.Err())
	}
}

// uidsLeft is the UIDs in the mailbox.
func uidsLeft(t *testing.T, s *Store, mailboxID int64) []uint32 {
	t.Helper()
	uids, _, err := s.MailboxUIDs(context.Background(), mailboxID)
	if err != nil {
		t.Fatal(err)
	}
	return uids
}

// A lease taken by another frontend (its holder's renewals having found
// it expired, by that frontend's clock) is declared lost at the
// holder's next renewal, not only once it would have expired.
func TestMaildropLeaseLostWhenTaken(t *testing.T) {
	ctx := context.Background()
	s, ahead, u, _ := leaseFrontends(t, nil, 0)
	const ttl = 3 * time.Second // renewed every second
	l, err := s.LockMaildrop(ctx, u.ID, "a", ttl)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	if err := l.Err(); err != nil {
		t.Fatalf("fresh lease: %v", err)
	}
	other, err := ahead.LockMaildrop(ctx, u.ID, "b", time.Minute)
	if err != nil {
		t.Fatalf("the frontend ahead could not take the lease: %v", err)
	}
	defer other.Release()
	waitLost(t, l, 3*ttl)
	err = l.Err()
	if !errors.Is(err, ErrLeaseLost) || !errors.Is(err, errLeaseTaken) {
		t.Fatalf("Err %v, want ErrLeaseLost because it was taken (found by a renewal)", err)
	}
	// Releasing the lost lease leaves the new holder's alone.
	l.Release()
	if _, err := s.LockMaildrop(ctx, u.ID, "c", ttl); !errors.Is(err, ErrLocked) {
		t.Fatalf("lock after the lost lease was released: %v, want ErrLocked (the new holder's)", err)
	}
	if err := other.Err(); err != nil {
		t.Fatalf("the new holder's lease: %v", err)
	}
}

// A lease none of whose renewals succeeded for its length (a stalled
// store) is declared lost then, even while a renewal is still waiting,
// and stays lost when that renewal goes through later.
func TestMaildropLeaseLostUnrenewed(t *testing.T) {
	ctx := context.Background()
	s, _, u, mb := leaseFrontends(t, nil, 1)
	const ttl = 1500 * time.Millisecond
	l, err := s.LockMaildrop(ctx, u.ID, "a", ttl)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	// Stall the writer: no renewal gets through.
	stalled, unstall := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.w.do(ctx, func(*wtx) error { close(stalled); <-unstall; return nil })
	}()
	<-stalled
	select {
	case <-l.Lost():
		close(unstall)
		t.Fatalf("lost before its length: %v", l.Err())
	case <-time.After(ttl / 2):
	}
	select {
	case <-l.Lost():
	case <-time.After(3 * ttl):
		close(unstall)
		t.Fatalf("lease not declared lost %s after renewals stalled (Err: %v)", 3*ttl+ttl/2, l.Err())
	}
	close(unstall)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := l.Err(); !errors.Is(err, ErrLeaseLost) || !errors.Is(err, errLeaseExpired) {
		t.Fatalf("Err %v, want ErrLeaseLost because it expired unrenewed", err)
	}
	// The stalled renewal may now go through: the lease stays lost, and
	// a fenced removal is refused.
	time.Sleep(ttl / 2)
	if _, err := s.DeleteMessagesLeased(ctx, l, mb.ID, []uint32{1}); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("fenced removal with a lost lease: %v, want ErrLeaseLost", err)
	}
	if got := uidsLeft(t, s, mb.ID); len(got) != 1 {
		t.Fatalf("UIDs %v left, want [1]", got)
	}
}

// A fenced removal works while the lease is held, and removes nothing
// once it is not: taken by another frontend (before the holder's
// renewals noticed), expired by the store's clock, or released.
func TestDeleteMessagesLeased(t *testing.T) {
	ctx := context.Background()
	clock := &leaseClock{now: time.Now()}
	s, ahead, u, mb := leaseFrontends(t, clock.Now, 5)
	const ttl = time.Minute // no renewal during the test

	l, err := s.LockMaildrop(ctx, u.ID, "a", ttl)
	if err != nil {
		t.Fatal(err)
	}
	gone, err := s.DeleteMessagesLeased(ctx, l, mb.ID, []uint32{1, 2})
	if err != nil || len(gone) != 2 {
		t.Fatalf("fenced removal while held: %v, %v", gone, err)
	}
	// Not the lease user's mailbox.
	other := addUser(t, s, "v@example.test")
	om := inbox(t, s, other)
	appendMsg(t, s, om.ID, testMessage(9))
	if _, err := s.DeleteMessagesLeased(ctx, l, om.ID, []uint32{1}); err == nil {
		t.Fatal("fenced removal from another user's mailbox worked")
	}
	if got := uidsLeft(t, s, om.ID); len(got) != 1 {
		t.Fatalf("UIDs %v left in the other user's mailbox, want [1]", got)
	}

	// Expired by the store's clock, though no renewal was due yet.
	clock.add(2 * ttl)
	if _, err := s.DeleteMessagesLeased(ctx, l, mb.ID, []uint32{3}); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("fenced removal after the lease's expiry: %v, want ErrLeaseLost", err)
	}
	clock.add(-2 * ttl)
	l.Release()
	if _, err := s.DeleteMessagesLeased(ctx, l, mb.ID, []uint32{3}); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("fenced removal with a released lease: %v, want ErrLeaseLost", err)
	}

	// Taken by another frontend: refused at once, before any renewal.
	l, err = s.LockMaildrop(ctx, u.ID, "a", ttl)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	taker, err := ahead.LockMaildrop(ctx, u.ID, "b", ttl)
	if err != nil {
		t.Fatal(err)
	}
	defer taker.Release()
	if err := l.Err(); err != nil {
		t.Fatalf("the holder knows already: %v; the test needs the fence itself", err)
	}
	if _, err := s.DeleteMessagesLeased(ctx, l, mb.ID, []uint32{3, 4}); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("fenced removal after the lease was taken: %v, want ErrLeaseLost", err)
	}
	if got := uidsLeft(t, s, mb.ID); len(got) != 3 {
		t.Fatalf("UIDs %v left, want [3 4 5]", got)
	}
	// The new holder's fenced removal works.
	if gone, err := ahead.DeleteMessagesLeased(ctx, taker, mb.ID, []uint32{3}); err != nil || len(gone) != 1 {
		t.Fatalf("the new holder's fenced removal: %v, %v", gone, err)
	}
}
