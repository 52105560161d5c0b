package main

// `postern serve`: load the configuration, prepare the data directory, start
// one server per listener, and stop them all on SIGINT or SIGTERM.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/postern/postern/cmd/postern/console"
	"github.com/postern/postern/imapd"
	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
	"github.com/postern/postern/pop3d"
	"github.com/postern/postern/smtpd"
	"github.com/postern/postern/smtpd/msgauth"
	"github.com/postern/postern/smtpd/relay"
)

// shutdownGrace is how long serve lets the servers finish the sessions in
// progress after SIGINT or SIGTERM: enough for a message transfer that is
// nearly done to be committed, well under the 90 seconds systemd waits
// before it kills a service. A second signal ends the process at once.
const shutdownGrace = 10 * time.Second

// shutdownMargin is how much longer serve waits for the servers than
// they wait for their sessions, for closing the ones left.
const shutdownMargin = 5 * time.Second

// dataDirPerm keeps the data directory private: it holds every user's mail,
// the password hashes and the TLS private key.
const dataDirPerm = 0o700

// A server is one long-running part of serve: a protocol server on one
// listener, or a background worker such as the relay queue.
type server interface {
	// Serve runs until ctx is done, then stops accepting, ends its
	// sessions and returns nil. Returning before ctx is done, with or
	// without an error, is a failure that stops the whole of serve.
	Serve(ctx context.Context) error
}

// namedServer is a server with the name used in logs and errors.
type namedServer struct {
	name  string
	srv   server
	bound string // the address it listens on, with the port chosen for ":0"
}

// serveEnv is what the servers share. Each protocol package gets its own
// Config struct, filled from these fields in newServer.
type serveEnv struct {
	cfg   *Config
	log   *slog.Logger
	store *mailstore.Store
	tls   *tls.Config
	acme  *acmeCerts // with tls.acme: the source of tls's certificates
	relay *relay.Relay
	// resolver is [dns]: every lookup of serve (relay MX, SPF, DKIM,
	// DMARC) goes through it and its cache.
	resolver *msgauth.Resolver

	smtp    *smtpd.Server
	pop3    *pop3d.Server
	imap    *imapd.Server
	console *console.Server

	// services are the bound mail listeners, as the console tells
	// clients about them; set once every listener is bound.
	services atomic.Pointer[[]console.Service]
	// up is true from when every listener is bound until serve stops:
	// the listener half of /readyz.
	up atomic.Bool

	// limits is [limits] as the servers take it (see newServeLimits):
	// one connection budget, login record and message budget for all.
	limits serveLimits

	// hub fans the log records out to the metrics and the web console
	// (nil without an HTTP listener); metrics counts its events
	// (/metrics). trace is whether the servers trace protocol lines:
	// log.trace, or always with the console, whose live flow shows them
	// (console.TraceFilter keeps them out of the log unless log.trace).
	hub     *console.Hub
	metrics *console.Metrics
	trace   bool
}

// withHub puts the console's Hub in front of log's handler when an HTTP
// listener is configured.
func withHub(cfg *Config, log *slog.Logger) (*slog.Logger, *console.Hub) {
	if cfg.HTTP.Listen == "" && cfg.HTTP.ListenTLS == "" {
		return log, nil
	}
	hub := console.NewHub(console.TraceFilter(log.Handler(), cfg.Log.Trace), slog.LevelInfo, 0)
	return slog.New(hub.Handler()), hub
}

// listenServer runs one protocol server on one bound listener. serve is
// the package's Serve method; shutdown its Shutdown, which stops every
// listener of that server and is safe to call once per listener, also at
// the same time.
type listenServer struct {
	ln       net.Listener
	serve    func(net.Listener) error
	shutdown func(context.Context) error
}

func (s *listenServer) Serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.serve(s.ln) }()
	select {
	case err := <-errc:
		if err == nil {
			err = errors.New("stopped accepting connections")
		}
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	err := s.shutdown(sctx)
	<-errc
	return err
}

