package imapd

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
)

// session is one IMAP connection's backend. imapserver calls its methods
// one at a time (Idle excepted, which runs while the connection reads).
type session struct {
	conn *imapserver.Conn
	cc   *clientConn // cc.id names the session, cc.srv is its server

	// busy counts the calls in progress: Shutdown says BYE only to a
	// session between commands.
	busy atomic.Int32
	// byeSent: sayBye has run.
	byeSent atomic.Bool

	// The logged-in user (userAddr "" before login): not the whole
	// mailstore.User, which an idle session would keep.
	userID   int64
	userAddr string
	// view is the selected mailbox. It changes only on imapserver's
	// command goroutine, under mu, which Idle (on its own goroutine, and
	// possibly still running when Close is called) takes to read it.
	mu   sync.Mutex
	view *view
	// The selected mailbox's ID and name, as they were at SELECT (not
	// the whole mailstore.Mailbox: an idle session keeps what it holds).
	boxID     int64
	boxName   string
	searchRes []uint32 // UIDs saved by SEARCH RETURN (SAVE) (RFC 5182)
}

var (
	_ imapserver.SessionIMAP4rev2      = (*session)(nil)
	_ imapserver.SessionUnauthenticate = (*session)(nil)
	_ imapserver.SessionAppendLimit    = (*session)(nil)
	_ imapserver.SessionNamespace      = (*session)(nil)
	_ imapserver.SessionMove           = (*session)(nil)
)

func (s *Server) newSession(c *imapserver.Conn, cc *clientConn) (imapserver.Session, *imapserver.GreetingData, error) {
	sess := &session{conn: c, cc: cc}
	if !s.attach(cc, sess) {
		return nil, nil, errShuttingDown
	}
	if tc, ok := cc.Conn.(*tls.Conn); ok {
		cs := tc.ConnectionState()
		sess.info("tls handshake", "result", "ok", "version", tls.VersionName(cs.Version), "cipher", tls.CipherSuiteName(cs.CipherSuite))
	}
	if !cc.greeting {
		sess.info("session start", "local", cc.LocalAddr().String(), "tls", cc.tlsVersion())
	}
	return sess, nil, nil
}

// logger tags a log line with the session ID and the user. It is made
// for each event rather than kept: an idle session holds no logger.
func (s *session) logger() *slog.Logger {
	if s.userAddr != "" {
		return s.cc.srv.log.With("session", s.cc.id, "proto", "imap", "listener", s.cc.listener(), "remote", s.cc.RemoteAddr().String(),
			"user", s.userAddr)
	}
	return s.cc.srv.log.With("session", s.cc.id, "proto", "imap", "listener", s.cc.listener(), "remote", s.cc.RemoteAddr().String())
}

// Session events are logged through these: the formatting runs off the
// connection's goroutine (see offStack).
func (s *session) info(msg string, args ...any)  { s.log(slog.LevelInfo, msg, args) }
func (s *session) warn(msg string, args ...any)  { s.log(slog.LevelWarn, msg, args) }
func (s *session) error(msg string, args ...any) { s.log(slog.LevelError, msg, args) }
func (s *session) debug(msg string, args ...any) { s.log(slog.LevelDebug, msg, args) }

func (s *session) log(level slog.Level, msg string, args []any) {
	if !s.cc.srv.log.Enabled(context.Background(), level) {
		return
	}
	// A log handler that panics loses this record, not the process.
	_ = offStack(func() { s.logger().Log(context.Background(), level, msg, args...) })
}

// offStack runs f on a goroutine of its own and waits for it. The
// mailstore's SQLite calls and slog's formatting use deep stacks; run on
// the connection's goroutine they would leave it with a large stack for as
// long as the session idles (Go shrinks a stack only down to four times
// what is in use), some kilobytes per idle connection.
//
// No recover of imapserver's covers that goroutine, so a panic in f is
// recovered there and returned as a *panicError; session.offStack turns
// it into a failed command.
func offStack(f func()) (err error) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if v := recover(); v != nil {
				err = &panicError{value: v, stack: debug.Stack()}
			}
		}()
		f()
	}()
	<-done
	return err
}

// panicError is a panic recovered by offStack.
type panicError struct {
	value any
	stack []byte
}

func (e *panicError) Error() string { return fmt.Sprintf("panic: %v", e.value) }

// offStack runs a command's work f off the connection's stack (see
// offStack). A panic in f is logged at ERROR with the session and its
// stack, and the command fails with NO [SERVERBUG]: the session and the
// process go on, as imapserver's own recover would have it for a panic on
// its goroutine (which ends only the connection).
func (s *session) offStack(op string, f func()) error {
	err := offStack(f)
	var pe *panicError
	if !errors.As(err, &pe) {
		return err
	}
	s.error(op+" panicked", "err", pe, "stack", string(pe.stack))
	return errServerBug
}

// newSessionID names a session in logs.
func newSessionID() string {
	var b [6]byte
	rand.Read(b[:]) // never fails: crypto/rand crashes the program instead
	return hex.EncodeToString(b[:])
}

