package main

// `postern demo`: the whole mail flow on loopback, traced. Two domains,
// alpha.test and beta.test, each a real Postern (mailstore, SMTP, relay,
// POP3, IMAP) on its own loopback address, and a DNS server answering
// their MX and A records. Everything printed comes from the real sessions.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/textproto"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/miekg/dns"
	"golang.org/x/term"

	"github.com/postern/postern/cmd/postern/console"
	"github.com/postern/postern/imapd"
	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mime"
	"github.com/postern/postern/pop3d"
	"github.com/postern/postern/smtpd"
	"github.com/postern/postern/smtpd/msgauth"
	"github.com/postern/postern/smtpd/relay"
)

const (
	// demoTimeout bounds the whole demo: every step is local and quick.
	demoTimeout = 2 * time.Minute
	// demoPortTries bounds the search for a port free on both loopback
	// addresses.
	demoPortTries = 50
)

// demoDomain is one of the demo's two mail domains.
type demoDomain struct {
	name, user, password string
	ip                   string
	dir                  string
	store                *mailstore.Store
	smtp                 *smtpd.Server
	relay                *relay.Relay
	pop3                 *pop3d.Server
	imap                 *imapd.Server
	mx, submission       string // bound addresses
	mxPort               int    // the MX's port
	pop3Addr, imapAddr   string
	listeners            []net.Listener
	// hub, console and webAddr are the domain's web console (-web):
	// the hub gets every record of the domain's servers.
	hub     *console.Hub
	console *console.Server
	webAddr string
}

// demo is one run of `postern demo`.
type demo struct {
	out      *demoOut
	dir      string
	zone     *zoneServer
	resolver relay.Resolver
	// checks is the resolver of the MX checks (SPF, DKIM, DMARC).
	checks  *msgauth.Resolver
	port    int
	records []string // the zone the DNS server serves
	trace   bool     // relays log their SMTP dialogues
	// maxReceived is the MX hop limit; 0: smtpd's default.
	maxReceived int
	// showBody prints every MIME part and IMAP literal in full.
	showBody bool
	// fallback: 127.0.0.2 and 127.0.0.3 could not be bound, and both
	// domains share 127.0.0.1 on ports of their own.
	fallback bool
	alpha    *demoDomain
	beta     *demoDomain
	// front is the greylisting front on beta's MX address (greylist
	// scenario), or nil.
	front *greylistFront
	// web: each domain also runs its web console (-web).
	web bool
	// clock is how far the demo's clock, which the relays use, runs
	// ahead of the real one (the greylist scenario jumps to a retry).
	clock atomic.Int64
}

// demoListen opens the demo's listeners; tests replace it to refuse the
// extra loopback addresses.
var demoListen = net.Listen

// sessionDeadline bounds a client session of the demo; a session that
// stays open across steps (imap) may wait for -step's pauses.
func (d *demo) sessionDeadline() time.Time {
	if d.out.pause != nil {
		return time.Now().Add(time.Hour)
	}
	return time.Now().Add(time.Minute)
}

// peer is the other domain of the two.
func (d *demo) peer(dom *demoDomain) *demoDomain {
	if dom == d.alpha {
		return d.beta
	}
	return d.alpha
}

// now is the demo's clock.
func (d *demo) now() time.Time { return time.Now().Add(time.Duration(d.clock.Load())) }

// advance moves the demo's clock ahead by by.
func (d *demo) advance(by time.Duration) { d.clock.Add(int64(by)) }

func cmdDemo(c *cli, args []string) int {
	const name = "demo"
	fs := c.flagSet(name, "[-json] [-keep] [-web] [-step] [-show-body] [-scenario NAME]")
	asJSON := fs.Bool("json", false, "print the events as JSON lines")
	scenarioName := fs.String("scenario", "flow", "what to show (-scenario list names them)")
	keep := fs.Bool("keep", false, "leave the servers running and print how to connect with a real client")
	web := fs.Bool("web", false, "like -keep, and each domain's web console on loopback, to watch the flow in a browser")
	step := fs.Bool("step", false, "pause before each step until Enter is pressed (when stdin is a terminal)")
	showBody := fs.Bool("show-body", false, "print every MIME part and IMAP literal in full")
	if code, ok := c.parse(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return c.usageError(fs, "unexpected argument %q", fs.Arg(0))
	}
	if *scenarioName == "list" {
		for _, sc := range scenarios() {
			fmt.Fprintf(c.stdout, "%-18s %s\n", sc.name, sc.about)
		}
		return exitOK
	}
	sc, ok := findScenario(*scenarioName)
	if !ok {
		return c.usageError(fs, "unknown scenario %q (-scenario list names them)", *scenarioName)
	}
	out := &demoOut{w: c.stdout, json: *asJSON}
	if *step {
		// Without a terminal nobody presses Enter: no pause.
		if f, ok := c.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			out.pause = stepPause(c.stdin, c.stderr)
		}
	}
	// Ctrl-C stops the demo through its context, so that the servers stop
	// and the temporary directory (keys, databases) goes.
	sctx, stop := signal.NotifyContext(c.ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Pauses (-step) last as long as the class needs: the bound on the
	// whole demo holds only without them.
	ctx, cancel := context.WithTimeout(sctx, demoTimeout)
	if out.pause != nil {
		ctx, cancel = context.WithCancel(sctx)
	}
	defer cancel()
	out.beginStep("0. Starting two Postern instances and a DNS server on loopback")
	d, err := startDemoWeb(out, sc, *web)
	if err != nil {
		return c.fail(name, err)
	}
	defer d.close()
	d.showBody = *showBody
	if err := sc.run(d, ctx); err != nil {
		out.emit(event{Kind: "result", Text: "FAILED: " + err.Error()})
		return exitFailure
	}
	if *keep || *web {
		// The relays run, so that mail submitted by hand is delivered;
		// they stop before the stores close.
		rctx, stopRelays := context.WithCancel(sctx)
		var relays sync.WaitGroup
		for _, dom := range []*demoDomain{d.alpha, d.beta} {
			relays.Add(1)
			go func() {
				defer relays.Done()
				dom.relay.Run(rctx)
			}()
		}
		d.printKeep()
		if *web {
			d.printWeb()
		}
		<-sctx.Done()
		stopRelays()
		relays.Wait()
	}
	return exitOK
}

