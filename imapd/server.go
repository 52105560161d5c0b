// Package imapd serves mailboxes over IMAP4rev1 (RFC 3501) and IMAP4rev2
// (RFC 9051): github.com/emersion/go-imap/v2's imapserver speaks the
// protocol, and this package is its Session backend over the mailstore.
//
// Capabilities, each backed by the session:
//   - IMAP4rev1, IMAP4rev2; IDLE (RFC 2177), ENABLE (RFC 5161), UNSELECT (RFC 3691),
//     SASL-IR (RFC 4959), UTF8=ACCEPT (RFC 6855), LITERAL+ (RFC 7888), which imapserver offers itself
//   - NAMESPACE (RFC 2342), UIDPLUS (RFC 4315), MOVE (RFC 6851), UNAUTHENTICATE (RFC 8437)
//   - ESEARCH (RFC 4731), SEARCHRES (RFC 5182)
//   - LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819), CHILDREN (RFC 3348)
//   - SPECIAL-USE, CREATE-SPECIAL-USE (RFC 6154)
//   - STATUS=SIZE (RFC 8438), BINARY (RFC 3516), APPENDLIMIT (RFC 7889)
//   - STARTTLS and LOGINDISABLED (RFC 3501 6.2.1), AUTH=PLAIN (RFC 4616)
//
// Wiring, as cmd/postern does it:
//
//	srv := imapd.New(imapd.Config{Hostname: ..., TLSConfig: ..., Logger: ...}, store)
//	go srv.Serve(plainListener)  // imap.listen (143): STARTTLS offered when TLSConfig != nil
//	go srv.ServeTLS(tlsListener) // imap.listen_tls (993): TLS from the first byte
//	...
//	srv.Shutdown(ctx)            // stop accepting, end idle sessions, then close the rest
//
// Implementation notes:
//   - LOGIN and AUTHENTICATE PLAIN are offered only on a connection that
//     counts as secure: TLS (implicit or after STARTTLS), or one for which
//     Config.Secure says so (by default, a connection from a loopback
//     address, as in Dovecot), or anywhere when Config.AllowInsecureAuth is
//     set. Elsewhere CAPABILITY says LOGINDISABLED. imapserver makes that
//     choice per server, so Postern runs two of them (one strict, one
//     not) and hands each connection to the right one; the connection
//     itself is never wrapped, since imapserver detects TLS by its type.
//   - The database is the truth and the change feed only wakes readers:
//     the sessions that have a mailbox selected share its list of UIDs,
//     and each keeps the queue of updates its client has not seen yet
//     (view.go). No goroutine runs per session or per mailbox beyond
//     imapserver's own.
//   - ENVELOPE and BODYSTRUCTURE are computed once per stored body by the
//     mime package, kept in the mailstore (BodyMeta) and in memory (an LRU
//     by body ID); BODY[], BODY[TEXT] and BODY[HEADER] of a whole message
//     stream from the store.
//   - SEARCH is evaluated here: flags, UIDs, dates and sizes from the
//     message list, then headers and decoded text only for the messages
//     still in question.
//   - Limits: connections in all and per client address
//     (Config.MaxConnections, MaxConnectionsPerIP), failed logins per
//     address (slowed by Config.AuthFailureDelay, refused for a while after
//     maxAuthFailuresPerIP) and per session (maxAuthFailures, then BYE).
//     imapserver bounds command lines and sets every read and write
//     deadline (30 s per command, 35 min between commands, RFC 3501 5.4).
//   - Errors the client sees are tagged NO/BAD with response codes
//     (errors.go); what went wrong inside is logged with the session ID,
//     never sent. Passwords are never logged; Config.Trace logs protocol
//     lines with LOGIN and AUTHENTICATE data replaced by "***".
package imapd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/postern/postern/mailstore"
)

