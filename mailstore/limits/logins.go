package limits

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Outcomes of Logins.Check besides success and internal errors.
var (
	// ErrLoginFailed: wrong user name or password. Permanent for this
	// attempt (SMTP 535 5.7.8, POP3 -ERR [AUTH], IMAP NO [AUTHENTICATIONFAILED]).
	ErrLoginFailed = errors.New("login failed")
	// ErrBlocked: the client address has failed too often and is refused
	// for a while, whatever the password (SMTP 454 4.7.0, POP3
	// -ERR [SYS/TEMP], IMAP NO [UNAVAILABLE]).
	ErrBlocked = errors.New("too many failed logins from this address")
	// ErrBusy: too many password checks are running or waiting; try again
	// soon (SMTP 454 4.7.0, POP3 -ERR [SYS/TEMP], IMAP NO [UNAVAILABLE]).
	ErrBusy = errors.New("too many logins in progress")
)

// LoginPolicy says how password checks are bounded and failed logins
// counted. A zero field takes the default named beside it.
type LoginPolicy struct {
	// MaxHashes bounds the password checks running at once. Default: the
	// number of CPUs.
	MaxHashes int
	// HashQueue bounds the checks waiting for a slot; beyond it the
	// oldest waiter is turned away with ErrBusy. Default: 64.
	HashQueue int
	// HashWait bounds how long a check waits for a slot before ErrBusy.
	// Default: 5s.
	HashWait time.Duration
	// MaxFailures failed logins from one client key (IPv4 address, IPv6
	// /64) within FailureWindow block that key for BlockFor, on every
	// protocol. Defaults: 10, 15m, 15m.
	MaxFailures   int
	FailureWindow time.Duration
	BlockFor      time.Duration
	// FailureDelay is how long a failed login waits before it is answered,
	// to slow guessing on one connection. Default 2s; negative: none.
	FailureDelay time.Duration
	// MaxAddresses bounds the client keys remembered. Default: 100000.
	MaxAddresses int
	// Now is the clock for failure windows; nil: time.Now.
	Now func() time.Time
}

const (
	defaultHashQueue     = 64
	defaultHashWait      = 5 * time.Second
	defaultMaxFailures   = 10
	defaultFailureWindow = 15 * time.Minute
	defaultBlockFor      = 15 * time.Minute
	defaultFailureDelay  = 2 * time.Second
	defaultMaxAddresses  = 100000
	// maxLoggedUser bounds the user name written to the log.
	maxLoggedUser = 256
)

// Logins is the one record of failed logins and the one gate in front of
// password checks for all protocols of a process. Its methods are safe for
// concurrent use.
type Logins struct {
	p    LoginPolicy
	gate gate

	mu   sync.Mutex
	keys map[netip.Prefix]*failures
}

type failures struct {
	n            int
	first        time.Time // start of the window n counts in
	blockedUntil time.Time
}

// NewLogins makes the record with policy p.
func NewLogins(p LoginPolicy) *Logins {
	if p.MaxHashes <= 0 {
		p.MaxHashes = runtime.NumCPU()
	}
	if p.HashQueue <= 0 {
		p.HashQueue = defaultHashQueue
	}
	if p.HashWait <= 0 {
		p.HashWait = defaultHashWait
	}
	if p.MaxFailures <= 0 {
		p.MaxFailures = defaultMaxFailures
	}
	if p.FailureWindow <= 0 {
		p.FailureWindow = defaultFailureWindow
	}
	if p.BlockFor <= 0 {
		p.BlockFor = defaultBlockFor
	}
	if p.FailureDelay == 0 {
		p.FailureDelay = defaultFailureDelay
	}
	if p.MaxAddresses <= 0 {
		p.MaxAddresses = defaultMaxAddresses
	}
	if p.Now == nil {
		p.Now = time.Now
	}
	return &Logins{p: p, gate: gate{free: p.MaxHashes, maxQueue: p.HashQueue}, keys: make(map[netip.Prefix]*failures)}
}

// Policy is the policy in force, defaults filled in.
func (l *Logins) Policy() LoginPolicy { return l.p }

// Attempt describes one login for Check and the log.
type Attempt struct {
	Protocol  string // "smtp", "pop3", "imap"
	Mechanism string // "PLAIN", "LOGIN", "USER"...
	Remote    netip.Addr
	User      string
	// Log is the session's logger (with its session id); nil: no line.
	Log *slog.Logger
}