// startDemo starts DNS and both domains.
func startDemo(out *demoOut, sc scenario) (*demo, error) {
	return startDemoWeb(out, sc, false)
}

// startDemoWeb starts DNS and both domains, each with its web console
// when web.
func startDemoWeb(out *demoOut, sc scenario, web bool) (*demo, error) {
	dir, err := os.MkdirTemp("", "postern-demo-")
	if err != nil {
		return nil, fmt.Errorf("temporary directory: %w", err)
	}
	d := &demo{out: out, dir: dir, trace: !sc.quiet, maxReceived: sc.maxReceived, web: web}
	d.alpha = &demoDomain{name: "alpha.test", user: "alice@alpha.test", password: "alice-demo-password", ip: "127.0.0.2"}
	d.beta = &demoDomain{name: "beta.test", user: "bob@beta.test", password: "bob-demo-password", ip: "127.0.0.3"}
	// Both MX hosts listen on the same port, on two loopback addresses,
	// as two machines would on port 25. Where the extra loopback
	// addresses do not exist (macOS by default), both domains share
	// 127.0.0.1 on ports of their own.
	var mxAlpha, mxBeta net.Listener
	if !canListen(d.alpha.ip) || !canListen(d.beta.ip) {
		d.fallback = true
		d.alpha.ip, d.beta.ip = "127.0.0.1", "127.0.0.1"
		out.note("(127.0.0.2 and 127.0.0.3 cannot be bound here, as on macOS by default: both domains run on 127.0.0.1, each on its own ports, and each relay is told the port of the other's MX; `sudo ifconfig lo0 alias 127.0.0.2 up` and the same for 127.0.0.3 give each its own address)")
		if mxAlpha, err = demoListen("tcp", "127.0.0.1:0"); err == nil {
			if mxBeta, err = demoListen("tcp", "127.0.0.1:0"); err != nil {
				mxAlpha.Close()
			}
		}
	} else {
		mxAlpha, mxBeta, err = listenPair(d.alpha.ip, d.beta.ip)
	}
	if err != nil {
		d.close()
		return nil, err
	}
	d.alpha.mxPort = mxAlpha.Addr().(*net.TCPAddr).Port
	d.beta.mxPort = mxBeta.Addr().(*net.TCPAddr).Port
	d.port = d.alpha.mxPort
	d.records = []string{
		"alpha.test. 300 IN MX 10 mx.alpha.test.",
		"mx.alpha.test. 300 IN A " + d.alpha.ip,
		"beta.test. 300 IN MX 10 mx.beta.test.",
		"mx.beta.test. 300 IN A " + d.beta.ip,
	}
	for _, r := range sc.records {
		if d.fallback {
			// A scenario's record for beta's machine.
			r = strings.ReplaceAll(r, "127.0.0.3", d.beta.ip)
		}
		d.records = append(d.records, r)
	}
	d.zone, err = startZone(d.records...)
	if err != nil {
		mxAlpha.Close()
		mxBeta.Close()
		d.close()
		return nil, err
	}
	d.resolver = relay.NewResolver(d.zone.addr)
	d.checks, err = msgauth.NewResolver(msgauth.ResolverConfig{Server: d.zone.addr})
	if err != nil {
		d.close()
		return nil, err
	}
	if sc.greylist {
		if mxBeta, err = d.startGreylist(d.beta, mxBeta); err != nil {
			mxAlpha.Close()
			d.close()
			return nil, err
		}
	}
	for _, p := range []struct {
		dom *demoDomain
		mx  net.Listener
	}{{d.alpha, mxAlpha}, {d.beta, mxBeta}} {
		if err := d.startDomain(p.dom, p.mx); err != nil {
			d.close()
			return nil, err
		}
	}
	return d, nil
}