const (
	// defaultAuthFailureDelay slows password guessing; Dovecot waits 2s too.
	defaultAuthFailureDelay = 2 * time.Second
	// maxAuthFailures ends a session (BYE) after this many failed logins.
	maxAuthFailures = 5
	// maxAuthFailuresPerIP refuses logins from an address after this many
	// failures within authFailureWindow.
	maxAuthFailuresPerIP = 20
	authFailureWindow    = 10 * time.Minute
	// maxThrottledIPs bounds the failed-login table.
	maxThrottledIPs = 10000
	// defaultMaxConnections and defaultMaxConnectionsPerIP bound sessions;
	// a desktop client opens about five per account.
	defaultMaxConnections      = 5000
	defaultMaxConnectionsPerIP = 50
	// defaultAppendLimit is APPENDLIMIT (RFC 7889): the size SMTP accepts
	// by default (smtp.max_message_bytes).
	defaultAppendLimit = 32 << 20
	// tlsHandshakeTimeout bounds the handshake of an implicit-TLS
	// connection (after STARTTLS, imapserver's command deadline does).
	tlsHandshakeTimeout = 30 * time.Second
	// storeTimeout bounds the mailstore work of one command.
	storeTimeout = 2 * time.Minute
	// maxAcceptDelay caps the back-off after a temporary Accept error.
	maxAcceptDelay = time.Second
	// byeTimeout bounds the BYE sent to each session at Shutdown.
	byeTimeout = 5 * time.Second
	// shutdownPollInterval is how often Shutdown looks for sessions that
	// are between commands, to say BYE to them.
	shutdownPollInterval = 50 * time.Millisecond
)

// ErrServerClosed is returned by Serve and ServeTLS after Shutdown.
var ErrServerClosed = errors.New("imapd: server closed")

// Config is what a Server needs to know. cmd/postern fills it from the
// configuration file; the zero value (plus a store) serves IMAP on the
// listeners given to Serve, with plaintext logins from loopback only.
type Config struct {
	// Hostname names the server in logs; empty means "localhost".
	Hostname string
	// TLSConfig enables STARTTLS on Serve listeners; ServeTLS requires it.
	TLSConfig *tls.Config
	// AllowInsecureAuth accepts LOGIN and AUTHENTICATE PLAIN on
	// connections that are not secure (auth.allow_insecure).
	AllowInsecureAuth bool
	// Secure reports whether a connection without TLS counts as secure for
	// plaintext logins. Nil means: when it comes from a loopback address.
	Secure func(net.Conn) bool
	// Logger receives one line per session event; nil discards them.
	Logger *slog.Logger
	// Trace logs every protocol line (message "trace", at info level) with
	// the session ID and direction (C: client, S: server). LOGIN and AUTHENTICATE data are
	// shown as "***"; literal contents (messages) are not logged.
	Trace bool
	// MaxConnections bounds the sessions of the server, and
	// MaxConnectionsPerIP those from one client address; a connection
	// over either gets "* BYE" at once. Zero means 5000 and 50.
	MaxConnections      int
	MaxConnectionsPerIP int
	// AuthFailureDelay is how long a failed login waits before its NO.
	// Zero means 2 seconds; a negative value means no wait (tests).
	AuthFailureDelay time.Duration
	// AppendLimit is the largest message APPEND takes (APPENDLIMIT). Zero
	// means 32 MiB.
	AppendLimit uint32
	// CacheEntries is how many messages' ENVELOPE and BODYSTRUCTURE are
	// kept in memory. Zero means 4096.
	CacheEntries int
}

// Server is an IMAP server over a mailstore. Its methods are safe for
// concurrent use.
type Server struct {
	cfg   Config
	store *mailstore.Store
	log   *slog.Logger
	boxes *registry
	cache *dataCache
	auth  *throttle

	// strict refuses plaintext logins before STARTTLS; open allows them.
	strict, open *imapserver.Server

	// baseCtx is the parent of every session's store calls; it is
	// canceled when Shutdown gives up waiting.
	baseCtx    context.Context
	cancelBase context.CancelFunc
	// quit is closed when Shutdown starts.
	quit chan struct{}

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	perIP     map[string]int
	traced    map[string]*imapserver.Server // per-connection servers of Trace mode, by session ID
	accepting sync.WaitGroup
	done      chan struct{} // closed when the last session ends after Shutdown
}

