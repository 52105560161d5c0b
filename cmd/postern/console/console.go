// Package console is Postern's HTTP listener: health and readiness for
// supervisors and load balancers, client autoconfiguration (Thunderbird's
// autoconfig, Outlook's autodiscover), the MTA-STS policy (RFC 8461) and
// /metrics (see metrics.go, which also documents the log vocabulary the
// servers share). Later it also carries the web console.
//
// Every request is bounded: header bytes, body bytes, and the time to read
// a request, write an answer and keep an idle connection; connections are
// counted in a limits.Conns inside the process-wide budget, like those of
// the mail servers.
package console

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/mailstore/limits"
)

// Bounds of the HTTP server. Nothing it serves is large or slow.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 10 * time.Second
	idleTimeout       = 60 * time.Second
	maxHeaderBytes    = 16 << 10
	// maxBodyBytes bounds a request body (an autodiscover request is a
	// few hundred bytes).
	maxBodyBytes = 16 << 10
	// readyTimeout is how long the store has to answer /readyz.
	readyTimeout = time.Second

	// Defaults of Config.MaxConnections and MaxConnectionsPerAddress.
	DefaultConnections           = 256
	DefaultConnectionsPerAddress = 32
)

// MTA-STS modes (RFC 8461 3.2).
const (
	ModeEnforce = "enforce"
	ModeTesting = "testing"
	ModeNone    = "none"
)

// Modes lists the valid MTA-STS modes.
var Modes = []string{ModeTesting, ModeEnforce, ModeNone}

// Service is one mail service that clients are told about.
type Service struct {
	// Proto is "imap", "pop3" or "submission".
	Proto string
	// Port is the TCP port clients connect to.
	Port int
	// ImplicitTLS is TLS from the first byte (993, 995, 465); false is
	// STARTTLS/STLS on a plain connection.
	ImplicitTLS bool
}

// Config is what the HTTP listener serves and how it is bounded.
type Config struct {
	// Hostname is the mail server's name: the host clients connect to
	// and the MX of the MTA-STS policy.
	Hostname string
	// Domains returns the local domains, for which autoconfiguration and
	// the MTA-STS policy are served.
	Domains func(ctx context.Context) ([]string, error)
	// Services returns the mail services to tell clients about. It is
	// called per request, so it may be filled in after New.
	Services func() []Service
	// MTASTSMode is the policy mode: ModeTesting (default), ModeEnforce
	// or ModeNone.
	MTASTSMode string
	// MTASTSMaxAge is the policy's max_age; default one week.
	MTASTSMaxAge time.Duration
	// Ready reports whether the process can serve mail: nil when it can.
	// /readyz gives it readyTimeout. Nil means always ready.
	Ready func(ctx context.Context) error
	// TLSConfig is used by ServeTLS.
	TLSConfig *tls.Config
	// Logger receives one line per refused connection and per server
	// error; nil discards.
	Logger *slog.Logger
	// Conns is the process-wide connection budget (limits.Shared.Conns),
	// the parent of the listener's own; nil for none.
	Conns *limits.Conns
	// MaxConnections and MaxConnectionsPerAddress bound the listener's
	// connections; 0 takes DefaultConnections and
	// DefaultConnectionsPerAddress.
	MaxConnections, MaxConnectionsPerAddress int
	// Metrics is served at /metrics; nil: 404.
	Metrics *Metrics
	// MetricsNetworks may read /metrics besides loopback ([http]
	// metrics_networks); others get 403.
	MetricsNetworks []netip.Prefix

	// WebConfig is the web console's (web.go); without a Store the
	// console's pages are not served.
	WebConfig
}

// Server is the HTTP listener. Serve and ServeTLS may each be called for
// several listeners; Shutdown stops all of them.
type Server struct {
	cfg   Config
	log   *slog.Logger
	conns *limits.Conns
	mux   *http.ServeMux
	web   *web // the console's sessions; nil without WebConfig.Store

	metricsHandler http.Handler

	mu      sync.Mutex
	servers []*http.Server
	closed  bool
}

