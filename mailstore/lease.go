package mailstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrLocked: the maildrop is leased by another session, on this frontend
// or another (POP3 answers -ERR [IN-USE], RFC 2449 8.1.2).
var ErrLocked = errors.New("maildrop is locked")

// ErrLeaseLost: a maildrop lease is no longer surely its holder's: it was
// taken by another session, ran out before a renewal succeeded, or was
// released. A fenced write
// (Store.DeleteMessagesLeased) fails with it and changes nothing.
var ErrLeaseLost = errors.New("maildrop lease lost")

// minLeaseTTL bounds how often a held lease is renewed.
const minLeaseTTL = time.Second

// MaildropLease is one session's lease on a user's maildrop, taken with
// Store.LockMaildrop. The store renews it every third of its length
// until Release. It is safe for concurrent use.
type MaildropLease struct {
	s      *Store
	userID int64
	holder string
	token  []byte
	ttl    time.Duration

	lost     chan struct{} // closed by lose
	stop     chan struct{} // closed by Release: renewals end
	stopped  chan struct{} // closed when the renewing goroutine returned
	release  sync.Once
	deadline *time.Timer // fires at until, to check it

	mu       sync.Mutex
	until    time.Time // the lease surely holds before this (monotonic clock)
	err      error     // why it was lost; nil while held
	released bool
}

