package pop3d

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
)

// DefaultLimits are the limits in force where Config.Limits leaves a
// field zero ([limits.pop3]).
var DefaultLimits = limits.Protocol{
	MaxConnections:           1000,
	MaxConnectionsPerAddress: 20,
	// LoginTimeout is short: a client that has not logged in holds a
	// connection and has nothing to wait for.
	LoginTimeout: time.Minute,
	// IdleTimeout is the autologout timer: RFC 1939 section 3 says it must
	// be at least 10 minutes.
	IdleTimeout: 10 * time.Minute,
	MaxErrors:   10,
}

const (
	// tlsHandshakeTimeout bounds a TLS handshake, implicit or after STLS.
	tlsHandshakeTimeout = 30 * time.Second
	// updateTimeout bounds the UPDATE-state removal. It is not tied to the
	// connection: a QUIT that was received is carried out even if the
	// client goes away or the server is shutting down.
	updateTimeout = time.Minute
	// storeTimeout bounds a mailstore lookup made for one command.
	storeTimeout = time.Minute
	// maxAcceptDelay caps the back-off after a temporary Accept error.
	maxAcceptDelay = time.Second
	// refuseTimeout bounds answering a connection over the limits (its
	// TLS handshake on the implicit-TLS port, and the -ERR line).
	refuseTimeout = 5 * time.Second
	// maxRefusing bounds the goroutines answering such connections; beyond
	// it one is closed without a word.
	maxRefusing = 64
)

// Config is what a Server needs to know. cmd/postern fills it from the
// configuration file; the zero value (plus a store) serves plain POP3 on
// the listeners given to Serve, with plaintext logins from loopback only.
type Config struct {
	// Hostname is named in the greeting; empty means "localhost".
	Hostname string
	// TLSConfig enables STLS on Serve listeners; ServeTLS requires it.
	TLSConfig *tls.Config
	// AllowInsecureAuth accepts USER/PASS and AUTH PLAIN on connections
	// that are not secure (auth.allow_insecure).
	AllowInsecureAuth bool
	// Secure reports whether a connection without TLS counts as secure for
	// plaintext logins. Nil means: when it comes from a loopback address.
	Secure func(net.Conn) bool
	// Logger receives one line per session event; nil discards them.
	Logger *slog.Logger
	// Trace logs every protocol line with the session ID and direction
	// (C: client, S: server). Passwords and SASL data are shown as "***";
	// message contents are not logged.
	Trace bool
	// Limits bounds connections (all, and per client address), idle time
	// before login (LoginTimeout, also each write until then) and after
	// (IdleTimeout, also each write), and errors per session. A zero field
	// takes its value from DefaultLimits.
	Limits limits.Protocol
	// Shared is what this server shares with the process's other servers:
	// the process-wide connection budget (the parent of this server's) and
	// the record of failed logins with its password-check gate, whose
	// policy also sets the delay before a failed login is answered. Nil
	// fields get private defaults.
	Shared limits.Shared
	// MaildropLease is how long the store's lease on a maildrop lasts
	// without renewal (it is renewed while the session holds it): the
	// longest a maildrop stays locked after its frontend dies. Zero means
	// DefaultMaildropLease.
	MaildropLease time.Duration
}

// DefaultMaildropLease is Config.MaildropLease's default.
const DefaultMaildropLease = 30 * time.Second

// Server is a POP3 server over a mailstore. Its methods are safe for
// concurrent use.
type Server struct {
	cfg   Config
	store *mailstore.Store
	log   *slog.Logger
	// lim is cfg.Limits with the defaults filled in; budget is the
	// connection budget made from it.
	lim    limits.Protocol
	budget *limits.Conns
	logins *limits.Logins
	// refusing counts the goroutines answering refused connections.
	refusing atomic.Int32

	// baseCtx is the parent of every session's store calls; it is
	// canceled when Shutdown gives up waiting.
	baseCtx    context.Context
	cancelBase context.CancelFunc
	// quit is closed when Shutdown starts; it cuts the Accept back-off
	// short.
	quit chan struct{}

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	inUse     map[int64]string // user ID -> session ID holding the maildrop
	sessions  sync.WaitGroup

	// onReply, when set (tests), sees every status line sent and whether a
	// multi-line body follows it.
	onReply func(line string, multiline bool)
}

// New returns a server for store. It does not listen: give it listeners
// with Serve and ServeTLS.
func New(cfg Config, store *mailstore.Store) *Server {
	if cfg.Hostname == "" {
		cfg.Hostname = "localhost"
	}
	cfg.Shared = cfg.Shared.WithDefaults()
	budget, lim := cfg.Shared.Group(cfg.Limits, DefaultLimits)
	cfg.Limits = lim
	if cfg.MaildropLease <= 0 {
		cfg.MaildropLease = DefaultMaildropLease
	}
	if cfg.Secure == nil {
		cfg.Secure = isLoopback
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:        cfg,
		store:      store,
		log:        log,
		lim:        lim,
		budget:     budget,
		logins:     cfg.Shared.Logins,
		baseCtx:    ctx,
		cancelBase: cancel,
		quit:       make(chan struct{}),
		listeners:  make(map[net.Listener]struct{}),
		conns:      make(map[net.Conn]struct{}),
		inUse:      make(map[int64]string),
	}
}

