package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
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
	lim         limits.Protocol
	obs         *observer
	smtpConn    *smtp.Conn      // go-smtp's connection, from the first EHLO
	preauth     *mailstore.User // logged in from the start (Submit)

	authFailures int    // failed AUTH on this connection
	transactions int    // MAIL commands accepted
	delivered    int    // messages stored or queued
	tlsVersion   string // "TLS 1.3" once TLS is up, for the log

	// The last unauthenticated sender domain inboundSender looked up,
	// and whether it was local: a connection's messages mostly share
	// one, and the answer only decides a log line.
	senderDomain string
	senderLocal  bool
}

// NewSession is called by go-smtp at the first HELO/EHLO and again after
// STARTTLS.
func (cl *client) NewSession(c *smtp.Conn) (smtp.Session, error) {
	s := &session{cl: cl, c: c, log: cl.log}
	cl.smtpConn = c
	// Not logged in (again, after STARTTLS): the wait before AUTH.
	c.Server().ReadTimeout = cl.lim.LoginTimeout
	if cl.implicitTLS != nil {
		st := cl.implicitTLS.ConnectionState()
		s.tls = &st
	} else if st, ok := c.TLSConnectionState(); ok {
		s.tls = &st
	}
	if s.tls != nil && cl.tlsVersion == "" {
		// The first session after STARTTLS.
		cl.tlsVersion = logTLSHandshake(cl.log, *s.tls)
	}
	cl.log.Info("helo", "helo", printable(c.Hostname()), "tls", cl.tlsVersion)
	if cl.preauth != nil {
		u := *cl.preauth
		s.user = &u
		c.Server().ReadTimeout = cl.lim.IdleTimeout
		s.log.Info("auth", "result", "ok", "user", u.Address, "mechanism", "console")
	}
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
	seen  map[string]bool // the addresses of rcpts, once there are many
	local bool            // some recipient reaches a local mailbox
	junk  bool            // the inbound checks asked for the Junk mailbox

	refused int // recipients refused, for the error count
}

var (
	_ smtp.Backend     = (*client)(nil)
	_ smtp.Session     = (*session)(nil)
	_ smtp.AuthSession = (*session)(nil)
)

// Mail starts a transaction. go-smtp has parsed the reverse-path and its
// parameters and checked SIZE against the limit. A permanent refusal
// counts as an error of the session.
func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	err := s.mail(from, opts)
	if isPermanent(err) {
		s.cl.protocolError("MAIL refused")
	}
	return err
}

func (s *session) mail(from string, opts *smtp.MailOptions) error {
	if s.cl.conn.isEnded() {
		return errTooManyErrors
	}
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
			s.log.Info("sender refused", "from", printable(from), "reason", "syntax", "detail", "syntax")
			return errBadSender
		}
		sender = a.String()
		if s.user != nil {
			if err := s.checkSender(sender); err != nil {
				return err
			}
		} else if err := s.inboundSender(a); err != nil {
			return err
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
	ok, err := s.mayUse(sender)
	switch {
	case err != nil:
		s.log.Error("sender check failed", "from", printable(sender), "err", err)
		return errTemporaryFailure
	case !ok:
		s.log.Info("sender refused", "from", printable(sender), "user", s.user.Address, "reason", "policy", "detail", "not the user's address")
		return errSenderNotOwned
	}
	return nil
}

// mayUse reports whether the logged-in user may send as addr: it is their
// own address, or an alias that resolves to them (mailstore Resolve). An
// error means the store could not tell.
func (s *session) mayUse(addr string) (bool, error) {
	a, err := mailstore.NormalizeAddress(addr)
	if err != nil {
		return false, nil
	}
	if a == s.user.Address {
		return true, nil
	}
	res, err := s.cl.srv.store.Resolve(s.cl.srv.ctx, a)
	switch {
	case errors.Is(err, mailstore.ErrNoSuchUser), errors.Is(err, mailstore.ErrInvalidAddress):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("resolve %s: %w", a, err)
	}
	for _, u := range res.Users {
		if u.ID == s.user.ID {
			return true, nil
		}
	}
	return false, nil
}