func cmdServe(c *cli, args []string) int {
	const name = "serve"
	fs := c.flagSet(name, "[-config FILE] [-trace]")
	path := configFlag(fs)
	trace := fs.Bool("trace", false, "log every protocol line of every session, secrets redacted (as log.trace = true)")
	if code, ok := c.parse(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return c.usageError(fs, "unexpected argument %q", fs.Arg(0))
	}
	file, _ := resolveConfig(*path)
	cfg, err := loadConfig(file)
	if err != nil {
		return c.fail(name, err)
	}
	if *trace {
		cfg.Log.Trace = true
	}
	logger, err := newLogger(cfg.Log, c.stderr)
	if err != nil {
		return c.fail(name, err)
	}

	ctx, stop := signal.NotifyContext(c.ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal, restore the default handling so that a
	// second one kills the process instead of waiting out the grace period.
	context.AfterFunc(ctx, stop)

	// SIGHUP (systemctl reload) reloads the certificate files; it must
	// not end the process, as its default action would. serve handles
	// it once the certificate is loaded; until then it waits here.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	if err := serve(ctx, cfg, logger, c.stdout, hup); err != nil {
		return c.fail(name, err)
	}
	return exitOK
}

// serve opens the mailstore and runs everything cfg asks for until ctx is
// done. It prints the data directory and the listeners to out before it
// starts the servers. Each value on hup reloads the configured certificate
// files.
func serve(ctx context.Context, cfg *Config, log *slog.Logger, out io.Writer, hup <-chan os.Signal) (err error) {
	log, hub := withHub(cfg, log)
	plan := planFileDescriptors(cfg, log)
	lim := newServeLimits(cfg, plan.Connections)
	var openStore atomic.Pointer[mailstore.Store]
	metrics := newServeMetrics(hub, openStore.Load, lim.Shared, log.With("part", "metrics"))
	go metrics.Run(ctx)
	if err := privateDataDir(cfg.DataDir); err != nil {
		return err
	}
	// The lock tells restore, and a second serve, that this process
	// holds the store; it is released after the store is closed.
	unlock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	defer unlock()
	store, err := openStoreOpts(cfg, mailstore.Options{Logger: log.With("part", "mailstore"),
		OnCommit: func(c mailstore.CommitInfo) { metrics.ObserveCommit(c.Requests, c.Duration, c.Err) }})
	if err != nil {
		return err
	}
	openStore.Store(store)
	// The store closes last, after every server has returned or the
	// grace period is over, so that commits in progress can finish.
	defer func() {
		if cerr := store.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close mailstore: %w", cerr))
		}
	}()

	var (
		tlsConfig *tls.Config
		certs     *certReloader
		acm       *acmeCerts
	)
	if cfg.TLS.ACME {
		if acm, err = newACME(cfg, store, log); err != nil {
			return err
		}
		tlsConfig = acm.tlsConfig()
	} else if tlsConfig, certs, err = serveTLS(cfg, log); err != nil {
		return err
	}
	go handleReload(ctx, log, certs, hup)
	// A process that was killed leaves the spool files of the messages
	// it was receiving; nothing refers to them any more.
	if err := limits.RemoveStale(cfg.DataDir); err != nil {
		log.Warn("stale spool files left in the data directory", "data_dir", cfg.DataDir, "err", err)
	}
	setMemoryLimit(cfg, log)
	for _, w := range cfg.warnings {
		log.Warn("configuration", "warning", w.warningText())
	}
	resolver, err := newResolver(cfg)
	if err != nil {
		return err
	}
	resolver.SetLogger(log.With("part", "dns"))
	// Domains added before Postern signed mail, or listed in the
	// configuration, get their DKIM keys now.
	if err := ensureDKIMKeys(ctx, store, log, time.Now()); err != nil {
		return err
	}
	env := &serveEnv{cfg: cfg, log: log, store: store, tls: tlsConfig, acme: acm, resolver: resolver,
		limits: lim, hub: hub, metrics: metrics, trace: cfg.Log.Trace || hub != nil}
	servers, err := buildServers(env)
	if err != nil {
		return err
	}
	env.services.Store(new(mailServices(servers)))
	printListeners(out, cfg, servers)
	for _, s := range servers {
		// smtpd logs its own "listening" line; serve logs the others'
		// in the same form.
		if proto, _, _ := strings.Cut(s.name, " "); s.bound != "" && !smtpProtos[proto] {
			log.Info("listening", "listener", proto, "addr", s.bound)
		}
	}
	log.Info("serving", "hostname", cfg.Hostname, "data_dir", cfg.DataDir, "servers", len(servers),
		"connections", plan.Connections, "relay_hold", cfg.Relay.Hold)
	// Every listener is bound: connections wait in the kernel's queue
	// until the servers accept them, so systemd may start what depends
	// on Postern now.
	env.up.Store(true)
	if acm != nil {
		// Now that the listeners can answer the CA's checks.
		go acm.prefetch(ctx)
	}
	if err := sdNotify("READY=1"); err != nil {
		log.Warn("cannot tell systemd that serve is ready", "err", err)
	}
	context.AfterFunc(ctx, func() {
		env.up.Store(false)
		sdNotify("STOPPING=1")
	})
	return runServers(ctx, log, servers)
}

