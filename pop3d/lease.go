package pop3d

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/postern/postern/mailstore"
)

// errLeaseExpired: the session could not take its lease again before the
// last one ran out, so another frontend may have had the maildrop since.
var errLeaseExpired = errors.New("maildrop lease not renewed before it expired")

// errLeaseEnded: the session gave its lease back.
var errLeaseEnded = errors.New("maildrop lease ended")

// maildropLease is a session's hold on the store's lease of its maildrop
// across frontends (mailstore.Store.LockMaildrop). RFC 1939 section 8: the
// maildrop is locked for the whole session, so a session whose lease
// lapsed must not go on, and above all must not reach UPDATE.
//
// The store renews its lease in the background but does not tell the
// holder when a renewal failed or found the lease taken. So the session
// does not count on those renewals: every third of the lease it gives the
// lease back and takes a new one, and it knows the maildrop is its own
// until ttl after the last lease was taken. A lease it cannot take again
// (another session has it, or the store fails), or one not taken again
// before it ran out, is lost for good. Between giving back and taking
// again, a few milliseconds, another login may take the maildrop: this
// session then loses it, which is safe (one session per maildrop still).
type maildropLease struct {
	store  *mailstore.Store
	userID int64
	holder string
	ttl    time.Duration
	// lost is called once, from the renewing goroutine, when the lease is
	// found lost there (for the log); may be nil.
	onLost func(error)

	mu      sync.Mutex
	release func()    // ends the current store lease; nil once lost or ended
	until   time.Time // the maildrop is surely this session's until then
	err     error     // why the lease is no longer held; nil while held

	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

// leaseMaildrop takes the store's lease on userID's maildrop for ttl and
// keeps taking it again until the lease ends. It fails with an error
// wrapping mailstore.ErrLocked when another session holds it.
func leaseMaildrop(ctx context.Context, store *mailstore.Store, userID int64, holder string, ttl time.Duration, onLost func(error)) (*maildropLease, error) {
	l := &maildropLease{store: store, userID: userID, holder: holder, ttl: ttl, onLost: onLost,
		stop: make(chan struct{}), done: make(chan struct{})}
	start := time.Now()
	release, err := store.LockMaildrop(ctx, userID, holder, ttl)
	if err != nil {
		return nil, err
	}
	l.release, l.until = release, start.Add(ttl)
	go l.renew()
	return l, nil
}

// renew takes the lease again every ttl/3 until it is lost or stopped.
func (l *maildropLease) renew() {
	defer close(l.done)
	tick := time.NewTicker(max(l.ttl/3, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-tick.C:
		}
		if err := l.retake(); err != nil {
			if l.onLost != nil {
				l.onLost(err)
			}
			return
		}
	}
}

// retake gives the store's lease back and takes a new one. Its error is
// the loss, if the lease is lost now.
func (l *maildropLease) retake() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return nil // lost or ended already, reported then
	}
	if err := l.checkLocked(); err != nil {
		return err
	}
	l.release()
	l.release = nil
	start := time.Now()
	// Commands wait for this, so it is bounded by the renewal period.
	ctx, cancel := context.WithTimeout(context.Background(), max(l.ttl/3, time.Second))
	release, err := l.store.LockMaildrop(ctx, l.userID, l.holder, l.ttl)
	cancel()
	if err != nil {
		l.err = fmt.Errorf("take the maildrop lease of user %d again: %w", l.userID, err)
		return l.err
	}
	l.release, l.until = release, start.Add(l.ttl)
	return nil
}

// checkLocked returns why the lease is not held, and lets it go once its
// time is over. l.mu is held.
func (l *maildropLease) checkLocked() error {
	if l.err != nil {
		return l.err
	}
	if !time.Now().Before(l.until) {
		l.err = errLeaseExpired
		l.release()
		l.release = nil
	}
	return l.err
}

// held reports why the maildrop is no longer this session's, or nil while
// it is. It waits while the lease is being taken again.
func (l *maildropLease) held() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.checkLocked()
}

// hold stops taking the lease again, so that it is never given back for
// a moment, and returns until when the maildrop is surely this session's:
// UPDATE must be done by then. The store keeps renewing the lease.
func (l *maildropLease) hold() (time.Time, error) {
	l.stopRenewing()
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.checkLocked(); err != nil {
		return time.Time{}, err
	}
	return l.until, nil
}

func (l *maildropLease) stopRenewing() {
	l.stopOnce.Do(func() { close(l.stop) })
	<-l.done
}

// end gives the lease back. It is idempotent.
func (l *maildropLease) end() {
	l.stopRenewing()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.release != nil {
		l.release()
		l.release = nil
	}
	if l.err == nil {
		l.err = errLeaseEnded
	}
}
