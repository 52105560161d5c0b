package smtpd

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/mailstore"
)

// client is one connection: the smtp.Backend of its own smtp.Server.
type client struct {
	srv         *Server
	kind        listenerKind
	conn        *conn
	ip          netip.Addr
	id          string
	log         *slog.Logger
	implicitTLS *tls.Conn // on the implicit-TLS listener

	authFailures int // failed AUTH on this connection
	transactions int // MAIL commands accepted
	delivered    int // messages stored or queued
}

// NewSession is called by go-smtp at the first HELO/EHLO and again after
// STARTTLS.
func (cl *client) NewSession(c *smtp.Conn) (smtp.Session, error) {
	s := &session{cl: cl, c: c, log: cl.log}
	if cl.implicitTLS != nil {
		st := cl.implicitTLS.ConnectionState()
		s.tls = &st
	} else if st, ok := c.TLSConnectionState(); ok {
		s.tls = &st
	}
	attrs := []any{"helo", printable(c.Hostname())}
	if s.tls != nil {
		attrs = append(attrs, "tls", tls.VersionName(s.tls.Version), "cipher", tls.CipherSuiteName(s.tls.CipherSuite))
	}
	cl.log.Info("session", attrs...)
	return s, nil
}

// session is the SMTP dialogue between two HELOs or STARTTLS.
type session struct {
	cl   *client
	c    *smtp.Conn
	log  *slog.Logger
	tls  *tls.ConnectionState
	user *mailstore.User // after AUTH

	// mu guards tx: go-smtp runs Data in its own goroutine for BDAT, and
	// after "BDAT 0" the client may RSET while Data starts.
	mu sync.Mutex
	tx *transaction
}

func (s *session) transaction() *transaction {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tx
}

// transaction is one message's envelope, from MAIL to the end of DATA.
type transaction struct {
	id    string // names the message in Received and logs
	from  string
	utf8  bool
	size  int64 // the SIZE parameter, 0 if none
	ret   string
	envID string
	rcpts []mailstore.Recipient
	seen  map[string]bool
	local bool // some recipient reaches a local mailbox
}

var (
	_ smtp.Backend     = (*client)(nil)
	_ smtp.Session     = (*session)(nil)
	_ smtp.AuthSession = (*session)(nil)
)

// Mail starts a transaction. go-smtp has parsed the reverse-path and its
// parameters and checked SIZE against the limit.
func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.endTransaction()
	if s.cl.kind.submission() && s.user == nil {
		return errAuthRequired
	}
	if opts.Size > s.cl.srv.cfg.MaxMessageBytes {
		return errSizeExceeded
	}
	// RFC 6531 3.5: a non-ASCII address needs the SMTPUTF8 parameter.
	if !opts.UTF8 && !isASCII(from) {
		return errNeedSMTPUTF8
	}
	sender := ""
	if from != "" {
		a, err := parseAddress(from)
		if err != nil {
			s.log.Info("sender refused", "from", printable(from), "reason", "syntax")
			return errBadSender
		}
		sender = a.String()
		if s.user != nil {
			if err := s.checkSender(sender); err != nil {
				return err
			}
		}
	}
	s.cl.transactions++
	tx := &transaction{
		id:    s.cl.id + "-" + strconv.Itoa(s.cl.transactions),
		from:  sender,
		utf8:  opts.UTF8,
		size:  opts.Size,
		ret:   string(opts.Return),
		envID: opts.EnvelopeID,
		seen:  make(map[string]bool),
	}
	s.mu.Lock()
	s.tx = tx
	s.mu.Unlock()
	// See the implementation notes in doc.go: go-smtp's DATA reader fails
	// a message of exactly the limit, so it gets one octet more and Data
	// enforces the limit.
	s.c.Server().MaxMessageBytes = s.cl.srv.cfg.MaxMessageBytes + 1
	return nil
}

