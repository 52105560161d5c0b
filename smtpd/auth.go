package smtpd

import (
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// authPolicy says how failed logins from one client key (IPv4 address,
// IPv6 /64) are slowed and then refused.
type authPolicy struct {
	free       int           // failures answered at once
	delay      time.Duration // added to the reply per failure beyond free
	maxDelay   time.Duration
	blockAfter int           // failures within window that block the key
	window     time.Duration // failures older than this are forgotten
	blockFor   time.Duration // how long AUTH is refused once blocked
	maxKeys    int           // keys remembered; beyond, expired ones are dropped
}

// defaultAuthPolicy lets a user mistype a password a few times, makes
// guessing slow (about one guess per 5 seconds per connection after the
// fifth), and stops it after 10 failures in 15 minutes for 15 minutes.
var defaultAuthPolicy = authPolicy{
	free:       3,
	delay:      time.Second,
	maxDelay:   5 * time.Second,
	blockAfter: 10,
	window:     15 * time.Minute,
	blockFor:   15 * time.Minute,
	maxKeys:    100000,
}

// authLimiter remembers failed logins per client key. Successful logins do
// not clear the count: knowing one password must not help guess others.
type authLimiter struct {
	policy authPolicy
	now    func() time.Time

	mu   sync.Mutex
	keys map[netip.Prefix]*authRecord
}

type authRecord struct {
	failures     int
	last         time.Time
	blockedUntil time.Time
}

func newAuthLimiter(p authPolicy, now func() time.Time) *authLimiter {
	return &authLimiter{policy: p, now: now, keys: make(map[netip.Prefix]*authRecord)}
}

// blocked reports whether AUTH from key is refused for now.
func (l *authLimiter) blocked(key netip.Prefix) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.keys[key]
	return r != nil && l.now().Before(r.blockedUntil)
}

// fail records a failed login and returns how long to wait before
// answering it and the failures counted.
func (l *authLimiter) fail(key netip.Prefix) (time.Duration, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	r := l.keys[key]
	if r == nil || now.Sub(r.last) > l.policy.window && now.After(r.blockedUntil) {
		if len(l.keys) >= l.policy.maxKeys {
			l.prune(now)
		}
		r = &authRecord{}
		l.keys[key] = r
	}
	r.failures++
	r.last = now
	if r.failures >= l.policy.blockAfter {
		r.blockedUntil = now.Add(l.policy.blockFor)
		r.failures = 0
	}
	over := r.failures - l.policy.free
	if over <= 0 {
		return 0, r.failures
	}
	return min(time.Duration(over)*l.policy.delay, l.policy.maxDelay), r.failures
}

// prune drops forgotten keys, and all of them if that is not enough.
func (l *authLimiter) prune(now time.Time) {
	for k, r := range l.keys {
		if now.Sub(r.last) > l.policy.window && now.After(r.blockedUntil) {
			delete(l.keys, k)
		}
	}
	if len(l.keys) >= l.policy.maxKeys {
		clear(l.keys)
	}
}

// authFunc checks a user name and password and returns nil or a reply.
type authFunc func(mechanism, username, password string) error

// maxSASLField bounds a user name or password (go-smtp bounds the line).
const maxSASLField = 512

// plainServer is go-sasl's PLAIN server (RFC 4616) with our replies: an
// authorization identity other than the user is refused, and go-sasl's
// own errors become errAuthMalformed.
type plainServer struct{ inner sasl.Server }

func newPlainServer(auth authFunc) sasl.Server {
	return plainServer{sasl.NewPlainServer(func(identity, username, password string) error {
		if identity != "" && !strings.EqualFold(identity, username) {
			return errAuthFailed // no proxy authorization
		}
		if len(username) > maxSASLField || len(password) > maxSASLField {
			return errAuthMalformed
		}
		return auth(sasl.Plain, username, password)
	})}
}

func (p plainServer) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := p.inner.Next(response)
	if err != nil {
		if _, ok := err.(*smtp.SMTPError); !ok {
			err = errAuthMalformed
		}
	}
	return challenge, done, err
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login): go-sasl has only the client. The user name
// may come as the initial response.
type loginServer struct {
	auth     authFunc
	step     int
	username string
}

func newLoginServer(auth authFunc) sasl.Server { return &loginServer{auth: auth} }

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	if len(response) > maxSASLField {
		return nil, false, errAuthMalformed
	}
	switch l.step {
	case 0:
		if len(response) == 0 {
			l.step = 1
			return []byte("Username:"), false, nil
		}
		l.username, l.step = string(response), 2
		return []byte("Password:"), false, nil
	case 1:
		l.username, l.step = string(response), 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		return nil, true, l.auth(sasl.Login, l.username, string(response))
	}
	return nil, false, errAuthMalformed
}
