package pop3d

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"unicode"

	"github.com/emersion/go-sasl"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
)

// command is one POP3 command: the states it is valid in and its handler.
type command struct {
	states state
	run    func(sess *session, arg string)
}

// commands maps each keyword (upper case) to its command. Keywords not in
// the map get "unknown command"; known ones in the wrong state get
// "command not valid in this state".
var commands = map[string]command{
	// Any state (RFC 2449 section 5: CAPA in AUTHORIZATION and TRANSACTION).
	"CAPA": {stateAuthorization | stateTransaction, (*session).cmdCapa},
	"QUIT": {stateAuthorization | stateTransaction, (*session).cmdQuit},

	// AUTHORIZATION state.
	"USER": {stateAuthorization, (*session).cmdUser},
	"PASS": {stateAuthorization, (*session).cmdPass},
	"AUTH": {stateAuthorization, (*session).cmdAuth},
	"STLS": {stateAuthorization, (*session).cmdStls},

	// TRANSACTION state.
	"STAT": {stateTransaction, (*session).cmdStat},
	"LIST": {stateTransaction, (*session).cmdList},
	"RETR": {stateTransaction, (*session).cmdRetr},
	"DELE": {stateTransaction, (*session).cmdDele},
	"NOOP": {stateTransaction, (*session).cmdNoop},
	"RSET": {stateTransaction, (*session).cmdRset},
	"TOP":  {stateTransaction, (*session).cmdTop},
	"UIDL": {stateTransaction, (*session).cmdUidl},
}

// parseCommand splits a command line into its keyword, upper-cased, and
// the rest of the line after the first space (RFC 1939 section 3). A line
// with control characters, or without a keyword, is not valid. Octets
// above 127 are allowed in arguments: passwords may be UTF-8.
func parseCommand(line []byte) (name, arg string, valid bool) {
	for _, c := range line {
		if c < 0x20 || c == 0x7f {
			return "", "", false
		}
	}
	s := string(line)
	name, arg, _ = strings.Cut(s, " ")
	if name == "" {
		return "", "", false
	}
	return strings.ToUpper(name), arg, true
}

// redactCommand is a command line as trace shows it: without passwords
// and SASL data. It looks at the raw line, so that a malformed PASS or
// AUTH line is hidden too.
func redactCommand(line string) string {
	line = strings.TrimLeftFunc(line, unicode.IsSpace)
	upper := strings.ToUpper(line)
	switch {
	case strings.HasPrefix(upper, "PASS"):
		return "PASS ***"
	case strings.HasPrefix(upper, "AUTH"):
		// The mechanism may show; the initial response may not, nor
		// credentials sent in the mechanism's place.
		f := strings.Fields(line)
		switch {
		case len(f) > 1 && !limits.KnownMechanism(f[1]):
			return f[0] + " ***"
		case len(f) > 2:
			return f[0] + " " + f[1] + " ***"
		}
	}
	return line
}

// args splits arguments separated by spaces and checks their number.
func args(arg string, lo, hi int) ([]string, bool) {
	a := strings.Fields(arg)
	return a, len(a) >= lo && len(a) <= hi
}

// Any state.

func (sess *session) cmdCapa(arg string) {
	if _, valid := args(arg, 0, 0); !valid {
		sess.send(errSyntax)
		return
	}
	// RFC 2449 section 5: what is available in AUTHORIZATION is announced
	// in both states. USER and SASL PLAIN are left out where a plaintext
	// login would be refused (RFC 2595 section 6).
	caps := []string{"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"}
	if sess.plaintextAllowed() {
		caps = append(caps, "USER", "SASL PLAIN")
	}
	if sess.srv.cfg.TLSConfig != nil && !sess.tls {
		caps = append(caps, "STLS")
	}
	caps = append(caps, "IMPLEMENTATION Postern")
	sess.sendMulti(ok("capability list follows"))
	sess.sendLines(caps...)
}

func (sess *session) cmdQuit(arg string) {
	sess.done = true
	if sess.state == stateTransaction {
		sess.update()
		return
	}
	sess.send(ok(sess.srv.cfg.Hostname + " POP3 server signing off"))
}