// New returns a server for store. It does not listen: give it listeners
// with Serve and ServeTLS.
func New(cfg Config, store *mailstore.Store) *Server {
	if cfg.Hostname == "" {
		cfg.Hostname = "localhost"
	}
	if cfg.Secure == nil {
		cfg.Secure = isLoopback
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = defaultMaxConnections
	}
	if cfg.MaxConnectionsPerIP <= 0 {
		cfg.MaxConnectionsPerIP = defaultMaxConnectionsPerIP
	}
	if cfg.AuthFailureDelay == 0 {
		cfg.AuthFailureDelay = defaultAuthFailureDelay
	}
	if cfg.AppendLimit == 0 {
		cfg.AppendLimit = defaultAppendLimit
	}
	if cfg.CacheEntries <= 0 {
		cfg.CacheEntries = defaultCacheEntries
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:        cfg,
		store:      store,
		log:        log.With("server", "imap"),
		boxes:      newRegistry(store),
		auth:       newThrottle(),
		baseCtx:    ctx,
		cancelBase: cancel,
		quit:       make(chan struct{}),
		listeners:  make(map[net.Listener]struct{}),
		sessions:   make(map[*session]struct{}),
		perIP:      make(map[string]int),
		traced:     make(map[string]*imapserver.Server),
		done:       make(chan struct{}),
	}
	s.cache = newDataCache(store, cfg.CacheEntries, s.log)
	s.strict = imapserver.New(s.options(false, ""))
	s.open = imapserver.New(s.options(true, ""))
	return s
}

// caps is what Postern advertises beyond what imapserver always offers.
var caps = imap.CapSet{
	imap.CapIMAP4rev1:        {},
	imap.CapIMAP4rev2:        {},
	imap.CapNamespace:        {},
	imap.CapUIDPlus:          {},
	imap.CapESearch:          {},
	imap.CapSearchRes:        {},
	imap.CapListExtended:     {},
	imap.CapListStatus:       {},
	imap.CapMove:             {},
	imap.CapStatusSize:       {},
	imap.CapBinary:           {},
	imap.CapChildren:         {},
	imap.CapSpecialUse:       {},
	imap.CapCreateSpecialUse: {},
	imap.CapLiteralPlus:      {},
	imap.CapUnauthenticate:   {},
	imap.CapAppendLimit:      {},
}

// options configures one imapserver.Server. insecureAuth allows plaintext
// logins before TLS; traceID, when set, logs the protocol of the one
// connection that server will serve.
func (s *Server) options(insecureAuth bool, traceID string) *imapserver.Options {
	o := &imapserver.Options{
		NewSession: func(c *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return s.newSession(c, traceID)
		},
		Caps:         caps,
		Logger:       slogPrintf{s.log},
		TLSConfig:    s.cfg.TLSConfig,
		InsecureAuth: insecureAuth,
	}
	if traceID != "" {
		o.DebugWriter = newTraceWriter(s.log.With("session", traceID))
	}
	return o
}

// slogPrintf passes imapserver's own messages to the logger.
type slogPrintf struct{ log *slog.Logger }

func (l slogPrintf) Printf(format string, args ...any) {
	l.log.Warn("imapserver: " + fmt.Sprintf(format, args...))
}

// isLoopback is the default Config.Secure: a connection from 127.0.0.0/8
// or ::1 never leaves the machine.
func isLoopback(c net.Conn) bool {
	addr, ok := c.RemoteAddr().(*net.TCPAddr)
	return ok && addr.IP.IsLoopback()
}

// Serve accepts IMAP connections on ln (port 143), offering STARTTLS when
// Config.TLSConfig is set, until Shutdown; then it returns
// ErrServerClosed. Serve closes ln.
func (s *Server) Serve(ln net.Listener) error {
	return s.serve(ln)
}

// ServeTLS accepts IMAP connections on ln that start with a TLS handshake
// (port 993), until Shutdown; then it returns ErrServerClosed. ServeTLS
// closes ln.
func (s *Server) ServeTLS(ln net.Listener) error {
	if s.cfg.TLSConfig == nil {
		ln.Close()
		return errors.New("imapd: ServeTLS needs Config.TLSConfig")
	}
	return s.serve(tls.NewListener(ln, s.cfg.TLSConfig))
}

func (s *Server) serve(ln net.Listener) error {
	if !s.addListener(ln) {
		ln.Close()
		return ErrServerClosed
	}
	defer s.accepting.Done()
	defer s.removeListener(ln)
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			if !temporary(err) {
				return fmt.Errorf("imapd: accept on %s: %w", ln.Addr(), err)
			}
			delay = min(max(2*delay, 5*time.Millisecond), maxAcceptDelay)
			s.log.Warn("accept failed, retrying", "listener", ln.Addr().String(), "err", err, "delay", delay)
			select {
			case <-time.After(delay):
			case <-s.quit:
			}
			continue
		}
		delay = 0
		s.hand(c)
	}
}