// handleReload reloads the certificate files on each value from hup and
// when they change, until ctx is done. certs is nil for the self-signed
// certificate, which nothing renews, and for ACME, which renews itself.
func handleReload(ctx context.Context, log *slog.Logger, certs *certReloader, hup <-chan os.Signal) {
	if certs != nil {
		go certs.watch(ctx, certCheckInterval)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if certs == nil {
				log.Info("SIGHUP received; no certificate files to reload: the certificate is self-signed or from ACME, which renews itself (restart to apply a new configuration)")
				continue
			}
			log.Info("SIGHUP received; reloading the TLS certificate (restart to apply a new configuration)")
			certs.reload() // logs the outcome
		}
	}
}

// smtpProtos are the listeners of smtpd.
var smtpProtos = map[string]bool{"smtp": true, "submission": true, "submissions": true}

// mailServices are the bound mail listeners as clients see them.
func mailServices(servers []namedServer) []console.Service {
	var out []console.Service
	for _, s := range servers {
		proto, _, _ := strings.Cut(s.name, " ")
		_, portText, err := net.SplitHostPort(s.bound)
		if err != nil {
			continue
		}
		port, _ := strconv.Atoi(portText)
		switch proto {
		case "submission", "imap", "pop3":
			out = append(out, console.Service{Proto: proto, Port: port})
		case "submissions", "imaps", "pop3s":
			out = append(out, console.Service{Proto: strings.TrimSuffix(proto, "s"), Port: port, ImplicitTLS: true})
		}
	}
	return out
}

// memoryHeadroom is what serve needs besides the messages in memory
// (limits.in_flight_bytes): password checks (19 MiB each), the store's
// caches, sessions and the runtime.
const memoryHeadroom = 128 << 20

// setMemoryLimit gives the Go runtime a soft memory limit of
// limits.in_flight_bytes plus memoryHeadroom, unless GOMEMLIMIT sets one:
// the garbage collector then works harder near it instead of letting the
// heap grow to twice what is live, so that a burst of large messages does
// not leave the process twice as large as its budget says.
func setMemoryLimit(cfg *Config, log *slog.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	limit := cfg.Limits.InFlightBytes + memoryHeadroom
	debug.SetMemoryLimit(limit)
	log.Info("memory limit", "bytes", limit)
}

// planFileDescriptors raises the file-descriptor limit and decides the
// process-wide connection budget under it, warning when the configured
// budgets do not fit.
func planFileDescriptors(cfg *Config, log *slog.Logger) connPlan {
	soft, err := raiseFileLimit()
	if err != nil {
		log.Warn("file-descriptor limit", "err", err)
		if soft == 0 {
			soft = math.MaxUint64 // unknown: do not cap
		}
	}
	plan := planConnections(cfg.Limits.Connections, cfg.enabledGroups(), soft)
	if plan.Warning != "" {
		log.Warn("connection budgets exceed the file descriptors", "fd_limit", soft, "available", plan.Available,
			"groups", plan.Groups, "connections", plan.Connections, "detail", plan.Warning)
	}
	return plan
}