// LockMaildrop leases a user's maildrop to one POP3 session across every
// frontend of the store (RFC 1939 8: a maildrop is locked while a
// session is in the TRANSACTION state). The lease lasts ttl and is
// renewed every ttl/3 while held, so a frontend that dies (SIGKILL, a
// lost machine) frees it within ttl; holder (say, "host:pid session")
// names who holds it, for the operator. A lease held by someone else
// and not expired fails with ErrLocked. Frontends' clocks must agree to
// well within ttl.
//
// The lease's Lost channel closes when a renewal finds the lease taken
// or gone, or when ttl passed since the last successful renewal (or
// the lock) began: from then on another session may have the maildrop.
// A failed renewal is tried again at the next third. Release ends the
// lease.
func (s *Store) LockMaildrop(ctx context.Context, userID int64, holder string, ttl time.Duration) (*MaildropLease, error) {
	ttl = max(ttl, minLeaseTTL)
	token := randomBytes(16)
	// The row's expiry is set after start, so the lease surely holds
	// until start+ttl, by this process's clock.
	start := time.Now()
	err := s.w.do(ctx, func(t *wtx) error {
		now := s.now()
		res, err := t.exec(`INSERT INTO maildrop_leases (user_id, holder, token, expires) VALUES (?, ?, ?, ?)
			ON CONFLICT (user_id) DO UPDATE SET holder = excluded.holder, token = excluded.token, expires = excluded.expires
			WHERE maildrop_leases.expires < ?`, userID, holder, token, now.Add(ttl).UnixNano(), now.UnixNano())
		if err != nil {
			return fmt.Errorf("lock maildrop of user %d: %w", userID, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("lock maildrop of user %d: %w", userID, ErrLocked)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	l := &MaildropLease{s: s, userID: userID, holder: holder, token: token, ttl: ttl,
		lost: make(chan struct{}), stop: make(chan struct{}), stopped: make(chan struct{}),
		until: start.Add(ttl)}
	l.mu.Lock()
	// Apart from the renewals, which may wait on a stalled store.
	l.deadline = time.AfterFunc(time.Until(l.until), l.checkDeadline)
	l.mu.Unlock()
	go l.renew()
	return l, nil
}

// Lost is closed once the lease is lost (see LockMaildrop); Err says why.
// Release does not close it.
func (l *MaildropLease) Lost() <-chan struct{} { return l.lost }

// Err is nil while the lease is held. Once Lost is closed, or after
// Release, it says why the lease is no longer held, wrapping
// ErrLeaseLost.
func (l *MaildropLease) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.errLocked()
}

func (l *MaildropLease) errLocked() error {
	if l.err == nil && l.released {
		return fmt.Errorf("maildrop lease of user %d was released: %w", l.userID, ErrLeaseLost)
	}
	return l.err
}

// Release stops the renewals and ends the lease if it is still this
// holder's. It is idempotent.
func (l *MaildropLease) Release() {
	l.release.Do(func() {
		l.mu.Lock()
		l.released = true
		l.deadline.Stop()
		l.mu.Unlock()
		close(l.stop)
		<-l.stopped
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := l.s.w.do(ctx, func(t *wtx) error {
			_, err := t.exec("DELETE FROM maildrop_leases WHERE user_id = ? AND token = ?", l.userID, l.token)
			return err
		})
		if err != nil && !errors.Is(err, ErrClosed) {
			l.s.log.Warn("release maildrop lease", "user", l.userID, "holder", l.holder, "err", err)
		}
	})
}

// lose marks the lease lost for cause, once, and logs it.
func (l *MaildropLease) lose(cause error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.loseLocked(cause)
}

func (l *MaildropLease) loseLocked(cause error) {
	if l.err != nil || l.released {
		return
	}
	l.err = fmt.Errorf("maildrop lease of user %d: %w: %w", l.userID, ErrLeaseLost, cause)
	l.deadline.Stop()
	close(l.lost)
	select {
	case <-l.s.closed: // not news: the store's owner closed it
	default:
		l.s.log.Error("maildrop lease lost", "user", l.userID, "holder", l.holder, "err", cause)
	}
}

// checkDeadline runs when the last known expiry comes: the lease is
// lost unless a renewal moved it meanwhile.
func (l *MaildropLease) checkDeadline() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil || l.released {
		return
	}
	if left := time.Until(l.until); left > 0 {
		l.deadline.Reset(left)
		return
	}
	l.loseLocked(errLeaseExpired)
}

// errLeaseExpired: no renewal succeeded within the lease's length.
var errLeaseExpired = errors.New("not renewed before it expired")

// errLeaseTaken: a renewal found the lease row gone or another holder's.
var errLeaseTaken = errors.New("taken by another session or removed")

// renew extends the lease every ttl/3 until it is released or lost, or
// the store closes (the deadline then still declares it lost).
func (l *MaildropLease) renew() {
	defer close(l.stopped)
	s := l.s
	tick := time.NewTicker(l.ttl / 3)
	defer tick.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-l.lost:
			return
		case <-s.closed:
			// Nothing is written through a closed store; the lease
			// runs out at its deadline like any unrenewed one.
			return
		case <-tick.C:
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), l.ttl/3)
		var taken bool
		err := s.w.do(ctx, func(t *wtx) error {
			res, err := t.exec("UPDATE maildrop_leases SET expires = ? WHERE user_id = ? AND token = ?",
				s.now().Add(l.ttl).UnixNano(), l.userID, l.token)
			if err != nil {
				return err
			}
			n, _ := res.RowsAffected()
			taken = n == 0
			return nil
		})
		cancel()
		switch {
		case errors.Is(err, ErrClosed):
			return
		case err != nil:
			// Tried again at the next tick; checkDeadline declares the
			// loss if none succeeds in time.
			s.log.Warn("renew maildrop lease", "user", l.userID, "holder", l.holder, "err", err)
		case taken:
			// Expired before renewal (a stalled process) and taken, or
			// removed: another session may have the maildrop.
			l.lose(errLeaseTaken)
			return
		default:
			l.mu.Lock()
			// A renewal that ends after the lease was declared lost
			// does not bring it back.
			if l.err == nil {
				l.until = start.Add(l.ttl)
			}
			l.mu.Unlock()
		}
	}
}

// checkLease fails with ErrLeaseLost unless, in t's transaction, l's
// row still has l's token and an expiry in the future. On PostgreSQL the
// row stays locked until the commit, so no other session takes the
// lease before the transaction's changes are visible.
func (t *wtx) checkLease(l *MaildropLease) error {
	if err := l.Err(); err != nil {
		return err
	}
	var expires int64
	err := t.queryRow("SELECT expires FROM maildrop_leases WHERE user_id = ? AND token = ?"+t.w.d.forUpdate(),
		l.userID, l.token).Scan(&expires)
	if isNoRows(err) {
		return fmt.Errorf("maildrop lease of user %d: %w: %w", l.userID, ErrLeaseLost, errLeaseTaken)
	}
	if err != nil {
		return fmt.Errorf("check maildrop lease of user %d: %w", l.userID, err)
	}
	if now := t.w.now(); expires <= now.UnixNano() {
		return fmt.Errorf("maildrop lease of user %d expired at %s: %w", l.userID,
			time.Unix(0, expires).UTC().Format(time.RFC3339Nano), ErrLeaseLost)
	}
	return nil
}