// canListen tells whether a TCP listener can be opened on ip.
func canListen(ip string) bool {
	l, err := demoListen("tcp", ip+":0")
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// listenPair listens on the same TCP port on two addresses.
func listenPair(ip1, ip2 string) (net.Listener, net.Listener, error) {
	var lastErr error
	for i := 0; i < demoPortTries; i++ {
		l1, err := demoListen("tcp", ip1+":0")
		if err != nil {
			return nil, nil, fmt.Errorf("listen on %s: %w", ip1, err)
		}
		port := l1.Addr().(*net.TCPAddr).Port
		l2, err := demoListen("tcp", fmt.Sprintf("%s:%d", ip2, port))
		if err == nil {
			return l1, l2, nil
		}
		l1.Close()
		lastErr = err
	}
	return nil, nil, fmt.Errorf("no port free on both %s and %s: %w", ip1, ip2, lastErr)
}

// startDomain opens a store for dom with its one user and starts its
// servers on dom's loopback address.
func (d *demo) startDomain(dom *demoDomain, mx net.Listener) error {
	ctx := context.Background()
	dom.dir = filepath.Join(d.dir, dom.name)
	if err := os.MkdirAll(dom.dir, dataDirPerm); err != nil {
		return fmt.Errorf("%s: %w", dom.name, err)
	}
	var err error
	dom.store, err = mailstore.Open(filepath.Join(dom.dir, storeFile), mailstore.Options{})
	if err != nil {
		return fmt.Errorf("%s: %w", dom.name, err)
	}
	if err := dom.store.AddDomain(ctx, dom.name); err != nil {
		return fmt.Errorf("%s: %w", dom.name, err)
	}
	if _, err := dom.store.AddUser(ctx, dom.user, dom.password); err != nil {
		return fmt.Errorf("%s: %w", dom.name, err)
	}
	// The domain's DKIM keys, and its SPF, DKIM and DMARC records in the
	// zone. DMARC says p=reject: beta refuses mail forged as alpha's.
	keys, err := msgauth.AddGeneratedKeys(ctx, dom.store, dom.name, time.Now())
	if err != nil {
		return fmt.Errorf("%s: %w", dom.name, err)
	}
	records := []string{dom.name + `. 300 IN TXT "v=spf1 mx -all"`}
	for _, k := range keys {
		records = append(records, dns.Fqdn(k.DNSName())+" 300 IN TXT "+txtStrings(k.DNSRecord()))
	}
	records = append(records, "_dmarc."+dom.name+`. 300 IN TXT "v=DMARC1; p=reject"`)
	if err := d.zone.add(records...); err != nil {
		return err
	}
	d.records = append(d.records, records...)
	host := "mx." + dom.name
	tlsConfig, err := loadTLS(&Config{Hostname: host, DataDir: dom.dir})
	if err != nil {
		return fmt.Errorf("%s: %w", dom.name, err)
	}
	short := strings.TrimSuffix(dom.name, ".test")
	logger := d.out.logger
	if !d.trace {
		// Many sessions: the demo prints a summary line per hop instead.
		logger = func(string) *slog.Logger { return slog.New(slog.DiscardHandler) }
	}
	if d.web {
		logger = d.webLoggers(dom, logger)
	}
	dom.smtp = smtpd.New(smtpd.Config{
		Hostname: host, TLSConfig: tlsConfig, MaxReceived: d.maxReceived, Now: d.now,
		Logger: logger(short + " smtp"),
		// The client side of each SMTP dialogue is what the demo shows;
		// with -web the console's flow also gets the server's side
		// (webLoggers keeps it out of the demo's output).
		Trace:  d.web,
		Signer: &msgauth.Signer{Keys: msgauth.StoreKeys{Store: dom.store}},
		Checks: &msgauth.Checker{Resolver: d.checks},
		// With -keep the relay runs and delivers what was queued at once.
		Queued: func() { dom.relay.Kick() },
	}, dom.store)
	// The relay connects from the domain's own address, as a separate
	// machine would.
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(dom.ip)}}
	dom.relay = relay.New(relay.Config{
		Hostname: host, Resolver: d.resolver, Port: d.peer(dom).mxPort, Dialer: dialer.DialContext, Now: d.now,
		Logger: logger(short + " relay"), Trace: d.trace,
		LocalAddrs: []netip.AddrPort{netip.MustParseAddrPort(mx.Addr().String())},
	}, dom.store)
	dom.pop3 = pop3d.New(pop3d.Config{
		Hostname: host, TLSConfig: tlsConfig, Logger: logger(short + " pop3"), Trace: true,
	}, dom.store)
	dom.imap = imapd.New(imapd.Config{
		Hostname: host, TLSConfig: tlsConfig, Logger: logger(short + " imap"), Trace: true,
	}, dom.store)
	listen := func(serve func(net.Listener) error) (string, error) {
		ln, err := demoListen("tcp", dom.ip+":0")
		if err != nil {
			return "", fmt.Errorf("%s: %w", dom.name, err)
		}
		dom.listeners = append(dom.listeners, ln)
		go serve(ln)
		return ln.Addr().String(), nil
	}
	dom.listeners = append(dom.listeners, mx)
	go dom.smtp.ServeMX(mx)
	dom.mx = mx.Addr().String()
	if dom.submission, err = listen(dom.smtp.ServeSubmission); err != nil {
		return err
	}
	if dom.pop3Addr, err = listen(dom.pop3.Serve); err != nil {
		return err
	}
	if dom.imapAddr, err = listen(dom.imap.Serve); err != nil {
		return err
	}
	if d.web {
		return d.startConsole(dom, logger)
	}
	return nil
}