// buildServers creates the servers for env.cfg: one per non-empty listener
// (see newServer), followed by the background workers. This is where the
// protocol packages are plugged in.
func buildServers(env *serveEnv) ([]namedServer, error) {
	var servers []namedServer
	for _, l := range env.cfg.listeners() {
		serve, shutdown := newServer(env, l)
		if serve == nil {
			continue
		}
		ln, err := net.Listen("tcp", l.Addr)
		if err != nil {
			for _, s := range servers {
				s.srv.(*listenServer).ln.Close()
			}
			return nil, fmt.Errorf("%s on %s (%s): %w", l.Proto, l.Addr, l.Key, err)
		}
		servers = append(servers, namedServer{
			name:  l.Proto + " " + l.Addr,
			srv:   &listenServer{ln: ln, serve: serve, shutdown: shutdown},
			bound: ln.Addr().String(),
		})
	}
	// An MX that resolves to one of our inbound listeners is ourselves: a
	// loop (5.4.6), never a delivery.
	var local []netip.AddrPort
	for _, s := range servers {
		if strings.HasPrefix(s.name, "smtp ") {
			if ap, err := netip.ParseAddrPort(s.bound); err == nil {
				local = append(local, ap)
			}
		}
	}
	env.relay = relay.New(relay.Config{
		Hostname: env.cfg.Hostname, Resolver: relayResolver{env.resolver}, Port: env.cfg.Relay.Port,
		Logger: env.log.With("part", "relay"), Trace: env.trace, LocalAddrs: local,
		Hold: env.cfg.Relay.Hold, MTASTS: env.cfg.Relay.MTASTS,
		LeaseTTL: mustDuration(env.cfg.Relay.Lease),
	}, env.store)
	servers = append(servers, namedServer{name: "relay", srv: env.relay})
	return servers, nil
}

// newServer returns the serve and shutdown methods of the server for
// listener l, or nils if this build has no server for l.Proto. Each
// protocol package is one case that fills the package's Config from env.
func newServer(env *serveEnv, l listener) (serve func(net.Listener) error, shutdown func(context.Context) error) {
	cfg := env.cfg
	switch l.Proto {
	case "smtp", "submission", "submissions":
		// One server for the three listeners; MX and submission have
		// separate connection budgets ([limits.mx], [limits.submission]).
		if env.smtp == nil {
			var checks *msgauth.Checker
			if cfg.Checks.Enabled {
				checks = &msgauth.Checker{Resolver: env.resolver}
			}
			env.smtp = smtpd.New(smtpd.Config{
				Hostname:          cfg.Hostname,
				TLSConfig:         env.tls,
				MaxMessageBytes:   cfg.SMTP.MaxMessageBytes,
				MaxRecipients:     cfg.SMTP.MaxRecipients,
				AllowInsecureAuth: cfg.Auth.AllowInsecure,
				Logger:            env.log.With("part", "smtp"),
				Trace:             env.trace,
				Limits:            env.limits.MX,
				SubmissionLimits:  env.limits.Submission,
				Shared:            env.limits.Shared,
				// Submitted mail is signed with the domain's keys;
				// mail on the MX is checked ([checks]).
				Signer:      &msgauth.Signer{Keys: msgauth.StoreKeys{Store: env.store}},
				Checks:      checks,
				CheckPolicy: cfg.checkPolicy(),
				// The relay is made after the listeners, before any
				// session starts.
				Queued: func() {
					if env.relay != nil {
						env.relay.Kick()
					}
				},
			}, env.store)
		}
		switch l.Proto {
		case "smtp":
			return env.smtp.ServeMX, env.smtp.Shutdown
		case "submission":
			return env.smtp.ServeSubmission, env.smtp.Shutdown
		}
		return env.smtp.ServeSubmissionTLS, env.smtp.Shutdown
	case "pop3", "pop3s":
		// One server for both listeners: it holds the one-session-per-
		// maildrop lock.
		if env.pop3 == nil {
			env.pop3 = pop3d.New(pop3d.Config{
				Hostname:          cfg.Hostname,
				TLSConfig:         env.tls,
				AllowInsecureAuth: cfg.Auth.AllowInsecure,
				Logger:            env.log.With("part", "pop3"),
				Trace:             env.trace,
				Limits:            env.limits.POP3,
				Shared:            env.limits.Shared,
				MaildropLease:     env.limits.MaildropLease,
			}, env.store)
		}
		if l.Proto == "pop3s" {
			return env.pop3.ServeTLS, env.pop3.Shutdown
		}
		return env.pop3.Serve, env.pop3.Shutdown
	case "imap", "imaps":
		if env.imap == nil {
			env.imap = imapd.New(imapd.Config{
				Hostname:          cfg.Hostname,
				TLSConfig:         env.tls,
				AllowInsecureAuth: cfg.Auth.AllowInsecure,
				Logger:            env.log.With("part", "imap"),
				Trace:             env.trace,
				Limits:            env.limits.IMAP,
				Shared:            env.limits.Shared,
				MaxMessageBytes:   env.limits.MaxMessageBytes,
				MaxCommandBytes:   env.limits.IMAPCommandBytes,
				MaxLiteralBytes:   env.limits.IMAPLiteralBytes,
			}, env.store)
		}
		if l.Proto == "imaps" {
			return env.imap.ServeTLS, env.imap.Shutdown
		}
		return env.imap.Serve, env.imap.Shutdown
	case "http", "https":
		if env.console == nil {
			env.console = newConsole(env)
		}
		if l.Proto == "https" {
			return env.console.ServeTLS, env.console.Shutdown
		}
		return env.console.Serve, env.console.Shutdown
	case "acme-http":
		h := newACMEHTTP(env.acme, env.limits.Shared.Conns, env.log.With("part", "acme"))
		return h.Serve, h.Shutdown
	}
	return nil, nil
}

