package smtpd

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
	"github.com/postern/postern/smtpd/msgauth"
)

// Defaults for the zero fields of Config.
const (
	// defaultMaxMessageBytes matches smtp.max_message_bytes in configs/postern.toml.
	defaultMaxMessageBytes = 32 << 20
	// defaultMaxRecipients: RFC 5321 4.5.3.1.8 says accept at least 100.
	defaultMaxRecipients = 100
	// defaultMaxReceived: more Received fields than this is a loop (RFC 5321 6.3
	// suggests counting them; 50 is what Postfix and sendmail use).
	defaultMaxReceived = 50
	// defaultDataBlockTimeout: RFC 5321 4.5.3.2.5 gives a client 3 minutes per
	// data block; the server allows as much for each read of message data.
	defaultDataBlockTimeout = 3 * time.Minute
	// defaultDataTimeout bounds one message's whole transfer: 32 MiB at
	// 9 KB/s, a slow mobile link, takes about an hour.
	defaultDataTimeout = time.Hour
	// defaultWriteTimeout bounds writing one reply, a few dozen octets, to a
	// client that does not read.
	defaultWriteTimeout = 2 * time.Minute
)

// DefaultLimits are the MX listener group's limits ([limits.mx]) that a
// zero field of Config.Limits takes. RFC 5321 4.5.3.2.7 says a server
// should wait at least 5 minutes for the next command.
var DefaultLimits = limits.Protocol{
	MaxConnections:           1000,
	MaxConnectionsPerAddress: 20,
	LoginTimeout:             5 * time.Minute,
	IdleTimeout:              5 * time.Minute,
	MaxErrors:                20,
}

// DefaultSubmissionLimits are the limits of both submission listeners
// together ([limits.submission]) that a zero field of
// Config.SubmissionLimits takes: a short wait for a command before AUTH,
// RFC 5321's 5 minutes after it.
var DefaultSubmissionLimits = limits.Protocol{
	MaxConnections:           500,
	MaxConnectionsPerAddress: 20,
	LoginTimeout:             time.Minute,
	IdleTimeout:              5 * time.Minute,
	MaxErrors:                10,
}

// Fixed limits.
const (
	// tlsHandshakeTimeout bounds the TLS handshake of an implicit-TLS connection.
	tlsHandshakeTimeout = time.Minute
	// refuseTimeout bounds writing the 421 reply to a connection over the limit.
	refuseTimeout = 5 * time.Second
	// maxRefusing bounds the goroutines writing those replies; beyond it a
	// connection over the limit is closed without a word.
	maxRefusing = 64
	// maxAuthFailuresPerSession ends a session after that many failed AUTH.
	maxAuthFailuresPerSession = 3
	// freeRcptRefusals is how many refused recipients of one transaction
	// are not counted as errors: a list with a few stale addresses is
	// normal, a dictionary attack is not.
	freeRcptRefusals = 5
	// minIdleCommands is the least number of command lines a session may
	// send without a message being delivered (MAIL, RCPT, NOOP, RSET...);
	// the bound is at least twice MaxRecipients.
	minIdleCommands = 1000
	// acceptRetryMax caps the pause after a failed Accept (such as EMFILE).
	acceptRetryMax = time.Second
)