// Check decides a login. Unless the client address is blocked, it waits
// for a password-check slot and calls verify, which reports whether the
// credentials are right (false, nil) or that it could not tell (an
// error). It returns nil for a good login; ErrBlocked, ErrBusy or
// ErrLoginFailed (each after FailureDelay, cut short when ctx ends); or
// verify's error, wrapped. Each failure is logged by LogFailure.
func (l *Logins) Check(ctx context.Context, a Attempt, verify func(context.Context) (bool, error)) error {
	key := ClientKey(a.Remote)
	blocked, clean := l.state(key)
	if blocked {
		LogFailure(a, "address blocked")
		l.delay(ctx)
		return ErrBlocked
	}
	release, err := l.gate.acquire(ctx, l.p.HashWait, clean)
	if err != nil {
		if errors.Is(err, ErrBusy) {
			LogFailure(a, "busy")
			l.delay(ctx)
		}
		return err
	}
	// Guesses that queued before the address was blocked are refused
	// too, or one address could have a whole queue of them checked.
	if blocked, _ := l.state(key); blocked {
		release()
		LogFailure(a, "address blocked")
		l.delay(ctx)
		return ErrBlocked
	}
	ok, err := verifyReleasing(ctx, verify, release)
	if err != nil {
		return fmt.Errorf("check login of %q: %w", a.User, err)
	}
	if ok {
		return nil
	}
	if l.fail(key) {
		LogFailure(a, "wrong credentials, address now blocked")
	} else {
		LogFailure(a, "wrong credentials")
	}
	l.delay(ctx)
	return ErrLoginFailed
}

