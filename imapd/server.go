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
//     choice per server (and whether to offer STARTTLS), so Postern runs
//     up to four of them, shared by the connections (one per connection
//     with Config.Trace), and hands each connection to the right one.
//   - An idle connection costs little more than imapserver's own: its
//     input buffer goes back to a pool while it waits (conn.go,
//     awaitInput), deep work (logging, the store, the password check)
//     runs off its goroutine so that its stack stays small (offStack),
//     and the sessions idling on a mailbox share what wakes them.
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
//   - Limits come from mailstore/limits (Config.Limits, Config.Shared):
//     connections per server, per client address and per process; failed
//     logins across protocols and the password-check gate; the memory
//     budget APPEND spools through. clientConn (conn.go) frames commands
//     before imapserver reads them: it bounds lines and literals, sets
//     login and idle timeouts, counts errors, and does STARTTLS.
//   - Errors the client sees are tagged NO/BAD with response codes
//     (errors.go); SERVERBUG only for a real internal failure, logged at
//     ERROR; what went wrong inside is logged with the session ID,
//     never sent. Passwords are never logged; Config.Trace logs protocol
//     lines with LOGIN and AUTHENTICATE data replaced by "***".
package imapd

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
)

// LibraryMaxCommandBytes and LibraryMaxLiteralBytes are imapserver's own
// bounds on a command line and on a literal outside APPEND
// (imapserver/conn.go: maxCommandSize, checkBufferedLiteral), which
// Config.MaxCommandBytes and MaxLiteralBytes cannot exceed; they are also
// the defaults.
const (
	LibraryMaxCommandBytes = 50 * 1024
	LibraryMaxLiteralBytes = 4096
)

const (
	// defaultMaxMessageBytes is APPENDLIMIT (RFC 7889): the size SMTP
	// accepts by default (smtp.max_message_bytes).
	defaultMaxMessageBytes = 32 << 20
	// defaultMaxCommandBytes and defaultMaxLiteralBytes bound a command
	// line and a literal outside APPEND (limits.imap_command_bytes,
	// limits.imap_literal_bytes); imapserver lowers both (see clientConn).
	defaultMaxCommandBytes = LibraryMaxCommandBytes
	defaultMaxLiteralBytes = LibraryMaxLiteralBytes
	// tlsHandshakeTimeout bounds a TLS handshake.
	tlsHandshakeTimeout = 30 * time.Second
	// storeTimeout bounds the mailstore work of one command.
	storeTimeout = 2 * time.Minute
	// maxAcceptDelay caps the back-off after a temporary Accept error.
	maxAcceptDelay = time.Second
	// byeTimeout bounds the BYE sent to each session at Shutdown, and to
	// a connection refused at once.
	byeTimeout = 5 * time.Second
	// shutdownPollInterval is how often Shutdown looks for sessions that
	// are between commands, to say BYE to them.
	shutdownPollInterval = 50 * time.Millisecond
)

// DefaultLimits is what a zero field of Config.Limits means. A desktop
// client opens about five connections per account; RFC 9051 5.4 asks for
// at least 30 minutes of idle time after login.
var DefaultLimits = limits.Protocol{
	MaxConnections:           2000,
	MaxConnectionsPerAddress: 50,
	LoginTimeout:             time.Minute,
	IdleTimeout:              30 * time.Minute,
	MaxErrors:                20,
}

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
	// Limits bounds connections ([limits.imap]): over MaxConnections or
	// MaxConnectionsPerAddress a connection gets "* BYE [UNAVAILABLE]";
	// LoginTimeout and IdleTimeout end a silent session before and after
	// login; MaxErrors BAD responses and failed logins end a session.
	// Zero fields take DefaultLimits.
	Limits limits.Protocol
	// Shared is what all servers of the process share: the process-wide
	// connection budget, failed logins and password checks, the in-flight
	// message memory (APPEND) and its spool directory.
	Shared limits.Shared
	// MaxMessageBytes is the largest message APPEND takes, advertised as
	// APPENDLIMIT (RFC 7889). Zero means 32 MiB.
	MaxMessageBytes int64
	// MaxCommandBytes bounds a command line, literals not counted. Zero
	// means 64 KiB; imapserver takes no more than 50 KiB.
	MaxCommandBytes int
	// MaxLiteralBytes bounds a literal outside APPEND. Zero means 64 KiB;
	// imapserver takes no more than 4096 octets.
	MaxLiteralBytes int64
	// CacheEntries is how many messages' ENVELOPE and BODYSTRUCTURE are
	// kept in memory. Zero means 4096.
	CacheEntries int

	// cmdTimeout replaces commandTimeout when set (tests shorten it).
	cmdTimeout time.Duration
}