func (d *demo) close() {
	// Servers may log a last event (a disconnect) while they stop.
	defer d.out.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if d.front != nil {
		d.front.close()
	}
	for _, dom := range []*demoDomain{d.alpha, d.beta} {
		if dom == nil {
			continue
		}
		if dom.console != nil {
			dom.console.Shutdown(ctx)
		}
		if dom.smtp != nil {
			dom.smtp.Shutdown(ctx)
		}
		if dom.pop3 != nil {
			dom.pop3.Shutdown(ctx)
		}
		if dom.imap != nil {
			dom.imap.Shutdown(ctx)
		}
		for _, ln := range dom.listeners {
			ln.Close()
		}
		if dom.store != nil {
			dom.store.Close()
		}
	}
	if d.zone != nil {
		d.zone.close()
	}
	os.RemoveAll(d.dir)
}

// intro describes the two domains and the DNS zone.
func (d *demo) intro() {
	out, a, b := d.out, d.alpha, d.beta
	out.beginStep("1. Two mail domains on this machine")
	out.note("(each is a whole Postern: its own mailstore, SMTP, relay, POP3 and IMAP, on its own loopback address)")
	for _, dom := range []*demoDomain{a, b} {
		out.note("%s: user %s", dom.name, dom.user)
		short := strings.TrimSuffix(dom.name, ".test")
		for _, l := range []struct{ part, service, addr string }{
			{"smtp", "MX", dom.mx},
			{"smtp", "submission", dom.submission},
			{"pop3", "POP3", dom.pop3Addr},
			{"imap", "IMAP", dom.imapAddr},
		} {
			out.emit(event{Kind: "event", Part: short + " " + l.part, Text: "listening",
				Attrs: map[string]string{"service": l.service, "addr": l.addr}})
		}
	}
	if d.fallback {
		out.note("(the MX hosts listen on ports %d and %d, picked free at start: port 25 needs root; alpha's relay is told to use %d and beta's %d, where two machines would both use 25)", a.mxPort, b.mxPort, b.mxPort, a.mxPort)
	} else {
		out.note("(both MX hosts listen on the same port, %d, picked free at start: port 25 needs root, and the relays are told to use %d, as two machines would both use 25)", d.port, d.port)
	}
	out.note("DNS server %s serves:", d.zone.addr)
	for _, rr := range d.records {
		out.note("    %s", rr)
	}
}