// inboundSender is the policy hook for the reverse-path of mail from a
// client that has not logged in (the MX). A sender in a local domain
// from such a client claims to be one of our users without proof: it is
// logged here, and at the end of DATA, with Config.Checks set,
// checkInbound refuses the message with 550 5.7.1 unless SPF or DKIM
// passes for that domain (the DKIM result is known only then). The
// answer decides nothing but the log line (checkInbound asks the store
// again), so it comes from Server.isLocalSenderDomain, which reuses it for
// a few seconds across connections, and is kept for the connection's next
// MAIL from the same domain.
func (s *session) inboundSender(a address) error {
	if a.literal {
		return nil
	}
	cl := s.cl
	if cl.senderDomain != a.domain {
		local, err := cl.srv.isLocalSenderDomain(cl.srv.ctx, a.domain)
		if err != nil {
			s.log.Error("sender check failed", "from", a.String(), "err", err)
			return errTemporaryFailure
		}
		cl.senderDomain, cl.senderLocal = a.domain, local
	}
	if cl.senderLocal {
		s.log.Info("unauthenticated sender in a local domain", "from", a.String())
	}
	return nil
}

// Rcpt adds a recipient after the relay, user and quota checks. Beyond
// freeRcptRefusals in a transaction, each permanent refusal counts as an
// error of the session (address harvesting, relay probing).
func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if s.cl.conn.isEnded() {
		return errTooManyErrors
	}
	tx := s.transaction()
	if tx == nil {
		return errTemporaryFailure // go-smtp sends RCPT only after a MAIL we accepted
	}
	err := s.rcpt(tx, to, opts)
	if isPermanent(err) {
		if tx.refused++; tx.refused > freeRcptRefusals {
			s.cl.protocolError("recipient refused")
		}
	}
	return err
}

func (s *session) rcpt(tx *transaction, to string, opts *smtp.RcptOptions) error {
	if strings.EqualFold(to, "postmaster") {
		// RFC 5321 4.5.1: "postmaster" without a domain must be taken.
		pm, err := s.postmaster()
		if err != nil {
			return err
		}
		to = pm
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
		s.log.Info("recipient refused", "to", printable(to), "reason", "syntax", "detail", "syntax")
		return errBadRecipient
	}
	// One store read answers both questions, in one snapshot: is the
	// domain local, and where does the address go.
	res, local, err := s.resolveRecipient(a)
	switch {
	case errors.Is(err, mailstore.ErrNoSuchUser):
		s.log.Info("recipient refused", "to", a.String(), "reason", "unknown", "detail", "no such user")
		return errNoSuchUser
	case err != nil:
		s.log.Error("recipient check failed", "to", a.String(), "err", err)
		return errTemporaryFailure
	}
	if !local {
		if s.user == nil {
			s.log.Info("recipient refused", "to", a.String(), "reason", "policy", "detail", "relay denied")
			return errRelayDenied
		}
		if _, err := mailstore.NormalizeAddress(a.String()); a.literal || err != nil {
			// The queue takes domain names only.
			s.log.Info("recipient refused", "to", a.String(), "reason", "syntax", "detail", "unsupported remote address")
			return errUnsupportedAddress
		}
		// As given: only the remote server may say whether the case of
		// its local parts matters (RFC 5321 2.4).
		tx.add(a.String(), opts, nil)
		return nil
	}
	full, err := s.mailboxesFull(res, tx.size)
	if err != nil {
		s.log.Error("quota check failed", "to", a.String(), "err", err)
		return errTemporaryFailure
	}
	if full {
		s.log.Info("recipient refused", "to", a.String(), "reason", "quota", "detail", "over quota")
		return errMailboxFull
	}
	norm, err := mailstore.NormalizeAddress(a.String())
	if err != nil {
		return errNoSuchUser // Resolve accepted it, so this does not happen
	}
	tx.add(norm, opts, &res)
	tx.local = tx.local || len(res.Users) > 0
	return nil
}

