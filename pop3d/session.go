package pop3d

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
)

const (
	// maxCommandLine: RFC 2449 section 4 limits a command line to 255
	// octets, CRLF included.
	maxCommandLine = 255
	// maxSASLLine bounds one SASL response line. RFC 5034 puts no limit
	// on it; a PLAIN response with the longest names RFC 4616 allows fits.
	maxSASLLine = 2048
	// maxDiscard is how much of an over-long line is read and dropped
	// before the connection is closed instead.
	maxDiscard = 64 << 10
	// maxSASLSteps bounds the challenges of one AUTH exchange (PLAIN
	// needs at most one).
	maxSASLSteps = 4
	// readBufferSize and writeBufferSize size the per-session buffers;
	// bodyBufferSize is the block read from a stored body.
	readBufferSize  = 4 << 10
	writeBufferSize = 32 << 10
	bodyBufferSize  = 32 << 10
)

// state is one of the RFC 1939 session states, as a bit so that a command
// can name the states it is valid in.
type state uint8

const (
	stateAuthorization state = 1 << iota
	stateTransaction
	stateUpdate
)

func (st state) String() string {
	switch st {
	case stateAuthorization:
		return "AUTHORIZATION"
	case stateTransaction:
		return "TRANSACTION"
	case stateUpdate:
		return "UPDATE"
	}
	return "unknown"
}

// errLineTooLongRead is readLine's error for a line over its limit; the
// line has been read and dropped, so the session can go on.
var errLineTooLongRead = errors.New("line too long")

// session is one connection.
type session struct {
	srv *Server
	id  string
	log *slog.Logger
	// authLog is log without the remote address (ip:port), for the failed
	// login line that limits writes with the address alone.
	authLog *slog.Logger
	remote  netip.Addr

	conn net.Conn // the current connection: *tls.Conn after STLS
	br   *bufio.Reader
	bw   *bufio.Writer
	tls  bool
	// tlsVersion is the TLS version's name once TLS is up, for the log.
	tlsVersion string
	start      time.Time // when the session started, for its duration

	state  state
	errors int
	done   bool  // end the session after the current command
	ioErr  error // the write or read failure that ended the session

	user        string // the name from USER, until the next command
	pendingUser string // the name from USER, as seen by the command after it

	account   mailstore.User
	locked    bool                     // this session holds account's maildrop lock
	lease     *mailstore.MaildropLease // the store's lease on the maildrop; nil when none
	lostLease bool                     // the lease lapsed: the session ended in TRANSACTION
	drop      *maildrop
	retrieved int
	deleted   int
	ahead     *readAhead // the next message's body, being read

	line []byte // readLine's buffer
	buf  []byte // body copy buffer
}

// serveConn runs one session on c until it ends. c is closed by the caller.
func (s *Server) serveConn(c net.Conn, implicitTLS bool) {
	sess := &session{
		srv:   s,
		id:    newSessionID(),
		state: stateAuthorization,
	}
	sess.authLog = s.log.With("session", sess.id, "proto", "pop3", "listener", listenerName(implicitTLS))
	sess.log = sess.authLog.With("remote", c.RemoteAddr().String())
	sess.remote = limits.RemoteIP(c)
	if implicitTLS {
		tc := tls.Server(c, s.cfg.TLSConfig)
		if err := sess.handshake(tc); err != nil {
			sess.log.Info("tls handshake", "result", "fail", "version", "", "err", err)
			return
		}
		sess.setConn(tc, true)
	} else {
		sess.setConn(c, false)
	}
	sess.start = time.Now()
	sess.log.Info("session start", "local", c.LocalAddr().String(), "tls", sess.tlsVersion)
	defer sess.end()
	sess.run()
}

// listenerName names a POP3 listener in the log vocabulary
// (cmd/postern/console/metrics.go), as the configuration does.
func listenerName(implicitTLS bool) string {
	if implicitTLS {
		return "pop3s"
	}
	return "pop3"
}

// timedWriter gives every write to the connection a deadline, so that a
// client that stops reading cannot hold a session forever.
type timedWriter struct {
	c    net.Conn
	sess *session
}

func (w timedWriter) Write(p []byte) (int, error) {
	if err := w.c.SetWriteDeadline(time.Now().Add(w.sess.timeout())); err != nil {
		return 0, err
	}
	return w.c.Write(p)
}

// timeout is how long the session may wait for the client: LoginTimeout
// until it has logged in, then IdleTimeout (RFC 1939 section 3).
func (sess *session) timeout() time.Duration {
	if sess.state == stateAuthorization {
		return sess.srv.lim.LoginTimeout
	}
	return sess.srv.lim.IdleTimeout
}