// AUTHORIZATION state.

func (sess *session) cmdUser(arg string) {
	a, valid := args(arg, 1, 1)
	switch {
	case !valid:
		sess.send(errSyntax)
	case !sess.plaintextAllowed():
		sess.send(errPlaintext)
	default:
		sess.user = a[0]
		sess.send(ok("send PASS"))
	}
}

func (sess *session) cmdPass(arg string) {
	// RFC 1939 section 7: the password is the rest of the line, spaces
	// included.
	switch {
	case sess.pendingUser == "":
		sess.send(errNoUser)
	case arg == "":
		sess.send(errSyntax)
	case !sess.plaintextAllowed():
		sess.send(errPlaintext)
	default:
		name, password := sess.pendingUser, arg
		user, err := sess.checkLogin("USER", name, func(ctx context.Context) (mailstore.User, error) {
			return sess.srv.store.Authenticate(ctx, name, password)
		})
		sess.loginResult("USER", name, user, err)
	}
}

// errAuthzid refuses a PLAIN authorization identity other than the
// login's own: we do not let one user act as another.
var errAuthzid = errors.New("authorization identity differs from authentication identity")

func (sess *session) cmdAuth(arg string) {
	a, valid := args(arg, 0, 2)
	switch {
	case !valid:
		sess.send(errSyntax)
		return
	case len(a) == 0:
		// Before RFC 5034, AUTH without a mechanism listed them (RFC 1734
		// clients still send it).
		var mechs []string
		if sess.plaintextAllowed() {
			mechs = append(mechs, sasl.Plain)
		}
		sess.sendMulti(ok("SASL mechanisms follow"))
		sess.sendLines(mechs...)
		return
	case !strings.EqualFold(a[0], sasl.Plain):
		sess.send(errAuthMech)
		return
	case !sess.plaintextAllowed():
		sess.send(errPlaintext)
		return
	}
	// RFC 5034 section 4: "=" is an empty initial response; no argument
	// means the client waits for a challenge.
	var resp []byte
	if len(a) == 2 {
		if a[1] == "=" {
			resp = []byte{}
		} else {
			var err error
			if resp, err = base64.StdEncoding.DecodeString(a[1]); err != nil {
				sess.send(errAuthSyntax)
				return
			}
		}
	}
	var (
		user     mailstore.User
		authErr  error
		checked  bool
		authName string
	)
	server := sasl.NewPlainServer(func(identity, username, password string) error {
		checked, authName = true, username
		user, authErr = sess.checkLogin(sasl.Plain, username, func(ctx context.Context) (mailstore.User, error) {
			if identity != "" && identity != username {
				return mailstore.User{}, fmt.Errorf("%w (%q for %q): %w", errAuthzid, identity, username, mailstore.ErrAuthFailed)
			}
			return sess.srv.store.Authenticate(ctx, username, password)
		})
		return authErr
	})
	for step := 0; ; step++ {
		challenge, done, err := server.Next(resp)
		if err != nil {
			if !checked {
				// A malformed PLAIN message is a failed login too: it
				// counts against the address like a wrong password.
				_, authErr = sess.checkLogin(sasl.Plain, "", func(context.Context) (mailstore.User, error) {
					return mailstore.User{}, fmt.Errorf("malformed PLAIN response: %w: %w", err, mailstore.ErrAuthFailed)
				})
			}
			sess.loginResult(sasl.Plain, authName, user, authErr)
			return
		}
		if done {
			sess.loginResult(sasl.Plain, authName, user, nil)
			return
		}
		if step >= maxSASLSteps {
			sess.send(errAuthCanceled)
			return
		}
		sess.sendContinuation(base64.StdEncoding.EncodeToString(challenge))
		if err := sess.bw.Flush(); err != nil {
			sess.fail(err)
			return
		}
		line, err := sess.readLine(maxSASLLine)
		switch {
		case errors.Is(err, errLineTooLongRead):
			sess.trace("C", "***")
			sess.send(errAuthSyntax)
			return
		case err != nil:
			sess.fail(err)
			return
		}
		sess.trace("C", "***")
		// RFC 5034 section 4: "*" cancels the exchange.
		if string(line) == "*" {
			sess.send(errAuthCanceled)
			return
		}
		if resp, err = base64.StdEncoding.DecodeString(string(line)); err != nil {
			sess.send(errAuthSyntax)
			return
		}
	}
}