// Server is an IMAP server over a mailstore. Its methods are safe for
// concurrent use.
type Server struct {
	cfg    Config
	store  *mailstore.Store
	log    *slog.Logger
	boxes  *registry
	cache  *dataCache
	shared limits.Shared
	conns  *limits.Conns
	lim    limits.Protocol
	// The bounds clientConn enforces.
	cmdTimeout             time.Duration // see commandTimeout
	maxLine                int
	maxLiteral, maxMessage int64

	// baseCtx is the parent of every session's store calls; it is
	// canceled when Shutdown gives up waiting.
	baseCtx    context.Context
	cancelBase context.CancelFunc
	// quit is closed when Shutdown starts.
	quit chan struct{}
	// inputBuffers counts the input buffers connections have taken from
	// the pool and not given back: those of connections in the middle of
	// a command (a connection gives its buffer back while it waits, and
	// when it ends, see clientConn.doneReading).
	inputBuffers atomic.Int64

	// libs are the imapserver servers connections are handed to, by
	// Config.Secure's answer and TLS (see libServer).
	libMu sync.Mutex
	libs  [2][2]*imapserver.Server

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	clients   map[*clientConn]*session // every connection, with its session once it has one
	accepting sync.WaitGroup
	done      chan struct{} // closed when the last connection ends after Shutdown
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
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = defaultMaxMessageBytes
	}
	if cfg.MaxCommandBytes <= 0 {
		cfg.MaxCommandBytes = defaultMaxCommandBytes
	}
	if cfg.MaxLiteralBytes <= 0 {
		cfg.MaxLiteralBytes = defaultMaxLiteralBytes
	}
	if cfg.CacheEntries <= 0 {
		cfg.CacheEntries = defaultCacheEntries
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	shared := cfg.Shared.WithDefaults()
	conns, lim := shared.Group(cfg.Limits, DefaultLimits)
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:        cfg,
		store:      store,
		log:        log.With("server", "imap"),
		boxes:      newRegistry(store),
		shared:     shared,
		conns:      conns,
		lim:        lim,
		cmdTimeout: cmp.Or(cfg.cmdTimeout, commandTimeout),
		maxLine:    min(cfg.MaxCommandBytes, LibraryMaxCommandBytes),
		maxLiteral: min(cfg.MaxLiteralBytes, LibraryMaxLiteralBytes),
		// APPENDLIMIT is a number32 (RFC 7889), as is imapserver's.
		maxMessage: min(cfg.MaxMessageBytes, math.MaxUint32),
		baseCtx:    ctx,
		cancelBase: cancel,
		quit:       make(chan struct{}),
		listeners:  make(map[net.Listener]struct{}),
		clients:    make(map[*clientConn]*session),
		done:       make(chan struct{}),
	}
	s.cache = newDataCache(store, cfg.CacheEntries, s.log)
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