// Config is what a Server needs; cmd/postern fills it from the TOML file.
// A zero field takes its default: Hostname "localhost", MaxMessageBytes
// 32 MiB, MaxRecipients 100, MaxReceived 50, DataBlockTimeout 3m,
// DataTimeout 1h, WriteTimeout 2m, Limits DefaultLimits,
// SubmissionLimits DefaultSubmissionLimits.
type Config struct {
	// Hostname names this server in the greeting, Received fields and
	// generated Message-IDs.
	Hostname string
	// TLSConfig enables STARTTLS on the MX and submission listeners and is
	// required by ServeSubmissionTLS; TLS 1.2 is the minimum whatever it
	// says. nil: no TLS.
	TLSConfig *tls.Config

	MaxMessageBytes int64 // smtp.max_message_bytes
	MaxRecipients   int   // smtp.max_recipients
	MaxReceived     int   // Received fields beyond which a message is a loop

	// AllowInsecureAuth offers AUTH on submission without TLS to any
	// client (auth.allow_insecure).
	AllowInsecureAuth bool
	// SecureAddr reports whether a client address counts as secure for
	// plaintext AUTH, as TLS does. nil: loopback addresses (DESIGN.md).
	SecureAddr func(netip.Addr) bool

	// Logger receives one line per session event, with the session id;
	// nil discards them.
	Logger *slog.Logger
	// Trace logs every protocol line with its direction (log.trace);
	// AUTH data is redacted and message data summarised.
	Trace bool

	DataBlockTimeout time.Duration // per read during DATA or BDAT
	DataTimeout      time.Duration // one message's whole transfer
	WriteTimeout     time.Duration // one reply

	// Limits are the MX listener's ([limits.mx]): connections at once and
	// per client address, the wait for each command (LoginTimeout; the MX
	// has no login) and the errors a session may make. SubmissionLimits
	// are those of both submission listeners together ([limits.submission]),
	// a separate budget, so that a flood on port 25 never makes submission
	// refuse its users; their LoginTimeout is the wait for a command before
	// AUTH and IdleTimeout after it. Zero fields take DefaultLimits and
	// DefaultSubmissionLimits.
	Limits           limits.Protocol
	SubmissionLimits limits.Protocol
	// Shared is what all servers of the process share: the process-wide
	// connection budget (the parent of both groups above), the record of
	// failed logins with the password-check gate, and the budget of
	// message bytes in memory with the directory spools beyond it go to
	// (data_dir). nil fields: private ones with default settings.
	Shared limits.Shared

	// Now is the clock for Received dates and the login limiter; nil
	// means time.Now. Network deadlines always use the real clock.
	Now func() time.Time

	// Queued, when set, is called after a commit that put something in
	// the outbound queue, so that the relay need not wait for its next
	// poll.
	Queued func()

	// Signer signs every message accepted on submission whose header From
	// is in a local domain, before it is stored or queued (DKIM, RFC
	// 6376): one DKIM-Signature per key of that domain. nil: no signing.
	Signer *msgauth.Signer
	// Checks runs SPF, DKIM and DMARC on every message received on the
	// MX (not on submission), prepends its Authentication-Results field
	// (authserv-id Hostname, after removing any that claim it) and refuses
	// mail that claims a local domain without SPF or DKIM passing for it.
	// nil: no inbound checks ([checks] off).
	Checks *msgauth.Checker
	// CheckPolicy says what Checks' results do ([checks]); zero fields
	// take DefaultCheckPolicy.
	CheckPolicy CheckPolicy
}

// Server serves SMTP on any number of listeners over one mailstore.
type Server struct {
	cfg    Config
	store  *mailstore.Store
	log    *slog.Logger
	tls    *tls.Config
	now    func() time.Time
	secure func(netip.Addr) bool

	sh          limits.Shared
	mxConns     *limits.Conns   // the MX group's budget
	subConns    *limits.Conns   // both submission listeners'
	mxLim       limits.Protocol // Config.Limits, defaults filled in
	subLim      limits.Protocol // Config.SubmissionLimits, defaults filled in
	checkPolicy CheckPolicy     // Config.CheckPolicy, defaults filled in
	// senderDomains and recipients keep the store's recent answers
	// (isLocalSenderDomain, session.resolveRecipient).
	senderDomains *dirCache[bool]
	recipients    *dirCache[mailstore.Resolution]

	// checkPassword is the store's Authenticate; tests wrap it to watch
	// the password checks.
	checkPassword func(ctx context.Context, address, password string) (mailstore.User, error)

	// ctx is for store calls; it ends when Shutdown gives up waiting.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	active    map[*conn]struct{}
	shutting  bool
	wg        sync.WaitGroup // one per connection being served
	refusing  atomic.Int32
}