// checkLogin decides a login through the process's shared record of
// failed logins (limits.Logins.Check, which also logs each failure):
// verify runs the password check in a slot of the shared gate, and its
// mailstore.ErrAuthFailed counts as wrong credentials. It returns the user
// on success, else limits.ErrLoginFailed, ErrBlocked, ErrBusy or another
// error.
func (sess *session) checkLogin(mech, name string, verify func(context.Context) (mailstore.User, error)) (mailstore.User, error) {
	ctx, cancel := context.WithTimeout(sess.srv.baseCtx, storeTimeout)
	defer cancel()
	var user mailstore.User
	a := limits.Attempt{Protocol: "pop3", Mechanism: mech, Remote: sess.remote, User: name, Log: sess.authLog}
	err := sess.srv.logins.Check(ctx, a, func(ctx context.Context) (bool, error) {
		u, err := verify(ctx)
		switch {
		case errors.Is(err, mailstore.ErrAuthFailed):
			sess.log.Debug("credentials refused", "mechanism", mech, "user", name, "err", err)
			return false, nil
		case err != nil:
			return false, err
		}
		user = u
		return true, nil
	})
	return user, err
}

// loginResult answers a login attempt: after a success it locks and opens
// the maildrop and enters TRANSACTION. Failed logins were logged by
// limits.Logins.Check.
func (sess *session) loginResult(mech, name string, user mailstore.User, err error) {
	switch {
	case errors.Is(err, limits.ErrLoginFailed):
		sess.log.Info("auth", "result", "fail", "user", name, "mechanism", mech)
		sess.send(errAuthFailed)
		return
	case errors.Is(err, limits.ErrBlocked):
		sess.log.Info("auth", "result", "blocked", "user", name, "mechanism", mech)
		sess.send(errBlocked)
		return
	case errors.Is(err, limits.ErrBusy):
		sess.log.Info("auth", "result", "busy", "user", name, "mechanism", mech)
		sess.send(errLoginBusy)
		return
	case err != nil:
		sess.log.Error("auth", "result", "error", "mechanism", mech, "user", name, "err", err)
		sess.send(errTemporary)
		return
	}
	if holder, locked := sess.srv.lock(user.ID, sess.id); !locked {
		sess.log.Info("maildrop in use", "user", user.Address, "held_by", holder)
		sess.send(errInUse)
		return
	}
	sess.account, sess.locked = user, true
	ctx, cancel := context.WithTimeout(sess.srv.baseCtx, storeTimeout)
	defer cancel()
	// The in-process lock answers sessions of this server at once; the
	// store's lease holds across every frontend of a shared store
	// (RFC 1939 8), and lapses by itself if this process dies.
	// The store logs the lease's loss when it finds it; the session
	// answers its next command -ERR [IN-USE] (session.leaseHeld).
	lease, err := sess.srv.store.LockMaildrop(ctx, user.ID, leaseHolder+" "+sess.id, sess.srv.cfg.MaildropLease)
	if err != nil {
		sess.releaseLock()
		sess.account = mailstore.User{}
		if errors.Is(err, mailstore.ErrLocked) {
			sess.log.Info("maildrop in use", "user", user.Address, "held_by", "another frontend")
			sess.send(errInUse)
			return
		}
		sess.log.Error("cannot lock maildrop", "user", user.Address, "err", err)
		sess.send(errTemporary)
		return
	}
	sess.lease = lease
	drop, err := openMaildrop(ctx, sess.srv.store, user.ID)
	if err != nil {
		sess.log.Error("cannot open maildrop", "user", user.Address, "err", err)
		sess.releaseLock()
		sess.account = mailstore.User{}
		sess.send(errTemporary)
		return
	}
	sess.drop = drop
	sess.state = stateTransaction
	n, size := drop.stat()
	sess.log.Info("auth", "result", "ok", "mechanism", mech, "user", user.Address, "tls", sess.tlsVersion, "messages", n, "octets", size)
	sess.send(ok(fmt.Sprintf("maildrop locked and ready, %d messages (%d octets)", n, size)))
}