// flow runs the main demonstration: alice@alpha.test writes to
// bob@beta.test, and bob reads the message over POP3 and IMAP. A non-zero
// attach adds a binary attachment of that many bytes.
func (d *demo) flow(ctx context.Context, attach int) error {
	out := d.out
	a, b := d.alpha, d.beta
	d.intro()

	// The letter: composed as a mail program would, but without Date and
	// Message-ID, which the submission server must add (RFC 6409 8).
	composed, err := mime.Compose(mime.Draft{
		From: "Alice <" + a.user + ">", To: []string{"Bob <" + b.user + ">"},
		Subject: "Grüße from alpha — a demo message",
		Text:    "Hello Bob,\n\nthis message went through DNS, SMTP, a queue and a relay.\n\nGrüße,\nAlice\n",
		Attachments: append([]mime.Attachment{
			{Filename: "notes.txt", Data: []byte("An attachment, as a second MIME part.\n")},
		}, demoAttachment(attach)...),
	})
	if err != nil {
		return fmt.Errorf("compose: %w", err)
	}
	letter := dropFields(composed, "Date", "Message-Id")
	original := headerNames(letter)
	if attach > 0 {
		out.note("The message is %d bytes: over 64 KiB, in base64 lines of 76 characters.", len(letter))
	}

	out.beginStep("2. alice submits the message (SMTP submission, RFC 6409)")
	out.note("Envelope (what SMTP servers act on):  MAIL FROM:<%s>  RCPT TO:<%s>", a.user, b.user)
	out.note("Letter header (what people read):     From: %s | To: %s", headerValue(letter, "From"), headerValue(letter, "To"))
	tw := &traceWriter{out: out, part: "alice client"}
	clientTLS, err := d.submissionTLS(a, tw)
	if err != nil {
		return fmt.Errorf("step 2: %w", err)
	}
	reply, err := submit(ctx, submission{
		addr: a.submission, mode: tlsStartTLS, tls: clientTLS, helo: "alice-laptop.alpha.test",
		user: a.user, password: a.password, from: a.user, to: []string{b.user}, msg: letter, trace: tw,
	})
	if err != nil {
		return fmt.Errorf("step 2, submission: %w", err)
	}
	out.note("accepted: %s", reply)
	out.note("size: %d bytes as alice's mail program wrote them, announced as SIZE=%d in MAIL FROM (RFC 1870) so that a server can refuse a message too big before it is sent", len(letter), len(letter))
	if err := d.drawMIME(letter); err != nil {
		return fmt.Errorf("step 2: %w", err)
	}

	out.beginStep("3. The message waits in alpha's outbound queue")
	q, err := a.store.Queue(ctx, time.Time{}, 0)
	if err != nil || len(q) != 1 {
		return fmt.Errorf("step 3, queue: %d entries (%v), want 1", len(q), err)
	}
	e := q[0]
	out.note("queue entry %d: from <%s> to <%s> (domain %s), %d bytes, attempts %d, next attempt %s",
		e.ID, e.Sender, e.Recipient, e.Domain, e.Size, e.Attempts, e.NextAttempt.Format(time.TimeOnly))
	queued, err := a.store.ReadBody(ctx, e.BodyID)
	if err != nil {
		return fmt.Errorf("step 3, queued message: %w", err)
	}
	out.note("%s", sizeChange(letter, "bytes submitted", queued, "bytes in the queue", "alpha's submission server added"))
	out.note("alpha's submission server signed it with alpha.test's keys (DKIM, RFC 6376; Ed25519 and RSA):")
	signed := 0
	for _, f := range headerFields(queued) {
		if strings.EqualFold(f.name, "DKIM-Signature") {
			out.note("+ %s", f.text)
			signed++
		}
	}
	if signed == 0 {
		return errors.New("step 3: the queued message has no DKIM-Signature")
	}

	out.beginStep("4. The relay looks up where mail for beta.test goes (DNS MX, RFC 5321 5.1)")
	mx, err := relay.LookupMX(ctx, d.resolver, b.name)
	if err != nil {
		return fmt.Errorf("step 4, MX lookup: %w", err)
	}
	var lookup bytes.Buffer
	if err := printMX(&lookup, d.zone.addr, mx); err != nil {
		return fmt.Errorf("step 4, MX lookup: %w", err)
	}
	for _, line := range strings.Split(strings.TrimRight(lookup.String(), "\n"), "\n") {
		out.note("%s", line)
	}
	out.note("-> the relay tries %s first: the lowest preference", mx.Hosts[0].Host)

	out.beginStep("5. alpha's relay delivers to beta's MX (SMTP, RFC 5321)")
	if err := a.relay.RunOnce(ctx); err != nil {
		return fmt.Errorf("step 5, relay: %w", err)
	}
	if q, _ := a.store.Queue(ctx, time.Time{}, 0); len(q) != 0 {
		return fmt.Errorf("step 5, relay: the message is still queued: %s", q[0].LastError)
	}
	stuffed := stuffedLines(queued)
	sent := len(queued) + stuffed + len(".\r\n")
	why := `the line "." that ends the data (RFC 5321 4.1.1.4)`
	if stuffed > 0 {
		why += fmt.Sprintf(`, and a dot added before each of the %d lines that start with "." (4.5.2)`, stuffed)
	}
	out.note("size: %d bytes in the queue, announced as SIZE=%d -> %d octets sent after DATA (+%d): %s", len(queued), len(queued), sent, sent-len(queued), why)
	out.note("verified=false: beta's certificate is self-signed, so alpha's relay cannot check it, and delivers over TLS anyway: " +
		"on port 25 TLS is opportunistic (RFC 3207, RFC 7435), it stops eavesdroppers, and refusing unverified certificates would only push mail back to plain text; " +
		"MTA-STS (RFC 8461) or DANE (RFC 7672) let beta.test publish that its MX must show a valid certificate, and then the relay would keep the message queued rather than send it unverified")

	out.beginStep("6. The message in bob's INBOX on beta.test")
	stored, err := inboxMessage(ctx, b)
	if err != nil {
		return fmt.Errorf("step 6: %w", err)
	}
	out.note("%s", sizeChange(queued, fmt.Sprintf("bytes received (the %d octets without what SMTP added)", sent), stored, "bytes stored in bob's INBOX", "beta's MX added"))
	for _, f := range headerFields(stored) {
		mark := "  "
		if !original[strings.ToLower(f.name)] {
			mark = "+ "
		}
		out.note("%s%s", mark, f.text)
	}
	out.note("(+ marks the fields added on the way: Date, Message-ID and DKIM-Signature by submission, Received by each server, Authentication-Results by beta's MX after its SPF, DKIM and DMARC checks, Return-Path at final delivery)")
	if ar := headerValue(stored, "Authentication-Results"); !strings.Contains(ar, "spf=pass") || !strings.Contains(ar, "dkim=pass") || !strings.Contains(ar, "dmarc=pass") {
		return fmt.Errorf("step 6: beta's checks did not all pass: Authentication-Results: %s", ar)
	}

	out.beginStep("7. bob reads it over POP3 (RFC 1939)")
	popped, err := d.pop3Read(b)
	if err != nil {
		return fmt.Errorf("step 7, POP3: %w", err)
	}

	out.beginStep("8. bob looks at it over IMAP (RFC 9051)")
	if err := d.imapRead(ctx, b); err != nil {
		return fmt.Errorf("step 8, IMAP: %w", err)
	}

	if !bytes.Equal(bodyOf(popped), bodyOf(letter)) {
		return errors.New("the message bob read differs from the one alice sent")
	}
	out.emit(event{Kind: "result", Text: "OK: the message arrived intact (body identical to what alice sent)."})
	return nil
}