// enter marks the session busy for one call; use as defer s.enter()().
func (s *session) enter() func() {
	s.busy.Add(1)
	return func() { s.busy.Add(-1) }
}

// ctx bounds the store work of one command.
func (s *session) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(s.cc.srv.baseCtx, storeTimeout)
}

// internal logs an unexpected failure and returns what the client is
// told: NO [UNAVAILABLE] when the store is closing or the command took
// too long, else NO [SERVERBUG], logged at ERROR with its cause.
func (s *session) internal(op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, mailstore.ErrClosed) {
		s.info(op+" interrupted", "err", err)
		return errTemporary
	}
	s.error(op+" failed", "err", err)
	return errServerBug
}

// sayBye ends the session with an untagged BYE, once, without waiting.
func (s *session) sayBye(text string) {
	if s.byeSent.Swap(true) {
		return
	}
	go func() {
		if err := s.conn.Bye(text); err != nil {
			s.debug("bye", "err", err)
		}
	}()
}

// Close is called by imapserver when the connection ends, or is handed
// on after STARTTLS, on its command goroutine once it has stopped reading.
func (s *session) Close() error {
	s.cc.doneReading()
	s.setView(nil)
	s.cc.srv.detach(s.cc)
	if !s.cc.handover { // after STARTTLS the session goes on
		s.info("session end", "tls", s.cc.tlsVersion(), "duration", (time.Since(processStart) - s.cc.start).Round(time.Millisecond))
	}
	return nil
}

// Login checks a LOGIN or AUTHENTICATE PLAIN through the process's
// failed-login record and password-check gate, which also logs each
// failure. imapserver refuses both on a connection that is not secure
// (see Config.Secure) before calling it.
func (s *session) Login(username, password string) (err error) {
	defer s.enter()()
	// Off the connection's stack: the logger, the login record and the
	// password check together would leave it twice the size for the rest
	// of the session (see offStack).
	if perr := s.offStack("login", func() { err = s.login(username, password) }); perr != nil {
		return perr
	}
	return err
}

func (s *session) login(username, password string) error {
	ctx, cancel := s.ctx()
	defer cancel()
	mech := "PLAIN"
	if s.cc.command() == "LOGIN" {
		mech = "LOGIN"
	}
	var u mailstore.User
	a := limits.Attempt{Protocol: "imap", Mechanism: mech, Remote: limits.RemoteIP(s.cc.Conn), User: username, Log: s.logger()}
	err := s.cc.srv.shared.Logins.Check(ctx, a, func(ctx context.Context) (ok bool, err error) {
		u, err = s.cc.srv.store.Authenticate(ctx, username, password)
		if errors.Is(err, mailstore.ErrAuthFailed) {
			return false, nil
		}
		return err == nil, err
	})
	switch {
	case err == nil:
	case errors.Is(err, limits.ErrLoginFailed):
		s.info("auth", "result", "fail", "user", username, "mechanism", mech)
		return errAuthFailed
	case errors.Is(err, limits.ErrBlocked):
		s.info("auth", "result", "blocked", "user", username, "mechanism", mech)
		return errAuthThrottled
	case errors.Is(err, limits.ErrBusy):
		s.info("auth", "result", "busy", "user", username, "mechanism", mech)
		return errAuthBusy
	default:
		s.info("auth", "result", "error", "user", username, "mechanism", mech)
		return s.internal("authenticate", err)
	}
	s.userID, s.userAddr = u.ID, u.Address
	s.info("auth", "result", "ok", "mechanism", mech)
	return nil
}

// Unauthenticate goes back to the not-authenticated state (RFC 8437).
func (s *session) Unauthenticate() error {
	defer s.enter()()
	s.setView(nil)
	s.info("unauthenticate")
	s.userID, s.userAddr = 0, ""
	s.searchRes = nil
	return nil
}

// Namespace: one personal namespace, "/"-separated (RFC 2342).
func (s *session) Namespace() (*imap.NamespaceData, error) {
	return &imap.NamespaceData{Personal: []imap.NamespaceDescriptor{{Prefix: "", Delim: rune(mailstore.Separator[0])}}}, nil
}

// AppendLimit is advertised as APPENDLIMIT=n (RFC 7889).
func (s *session) AppendLimit() uint32 { return uint32(s.cc.srv.maxMessage) }

// setView replaces the selected mailbox, closing the one before.
func (s *session) setView(v *view) {
	s.mu.Lock()
	old := s.view
	s.view = v
	s.mu.Unlock()
	if old != nil {
		old.close()
	}
}

// selected reads the selected mailbox from any goroutine.
func (s *session) selected() *view {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.view
}

// listenerName names an IMAP listener in the log vocabulary
// (cmd/postern/console/metrics.go), as the configuration does.
func listenerName(implicitTLS bool) string {
	if implicitTLS {
		return "imaps"
	}
	return "imap"
}

// tlsVersion is the name of the connection's TLS version, or "".
func (c *clientConn) tlsVersion() string {
	if tc, ok := c.Conn.(*tls.Conn); ok {
		return tls.VersionName(tc.ConnectionState().Version)
	}
	return ""
}