// resolveRecipient reports whether a is in a local domain and, if so,
// where mail for it goes. Resolve answers both in one read: it resolves an
// address outside the local domains to itself alone in Remote (its
// documented contract), which a local address never does, since an alias
// cannot name itself. An address the store cannot take
// (ErrInvalidAddress) is local or not as its domain says, and in a local
// domain nobody has it (ErrNoSuchUser). An address literal is never local.
//
// A local answer that no quota limits (noQuota) is reused from
// Server.recipients for up to dirCacheTTL, across connections: most mail
// goes to the same few recipients. A stale answer is safe: a user deleted
// or disabled since gets nothing (the delivery inserts by user id and
// checks both, see mailstore.Recipient.Resolved), a quota set since is
// enforced by the delivery, and an alias changed since is followed as it
// was for a few seconds. Refusals, and answers a quota limits, are never
// reused: an address unknown or full is asked again each time, so that a
// user just added, or room just made, shows at once (a refusal at RCPT is
// permanent).
func (s *session) resolveRecipient(a address) (res mailstore.Resolution, local bool, err error) {
	if a.literal {
		return res, false, nil
	}
	srv := s.cl.srv
	key, keyErr := mailstore.NormalizeAddress(a.String())
	if keyErr == nil {
		if res, ok := srv.recipients.get(key); ok {
			return res, true, nil
		}
	}
	store, ctx := srv.store, srv.ctx
	res, err = store.Resolve(ctx, a.String())
	switch {
	case errors.Is(err, mailstore.ErrInvalidAddress):
		if local, err = store.IsLocalDomain(ctx, a.domain); err != nil || !local {
			return res, false, err
		}
		return res, true, fmt.Errorf("resolve %s: %w", printable(a.String()), mailstore.ErrNoSuchUser)
	case err != nil:
		return res, true, err // ErrNoSuchUser: the domain is local
	}
	if len(res.Users) == 0 && len(res.Remote) == 1 {
		them, err := mailstore.NormalizeAddress(res.Remote[0])
		if keyErr == nil && err == nil && key == them {
			return mailstore.Resolution{}, false, nil
		}
	}
	if keyErr == nil && noQuota(res) {
		srv.recipients.put(key, res)
	}
	return res, true, nil
}

// noQuota reports whether a resolution reaches a remote address or a
// user without a quota: mail for it is never refused as over quota.
func noQuota(res mailstore.Resolution) bool {
	if len(res.Remote) > 0 {
		return true
	}
	for _, u := range res.Users {
		if u.QuotaBytes == 0 {
			return true
		}
	}
	return false
}

// postmaster is the address a bare "postmaster" recipient stands for:
// postmaster at the server's host name if that is a local domain and has
// one, else at the first local domain that has one.
func (s *session) postmaster() (string, error) {
	store, ctx := s.cl.srv.store, s.cl.srv.ctx
	domains, err := store.Domains(ctx)
	if err != nil {
		s.log.Error("recipient check failed", "to", "postmaster", "err", err)
		return "", errTemporaryFailure
	}
	host := strings.ToLower(s.cl.srv.cfg.Hostname)
	for i, d := range domains {
		if d == host {
			domains[0], domains[i] = domains[i], domains[0]
		}
	}
	for _, d := range domains {
		a := "postmaster@" + d
		_, err := store.Resolve(ctx, a)
		switch {
		case err == nil:
			return a, nil
		case errors.Is(err, mailstore.ErrNoSuchUser), errors.Is(err, mailstore.ErrInvalidAddress):
			continue
		}
		s.log.Error("recipient check failed", "to", a, "err", err)
		return "", errTemporaryFailure
	}
	s.log.Info("recipient refused", "to", "postmaster", "reason", "unknown", "detail", "no postmaster in any local domain")
	return "", errNoSuchUser
}

// mailboxesFull reports whether every mailbox the recipient reaches is
// known to be over quota already, or would be with a message of the SIZE
// given. An alias that reaches someone with room is not refused.
func (s *session) mailboxesFull(res mailstore.Resolution, size int64) (bool, error) {
	if len(res.Remote) > 0 || len(res.Users) == 0 {
		return false, nil
	}
	for i, u := range res.Users {
		if u.QuotaBytes == 0 {
			return false, nil
		}
		// Resolve read the usage with the user, in the same snapshot.
		used, quota := int64(0), u.QuotaBytes
		if i < len(res.UsedBytes) {
			used = res.UsedBytes[i]
		} else {
			var err error
			if used, quota, err = s.cl.srv.store.Usage(s.cl.srv.ctx, u.ID); err != nil {
				return false, err
			}
		}
		if quota == 0 || used < quota && used+size <= quota {
			return false, nil
		}
	}
	return true, nil
}