// inboxMessage reads the newest message of dom's user's INBOX.
func inboxMessage(ctx context.Context, dom *demoDomain) ([]byte, error) {
	u, err := dom.store.UserByAddress(ctx, dom.user)
	if err != nil {
		return nil, err
	}
	in, err := dom.store.MailboxByName(ctx, u.ID, "INBOX")
	if err != nil {
		return nil, err
	}
	msgs, err := dom.store.Messages(ctx, in.ID, nil)
	if err != nil {
		return nil, err
	}
	if len(msgs) == 0 {
		return nil, fmt.Errorf("%s's INBOX is empty", dom.user)
	}
	return dom.store.ReadBody(ctx, msgs[len(msgs)-1].BodyID)
}

// pop3Read logs in over POP3, lists and retrieves the message (keeping
// it), marking each state change. The protocol lines come from the
// server's trace.
func (d *demo) pop3Read(dom *demoDomain) ([]byte, error) {
	d.out.note("-- state: AUTHORIZATION (the server greets; the client must identify itself)")
	conn, err := net.DialTimeout("tcp", dom.pop3Addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	c := textproto.NewConn(conn)
	cmd := func(line string) (string, error) {
		if line != "" {
			if err := c.PrintfLine("%s", line); err != nil {
				return "", err
			}
		}
		reply, err := c.ReadLine()
		if err != nil {
			return "", err
		}
		if !strings.HasPrefix(reply, "+OK") {
			return reply, fmt.Errorf("%s: %s", strings.Fields(line + " greeting")[0], reply)
		}
		return reply, nil
	}
	if _, err := cmd(""); err != nil {
		return nil, err
	}
	if _, err := cmd("USER " + dom.user); err != nil {
		return nil, err
	}
	if _, err := cmd("PASS " + dom.password); err != nil {
		return nil, err
	}
	d.out.note("-- state: TRANSACTION (the maildrop is locked; messages are numbered for this session)")
	for _, line := range []string{"STAT", "LIST", "UIDL", "RETR 1"} {
		if _, err := cmd(line); err != nil {
			return nil, err
		}
		if line != "STAT" {
			body, err := c.ReadDotBytes()
			if err != nil {
				return nil, err
			}
			if line == "RETR 1" {
				d.out.note("-- QUIT now enters UPDATE; nothing was marked with DELE, so the message stays")
				if _, err := cmd("QUIT"); err != nil {
					return nil, err
				}
				d.out.note("-- state: UPDATE done, connection closed")
				return bytes.ReplaceAll(body, []byte("\n"), []byte("\r\n")), nil
			}
		}
	}
	return nil, errors.New("no RETR")
}

// printKeep tells how to connect to the demo's servers with real clients:
// alice's login to submit, bob's to read, and commands ready to run.
func (d *demo) printKeep() {
	a, b := d.alpha, d.beta
	d.out.beginStep("The servers keep running (Ctrl-C stops them)")
	d.out.note("Both relays now run on their own: a message alice submits reaches bob within seconds.")
	d.out.note("alice's login (submission at %s, STARTTLS): %s  password %s", a.submission, a.user, a.password)
	d.out.note("bob's login (POP3 at %s, IMAP at %s): %s  password %s", b.pop3Addr, b.imapAddr, b.user, b.password)
	d.out.note("(the certificates are self-signed, so these commands do not check them, unlike alice's mail program in the demo, which trusts alpha's certificate and checks it)")
	d.out.note("Submit as alice:")
	d.out.note("  swaks --server %s --tls --auth PLAIN --auth-user %s --auth-password '%s' --from %s --to %s",
		a.submission, a.user, a.password, a.user, b.user)
	d.out.note("  python3 -c \"import smtplib, ssl; s=smtplib.SMTP('%s', %s); s.starttls(context=ssl._create_unverified_context()); s.login('%s', '%s'); s.sendmail('%s', ['%s'], 'Subject: by hand\\r\\n\\r\\nHello Bob\\r\\n'); s.quit()\"",
		hostOf(a.submission), portOf(a.submission), a.user, a.password, a.user, b.user)
	d.out.note("Read as bob:")
	d.out.note("  POP3:  python3 -c \"import poplib; p=poplib.POP3('%s', %s); p.user('%s'); p.pass_('%s'); print(p.stat())\"",
		hostOf(b.pop3Addr), portOf(b.pop3Addr), b.user, b.password)
	d.out.note("  POP3:  curl --user '%s:%s' pop3://%s/1", b.user, b.password, b.pop3Addr)
	d.out.note("  IMAP:  curl --user '%s:%s' 'imap://%s/INBOX;UID=1'", b.user, b.password, b.imapAddr)
	d.out.note("  IMAP:  mutt -f imap://%s@%s/INBOX   (mutt asks for bob's password)", strings.ReplaceAll(b.user, "@", "%40"), b.imapAddr)
	d.out.note("Write to bob's MX directly, as another server would (no login):")
	d.out.note("  swaks --server %s --to %s --from someone@example.org", b.mx, b.user)
}

// submissionTLS is the TLS configuration of a user's mail program for
// dom's submission port: it trusts dom's certificate (the self-signed one
// the demo generated into dom's data directory, as a user would install an
// organisation's certificate), checks the name mx.DOMAIN, and notes on tw
// what it checked. The check itself is crypto/tls's: the callback runs
// only once the chain and the name have been verified.
func (d *demo) submissionTLS(dom *demoDomain, tw io.Writer) (*tls.Config, error) {
	file := filepath.Join(dom.dir, selfSignedCert)
	pemData, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s's certificate: %w", dom.name, err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemData) {
		return nil, fmt.Errorf("%s's certificate %s: no PEM certificate", dom.name, file)
	}
	host := "mx." + dom.name
	return &tls.Config{
		RootCAs: roots, ServerName: host, MinVersion: tls.VersionTLS12,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || len(cs.VerifiedChains) == 0 {
				return fmt.Errorf("%s: no verified certificate", host)
			}
			c := cs.PeerCertificates[0]
			fmt.Fprintf(tw, "-- certificate check: the server shows %q (DNS names %s), issued by %q, valid until %s\n",
				c.Subject.CommonName, strings.Join(c.DNSNames, ", "), c.Issuer.CommonName, c.NotAfter.Format(time.DateOnly))
			fmt.Fprintf(tw, "-- verified: signed by a certificate alice's mail program trusts (%s's own, installed from %s) and valid for the name %s; only now does it send the password\n",
				dom.name, selfSignedCert, host)
			return nil
		},
	}, nil
}