// delay waits FailureDelay before a refusal is answered, so that one
// connection cannot try again at once; ctx ending cuts it short.
func (l *Logins) delay(ctx context.Context) {
	if l.p.FailureDelay <= 0 {
		return
	}
	t := time.NewTimer(l.p.FailureDelay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// Blocked reports whether logins from ip are refused for now.
func (l *Logins) Blocked(ip netip.Addr) bool {
	b, _ := l.state(ClientKey(ip))
	return b
}

// BlockedKey is a client key (an IPv4 address or an IPv6 /64) whose
// logins are refused, and until when.
type BlockedKey struct {
	Key   netip.Prefix
	Until time.Time
}

// BlockedList returns the client keys blocked now, the latest block
// ending last, at most max of them (max <= 0: all), and how many are
// blocked in all. It is for operators (the console's administration page,
// the metrics), not for a request path: it walks the whole record, whose
// size LoginPolicy.MaxAddresses bounds.
func (l *Logins) BlockedList(max int) (list []BlockedKey, total int) {
	l.mu.Lock()
	now := l.p.Now()
	for k, f := range l.keys {
		if now.Before(f.blockedUntil) {
			list = append(list, BlockedKey{Key: k, Until: f.blockedUntil})
		}
	}
	l.mu.Unlock()
	slices.SortFunc(list, func(a, b BlockedKey) int {
		if c := a.Until.Compare(b.Until); c != 0 {
			return c
		}
		return a.Key.Addr().Compare(b.Key.Addr())
	})
	total = len(list)
	if max > 0 && len(list) > max {
		list = list[len(list)-max:]
	}
	return list, total
}

// Unblock lifts the block of the client key of ip and forgets its
// failures; it reports whether the key was blocked.
func (l *Logins) Unblock(ip netip.Addr) bool {
	key := ClientKey(ip)
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.keys[key]
	if f == nil {
		return false
	}
	delete(l.keys, key)
	return l.p.Now().Before(f.blockedUntil)
}

// LogFailure writes the one line every failed login produces, whatever
// the protocol, for fail2ban (configs/fail2ban): message "login failed"
// at WARN with protocol, remote (the address alone), user (as given, cut
// at 256 octets), mechanism and reason, in that order.
func LogFailure(a Attempt, reason string) {
	if a.Log == nil {
		return
	}
	user := a.User
	if len(user) > maxLoggedUser {
		user = user[:maxLoggedUser]
		for !utf8.ValidString(user) && len(user) > 0 {
			user = user[:len(user)-1]
		}
	}
	a.Log.Warn("login failed", "protocol", a.Protocol, "remote", a.Remote.String(), "user", user,
		"mechanism", a.Mechanism, "reason", reason)
}

// state reports whether key is blocked, and whether it has no failures in
// its window (clean keys go first through the gate).
func (l *Logins) state(key netip.Prefix) (blocked, clean bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.keys[key]
	if f == nil {
		return false, true
	}
	now := l.p.Now()
	if now.Before(f.blockedUntil) {
		return true, false
	}
	return false, f.n == 0 || now.Sub(f.first) > l.p.FailureWindow
}

// fail counts a failure of key and reports whether it blocked the key.
func (l *Logins) fail(key netip.Prefix) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.p.Now()
	f := l.keys[key]
	if f == nil {
		if len(l.keys) >= l.p.MaxAddresses {
			l.prune(now)
		}
		f = &failures{}
		l.keys[key] = f
	}
	if f.n == 0 || now.Sub(f.first) > l.p.FailureWindow {
		f.n, f.first = 0, now
	}
	f.n++
	if f.n >= l.p.MaxFailures {
		f.blockedUntil = now.Add(l.p.BlockFor)
		f.n = 0
		return true
	}
	return false
}

// prune forgets keys whose window and block are over, and if that is not
// enough, every key that is not blocked: a flood of new addresses must
// not unblock the ones already blocked more than it must.
func (l *Logins) prune(now time.Time) {
	for k, f := range l.keys {
		if now.Sub(f.first) > l.p.FailureWindow && !now.Before(f.blockedUntil) {
			delete(l.keys, k)
		}
	}
	if len(l.keys) < l.p.MaxAddresses {
		return
	}
	for k, f := range l.keys {
		if !now.Before(f.blockedUntil) {
			delete(l.keys, k)
		}
	}
	if len(l.keys) >= l.p.MaxAddresses {
		clear(l.keys)
	}
}

// gate is a counting semaphore with a bounded queue in two classes:
// waiters marked first (addresses without recent failures) are served
// before the others. Within a class the newest waiter is served first and,
// when the queue is full, the oldest waiter of the lower class is turned
// away to make room: under a flood the queue holds the latest arrivals,
// so a client that just came is answered within a few checks instead of
// behind a queue that the flood keeps full (the old waiters would time out
// anyway).
type gate struct {
	mu          sync.Mutex
	free        int
	maxQueue    int
	first, rest []*waiter // oldest first
}

type waiter struct {
	ready   chan struct{}
	granted bool // the slot was handed over (else it was turned away)
}

func (g *gate) acquire(ctx context.Context, wait time.Duration, first bool) (func(), error) {
	g.mu.Lock()
	if g.free > 0 && len(g.first)+len(g.rest) == 0 {
		g.free--
		g.mu.Unlock()
		return g.release, nil
	}
	if len(g.first)+len(g.rest) >= g.maxQueue {
		victims := &g.rest
		if len(g.rest) == 0 && first {
			victims = &g.first
		}
		if len(*victims) == 0 {
			g.mu.Unlock()
			return nil, ErrBusy
		}
		old := (*victims)[0]
		*victims = (*victims)[1:]
		close(old.ready) // not granted: turned away
	}
	w := &waiter{ready: make(chan struct{})}
	if first {
		g.first = append(g.first, w)
	} else {
		g.rest = append(g.rest, w)
	}
	g.mu.Unlock()

	t := time.NewTimer(wait)
	defer t.Stop()
	var err error
	select {
	case <-w.ready:
	case <-t.C:
		err = ErrBusy
	case <-ctx.Done():
		err = ctx.Err()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.remove(w) {
		return nil, err
	}
	if w.granted {
		return g.release, nil
	}
	return nil, ErrBusy
}

func (g *gate) remove(w *waiter) bool {
	for _, q := range []*[]*waiter{&g.first, &g.rest} {
		for i, x := range *q {
			if x == w {
				*q = append((*q)[:i], (*q)[i+1:]...)
				return true
			}
		}
	}
	return false
}

// release hands the slot to the newest waiter of the first class, else of
// the other, or frees it.
func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, q := range []*[]*waiter{&g.first, &g.rest} {
		if n := len(*q); n > 0 {
			w := (*q)[n-1]
			(*q)[n-1] = nil
			*q = (*q)[:n-1]
			w.granted = true
			close(w.ready)
			return
		}
	}
	g.free++
}

// verifyReleasing runs verify and then gives back its password-check slot,
// even when verify panics (a session that survives the panic must not keep
// the slot forever).
func verifyReleasing(ctx context.Context, verify func(context.Context) (bool, error), release func()) (bool, error) {
	defer release()
	return verify(ctx)
}

// KnownMechanism reports whether s names, in either case, a SASL
// mechanism some Postern server offers: PLAIN (all three) or LOGIN
// (submission). The servers' protocol traces show the mechanism of an
// AUTH or AUTHENTICATE command and hide what follows; any other word in
// the mechanism's place is hidden too, since a client that sends its
// credentials there (AUTH <secret>, which may look like any word) would
// otherwise have them logged.
func KnownMechanism(s string) bool {
	return strings.EqualFold(s, "PLAIN") || strings.EqualFold(s, "LOGIN")
}