// add records a recipient once, with its DSN parameters (RFC 3461) for
// the queue and, for a local address, where the store resolved it: the
// delivery at the end of DATA uses that instead of resolving it again
// (mailstore.Recipient.Resolved says what stays safe).
func (tx *transaction) add(addr string, opts *smtp.RcptOptions, res *mailstore.Resolution) {
	// A few recipients (the usual case) are compared one by one; past
	// that a set keeps the check cheap.
	const scanMax = 16
	if tx.seen != nil {
		if tx.seen[addr] {
			return
		}
		tx.seen[addr] = true
	} else {
		for _, r := range tx.rcpts {
			if r.Address == addr {
				return
			}
		}
		if len(tx.rcpts) >= scanMax {
			tx.seen = make(map[string]bool, 2*scanMax)
			for _, r := range tx.rcpts {
				tx.seen[r.Address] = true
			}
			tx.seen[addr] = true
		}
	}
	r := mailstore.Recipient{Address: addr, Resolved: res}
	if opts != nil {
		if len(opts.Notify) > 0 {
			notify := make([]string, len(opts.Notify))
			for i, n := range opts.Notify {
				notify[i] = string(n)
			}
			r.Notify = strings.Join(notify, ",")
		}
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
	case s.cl.conn.isEnded():
		return nil, errTooManyErrors
	case !s.cl.kind.submission():
		return nil, errAuthNotOffered
	case !s.authAllowed():
		s.cl.protocolError("AUTH without TLS")
		return nil, errEncryptionNeeded
	}
	switch mech {
	case sasl.Plain:
		return newPlainServer(s.authenticate), nil
	case sasl.Login:
		return newLoginServer(s.authenticate), nil
	}
	return nil, errAuthMechanism
}

// authenticate checks a password through the process's login gate
// (limits.Logins), which refuses an address that failed too often on any
// protocol, bounds the password checks running at once, delays failures
// and logs each in the one form fail2ban reads. A failure counts as an
// error of the session, which ends after maxAuthFailuresPerSession.
func (s *session) authenticate(mech, username, password string) error {
	if s.cl.conn.isEnded() {
		return errTooManyErrors
	}
	var user mailstore.User
	check := s.cl.srv.checkPassword
	attempt := limits.Attempt{Protocol: "smtp", Mechanism: mech, Remote: s.cl.ip, User: username, Log: s.log}
	err := s.cl.srv.sh.Logins.Check(s.cl.srv.ctx, attempt, func(ctx context.Context) (bool, error) {
		u, err := check(ctx, username, password)
		switch {
		case err == nil:
			user = u
			return true, nil
		case errors.Is(err, mailstore.ErrAuthFailed):
			return false, nil
		}
		return false, err
	})
	switch {
	case err == nil:
		s.user = &user
		// Logged in: the wait for a command is the idle timeout now.
		s.c.Server().ReadTimeout = s.cl.lim.IdleTimeout
		s.log.Info("auth", "result", "ok", "user", user.Address, "mechanism", mech)
		return nil
	case errors.Is(err, limits.ErrLoginFailed):
		s.log.Info("auth", "result", "fail", "user", printable(username), "mechanism", mech)
		s.cl.authFailures++
		if s.cl.authFailures >= maxAuthFailuresPerSession {
			s.cl.conn.expire("too many failed logins")
		}
		s.cl.protocolError("authentication failed")
		return errAuthFailed
	case errors.Is(err, limits.ErrBlocked):
		s.log.Info("auth", "result", "blocked", "user", printable(username), "mechanism", mech)
		s.cl.protocolError("address blocked after failed logins")
		return errAuthTooManyFailed
	case errors.Is(err, limits.ErrBusy):
		s.log.Info("auth", "result", "busy", "user", printable(username), "mechanism", mech)
		return errAuthBusy
	}
	s.log.Error("auth", "result", "error", "user", printable(username), "mechanism", mech, "err", err)
	return errAuthTemporary
}

// isPermanent reports whether err is a 5xx reply.
func isPermanent(err error) bool {
	var se *smtp.SMTPError
	return errors.As(err, &se) && se.Code >= 500
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