// New makes a Server from cfg.
func New(cfg Config) *Server {
	if cfg.MTASTSMode == "" {
		cfg.MTASTSMode = ModeTesting
	}
	if cfg.MTASTSMaxAge <= 0 {
		cfg.MTASTSMaxAge = 7 * 24 * time.Hour
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = DefaultConnections
	}
	if cfg.MaxConnectionsPerAddress <= 0 {
		cfg.MaxConnectionsPerAddress = DefaultConnectionsPerAddress
	}
	if cfg.Services == nil {
		cfg.Services = func() []Service { return nil }
	}
	if cfg.Domains == nil {
		cfg.Domains = func(context.Context) ([]string, error) { return nil, nil }
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:   cfg,
		log:   log,
		conns: limits.NewConns(cfg.MaxConnections, cfg.MaxConnectionsPerAddress, cfg.Conns),
		mux:   http.NewServeMux(),
	}
	if cfg.Metrics != nil {
		s.metricsHandler = newMetricsHandler(cfg.Metrics, log)
	}
	s.routes()
	return s
}

// Handler is the server's handler, without the connection bounds (tests).
func (s *Server) Handler() http.Handler { return s.mux }

// Serve answers HTTP on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	return s.serve(ln, false)
}

// ServeTLS answers HTTPS on ln, with Config.TLSConfig, until Shutdown.
func (s *Server) ServeTLS(ln net.Listener) error {
	if s.cfg.TLSConfig == nil {
		return errors.New("console: ServeTLS without a TLS configuration")
	}
	return s.serve(ln, true)
}

func (s *Server) serve(ln net.Listener, useTLS bool) error {
	hs := &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.servers = append(s.servers, hs)
	s.mu.Unlock()

	ln = &budgetListener{Listener: ln, conns: s.conns, log: s.log}
	if useTLS {
		tc := s.cfg.TLSConfig.Clone()
		// HTTP/1.1 only: nothing served here profits from HTTP/2.
		tc.NextProtos = []string{"http/1.1"}
		ln = tls.NewListener(ln, tc)
	}
	err := hs.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("console: serve HTTP on %s: %w", ln.Addr(), err)
}

// Shutdown stops accepting, lets requests in progress finish until ctx is
// done, then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	servers := slices.Clone(s.servers)
	s.mu.Unlock()
	s.stopStreams()
	var errs []error
	for _, hs := range servers {
		if err := hs.Shutdown(ctx); err != nil {
			hs.Close()
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// budgetListener takes each accepted connection out of the budget and
// closes at once those it has no room for.
type budgetListener struct {
	net.Listener
	conns *limits.Conns
	log   *slog.Logger
}

func (l *budgetListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		release, err := l.conns.Acquire(limits.RemoteIP(c))
		if err != nil {
			l.log.Warn("refused", "what", "connection", "proto", "http", "remote", c.RemoteAddr().String(),
				"reason", "limits", "detail", err.Error())
			c.Close()
			continue
		}
		return &budgetConn{Conn: c, release: release}, nil
	}
}

type budgetConn struct {
	net.Conn
	release func()
}

func (c *budgetConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}

// routes registers the endpoints.
func (s *Server) routes() {
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		text(w, http.StatusOK, "ok\n")
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.HandleFunc("GET /metrics", s.metrics)
	s.mux.HandleFunc("GET /.well-known/autoconfig/mail/config-v1.1.xml", s.autoconfig)
	s.mux.HandleFunc("GET /mail/config-v1.1.xml", s.autoconfig)
	// Outlook asks for both spellings.
	s.mux.HandleFunc("POST /autodiscover/autodiscover.xml", s.autodiscover)
	s.mux.HandleFunc("POST /Autodiscover/Autodiscover.xml", s.autodiscover)
	s.mux.HandleFunc("GET /.well-known/mta-sts.txt", s.mtaSTS)
	s.webRoutes()
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		text(w, http.StatusNotFound, "not found\n")
	})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Ready == nil {
		text(w, http.StatusOK, "ready\n")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
	defer cancel()
	if err := s.cfg.Ready(ctx); err != nil {
		s.log.Warn("not ready", "remote", r.RemoteAddr, "err", err)
		// The cause may name files, addresses or the database: only a
		// client on this machine is told it.
		if MetricsAllowed(r.RemoteAddr, nil) {
			text(w, http.StatusServiceUnavailable, "not ready: "+err.Error()+"\n")
			return
		}
		text(w, http.StatusServiceUnavailable, "not ready\n")
		return
	}
	text(w, http.StatusOK, "ready\n")
}

// localDomain returns the local domain d (lower-cased) names, or "" if it
// is not one.
func (s *Server) localDomain(ctx context.Context, d string) (string, error) {
	d = strings.ToLower(strings.TrimSuffix(d, "."))
	if d == "" {
		return "", nil
	}
	domains, err := s.cfg.Domains(ctx)
	if err != nil {
		return "", err
	}
	if slices.Contains(domains, d) {
		return d, nil
	}
	return "", nil
}

func text(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	w.Write([]byte(body))
}