func hostOf(addr string) string { h, _, _ := net.SplitHostPort(addr); return h }
func portOf(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

// traceWriter turns the lines of an smtpTrace ("C: ...", "S: ...",
// "-- note") into demo events.
type traceWriter struct {
	out  *demoOut
	part string
	buf  []byte
}

func (w *traceWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(w.buf[:i])
		w.buf = w.buf[i+1:]
		switch {
		case strings.HasPrefix(line, "C: "), strings.HasPrefix(line, "S: "):
			w.out.emit(event{Kind: "trace", Part: w.part, Dir: line[:1], Text: line[3:]})
		case line == "C:":
			w.out.emit(event{Kind: "trace", Part: w.part, Dir: "C", Text: ""})
		default:
			w.out.note("%s", strings.TrimPrefix(line, "-- "))
		}
	}
}

// headerField is one field of a message header, unfolded for display.
type headerField struct{ name, text string }

func headerFields(msg []byte) []headerField {
	var fields []headerField
	sc := bufio.NewScanner(bytes.NewReader(msg))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			break
		}
		if (line[0] == ' ' || line[0] == '\t') && len(fields) > 0 {
			fields[len(fields)-1].text += " " + strings.TrimSpace(line)
			continue
		}
		name, _, _ := strings.Cut(line, ":")
		fields = append(fields, headerField{name: name, text: line})
	}
	return fields
}

func headerNames(msg []byte) map[string]bool {
	names := map[string]bool{}
	for _, f := range headerFields(msg) {
		names[strings.ToLower(f.name)] = true
	}
	return names
}

func headerValue(msg []byte, name string) string {
	for _, f := range headerFields(msg) {
		if strings.EqualFold(f.name, name) {
			return strings.TrimSpace(f.text[len(f.name)+1:])
		}
	}
	return ""
}