// setConn starts reading and writing on c. Anything the client sent
// before (pipelined after STLS) is dropped, as RFC 2595 section 4 wants
// for commands sent before the TLS negotiation ended.
func (sess *session) setConn(c net.Conn, isTLS bool) {
	sess.conn = c
	sess.tls = isTLS
	if tc, ok := c.(*tls.Conn); ok && isTLS {
		cs := tc.ConnectionState()
		sess.tlsVersion = tls.VersionName(cs.Version)
		sess.log.Info("tls handshake", "result", "ok", "version", sess.tlsVersion, "cipher", tls.CipherSuiteName(cs.CipherSuite))
	}
	sess.br = bufio.NewReaderSize(c, readBufferSize)
	sess.bw = bufio.NewWriterSize(timedWriter{c, sess}, writeBufferSize)
}

func (sess *session) handshake(tc *tls.Conn) error {
	ctx, cancel := context.WithTimeout(sess.srv.baseCtx, tlsHandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	return nil
}

// plaintextAllowed reports whether passwords may be sent in the clear on
// this connection (RFC 2595 section 6).
func (sess *session) plaintextAllowed() bool {
	return sess.tls || sess.srv.cfg.AllowInsecureAuth || sess.srv.cfg.Secure(sess.conn)
}

// run reads and answers commands until QUIT, an I/O error, the idle
// timeout or too many errors (Limits.MaxErrors: the reply to the last one
// is its -ERR, then the connection is closed).
func (sess *session) run() {
	sess.send(ok(sess.srv.cfg.Hostname + " POP3 server ready"))
	for !sess.done {
		if err := sess.flushUnlessPipelined(); err != nil {
			sess.ioErr = err
			return
		}
		line, err := sess.readLine(maxCommandLine)
		switch {
		case errors.Is(err, errLineTooLongRead):
			sess.pendingUser, sess.user = "", ""
			sess.trace("C", "<line over 255 octets>")
			sess.send(errLineTooLong)
		case err != nil:
			sess.ioErr = err
			return
		default:
			sess.dispatch(line)
		}
		if sess.errors >= sess.srv.lim.MaxErrors && !sess.done {
			sess.log.Info("refused", "what", "session", "reason", "errors", "detail", "too many errors", "errors", sess.errors)
			sess.done = true
		}
	}
	if err := sess.bw.Flush(); err != nil && sess.ioErr == nil {
		sess.ioErr = err
	}
}

// flushUnlessPipelined sends what is buffered unless the next command is
// already waiting: then its reply goes out in the same write (RFC 2449
// section 6.6, PIPELINING).
func (sess *session) flushUnlessPipelined() error {
	if n := sess.br.Buffered(); n > 0 {
		if b, err := sess.br.Peek(n); err == nil && bytes.IndexByte(b, '\n') >= 0 {
			return nil
		}
	}
	return sess.bw.Flush()
}

// readLine reads one line of at most limit octets, line end included, and
// returns it without the line end (CRLF, or a bare LF). A longer line is
// read to its end and dropped with errLineTooLongRead; one longer than
// maxDiscard is an error that ends the session. The returned slice is valid
// until the next call.
func (sess *session) readLine(limit int) ([]byte, error) {
	if err := sess.conn.SetReadDeadline(time.Now().Add(sess.timeout())); err != nil {
		return nil, err
	}
	sess.line = sess.line[:0]
	total := 0
	for {
		frag, err := sess.br.ReadSlice('\n')
		total += len(frag)
		if total <= limit {
			sess.line = append(sess.line, frag...)
		}
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			if total > maxDiscard {
				return nil, fmt.Errorf("line longer than %d octets", maxDiscard)
			}
			continue
		}
		return nil, err
	}
	if total > limit {
		return nil, errLineTooLongRead
	}
	line := bytes.TrimSuffix(sess.line, []byte("\n"))
	return bytes.TrimSuffix(line, []byte("\r")), nil
}

// dispatch runs one command line.
func (sess *session) dispatch(line []byte) {
	// RFC 1939 section 7: PASS is valid only right after USER.
	sess.pendingUser, sess.user = sess.user, ""
	name, arg, valid := parseCommand(line)
	if sess.srv.cfg.Trace {
		sess.trace("C", redactCommand(string(line)))
	}
	if !valid {
		sess.send(errSyntax)
		return
	}
	cmd, found := commands[name]
	if sess.state == stateTransaction && !sess.leaseHeld() {
		return
	}
	switch {
	case !found:
		sess.send(errUnknownCommand)
	case cmd.states&sess.state == 0:
		sess.send(errWrongState)
	default:
		cmd.run(sess, arg)
	}
}