func (sess *session) cmdStls(arg string) {
	switch {
	case strings.TrimSpace(arg) != "":
		sess.send(errSyntax)
		return
	case sess.tls:
		sess.send(errAlreadyTLS)
		return
	case sess.srv.cfg.TLSConfig == nil:
		sess.send(errNoTLS)
		return
	}
	sess.send(ok("begin TLS negotiation"))
	if err := sess.bw.Flush(); err != nil {
		sess.fail(err)
		return
	}
	tc := tls.Server(sess.conn, sess.srv.cfg.TLSConfig)
	if err := sess.handshake(tc); err != nil {
		sess.log.Info("tls handshake", "result", "fail", "version", "", "err", err)
		sess.fail(err)
		return
	}
	sess.setConn(tc, true) // logs the handshake
}

// TRANSACTION state.

func (sess *session) cmdStat(arg string) {
	if _, valid := args(arg, 0, 0); !valid {
		sess.send(errSyntax)
		return
	}
	n, size := sess.drop.stat()
	sess.send(ok(fmt.Sprintf("%d %d", n, size)))
}

func (sess *session) cmdList(arg string) {
	a, valid := args(arg, 0, 1)
	if !valid {
		sess.send(errSyntax)
		return
	}
	if len(a) == 1 {
		num, m, r := sess.drop.message(a[0])
		if m == nil {
			sess.send(r)
			return
		}
		sess.send(ok(fmt.Sprintf("%d %d", num, m.size)))
		return
	}
	n, size := sess.drop.stat()
	lines := make([]string, 0, n)
	for i := range sess.drop.msgs {
		if m := &sess.drop.msgs[i]; !m.deleted {
			lines = append(lines, fmt.Sprintf("%d %d", i+1, m.size))
		}
	}
	sess.sendMulti(ok(fmt.Sprintf("%d messages (%d octets)", n, size)))
	sess.sendLines(lines...)
}

func (sess *session) cmdUidl(arg string) {
	a, valid := args(arg, 0, 1)
	if !valid {
		sess.send(errSyntax)
		return
	}
	if len(a) == 1 {
		num, m, r := sess.drop.message(a[0])
		if m == nil {
			sess.send(r)
			return
		}
		sess.send(ok(fmt.Sprintf("%d %s", num, sess.drop.uidl(m))))
		return
	}
	lines := make([]string, 0, len(sess.drop.msgs))
	for i := range sess.drop.msgs {
		if m := &sess.drop.msgs[i]; !m.deleted {
			lines = append(lines, fmt.Sprintf("%d %s", i+1, sess.drop.uidl(m)))
		}
	}
	sess.sendMulti(ok("unique-id listing follows"))
	sess.sendLines(lines...)
}

func (sess *session) cmdRetr(arg string) {
	a, valid := args(arg, 1, 1)
	if !valid {
		sess.send(errSyntax)
		return
	}
	num, m, r := sess.drop.message(a[0])
	if m == nil {
		sess.send(r)
		return
	}
	status := ok(fmt.Sprintf("%d octets", m.size))
	if data, found := sess.takeReadAhead(num - 1); found {
		sess.sendMulti(status)
		dw := newDotWriter(sess.bw)
		dw.Write(data)
		if err := dw.Close(); err != nil {
			sess.fail(fmt.Errorf("send message: %w", err))
			return
		}
		sess.traceMessage(dw.n)
		sess.retrieved++
		sess.readAhead(data, num)
		return
	}
	if sess.sendMessage(m, status, -1) {
		sess.retrieved++
		sess.readAhead(nil, num)
	}
}

func (sess *session) cmdTop(arg string) {
	a, valid := args(arg, 2, 2)
	if !valid {
		sess.send(errSyntax)
		return
	}
	lines, isNum := parseNumber(a[1])
	if !isNum {
		sess.send(errSyntax)
		return
	}
	_, m, r := sess.drop.message(a[0])
	if m == nil {
		sess.send(r)
		return
	}
	sess.sendMessage(m, ok("top of message follows"), lines)
}