// checkSender allows an authenticated user to send as their own address or
// an alias that reaches them.
func (s *session) checkSender(sender string) error {
	a, err := mailstore.NormalizeAddress(sender)
	if err != nil {
		return errSenderNotOwned
	}
	if a == s.user.Address {
		return nil
	}
	res, err := s.cl.srv.store.Resolve(s.cl.srv.ctx, a)
	switch {
	case errors.Is(err, mailstore.ErrNoSuchUser), errors.Is(err, mailstore.ErrInvalidAddress):
	case err != nil:
		s.log.Error("sender check failed", "from", a, "err", err)
		return errTemporaryFailure
	default:
		for _, u := range res.Users {
			if u.ID == s.user.ID {
				return nil
			}
		}
	}
	s.log.Info("sender refused", "from", a, "user", s.user.Address, "reason", "not the user's address")
	return errSenderNotOwned
}

// Rcpt adds a recipient after the relay, user and quota checks.
func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	tx := s.transaction()
	if tx == nil {
		return errTemporaryFailure // go-smtp sends RCPT only after a MAIL we accepted
	}
	// RFC 5321 4.5.3.1.8: at least 100 recipients; beyond the limit, 452
	// asks the client to send the rest in another transaction.
	if len(tx.rcpts) >= s.cl.srv.cfg.MaxRecipients {
		return errTooManyRecipients
	}
	if !tx.utf8 && !isASCII(to) {
		return errNeedSMTPUTF8
	}
	a, err := parseAddress(to)
	if err != nil {
		s.log.Info("recipient refused", "to", printable(to), "reason", "syntax")
		return errBadRecipient
	}
	store, ctx := s.cl.srv.store, s.cl.srv.ctx
	local := false
	if !a.literal {
		if local, err = store.IsLocalDomain(ctx, a.domain); err != nil {
			s.log.Error("recipient check failed", "to", a.String(), "err", err)
			return errTemporaryFailure
		}
	}
	if !local {
		if s.user == nil {
			s.log.Info("recipient refused", "to", a.String(), "reason", "relay denied")
			return errRelayDenied
		}
		if _, err := mailstore.NormalizeAddress(a.String()); a.literal || err != nil {
			// The queue takes domain names only.
			s.log.Info("recipient refused", "to", a.String(), "reason", "unsupported remote address")
			return errUnsupportedAddress
		}
		// As given: only the remote server may say whether the case of
		// its local parts matters (RFC 5321 2.4).
		tx.add(a.String(), opts)
		return nil
	}
	res, err := store.Resolve(ctx, a.String())
	switch {
	case errors.Is(err, mailstore.ErrNoSuchUser), errors.Is(err, mailstore.ErrInvalidAddress):
		s.log.Info("recipient refused", "to", a.String(), "reason", "no such user")
		return errNoSuchUser
	case err != nil:
		s.log.Error("recipient check failed", "to", a.String(), "err", err)
		return errTemporaryFailure
	}
	full, err := s.mailboxesFull(res, tx.size)
	if err != nil {
		s.log.Error("quota check failed", "to", a.String(), "err", err)
		return errTemporaryFailure
	}
	if full {
		s.log.Info("recipient refused", "to", a.String(), "reason", "over quota")
		return errMailboxFull
	}
	norm, err := mailstore.NormalizeAddress(a.String())
	if err != nil {
		return errNoSuchUser // Resolve accepted it, so this does not happen
	}
	tx.add(norm, opts)
	tx.local = tx.local || len(res.Users) > 0
	return nil
}

// mailboxesFull reports whether every mailbox the recipient reaches is
// known to be over quota already, or would be with a message of the SIZE
// given. An alias that reaches someone with room is not refused.
func (s *session) mailboxesFull(res mailstore.Resolution, size int64) (bool, error) {
	if len(res.Remote) > 0 || len(res.Users) == 0 {
		return false, nil
	}
	for _, u := range res.Users {
		if u.QuotaBytes == 0 {
			return false, nil
		}
		used, quota, err := s.cl.srv.store.Usage(s.cl.srv.ctx, u.ID)
		if err != nil {
			return false, err
		}
		if quota == 0 || used < quota && used+size <= quota {
			return false, nil
		}
	}
	return true, nil
}