// leaseHeld checks, before a command in TRANSACTION, that the maildrop
// is still this session's across frontends. When it is not, the session
// answers -ERR [IN-USE] and ends without UPDATE: its marks are dropped
// (RFC 1939 section 8: the maildrop is locked for the session, and another
// session may have seen or changed it since).
func (sess *session) leaseHeld() bool {
	if sess.lease == nil {
		return true
	}
	select {
	case <-sess.lease.Lost():
		sess.leaseLost(sess.lease.Err())
		return false
	default:
		return true
	}
}

// leaseLost ends a session whose maildrop lease lapsed, in TRANSACTION:
// nothing it marked is removed.
func (sess *session) leaseLost(err error) {
	// The store logged the loss when it found it; this is the session's end.
	sess.log.Warn("session ends: maildrop lease lost", "user", sess.account.Address, "marked", len(sess.drop.marked()), "err", err)
	sess.lostLease = true
	sess.releaseLock()
	sess.send(errLeaseLost)
	sess.done = true
}

// send queues a status line; it is flushed before the next read.
func (sess *session) send(r reply) {
	sess.sendStatus(r, false)
}

// sendMulti queues a +OK status line that a multi-line body follows.
func (sess *session) sendMulti(r reply) {
	sess.sendStatus(r, true)
}

func (sess *session) sendStatus(r reply, multiline bool) {
	if !r.ok && !r.free {
		sess.errors++
	}
	line := r.String()
	sess.writeLine(line)
	sess.trace("S", line)
	if sess.srv.onReply != nil {
		sess.srv.onReply(line, multiline)
	}
}

// sendContinuation sends a SASL challenge line (RFC 5034 section 4).
func (sess *session) sendContinuation(challenge string) {
	line := "+ " + challenge
	sess.writeLine(line)
	sess.trace("S", line)
	if sess.srv.onReply != nil {
		sess.srv.onReply(line, false)
	}
}

// writeLine queues one line and CRLF. Write errors stick in the
// bufio.Writer and come out at the next Flush.
func (sess *session) writeLine(line string) {
	sess.bw.WriteString(line)
	sess.bw.WriteString("\r\n")
}

// sendLines queues the lines of a multi-line body and its terminator.
// The lines never start with "." (numbers and capability names), so no
// byte-stuffing is needed.
func (sess *session) sendLines(lines ...string) {
	for _, l := range lines {
		sess.writeLine(l)
		sess.trace("S", l)
	}
	sess.writeLine(".")
	sess.trace("S", ".")
}

// trace logs one protocol line when Config.Trace is set.
func (sess *session) trace(dir, line string) {
	if sess.srv.cfg.Trace {
		sess.log.Info("trace", "dir", dir, "line", line)
	}
}

// fail ends the session after a failure that leaves the protocol out of
// step (a body that cannot be read after +OK was sent, a broken TLS
// negotiation).
func (sess *session) fail(err error) {
	sess.ioErr = err
	sess.done = true
}

// end releases what the session holds and logs its outcome. Messages
// marked for deletion stay unless UPDATE already removed them.
func (sess *session) end() {
	sess.stopReadAhead()
	sess.releaseLock()
	if sess.drop != nil {
		sess.drop.close()
	}
	attrs := []any{"tls", sess.tlsVersion, "duration", time.Since(sess.start).Round(time.Millisecond),
		"state", sess.state.String(), "errors", sess.errors}
	if sess.account.Address != "" {
		attrs = append(attrs, "user", sess.account.Address, "retrieved", sess.retrieved, "deleted", sess.deleted)
	}
	if sess.ioErr != nil {
		attrs = append(attrs, "reason", describeIOError(sess.ioErr))
	}
	switch {
	case sess.lostLease:
		attrs = append(attrs, "quit", false, "detail", "maildrop lease lost, nothing removed")
	case sess.state == stateTransaction:
		// A session that ends in TRANSACTION never reaches UPDATE (RFC
		// 1939 section 6): its DELE marks are forgotten.
		attrs = append(attrs, "quit", false, "detail", "session ended without QUIT, nothing removed")
	}
	sess.log.Info("session end", attrs...)
}

func (sess *session) releaseLock() {
	if sess.lease != nil {
		sess.lease.Release()
		sess.lease = nil
	}
	if sess.locked {
		sess.srv.unlock(sess.account.ID)
		sess.locked = false
	}
}

// leaseHolder names this process in the store's maildrop leases.
var leaseHolder = func() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s:%d", host, os.Getpid())
}()

// describeIOError names why a connection ended, for the log.
func describeIOError(err error) string {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "idle timeout"
	case errors.Is(err, io.EOF):
		return "connection closed by client"
	case errors.Is(err, net.ErrClosed):
		return "connection closed by server"
	}
	return err.Error()
}