// dropFields removes the named header fields (and their continuation lines).
func dropFields(msg []byte, names ...string) []byte {
	head, body, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
	var out bytes.Buffer
	dropping := false
	for _, line := range strings.Split(string(head), "\r\n") {
		if len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
			if !dropping {
				out.WriteString(line + "\r\n")
			}
			continue
		}
		name, _, _ := strings.Cut(line, ":")
		dropping = false
		for _, n := range names {
			if strings.EqualFold(name, n) {
				dropping = true
			}
		}
		if !dropping {
			out.WriteString(line + "\r\n")
		}
	}
	out.WriteString("\r\n")
	out.Write(body)
	return out.Bytes()
}

// sizeChange tells how a message grew from before to after: by how many
// bytes, and the header fields who added.
func sizeChange(before []byte, from string, after []byte, to string, who string) string {
	added := addedFields(before, after)
	return fmt.Sprintf("size: %d %s -> %d %s (+%d): %s %s", len(before), from, len(after), to,
		len(after)-len(before), who, strings.Join(added, ", "))
}

// addedFields names the header fields of after that before lacks, in
// order, a field added several times once with its count.
func addedFields(before, after []byte) []string {
	have := map[string]int{}
	for _, f := range headerFields(before) {
		have[strings.ToLower(f.name)]++
	}
	var names []string
	count := map[string]int{}
	for _, f := range headerFields(after) {
		key := strings.ToLower(f.name)
		if have[key] > 0 {
			have[key]--
			continue
		}
		if count[key] == 0 {
			names = append(names, f.name)
		}
		count[key]++
	}
	for i, n := range names {
		if c := count[strings.ToLower(n)]; c > 1 {
			names[i] = fmt.Sprintf("%s (%d)", n, c)
		}
	}
	return names
}

// stuffedLines counts the lines of msg that start with a dot: SMTP sends
// each with a second dot (RFC 5321 4.5.2).
func stuffedLines(msg []byte) int {
	n := 0
	if bytes.HasPrefix(msg, []byte(".")) {
		n++
	}
	return n + bytes.Count(msg, []byte("\n."))
}

// bodyOf is what follows a message's header.
func bodyOf(msg []byte) []byte {
	_, body, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
	return body
}

// imapRead logs in over IMAP, lists the mailboxes, selects INBOX and
// fetches the message's structure and its first part. The protocol lines
// come from the server's trace.
func (d *demo) imapRead(ctx context.Context, dom *demoDomain) error {
	conn, err := net.DialTimeout("tcp", dom.imapAddr, 10*time.Second)
	if err != nil {
		return err
	}
	conn.SetDeadline(time.Now().Add(time.Minute))
	// The server's trace skips literal contents: the client's reads show
	// them (demo_literal.go).
	literals := make(chan literal, 4)
	part := strings.TrimSuffix(dom.name, ".test") + " imap"
	d.out.showLiterals(part, literals)
	defer d.out.showLiterals("", nil)
	c := imapclient.New(&literalTap{Conn: conn, found: literals, full: d.showBody}, nil)
	defer c.Close()
	if err := c.Login(dom.user, dom.password).Wait(); err != nil {
		return fmt.Errorf("LOGIN: %w", err)
	}
	d.out.note("-- authenticated: the mail stays on the server, in mailboxes")
	if _, err := c.List("", "*", nil).Collect(); err != nil {
		return fmt.Errorf("LIST: %w", err)
	}
	if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		return fmt.Errorf("EXAMINE INBOX: %w", err)
	}
	d.out.note("-- selected INBOX; BODYSTRUCTURE tells the client the MIME parts without downloading them")
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{
		BodyStructure: &imap.FetchItemBodyStructure{Extended: true},
	}).Collect()
	if err != nil || len(msgs) != 1 || msgs[0].BodyStructure == nil {
		return fmt.Errorf("FETCH BODYSTRUCTURE: %d messages, %v", len(msgs), err)
	}
	msgs[0].BodyStructure.Walk(func(path []int, part imap.BodyStructure) bool {
		num := "(whole message)"
		if len(path) > 0 {
			num = strings.Trim(strings.ReplaceAll(fmt.Sprint(path), " ", "."), "[]")
		}
		desc := part.MediaType()
		if sp, ok := part.(*imap.BodyStructureSinglePart); ok {
			desc += fmt.Sprintf(", %d octets", sp.Size)
			if name := sp.Filename(); name != "" {
				desc += ", file " + name
			}
		}
		d.out.note("   part %s: %s", num, desc)
		return true
	})
	d.out.note("-- now only part 1, the text, as a client shows a message before its attachments")
	section := &imap.FetchItemBodySection{Part: []int{1}, Peek: true}
	msgs, err = c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil || len(msgs) != 1 {
		return fmt.Errorf("FETCH BODY.PEEK[1]: %d messages, %v", len(msgs), err)
	}
	if text := msgs[0].FindBodySection(section); len(text) == 0 {
		return errors.New("FETCH BODY.PEEK[1] returned nothing")
	}
	if err := c.Logout().Wait(); err != nil {
		return fmt.Errorf("LOGOUT: %w", err)
	}
	return nil
}