// New makes a Server. It serves nothing until a Serve method is called.
func New(cfg Config, store *mailstore.Store) *Server {
	if cfg.Hostname == "" {
		cfg.Hostname = "localhost"
	}
	setDefault(&cfg.MaxMessageBytes, defaultMaxMessageBytes)
	setDefault(&cfg.MaxRecipients, defaultMaxRecipients)
	setDefault(&cfg.MaxReceived, defaultMaxReceived)
	setDefault(&cfg.DataBlockTimeout, defaultDataBlockTimeout)
	setDefault(&cfg.DataTimeout, defaultDataTimeout)
	setDefault(&cfg.WriteTimeout, defaultWriteTimeout)
	s := &Server{
		cfg:         cfg,
		store:       store,
		log:         cfg.Logger,
		now:         cfg.Now,
		secure:      cfg.SecureAddr,
		sh:          cfg.Shared.WithDefaults(),
		checkPolicy: cfg.CheckPolicy.withDefaults(),
		listeners:   make(map[net.Listener]struct{}),
		active:      make(map[*conn]struct{}),
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.secure == nil {
		s.secure = netip.Addr.IsLoopback
	}
	if cfg.TLSConfig != nil {
		s.tls = cfg.TLSConfig.Clone()
		s.tls.MinVersion = max(s.tls.MinVersion, tls.VersionTLS12)
	}
	s.checkPassword = store.Authenticate
	s.senderDomains = newDirCache[bool](s.now)
	s.recipients = newDirCache[mailstore.Resolution](s.now)
	s.mxConns, s.mxLim = s.sh.Group(cfg.Limits, DefaultLimits)
	s.subConns, s.subLim = s.sh.Group(cfg.SubmissionLimits, DefaultSubmissionLimits)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

func setDefault[T int | int64 | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// listenerKind is what a listener serves.
type listenerKind int

const (
	listenMX            listenerKind = iota // inbound mail for local domains
	listenSubmission                        // submission, STARTTLS
	listenSubmissionTLS                     // submission, implicit TLS
)

func (k listenerKind) String() string {
	return [...]string{"smtp", "submission", "submissions"}[k]
}

// proto is the protocol of the listener in the log vocabulary
// (cmd/postern/console/metrics.go): "smtp" or "submission".
func (k listenerKind) proto() string {
	if k == listenMX {
		return "smtp"
	}
	return "submission"
}

func (k listenerKind) submission() bool { return k != listenMX }

// group returns the connection budget and limits of kind's listener group.
func (s *Server) group(kind listenerKind) (*limits.Conns, limits.Protocol) {
	if kind.submission() {
		return s.subConns, s.subLim
	}
	return s.mxConns, s.mxLim
}

// ServeMX serves inbound mail for the local domains on ln (port 25) until
// ln fails or Shutdown is called; then it returns nil.
func (s *Server) ServeMX(ln net.Listener) error { return s.serve(ln, listenMX) }

// ServeSubmission serves message submission with STARTTLS on ln (port 587).
func (s *Server) ServeSubmission(ln net.Listener) error { return s.serve(ln, listenSubmission) }

// ServeSubmissionTLS serves message submission over implicit TLS on ln
// (port 465, RFC 8314). It needs Config.TLSConfig.
func (s *Server) ServeSubmissionTLS(ln net.Listener) error {
	if s.tls == nil {
		ln.Close()
		return errors.New("smtpd: submission over TLS needs a TLS configuration")
	}
	return s.serve(ln, listenSubmissionTLS)
}

func (s *Server) serve(ln net.Listener, kind listenerKind) error {
	s.mu.Lock()
	if s.shutting {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	s.log.Info("listening", "listener", kind.String(), "addr", ln.Addr().String())
	var pause time.Duration
	for {
		raw, err := ln.Accept()
		if err != nil {
			if s.isShutting() {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("smtpd: %s listener: %w", kind, err)
			}
			// Out of file descriptors and the like: wait and try again.
			pause = min(max(2*pause, 5*time.Millisecond), acceptRetryMax)
			s.log.Warn("accept failed", "listener", kind.String(), "err", err, "retry_in", pause)
			time.Sleep(pause)
			continue
		}
		pause = 0
		s.accept(raw, kind)
	}
}

func (s *Server) isShutting() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutting
}

// accept starts serving a new connection, or refuses it when a limit is
// reached.
func (s *Server) accept(raw net.Conn, kind listenerKind) {
	ip := limits.RemoteIP(raw)
	conns, _ := s.group(kind)
	release, err := conns.Acquire(ip)
	if err != nil {
		reply := errTooManyConns
		if errors.Is(err, limits.ErrTooManyFromAddress) {
			reply = errTooManyConnsForIP
		}
		s.log.Warn("refused", "what", "connection", "proto", kind.proto(), "listener", kind.String(),
			"remote", raw.RemoteAddr().String(), "reason", "limits", "detail", err.Error())
		s.refuse(raw, kind, reply)
		return
	}
	s.mu.Lock()
	if s.shutting {
		s.mu.Unlock()
		release()
		raw.Close()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer release()
		s.handle(raw, kind, ip, nil)
	}()
}

// refuse answers a connection over a limit with 421 and closes it
// (RFC 5321 3.8), without holding up the accept loop.
func (s *Server) refuse(raw net.Conn, kind listenerKind, e *smtp.SMTPError) {
	if s.refusing.Add(1) > maxRefusing {
		s.refusing.Add(-1)
		raw.Close()
		return
	}
	go func() {
		defer s.refusing.Add(-1)
		defer raw.Close()
		raw.SetDeadline(time.Now().Add(refuseTimeout))
		var w io.Writer = raw
		if kind == listenSubmissionTLS {
			tc := tls.Server(raw, s.tls)
			if err := tc.Handshake(); err != nil {
				return
			}
			defer tc.Close()
			w = tc
		}
		fmt.Fprintf(w, "%d %d.%d.%d %s %s\r\n", e.Code, e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2],
			s.cfg.Hostname, e.Message)
	}()
}

// handle serves one connection until it ends. preauth, when not nil, is
// the user the session is logged in as from the start (Submit).
func (s *Server) handle(raw net.Conn, kind listenerKind, ip netip.Addr, preauth *mailstore.User) {
	id := newSessionID()
	log := s.log.With("session", id, "proto", kind.proto(), "listener", kind.String(), "remote", raw.RemoteAddr().String())
	start := s.now()
	cl := &client{srv: s, kind: kind, ip: ip, id: id, log: log, preauth: preauth}
	if kind == listenSubmissionTLS {
		raw.SetDeadline(time.Now().Add(tlsHandshakeTimeout))
		tc := tls.Server(raw, s.tls)
		if err := tc.HandshakeContext(s.ctx); err != nil {
			log.Info("tls handshake", "result", "fail", "version", "", "err", err)
			raw.Close()
			return
		}
		raw.SetDeadline(time.Time{})
		cl.implicitTLS = tc
		cl.tlsVersion = logTLSHandshake(log, tc.ConnectionState())
		raw = tc
	}
	log.Info("session start", "local", raw.LocalAddr().String(), "tls", cl.tlsVersion)
	_, lim := s.group(kind)
	cl.lim = lim
	c := newConn(raw, s, log, lim.MaxErrors)
	cl.conn = c
	s.mu.Lock()
	if s.shutting {
		s.mu.Unlock()
		c.abort()
		return
	}
	s.active[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.active, c)
		s.mu.Unlock()
	}()

	srv := smtp.NewServer(cl)
	srv.Domain = s.cfg.Hostname
	srv.MaxMessageBytes = s.cfg.MaxMessageBytes
	// The wait for a command; a submission session gets IdleTimeout once
	// it has logged in (session.authenticate).
	srv.ReadTimeout = lim.LoginTimeout
	srv.WriteTimeout = s.cfg.WriteTimeout
	// The session decides who may AUTH (session.AuthMechanisms); go-smtp's
	// own check cannot see implicit TLS through the wrapper.
	srv.AllowInsecureAuth = true
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	if kind != listenSubmissionTLS {
		srv.TLSConfig = s.tls
	}
	srv.ErrorLog = libraryLog{log}
	// go-smtp copies every read and write to Debug in plaintext: the
	// observer counts the errors go-smtp answers itself, and traces.
	cl.obs = &observer{cl: cl}
	if s.cfg.Trace {
		cl.obs.trace = newTracer(log, c, s.cfg.Hostname)
	}
	srv.Debug = cl.obs
	srv.Serve(&oneConnListener{c: c})
	log.Info("session end", "tls", cl.tlsVersion, "duration", s.now().Sub(start).Round(time.Millisecond), "messages", cl.delivered)
}

// Shutdown stops accepting connections, ends sessions that are waiting for
// a command (421), lets messages in transfer or being stored finish, and
// returns when every session has ended, or closes the rest when ctx ends
// and returns its error. It may be called more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutting = true
	var err error
	for ln := range s.listeners {
		if cerr := ln.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) && err == nil {
			err = fmt.Errorf("smtpd: close listener: %w", cerr)
		}
	}
	for c := range s.active {
		c.expire("server shutting down")
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return err
	case <-ctx.Done():
	}
	s.cancel()
	s.mu.Lock()
	for c := range s.active {
		c.abort()
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}

