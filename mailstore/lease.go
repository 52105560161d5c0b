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

// minLeaseTTL bounds how often a held lease is renewed.
const minLeaseTTL = time.Second

// LockMaildrop leases a user's maildrop to one POP3 session across every
// frontend of the store (RFC 1939 8: a maildrop is locked while a
// session is in the TRANSACTION state). The lease lasts ttl and is
// renewed every ttl/3 while held, so a frontend that dies (SIGKILL, a
// lost machine) frees it within ttl; holder (say, "host:pid session")
// names who holds it, for the operator. A lease held by someone else
// and not expired fails with ErrLocked. release ends the lease; it is
// idempotent. Frontends' clocks must agree to well within ttl.
func (s *Store) LockMaildrop(ctx context.Context, userID int64, holder string, ttl time.Duration) (release func(), err error) {
	ttl = max(ttl, minLeaseTTL)
	token := randomBytes(16)
	err = s.w.do(ctx, func(t *wtx) error {
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
	stop := make(chan struct{})
	stopped := make(chan struct{})
	go s.renewLease(userID, token, ttl, stop, stopped)
	var once sync.Once
	release = func() { once.Do(func() { s.endLease(userID, token, stop, stopped) }) }
	return release, nil
}

// endLease stops the renewal and deletes the lease if it is still ours.
func (s *Store) endLease(userID int64, token []byte, stop chan struct{}, stopped <-chan struct{}) {
	close(stop)
	<-stopped
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := s.w.do(ctx, func(t *wtx) error {
		_, err := t.exec("DELETE FROM maildrop_leases WHERE user_id = ? AND token = ?", userID, token)
		return err
	})
	if err != nil && !errors.Is(err, ErrClosed) {
		s.log.Warn("release maildrop lease", "user", userID, "err", err)
	}
}

// renewLease extends a held lease every ttl/3 until stop is closed or the
// store closes.
func (s *Store) renewLease(userID int64, token []byte, ttl time.Duration, stop <-chan struct{}, stopped chan<- struct{}) {
	defer close(stopped)
	tick := time.NewTicker(ttl / 3)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-s.closed:
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), ttl/3)
		var lost bool
		err := s.w.do(ctx, func(t *wtx) error {
			res, err := t.exec("UPDATE maildrop_leases SET expires = ? WHERE user_id = ? AND token = ?",
				s.now().Add(ttl).UnixNano(), userID, token)
			if err != nil {
				return err
			}
			n, _ := res.RowsAffected()
			lost = n == 0
			return nil
		})
		cancel()
		switch {
		case errors.Is(err, ErrClosed):
			return
		case err != nil:
			s.log.Warn("renew maildrop lease", "user", userID, "err", err)
		case lost:
			// Expired before renewal (a stalled process) and taken:
			// two sessions may now share the maildrop.
			s.log.Error("maildrop lease lost to another session", "user", userID)
			return
		}
	}
}