// libServer is the imapserver.Server for c. imapserver decides per server
// whether plaintext logins are allowed and whether STARTTLS is offered, so
// connections share one of four, by those two answers. With Config.Trace
// each connection has its own, whose DebugWriter logs its lines. (A server
// of its own costs a connection some 600 bytes as long as it lives: the
// server, its options and its two maps.)
func (s *Server) libServer(c *clientConn) *imapserver.Server {
	if s.cfg.Trace {
		o := s.options(c.secure, c.isTLS, c.id)
		o.DebugWriter = newTraceWriter(s.log.With("session", c.id, "proto", "imap", "listener", c.listener(), "remote", c.RemoteAddr().String()))
		return imapserver.New(o)
	}
	i, j := 0, 0
	if c.secure {
		i = 1
	}
	if c.isTLS {
		j = 1
	}
	s.libMu.Lock()
	defer s.libMu.Unlock()
	if s.libs[i][j] == nil {
		s.libs[i][j] = imapserver.New(s.options(c.secure, c.isTLS, ""))
	}
	return s.libs[i][j]
}

// options configures an imapserver.Server; id names its one session, or
// is "" for a shared server.
func (s *Server) options(secure, isTLS bool, id string) *imapserver.Options {
	o := &imapserver.Options{
		NewSession: func(conn *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			// The connection imapserver was given (never wrapped: see
			// serveConn).
			c, ok := conn.NetConn().(*clientConn)
			if !ok {
				return nil, nil, fmt.Errorf("imapd: connection of type %T", conn.NetConn())
			}
			return s.newSession(conn, c)
		},
		Caps:         caps,
		Logger:       libLogger{s, id},
		InsecureAuth: secure,
	}
	if !isTLS {
		o.TLSConfig = s.cfg.TLSConfig // only to offer STARTTLS: clientConn does it
	}
	return o
}

// libLogger passes imapserver's own messages to the logger, with the
// session ID when the server has one session (id != ""). It reports input
// its decoder rejected as an error of its own; those are the client's
// (clientConn answers them BAD and, on a shared server, logs them with the
// session ID at info level; the decoder's detail is then at debug level).
type libLogger struct {
	s  *Server
	id string
}

func (l libLogger) Printf(format string, args ...any) {
	level := slog.LevelWarn
	prefix := ""
	switch {
	case strings.HasPrefix(format, "handling "):
		level, prefix = slog.LevelInfo, "malformed command: "
		if l.id == "" {
			level = slog.LevelDebug
		}
	case strings.HasPrefix(format, "failed to read command"):
		level = slog.LevelDebug
	case strings.HasPrefix(format, "panic"):
		level = slog.LevelError
	}
	if !l.s.log.Enabled(context.Background(), level) {
		return
	}
	// Called on the connection's goroutine: formatting there would
	// leave it a larger stack for the rest of the session. A log handler
	// that panics loses the record, not the process.
	_ = offStack(func() {
		msg := "imapserver: " + prefix + fmt.Sprintf(format, args...)
		if l.id == "" {
			l.s.log.Log(context.Background(), level, msg)
			return
		}
		l.s.log.Log(context.Background(), level, msg, "session", l.id)
	})
}