// printListeners tells the person who started serve where to connect.
func printListeners(out io.Writer, cfg *Config, servers []namedServer) {
	bound := make(map[string]string)
	for _, s := range servers {
		bound[s.name] = s.bound
	}
	source := cfg.source
	if source == "" {
		source = "embedded default"
	}
	fmt.Fprintf(out, "postern %s for %s\n", version, cfg.Hostname)
	tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "  config\t%s\n", source)
	fmt.Fprintf(tw, "  data directory\t%s\n", cfg.DataDir)
	if cfg.Store.Driver == driverPostgres {
		fmt.Fprintf(tw, "  store\t%s\n", redactDSN(cfg.Store.DSN)) // never the password
	}
	for _, l := range cfg.listeners() {
		addr, state := bound[l.Proto+" "+l.Addr], ""
		if addr == "" {
			addr, state = l.Addr, "not available in this build"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", l.Proto, addr, l.TLS, state)
	}
	tw.Flush()
	config := ""
	if cfg.source != "" {
		config = " -config " + cfg.source
	}
	domain := "example.com"
	if len(cfg.Domains) > 0 {
		domain = cfg.Domains[0]
	}
	fmt.Fprintf(out, "\nAdd a user with: postern user add%s you@%s\n", config, domain)
	if cfg.Relay.Hold {
		fmt.Fprintln(out, "Outbound mail is held in the queue, not delivered (relay.hold): postern queue list shows it, postern queue retry ID releases it.")
	} else {
		fmt.Fprintln(out, "Outbound mail is relayed to the MX hosts of other domains.")
	}
	if cfg.Auth.AllowInsecure {
		fmt.Fprintln(out, "Plaintext logins are allowed without TLS (auth.allow_insecure).")
	} else {
		fmt.Fprintln(out, "Log in with the full address; plaintext logins need TLS, except from this machine (loopback).")
	}
}

