package main

// `postern serve`: load the configuration, prepare the data directory, start
// one server per listener, and stop them all on SIGINT or SIGTERM.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/postern/postern/mailstore"
)

// shutdownGrace is how long serve lets the servers finish the sessions in
// progress after SIGINT or SIGTERM: enough for a message transfer that is
// nearly done to be committed, well under the 90 seconds systemd waits
// before it kills a service. A second signal ends the process at once.
const shutdownGrace = 10 * time.Second

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
	name string
	srv  server
}

// serveEnv is what the servers share. Each protocol package gets its own
// Config struct, filled from these fields in newServer.
type serveEnv struct {
	cfg   *Config
	log   *slog.Logger
	store *mailstore.Store
}

func cmdServe(c *cli, args []string) int {
	const name = "serve"
	fs := c.flagSet(name, "[-config FILE]")
	path := configFlag(fs)
	if code, ok := c.parse(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return c.usageError(fs, "unexpected argument %q", fs.Arg(0))
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return c.fail(name, err)
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

	if err := serve(ctx, cfg, logger, c.stdout); err != nil {
		return c.fail(name, err)
	}
	return exitOK
}

// serve opens the mailstore and runs everything cfg asks for until ctx is
// done. It prints the data directory and the listeners to out before it
// starts the servers.
func serve(ctx context.Context, cfg *Config, log *slog.Logger, out io.Writer) (err error) {
	store, err := openStoreOpts(cfg, mailstore.Options{Logger: log.With("part", "mailstore")})
	if err != nil {
		return err
	}
	// The store closes last, after every server has returned or the
	// grace period is over, so that commits in progress can finish.
	defer func() {
		if cerr := store.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close mailstore: %w", cerr))
		}
	}()

	env := &serveEnv{cfg: cfg, log: log, store: store}
	servers, err := buildServers(env)
	if err != nil {
		return err
	}
	printListeners(out, cfg, servers)
	log.Info("serving", "hostname", cfg.Hostname, "data_dir", cfg.DataDir, "servers", len(servers))
	return runServers(ctx, log, servers)
}

// buildServers creates the servers for env.cfg: one per non-empty listener
// (see newServer), followed by the background workers. This is where the
// protocol packages are plugged in.
func buildServers(env *serveEnv) ([]namedServer, error) {
	var servers []namedServer
	for _, l := range env.cfg.listeners() {
		srv, err := newServer(env, l)
		if err != nil {
			return nil, fmt.Errorf("%s on %s (%s): %w", l.Proto, l.Addr, l.Key, err)
		}
		if srv != nil {
			servers = append(servers, namedServer{name: l.Proto + " " + l.Addr, srv: srv})
		}
	}
	// Background workers that have no listener (the smtpd/relay queue
	// runner) are appended here as namedServer{name: "relay", ...}.
	return servers, nil
}

// newServer returns the server for listener l, or nil if this build has no
// server for l.Proto yet. Each protocol package is added as one case that
// fills the package's Config from env (hostname, limits, TLS, logger with
// the listener's name) and returns a value whose Serve listens on l.Addr.
func newServer(env *serveEnv, l listener) (server, error) {
	switch l.Proto {
	case "smtp", "submission", "submissions": // smtpd
	case "pop3", "pop3s": // pop3d
	case "imap", "imaps": // imapd
	}
	return nil, nil
}

// printListeners tells the person who started serve where to connect.
func printListeners(out io.Writer, cfg *Config, servers []namedServer) {
	running := make(map[string]bool)
	for _, s := range servers {
		running[s.name] = true
	}
	source := cfg.source
	if source == "" {
		source = "embedded default"
	}
	fmt.Fprintf(out, "postern %s for %s\n", version, cfg.Hostname)
	tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "  config\t%s\n", source)
	fmt.Fprintf(tw, "  data directory\t%s\n", cfg.DataDir)
	for _, l := range cfg.listeners() {
		state := ""
		if !running[l.Proto+" "+l.Addr] {
			state = "not available in this build"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", l.Proto, l.Addr, l.TLS, state)
	}
	tw.Flush()
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

	grace := time.NewTimer(shutdownGrace)
	defer grace.Stop()
	for running > 0 {
		select {
		case r := <-done:
			running--
			if r.err != nil && !errors.Is(r.err, context.Canceled) {
				log.Error("server stopped with an error", "server", r.name, "err", r.err)
				failure = errors.Join(failure, fmt.Errorf("%s: %w", r.name, r.err))
			}
		case <-grace.C:
			return errors.Join(failure, fmt.Errorf("%d server(s) still busy %v after the stop; leaving them", running, shutdownGrace))
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