// add records a recipient once, with its DSN parameters (RFC 3461) for
// the queue.
func (tx *transaction) add(addr string, opts *smtp.RcptOptions) {
	if tx.seen[addr] {
		return
	}
	tx.seen[addr] = true
	r := mailstore.Recipient{Address: addr}
	if opts != nil {
		notify := make([]string, len(opts.Notify))
		for i, n := range opts.Notify {
			notify[i] = string(n)
		}
		r.Notify = strings.Join(notify, ",")
		if opts.OriginalRecipient != "" {
			r.ORcpt = string(opts.OriginalRecipientType) + ";" + opts.OriginalRecipient
		}
	}
	tx.rcpts = append(tx.rcpts, r)
}

// Reset ends the transaction (RSET, a new EHLO, after DATA).
func (s *session) Reset() { s.endTransaction() }

func (s *session) endTransaction() {
	s.mu.Lock()
	s.tx = nil
	s.mu.Unlock()
	s.c.Server().MaxMessageBytes = s.cl.srv.cfg.MaxMessageBytes
}

// Logout is called when the connection closes or STARTTLS begins.
func (s *session) Logout() error { return nil }

// authAllowed reports whether this session may send a password: under
// TLS, from a secure address (loopback), or when configured so.
func (s *session) authAllowed() bool {
	return s.tls != nil || s.cl.srv.cfg.AllowInsecureAuth || s.cl.srv.secure(s.cl.ip)
}

// AuthMechanisms lists what EHLO offers: nothing on the MX, and on the
// submission ports nothing until AUTH is allowed (RFC 4954 4: plaintext
// mechanisms are not offered without TLS).
func (s *session) AuthMechanisms() []string {
	if !s.cl.kind.submission() || !s.authAllowed() {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// Auth starts an AUTH exchange; go-smtp has checked it is the first.
func (s *session) Auth(mech string) (sasl.Server, error) {
	switch {
	case !s.cl.kind.submission():
		return nil, errAuthNotOffered
	case !s.authAllowed():
		return nil, errEncryptionNeeded
	case s.cl.srv.auth.blocked(clientKey(s.cl.ip)):
		s.log.Warn("auth refused", "reason", "too many failures from this address")
		return nil, errAuthTooManyFailed
	}
	switch mech {
	case sasl.Plain:
		return newPlainServer(s.authenticate), nil
	case sasl.Login:
		return newLoginServer(s.authenticate), nil
	}
	return nil, errAuthMechanism
}

// authenticate checks a password with the mailstore. A failure is answered
// late once the address has failed a few times; the session ends after
// maxAuthFailuresPerSession.
func (s *session) authenticate(mech, username, password string) error {
	u, err := s.cl.srv.store.Authenticate(s.cl.srv.ctx, username, password)
	if err == nil {
		s.user = &u
		s.log.Info("auth", "user", u.Address, "mechanism", mech)
		return nil
	}
	if !errors.Is(err, mailstore.ErrAuthFailed) {
		s.log.Error("auth failed", "mechanism", mech, "err", err)
		return errAuthTemporary
	}
	delay, failures := s.cl.srv.auth.fail(clientKey(s.cl.ip))
	s.cl.authFailures++
	s.log.Warn("auth failed", "user", printable(username), "mechanism", mech, "failures_from_address", failures, "delay", delay.String())
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-s.cl.srv.ctx.Done():
			t.Stop()
		}
	}
	if s.cl.authFailures >= maxAuthFailuresPerSession {
		s.cl.conn.expire("too many failed logins")
	}
	return errAuthFailed
}

// printable shortens s and replaces control characters, for logs.
func printable(s string) string {
	const max = 200
	if len(s) > max {
		s = s[:max] + "..."
	}
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}