// isLoopback is the default Config.Secure: a connection from 127.0.0.0/8
// or ::1 never leaves the machine.
func isLoopback(c net.Conn) bool {
	addr, ok := c.RemoteAddr().(*net.TCPAddr)
	return ok && addr.IP.IsLoopback()
}

// Serve accepts POP3 connections on ln, offering STLS when
// Config.TLSConfig is set, until Shutdown; then it returns ErrServerClosed.
// Serve closes ln.
func (s *Server) Serve(ln net.Listener) error {
	return s.serve(ln, false)
}

// ServeTLS accepts POP3 connections on ln that start with a TLS handshake
// (port 995), until Shutdown; then it returns ErrServerClosed. ServeTLS
// closes ln.
func (s *Server) ServeTLS(ln net.Listener) error {
	if s.cfg.TLSConfig == nil {
		ln.Close()
		return errors.New("pop3d: ServeTLS needs Config.TLSConfig")
	}
	return s.serve(ln, true)
}

func (s *Server) serve(ln net.Listener, implicitTLS bool) error {
	if !s.addListener(ln) {
		ln.Close()
		return ErrServerClosed
	}
	defer s.removeListener(ln)
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			if !temporary(err) {
				return fmt.Errorf("pop3d: accept on %s: %w", ln.Addr(), err)
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
		release, err := s.budget.Acquire(limits.RemoteIP(c))
		if err != nil {
			s.log.Warn("refused", "what", "connection", "proto", "pop3", "listener", listenerName(implicitTLS),
				"addr", ln.Addr().String(), "remote", c.RemoteAddr().String(), "reason", "limits", "detail", err.Error())
			s.refuse(c, implicitTLS, err)
			continue
		}
		if !s.addConn(c) {
			release()
			c.Close()
			return ErrServerClosed
		}
		go func() {
			defer s.sessions.Done()
			defer release()
			defer s.removeConn(c)
			s.serveConn(c, implicitTLS)
		}()
	}
}

// refuse answers a connection over the limits with -ERR [SYS/TEMP] (RFC
// 3206 section 4: try again later) and closes it, in a goroutine of its
// own so that a client that does not read cannot hold up the accept loop.
// Past maxRefusing such goroutines, c is closed without a word.
func (s *Server) refuse(c net.Conn, implicitTLS bool, why error) {
	if s.refusing.Add(1) > maxRefusing {
		s.refusing.Add(-1)
		c.Close()
		return
	}
	go func() {
		defer s.refusing.Add(-1)
		defer c.Close()
		c.SetDeadline(time.Now().Add(refuseTimeout))
		var w io.Writer = c
		if implicitTLS {
			tc := tls.Server(c, s.cfg.TLSConfig)
			if err := tc.Handshake(); err != nil {
				return
			}
			defer tc.Close()
			w = tc
		}
		io.WriteString(w, reply{code: codeSysTemp, text: why.Error() + ", try again later"}.String()+"\r\n")
	}()
}

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

// Shutdown stops the listeners, waits for the sessions to end until ctx is
// done, then closes the remaining connections (their marked messages stay)
// and waits for their goroutines. It returns ctx.Err() if sessions had to
// be cut, else nil. Serve and ServeTLS return ErrServerClosed.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.quit)
	}
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.sessions.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.cancelBase()
	<-done
	return ctx.Err()
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
	return true
}

func (s *Server) removeListener(ln net.Listener) {
	s.mu.Lock()
	delete(s.listeners, ln)
	s.mu.Unlock()
	ln.Close()
}

// addConn registers a connection and its session goroutine; it fails once
// Shutdown has started, so that Shutdown's Wait never races with an Add.
func (s *Server) addConn(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.sessions.Add(1)
	return true
}

func (s *Server) removeConn(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

// lock takes the maildrop of userID for session id. When another session
// holds it, lock fails and names that session.
func (s *Server) lock(userID int64, id string) (holder string, locked bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if holder, held := s.inUse[userID]; held {
		return holder, false
	}
	s.inUse[userID] = id
	return id, true
}

func (s *Server) unlock(userID int64) {
	s.mu.Lock()
	delete(s.inUse, userID)
	s.mu.Unlock()
}

// newSessionID names a session in logs.
func newSessionID() string {
	var b [6]byte
	rand.Read(b[:]) // never fails: crypto/rand crashes the program instead
	return hex.EncodeToString(b[:])
}
