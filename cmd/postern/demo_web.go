package main

// `postern demo -web`: the demo's two domains keep running (as with
// -keep), each with its web console on its own loopback address, so that
// a class can watch sessions and messages in a browser while mail goes
// from alice@alpha.test to bob@beta.test.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/postern/postern/cmd/postern/console"
)

// webLoggers returns the loggers of dom's servers with -web: every record
// goes to dom's Hub (the console's flow) and, as before, to the demo's
// output through base, except the SMTP server's own protocol lines,
// which the demo shows from the client's side already.
func (d *demo) webLoggers(dom *demoDomain, base func(string) *slog.Logger) func(string) *slog.Logger {
	dom.hub = console.NewHub(slog.DiscardHandler, slog.LevelInfo, 0)
	return func(part string) *slog.Logger {
		out := base(part).Handler()
		if part == dom.short()+" smtp" {
			out = dropTrace{out}
		}
		return slog.New(teeHandler{dom.hub.Handler(), out})
	}
}

func (dom *demoDomain) short() string { return strings.TrimSuffix(dom.name, ".test") }

// startConsole serves dom's web console on dom's loopback address: its
// store, its Hub, and its submission pipeline for compose.
func (d *demo) startConsole(dom *demoDomain, logger func(string) *slog.Logger) error {
	if dom.hub == nil {
		return errors.New("demo: web console without a hub")
	}
	// The domain's one user is its admin, so that /flow shows every
	// session of the domain (the MX's too), not only their own.
	if err := dom.store.SetAdmin(context.Background(), dom.user, true); err != nil {
		return fmt.Errorf("%s: %w", dom.name, err)
	}
	dom.console = console.New(console.Config{
		Hostname: "mx." + dom.name,
		Domains:  dom.store.Domains,
		Logger:   logger(dom.short() + " http"),
		WebConfig: console.WebConfig{
			Store:     dom.store,
			Hub:       dom.hub,
			Submit:    dom.smtp.Submit,
			QueueKick: dom.relay.Kick,
		},
	})
	ln, err := demoListen("tcp", dom.ip+":0")
	if err != nil {
		return fmt.Errorf("%s: web console: %w", dom.name, err)
	}
	dom.webAddr = ln.Addr().String()
	go dom.console.Serve(ln) // Shutdown (in close) closes ln
	return nil
}

// printWeb tells where the consoles are and how to log in.
func (d *demo) printWeb() {
	d.out.beginStep("Web consoles (open them in a browser)")
	for _, dom := range []*demoDomain{d.alpha, d.beta} {
		d.out.note("%s: http://%s/  log in as %s  password %s", dom.name, dom.webAddr, dom.user, dom.password)
	}
	d.out.note("/flow shows each session as it opens and closes, with its protocol lines, and each message's timeline; /mail reads and writes mail.")
	d.out.note("Each console shows its own domain: alice's sends and relay attempts on alpha's, bob's deliveries, POP3 and IMAP reads on beta's.")
	d.out.note("(plain HTTP on loopback only: the console asks for HTTPS anywhere else)")
}

// teeHandler hands every record to two handlers.
type teeHandler struct{ a, b slog.Handler }

func (t teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return t.a.Enabled(ctx, l) || t.b.Enabled(ctx, l)
}

func (t teeHandler) Handle(ctx context.Context, r slog.Record) error {
	var errs []error
	if t.a.Enabled(ctx, r.Level) {
		errs = append(errs, t.a.Handle(ctx, r.Clone()))
	}
	if t.b.Enabled(ctx, r.Level) {
		errs = append(errs, t.b.Handle(ctx, r))
	}
	return errors.Join(errs...)
}

func (t teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return teeHandler{t.a.WithAttrs(as), t.b.WithAttrs(as)}
}

func (t teeHandler) WithGroup(name string) slog.Handler {
	return teeHandler{t.a.WithGroup(name), t.b.WithGroup(name)}
}

// dropTrace passes on every record but the protocol lines ("trace").
type dropTrace struct{ next slog.Handler }

func (f dropTrace) Enabled(ctx context.Context, l slog.Level) bool { return f.next.Enabled(ctx, l) }

func (f dropTrace) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "trace" {
		return nil
	}
	return f.next.Handle(ctx, r)
}

func (f dropTrace) WithAttrs(as []slog.Attr) slog.Handler { return dropTrace{f.next.WithAttrs(as)} }
func (f dropTrace) WithGroup(name string) slog.Handler    { return dropTrace{f.next.WithGroup(name)} }