// hand gives a connection to the imapserver.Server that fits it. Serve
// on a one-connection listener starts the connection's goroutine and
// returns at once.
func (s *Server) hand(c net.Conn) {
	_, isTLS := c.(*tls.Conn)
	if isTLS {
		// The handshake runs at the greeting, before imapserver sets a
		// read deadline: bound it here.
		c.SetDeadline(time.Now().Add(tlsHandshakeTimeout))
	}
	insecureOK := isTLS || s.cfg.AllowInsecureAuth || s.cfg.Secure(c)
	srv := s.strict
	if insecureOK {
		srv = s.open
	}
	if s.cfg.Trace {
		id := newSessionID()
		srv = imapserver.New(s.options(insecureOK, id))
		s.mu.Lock()
		s.traced[id] = srv
		s.mu.Unlock()
	}
	if err := srv.Serve(&oneConn{c: c}); err != nil {
		c.Close()
	}
}

// oneConn is a listener that yields one connection, then reports itself
// closed.
type oneConn struct {
	c    net.Conn
	done bool
}

func (l *oneConn) Accept() (net.Conn, error) {
	if l.done {
		return nil, net.ErrClosed
	}
	l.done = true
	return l.c, nil
}

func (l *oneConn) Close() error   { return nil }
func (l *oneConn) Addr() net.Addr { return l.c.LocalAddr() }

// temporary reports whether an Accept error may go away by itself (out of
// file descriptors or memory, a connection reset before it was accepted).
func temporary(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.ECONNRESET} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Shutdown stops the listeners and ends the sessions: each gets "* BYE"
// as soon as it is between commands (an IDLE ends at once), until ctx is
// done; then the remaining connections are closed. It returns ctx.Err()
// if sessions had to be cut, else nil. Serve and ServeTLS return
// ErrServerClosed. It may be called once per listener, also at the same
// time; later calls wait like the first.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.quit)
	}
	for ln := range s.listeners {
		ln.Close()
	}
	if len(s.sessions) == 0 {
		s.closeDoneLocked()
	}
	s.mu.Unlock()
	s.accepting.Wait()

	tick := time.NewTicker(shutdownPollInterval)
	defer tick.Stop()
	for {
		s.mu.Lock()
		for sess := range s.sessions {
			if sess.busy.Load() == 0 {
				sess.sayBye("Server shutting down")
			}
		}
		s.mu.Unlock()
		select {
		case <-s.done:
			s.closeLibServers()
			s.cache.close()
			return nil
		case <-tick.C:
			continue
		case <-ctx.Done():
		}
		break
	}
	s.closeLibServers()
	s.cancelBase()
	select {
	case <-s.done:
	case <-time.After(byeTimeout):
		s.log.Warn("sessions still running after shutdown")
	}
	s.cache.close()
	return ctx.Err()
}

// closeLibServers closes every connection imapserver still holds.
func (s *Server) closeLibServers() {
	s.strict.Close()
	s.open.Close()
	s.mu.Lock()
	traced := s.traced
	s.traced = make(map[string]*imapserver.Server)
	s.mu.Unlock()
	for _, srv := range traced {
		srv.Close()
	}
}

func (s *Server) closeDoneLocked() {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) addListener(ln net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.listeners[ln] = struct{}{}
	s.accepting.Add(1)
	return true
}

func (s *Server) removeListener(ln net.Listener) {
	s.mu.Lock()
	delete(s.listeners, ln)
	s.mu.Unlock()
	ln.Close()
}

// admit registers a new session unless a limit or Shutdown forbids it.
func (s *Server) admit(sess *session) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return errShuttingDown
	case len(s.sessions) >= s.cfg.MaxConnections:
		return errTooManyConnections
	case s.perIP[sess.ip] >= s.cfg.MaxConnectionsPerIP:
		return errTooManyFromIP
	}
	s.sessions[sess] = struct{}{}
	s.perIP[sess.ip]++
	return nil
}

// leave unregisters a session that ended.
func (s *Server) leave(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.sessions[sess]; !ok {
		return
	}
	delete(s.sessions, sess)
	if s.perIP[sess.ip]--; s.perIP[sess.ip] <= 0 {
		delete(s.perIP, sess.ip)
	}
	delete(s.traced, sess.id)
	if s.closed && len(s.sessions) == 0 {
		s.closeDoneLocked()
	}
}