// oneConnListener hands one connection to an smtp.Server, then blocks
// until that connection is closed, so that Serve returns once the session
// is over.
type oneConnListener struct {
	c     *conn
	taken atomic.Bool
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if !l.taken.Swap(true) {
		return l.c, nil
	}
	<-l.c.closed
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return l.c.LocalAddr() }

// libraryLog sends go-smtp's own messages (a read error, a recovered
// panic) to the session's logger.
type libraryLog struct{ log *slog.Logger }

func (l libraryLog) Printf(format string, v ...any) { l.print(fmt.Sprintf(format, v...)) }
func (l libraryLog) Println(v ...any)               { l.print(strings.TrimSuffix(fmt.Sprintln(v...), "\n")) }

func (l libraryLog) print(msg string) {
	level := slog.LevelInfo
	if strings.Contains(msg, "panic") {
		level = slog.LevelError
	}
	l.log.Log(context.Background(), level, "go-smtp", "msg", msg)
}

// sessionIDEncoding writes session ids in lower-case base32.
var sessionIDEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newSessionID returns 10 random characters that name a connection in logs
// and, with a counter, its messages in Received fields.
func newSessionID() string {
	var b [6]byte
	rand.Read(b[:])
	return sessionIDEncoding.EncodeToString(b[:])[:10]
}