// runServers runs each server in its own goroutine until ctx is done or one
// of them stops, then gives the others shutdownGrace to return.
func runServers(ctx context.Context, log *slog.Logger, servers []namedServer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	type result struct {
		name string
		err  error
	}
	done := make(chan result, len(servers))
	for _, s := range servers {
		go func() {
			done <- result{s.name, s.srv.Serve(ctx)}
		}()
	}

	var failure error
	running := len(servers)
	select {
	case <-ctx.Done():
		log.Info("stopping", "reason", context.Cause(ctx))
	case r := <-done:
		running--
		if r.err == nil {
			r.err = errors.New("stopped unexpectedly")
		}
		failure = fmt.Errorf("%s: %w", r.name, r.err)
		log.Error("server failed, stopping the others", "server", r.name, "err", r.err)
	}
	cancel()

	// Each server ends its sessions within shutdownGrace, closing those
	// still open then; waiting a little longer lets them finish that.
	grace := time.NewTimer(shutdownGrace + shutdownMargin)
	defer grace.Stop()
	for running > 0 {
		select {
		case r := <-done:
			running--
			if errors.Is(r.err, context.DeadlineExceeded) {
				// Sessions still open at the end of the grace period
				// were closed: expected on a busy server, not a failure.
				log.Warn("sessions cut at the end of the grace period", "server", r.name, "grace", shutdownGrace)
				continue
			}
			if r.err != nil && !errors.Is(r.err, context.Canceled) {
				log.Error("server stopped with an error", "server", r.name, "err", r.err)
				failure = errors.Join(failure, fmt.Errorf("%s: %w", r.name, r.err))
			}
		case <-grace.C:
			return errors.Join(failure, fmt.Errorf("%d server(s) still busy %v after the stop; leaving them", running, shutdownGrace+shutdownMargin))
		}
	}
	return failure
}

// newLogger returns the logger described by the [log] section, writing to w.
func newLogger(lc LogConfig, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(lc.Level)); err != nil {
		return nil, fmt.Errorf("log.level %q: %w", lc.Level, err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch lc.Format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log.format %q: must be text or json", lc.Format)
}

// newConsole makes the HTTP listener's server from env.
func newConsole(env *serveEnv) *console.Server {
	cfg := env.cfg
	metricsNetworks, _ := cfg.HTTP.metricsNetworks() // checked by validate
	return console.New(console.Config{
		Hostname: cfg.Hostname,
		Domains:  env.store.Domains,
		Services: func() []console.Service {
			if p := env.services.Load(); p != nil {
				return *p
			}
			return nil
		},
		MTASTSMode:   cfg.HTTP.MTASTSMode,
		MTASTSMaxAge: mtaSTSMaxAge,
		// Ready: every listener bound, and the store answers a read.
		Ready: func(ctx context.Context) error {
			if !env.up.Load() {
				return errors.New("listeners are not up")
			}
			if _, err := env.store.Domains(ctx); err != nil {
				return fmt.Errorf("mailstore: %w", err)
			}
			return nil
		},
		TLSConfig:                env.tls,
		Logger:                   env.log.With("part", "http"),
		Conns:                    env.limits.Shared.Conns,
		MaxConnections:           cfg.HTTP.Connections,
		MaxConnectionsPerAddress: cfg.HTTP.ConnectionsPerAddress,
		Metrics:                  env.metrics,
		MetricsNetworks:          metricsNetworks,
		WebConfig: console.WebConfig{
			Store:  env.store,
			Logins: env.limits.Shared.Logins,
			Hub:    env.hub,
			// The submission pipeline of port 587 (smtpd is made with
			// the listeners, before any request).
			Submit: func(ctx context.Context, user, from string, rcpts []string, msg io.Reader) error {
				if env.smtp == nil {
					return errors.New("no SMTP server in this configuration")
				}
				return env.smtp.Submit(ctx, user, from, rcpts, msg)
			},
			DNSRecords: func(ctx context.Context, domain string) (string, error) {
				keys, err := msgauth.StoreKeys{Store: env.store}.SigningKeys(ctx, domain)
				if err != nil {
					return "", err
				}
				return domainZone(cfg, domain, keys), nil
			},
			QueueKick: func() {
				if env.relay != nil {
					env.relay.Kick()
				}
			},
			AllowInsecure: cfg.Auth.AllowInsecure,
		},
	})
}