// logMalformed logs a command imapserver's decoder refused, for a
// connection on a shared server (see libLogger).
func (c *clientConn) logMalformed() {
	if c.srv.cfg.Trace || !c.srv.log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	id, cmd := c.id, c.cmd
	_ = offStack(func() { // a panicking log handler loses the record only
		c.srv.log.Info("imapserver: malformed command", "session", id, "proto", "imap", "command", cmd)
	})
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

// hand admits a new connection and starts its session.
func (s *Server) hand(nc net.Conn) {
	_, isTLS := nc.(*tls.Conn)
	release, err := s.conns.Acquire(limits.RemoteIP(nc))
	if err == nil {
		c := newClientConn(s, nc, newSessionID(), isTLS, isTLS || s.cfg.AllowInsecureAuth || s.cfg.Secure(nc), release)
		c.implicitTLS, c.start = isTLS, time.Since(processStart)
		if !s.addConn(c) {
			release()
			err = errors.New("shutting down")
		} else if isTLS {
			go func() {
				// Before imapserver, which sets no deadline until the
				// greeting is written.
				tc := nc.(*tls.Conn)
				tc.SetDeadline(time.Now().Add(tlsHandshakeTimeout))
				if err := tc.Handshake(); err != nil {
					s.log.Info("tls handshake", "session", c.id, "proto", "imap", "listener", c.listener(),
						"remote", nc.RemoteAddr().String(), "result", "fail", "version", "", "err", err)
					c.Close()
					return
				}
				tc.SetDeadline(time.Time{})
				s.serveConn(c)
			}()
			return
		} else {
			s.serveConn(c)
			return
		}
	}
	s.log.Info("refused", "what", "connection", "proto", "imap", "listener", listenerName(isTLS),
		"remote", nc.RemoteAddr().String(), "reason", "limits", "detail", err.Error())
	if isTLS {
		// Not worth a handshake: hang up.
		nc.Close()
		return
	}
	text := "Too many connections, try again later"
	switch {
	case errors.Is(err, limits.ErrTooManyFromAddress):
		text = "Too many connections from your address"
	case s.isClosed():
		text = "Server shutting down"
	}
	go func() {
		nc.SetWriteDeadline(time.Now().Add(byeTimeout))
		io.WriteString(nc, "* BYE [UNAVAILABLE] "+text+"\r\n")
		nc.Close()
	}()
}

// serveConn starts imapserver on c. Serve on a one-connection listener
// starts the connection's goroutine and returns at once.
func (s *Server) serveConn(c *clientConn) {
	if err := s.libServer(c).Serve(&oneConn{c: c}); err != nil {
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
	if len(s.clients) == 0 {
		s.closeDoneLocked()
	}
	s.mu.Unlock()
	s.accepting.Wait()

	tick := time.NewTicker(shutdownPollInterval)
	defer tick.Stop()
	for {
		s.mu.Lock()
		for _, sess := range s.clients {
			if sess != nil && sess.busy.Load() == 0 {
				sess.sayBye("Server shutting down")
			}
		}
		s.mu.Unlock()
		select {
		case <-s.done:
			s.cache.close()
			return nil
		case <-tick.C:
			continue
		case <-ctx.Done():
		}
		break
	}
	s.mu.Lock()
	for c := range s.clients {
		c.Conn.Close() // imapserver's reads fail, and it closes c
	}
	s.mu.Unlock()
	s.cancelBase()
	select {
	case <-s.done:
	case <-time.After(byeTimeout):
		s.log.Warn("sessions still running after shutdown")
	}
	s.cache.close()
	return ctx.Err()
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

// addConn registers a new connection unless Shutdown has begun.
func (s *Server) addConn(c *clientConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.clients[c] = nil
	return true
}

// replaceConn puts the TLS connection next in place of the plain one
// after STARTTLS, unless Shutdown has begun.
func (s *Server) replaceConn(old, next *clientConn) bool {
	s.mu.Lock()
	if _, ok := s.clients[old]; ok && !s.closed {
		delete(s.clients, old)
		s.clients[next] = nil
		s.mu.Unlock()
		return true
	}
	s.mu.Unlock()
	s.connGone(old)
	return false
}

// connGone unregisters a connection that was closed and gives back its
// place in the connection budget.
func (s *Server) connGone(c *clientConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.clients[c]; !ok {
		return
	}
	delete(s.clients, c)
	c.release()
	if s.closed && len(s.clients) == 0 {
		s.closeDoneLocked()
	}
}

// attach records the session of a connection; false after Shutdown.
func (s *Server) attach(c *clientConn, sess *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.clients[c]; !ok || s.closed {
		return false
	}
	s.clients[c] = sess
	return true
}

// detach forgets the session of a connection that goes on (STARTTLS) or
// ends.
func (s *Server) detach(c *clientConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.clients[c]; ok {
		s.clients[c] = nil
	}
}