// sendMessage sends a message (RETR, lines < 0) or its header and first
// lines of body (TOP), streamed from the store and byte-stuffed. It
// reports whether the message went out.
func (sess *session) sendMessage(m *dropMessage, status reply, lines int64) bool {
	body, err := sess.srv.store.OpenBody(sess.srv.baseCtx, m.bodyID)
	if errors.Is(err, mailstore.ErrNotFound) {
		sess.send(errMessageGone)
		return false
	}
	if err != nil {
		sess.log.Error("cannot open message", "uid", m.uid, "err", err)
		sess.send(errTemporary)
		return false
	}
	defer body.Close()
	sess.sendMulti(status)
	if sess.buf == nil {
		sess.buf = make([]byte, bodyBufferSize)
	}
	n, err := writeMessage(sess.bw, body, lines, sess.buf)
	if err != nil {
		// The +OK is out: a -ERR now would be taken for message text, so
		// the only safe end is to close the connection.
		sess.log.Error("message transfer failed", "uid", m.uid, "err", err)
		sess.fail(err)
		return false
	}
	sess.traceMessage(n)
	return true
}

// traceMessage traces a message sent, without its content.
func (sess *session) traceMessage(n int64) {
	sess.trace("S", fmt.Sprintf("<%d octets of message data>", n))
	sess.trace("S", ".")
}

func (sess *session) cmdDele(arg string) {
	a, valid := args(arg, 1, 1)
	if !valid {
		sess.send(errSyntax)
		return
	}
	num, m, r := sess.drop.message(a[0])
	if m == nil {
		sess.send(r)
		return
	}
	m.deleted = true
	sess.send(ok(fmt.Sprintf("message %d deleted", num)))
}

func (sess *session) cmdNoop(arg string) {
	if _, valid := args(arg, 0, 0); !valid {
		sess.send(errSyntax)
		return
	}
	sess.send(ok(""))
}

func (sess *session) cmdRset(arg string) {
	if _, valid := args(arg, 0, 0); !valid {
		sess.send(errSyntax)
		return
	}
	for i := range sess.drop.msgs {
		sess.drop.msgs[i].deleted = false
	}
	n, size := sess.drop.stat()
	sess.send(ok(fmt.Sprintf("maildrop has %d messages (%d octets)", n, size)))
}

// UPDATE state.

// update removes the messages marked deleted, in one mailstore transaction
// (RFC 1939 section 6), and answers QUIT.
func (sess *session) update() {
	// RFC 1939 section 8: only the session that holds the maildrop may
	// change it; one whose lease was lost stays out of UPDATE and removes
	// nothing. The removal is fenced by the lease in the store's own
	// transaction, so a lease lost after this check removes nothing
	// either. Not tied to the connection or to Shutdown: a QUIT received
	// is carried out, while the lease holds.
	if !sess.leaseHeld() {
		return
	}
	sess.state = stateUpdate
	uids := sess.drop.marked()
	if len(uids) > 0 {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(sess.srv.baseCtx), updateTimeout)
		var gone []uint32
		var err error
		if sess.lease != nil {
			gone, err = sess.srv.store.DeleteMessagesLeased(ctx, sess.lease, sess.drop.mailboxID, uids)
		} else {
			gone, err = sess.srv.store.DeleteMessages(ctx, sess.drop.mailboxID, uids)
		}
		cancel()
		if errors.Is(err, mailstore.ErrLeaseLost) {
			// Nothing was removed: the session never reached UPDATE.
			sess.state = stateTransaction
			sess.leaseLost(err)
			return
		}
		if err != nil {
			sess.log.Error("cannot remove deleted messages", "user", sess.account.Address, "marked", len(uids), "err", err)
			sess.releaseLock()
			sess.send(errNotRemoved)
			return
		}
		sess.deleted = len(gone)
	}
	// The lock goes before the answer, so that a client that logs in
	// again at once finds the maildrop free.
	sess.releaseLock()
	sess.send(ok(fmt.Sprintf("%s POP3 server signing off (%d messages deleted)", sess.srv.cfg.Hostname, sess.deleted)))
}
