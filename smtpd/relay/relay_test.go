package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/storetest"
	"github.com/postern/postern/smtpd/msgauth/msgauthtest"
)

// report is a delivery status notification found in an INBOX.
type report struct {
	header  message.Header
	text    string
	status  []map[string]string // per-message group, then one per recipient
	partial string              // the returned message or header
}

// parseReport reads a DSN as the relay composed it.
func parseReport(t testing.TB, msg []byte) report {
	t.Helper()
	e, err := message.Read(bytes.NewReader(msg))
	if err != nil {
		t.Fatalf("parse report: %v\n%s", err, msg)
	}
	var rep report
	rep.header = e.Header
	if mt, params, _ := e.Header.ContentType(); mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("not a delivery status report: %s %v\n%s", mt, params, msg)
	}
	mr := e.MultipartReader()
	for i := 0; ; i++ {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p.Body)
		switch i {
		case 0:
			rep.text = string(b)
		case 1:
			for _, g := range strings.Split(strings.TrimSpace(string(b)), "\r\n\r\n") {
				fields := map[string]string{}
				var last string
				for _, line := range strings.Split(g, "\r\n") {
					if strings.HasPrefix(line, " ") {
						fields[last] += line
						continue
					}
					k, v, _ := strings.Cut(line, ":")
					fields[k], last = strings.TrimSpace(v), k
				}
				rep.status = append(rep.status, fields)
			}
		case 2:
			rep.partial = string(b)
		}
	}
	if len(rep.status) < 2 {
		t.Fatalf("report without recipient fields:\n%s", msg)
	}
	return rep
}

// onlyReport returns the one report in alice's INBOX.
func onlyReport(t testing.TB, st *mailstore.Store) report {
	t.Helper()
	msgs := inbox(t, st, "alice@alpha.test")
	if len(msgs) != 1 {
		t.Fatalf("alice has %d messages, want 1 report", len(msgs))
	}
	return parseReport(t, msgs[0])
}

func headerOrder(msg []byte, name string) []string {
	var out []string
	for _, line := range strings.Split(string(msg), "\r\n") {
		if line == "" {
			break
		}
		if strings.HasPrefix(strings.ToLower(line), strings.ToLower(name)+":") {
			out = append(out, line)
		}
	}
	return out
}

// The whole path between two servers: alice@alpha.test's message, queued
// by alpha, found through beta.test's MX record, sent over STARTTLS, and
// stored by beta in bob's INBOX with both Received fields in order.
//
// Beta is a go-smtp server over a second mailstore standing in for
// Postern's smtpd, which is written separately; once smtpd lands this
// should become two Postern instances.
func TestTwoInstances(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	cert, pool := selfSigned(t, "mx.beta.test")
	beta := newStore(t, nil, []string{"beta.test"}, "bob@beta.test")
	mx := newTestMX(t, "127.0.0.1:0", withTLS(&tls.Config{Certificates: []tls.Certificate{cert}}))
	mx.store = beta
	d.Add(t, "beta.test. MX 10 mx.beta.test.", "mx.beta.test. A 127.0.0.1")

	a := newAlpha(t, d, mx.addr.Port(), func(c *Config) { c.TLS = &tls.Config{RootCAs: pool} })
	a.relay.cfg.Trace = true
	sent := submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "two instances")
	a.runOnce(t)

	if q := queue(t, a.store); len(q) != 0 {
		t.Fatalf("queue after delivery: %+v", q)
	}
	msgs := inbox(t, beta, "bob@beta.test")
	if len(msgs) != 1 {
		t.Fatalf("bob has %d messages", len(msgs))
	}
	got := msgs[0]
	if !bytes.HasSuffix(got, sent) {
		t.Errorf("bob's message is not alpha's message under one more field:\n%s", got)
	}
	rcvd := headerOrder(got, "Received")
	if len(rcvd) != 2 || !strings.Contains(rcvd[0], "by mx.beta.test with ESMTPS") || !strings.Contains(rcvd[1], "by mail.alpha.test") {
		t.Errorf("Received fields, newest first: %q", rcvd)
	}
	// Only our host name in EHLO, before and after STARTTLS.
	gs := mx.greetingsSeen()
	if len(gs) != 2 || gs[0] != (greeting{"mail.alpha.test", false}) || gs[1] != (greeting{"mail.alpha.test", true}) {
		t.Errorf("greetings %+v, want mail.alpha.test before and after TLS", gs)
	}
	log := a.log.String()
	for _, want := range []string{"verified=true", "msg=delivered", "queue_id=1", "to=bob@beta.test",
		`line="EHLO mail.alpha.test"`, `line=STARTTLS`, "octets of message data>"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, "Hello from alpha") {
		t.Errorf("trace shows the message content:\n%s", log)
	}
}

// A certificate that does not verify does not stop delivery; the log says.
func TestTLSUnverifiedStillEncrypts(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	cert, _ := selfSigned(t, "other.name")
	mx := newTestMX(t, "127.0.0.1:0", withTLS(&tls.Config{Certificates: []tls.Certificate{cert}}))
	d.Add(t, "beta.test. MX 10 mx.beta.test.", "mx.beta.test. A 127.0.0.1")
	a := newAlpha(t, d, mx.addr.Port())
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "unverified")
	a.runOnce(t)
	got := mx.received()
	if len(got) != 1 || !got[0].tls {
		t.Fatalf("received %+v, want one message over TLS", got)
	}
	if !strings.Contains(a.log.String(), "verified=false") {
		t.Errorf("log does not record the unverified certificate:\n%s", a.log)
	}
}

// A failed handshake is recorded and the same server is used without TLS.
func TestTLSHandshakeFailureFallsBack(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	// A TLS configuration without a certificate: STARTTLS is offered, and
	// every handshake fails.
	mx := newTestMX(t, "127.0.0.1:0", withTLS(&tls.Config{}))
	d.Add(t, "beta.test. MX 10 mx.beta.test.", "mx.beta.test. A 127.0.0.1")
	a := newAlpha(t, d, mx.addr.Port())
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "fallback")
	a.runOnce(t)
	got := mx.received()
	if len(got) != 1 || got[0].tls {
		t.Fatalf("received %+v, want one message without TLS", got)
	}
	if !strings.Contains(a.log.String(), `msg="tls handshake" proto=relay result=fail`) {
		t.Errorf("log:\n%s", a.log)
	}
	// The next delivery goes straight to plaintext.
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "fallback again")
	before, _ := mx.stats()
	a.runOnce(t)
	if after, _ := mx.stats(); after-before != 1 {
		t.Errorf("%d connections for the second message, want 1", after-before)
	}
}

func TestDeadFirstMXFallsOver(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	ln := listenAny(t)
	port := netip.MustParseAddrPort(ln.Addr().String()).Port()
	mx := startTestMX(t, ln)
	// mx1 at 127.0.0.3 has nothing listening on the port.
	d.Add(t,
		"beta.test. MX 10 mx1.beta.test.",
		"beta.test. MX 20 mx2.beta.test.",
		"mx1.beta.test. A 127.0.0.3",
		"mx2.beta.test. A 127.0.0.1",
	)
	a := newAlpha(t, d, port)
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "fall over")
	a.runOnce(t)
	if got := mx.received(); len(got) != 1 {
		t.Fatalf("second MX got %d messages", len(got))
	}
	if q := queue(t, a.store); len(q) != 0 {
		t.Errorf("queue: %+v", q)
	}
	if log := a.log.String(); !strings.Contains(log, "mail exchanger unusable") || !strings.Contains(log, "host=mx1.beta.test") {
		t.Errorf("log does not show the dead MX:\n%s", log)
	}
}

// All MX hosts down: the entry is retried with growing delays (the clock
// is driven by the test), and delivered once a host is up.
func TestAllDownThenRetried(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	ln := listenAny(t)
	port := netip.MustParseAddrPort(ln.Addr().String()).Port()
	ln.Close() // nothing listens until later
	d.Add(t,
		"beta.test. MX 10 mx1.beta.test.",
		"beta.test. MX 20 mx2.beta.test.",
		"mx1.beta.test. A 127.0.0.1",
		"mx2.beta.test. A 127.0.0.3",
	)
	a := newAlpha(t, d, port)
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "patience")

	var waits []time.Duration
	for i := 0; i < 3; i++ {
		a.runOnce(t)
		q := queue(t, a.store)
		if len(q) != 1 || q[0].Attempts != i+1 {
			t.Fatalf("attempt %d: queue %+v", i+1, q)
		}
		if !strings.Contains(q[0].LastError, "connect to") {
			t.Errorf("last error %q", q[0].LastError)
		}
		waits = append(waits, q[0].NextAttempt.Sub(a.clock.Now()))
		// Not due before its time: nothing happens.
		a.clock.Advance(waits[i] - time.Second)
		a.runOnce(t)
		if q := queue(t, a.store); q[0].Attempts != i+1 {
			t.Fatalf("tried before its next attempt: %+v", q)
		}
		a.clock.Advance(time.Second)
	}
	for i, want := range []time.Duration{5 * time.Minute, 10 * time.Minute, 20 * time.Minute} {
		if waits[i] < want*9/10 || waits[i] > want*11/10 {
			t.Errorf("wait %d is %v, want %v ± 10%%", i+1, waits[i], want)
		}
	}
	mx := startTestMX(t, listenOn(t, "127.0.0.1", port))
	a.runOnce(t)
	if got := mx.received(); len(got) != 1 {
		t.Fatalf("MX got %d messages once up", len(got))
	}
	if q := queue(t, a.store); len(q) != 0 {
		t.Errorf("queue: %+v", q)
	}
	if msgs := inbox(t, a.store, "alice@alpha.test"); len(msgs) != 0 {
		t.Errorf("alice got %d messages (no report was due)", len(msgs))
	}
}

// Each recipient gets its own outcome: a 550 for one does not stop the
// others, and its sender gets a report with the server's status.
func TestRecipientRefusedBounces(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	mx := newTestMX(t, "127.0.0.1:0")
	mx.setRcptErr("nobody@beta.test", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user here"})
	d.Add(t, "beta.test. MX 10 mx.beta.test.", "mx.beta.test. A 127.0.0.1")
	a := newAlpha(t, d, mx.addr.Port())
	submit(t, a.store, envelope("alice@alpha.test", "nobody@beta.test", "bob@beta.test"), "partly")
	a.runOnce(t)

	got := mx.received()
	if len(got) != 1 || strings.Join(got[0].to, ",") != "bob@beta.test" {
		t.Fatalf("received %+v, want one message for bob", got)
	}
	if q := queue(t, a.store); len(q) != 0 {
		t.Fatalf("queue: %+v", q)
	}
	rep := onlyReport(t, a.store)
	if len(rep.status) != 2 {
		t.Fatalf("report on %d recipients, want 1 (nobody)", len(rep.status)-1)
	}
	r := rep.status[1]
	for k, want := range map[string]string{
		"Final-Recipient": "rfc822;nobody@beta.test",
		"Action":          "failed",
		"Status":          "5.1.1",
		"Remote-MTA":      "dns; mx.beta.test",
		"Diagnostic-Code": "smtp; 550 5.1.1 No such user here",
	} {
		if r[k] != want {
			t.Errorf("%s = %q, want %q", k, r[k], want)
		}
	}
	if rep.status[0]["Reporting-MTA"] != "dns; mail.alpha.test" {
		t.Errorf("per-message fields %v", rep.status[0])
	}
	if !strings.Contains(rep.partial, "Subject: partly") || strings.Contains(rep.partial, "Hello from alpha") {
		t.Errorf("returned headers:\n%s", rep.partial)
	}
	if rep.header.Get("To") != "<alice@alpha.test>" {
		t.Errorf("report To %q", rep.header.Get("To"))
	}
	// One "relay attempt" line per recipient, in the log vocabulary.
	log := a.log.String()
	for _, want := range []string{
		`msg="relay attempt" result=bounced queue_id=`,
		`msg="relay attempt" result=delivered queue_id=`,
	} {
		if !regexp.MustCompile(regexp.QuoteMeta(want) + `\d+ domain=beta\.test mx=mx\.beta\.test duration=\S+`).MatchString(log) {
			t.Errorf("log lacks %s:\n%s", want, log)
		}
	}
	if !regexp.MustCompile(`msg=delivered .* latency=\S+`).MatchString(log) {
		t.Errorf("delivered line without latency:\n%s", log)
	}
}

// A message from <> is never reported on: the failure is logged and the
// entry dropped.
func TestNullSenderNeverBounced(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	mx := newTestMX(t, "127.0.0.1:0")
	mx.setRcptErr("nobody@beta.test", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"})
	d.Add(t, "beta.test. MX 10 mx.beta.test.", "mx.beta.test. A 127.0.0.1")
	a := newAlpha(t, d, mx.addr.Port())
	submit(t, a.store, envelope("", "nobody@beta.test"), "a bounce itself")
	a.runOnce(t)
	if q := queue(t, a.store); len(q) != 0 {
		t.Fatalf("queue: %+v", q)
	}
	if msgs := inbox(t, a.store, "alice@alpha.test"); len(msgs) != 0 {
		t.Fatalf("alice got %d messages", len(msgs))
	}
	if !strings.Contains(a.log.String(), "no report: null sender") {
		t.Errorf("log:\n%s", a.log)
	}
}

// Failures found in DNS, each with its RFC 3463 status.
func TestRoutingFailures(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	d.Add(t,
		"nullmx.test. MX 0 .",
		"loop.test. MX 10 mail.alpha.test.",
		"mail.alpha.test. A 127.0.0.9",
		"loopaddr.test. MX 10 mx.loopaddr.test.",
		"mx.loopaddr.test. A 127.0.0.8",
		"noaddr.test. MX 10 mx.noaddr.test.",
	)
	d.Exists("mx.noaddr.test")
	tests := []struct {
		domain, status, diag string
	}{
		{"nullmx.test", "5.1.10", "null MX"},
		{"nosuch.test", "5.1.2", "NXDOMAIN"},
		{"loop.test", "5.4.6", "loops back"},
		{"loopaddr.test", "5.4.6", "loops back"},
		{"noaddr.test", "5.4.4", "has an address"},
	}
	for _, tt := range tests {
		t.Run(tt.domain, func(t *testing.T) {
			a := newAlpha(t, d, 2525, func(c *Config) {
				c.LocalAddrs = []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:25"), netip.MustParseAddrPort("127.0.0.8:2525")}
			})
			submit(t, a.store, envelope("alice@alpha.test", "bob@"+tt.domain), tt.domain)
			a.runOnce(t)
			if q := queue(t, a.store); len(q) != 0 {
				t.Fatalf("queue: %+v", q)
			}
			rep := onlyReport(t, a.store)
			r := rep.status[1]
			if r["Status"] != tt.status || r["Action"] != "failed" || !strings.Contains(r["Diagnostic-Code"], tt.diag) ||
				!strings.HasPrefix(r["Diagnostic-Code"], "X-Postern;") {
				t.Errorf("report fields %v, want status %s and %q", r, tt.status, tt.diag)
			}
		})
	}
}

// An MX of lower preference than ourselves is still used; we and those
// after us are not (RFC 5321 5.1).
func TestSelfInMXListTruncates(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	mx := newTestMX(t, "127.0.0.1:0")
	d.Add(t,
		"beta.test. MX 10 mx.beta.test.",
		"beta.test. MX 20 mail.alpha.test.",
		"beta.test. MX 30 backup.beta.test.",
		"mx.beta.test. A 127.0.0.1",
		"mail.alpha.test. A 127.0.0.9",
		"backup.beta.test. A 127.0.0.10",
	)
	a := newAlpha(t, d, mx.addr.Port())
	hosts, att := a.relay.route(context.Background(), "beta.test")
	if att.failed() || len(hosts) != 1 || hosts[0].Host != "mx.beta.test" {
		t.Fatalf("route %+v %v, want only mx.beta.test", hosts, att)
	}
}

func TestImplicitMX(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	mx := newTestMX(t, "127.0.0.1:0")
	d.Add(t, "beta.test. A 127.0.0.1")
	a := newAlpha(t, d, mx.addr.Port())
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "implicit")
	a.runOnce(t)
	if got := mx.received(); len(got) != 1 {
		t.Fatalf("received %d messages through the implicit MX", len(got))
	}
}

// SERVFAIL is temporary: the entry waits.
func TestDNSFailureDefers(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	d.Fail("beta.test")
	a := newAlpha(t, d, 2525)
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "dns trouble")
	a.runOnce(t)
	q := queue(t, a.store)
	if len(q) != 1 || q[0].Attempts != 1 || !strings.Contains(q[0].LastError, "SERVFAIL") {
		t.Fatalf("queue %+v", q)
	}
}

// Temporary failures go on until GiveUpAfter; after DelayWarning the
// sender is told once; at the end the message fails with a report.
func TestDelayWarningThenGiveUp(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	mx := newTestMX(t, "127.0.0.1:0")
	mx.setRcptErr("bob@beta.test", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "Mailbox busy"})
	d.Add(t, "beta.test. MX 10 mx.beta.test.", "mx.beta.test. A 127.0.0.1")
	a := newAlpha(t, d, mx.addr.Port())
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "slow")

	warnings := 0
	for attempt := 1; ; attempt++ {
		if attempt > 60 {
			t.Fatal("never given up")
		}
		a.runOnce(t)
		q := queue(t, a.store)
		msgs := inbox(t, a.store, "alice@alpha.test")
		if len(q) == 0 {
			if len(msgs) != 2 {
				t.Fatalf("after giving up alice has %d messages, want the warning and the failure", len(msgs))
			}
			rep := parseReport(t, msgs[1])
			r := rep.status[1]
			if r["Action"] != "failed" || r["Status"] != "4.2.1" || !strings.Contains(r["Diagnostic-Code"], "451 4.2.1 Mailbox busy") {
				t.Errorf("final report %v", r)
			}
			if age := a.clock.Now().Sub(storetest.NewClock().Now()); age < 5*24*time.Hour || age > 5*24*time.Hour+time.Hour {
				t.Errorf("given up at age %v", age)
			}
			break
		}
		if len(msgs) > warnings {
			warnings = len(msgs)
			rep := parseReport(t, msgs[0])
			r := rep.status[1]
			if r["Action"] != "delayed" || r["Status"] != "4.2.1" || r["Will-Retry-Until"] != "Thu, 06 Mar 2025 10:00:00 +0000" {
				t.Errorf("delay report %v", r)
			}
			if age := a.clock.Now().Sub(storetest.NewClock().Now()); age < 4*time.Hour {
				t.Errorf("delay report at age %v", age)
			}
			if !q[0].DelayWarned {
				t.Errorf("last error %q lacks the mark", q[0].LastError)
			}
		}
		if warnings > 1 {
			t.Fatalf("%d delay reports", warnings)
		}
		a.clock.Advance(q[0].NextAttempt.Sub(a.clock.Now()))
	}
	if warnings != 1 {
		t.Errorf("%d delay reports, want 1", warnings)
	}
}

// NOTIFY=NEVER and NOTIFY=SUCCESS (RFC 3461), and the parameters passed on
// to a server with DSN.
func TestNotify(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	d.Add(t, "beta.test. MX 10 mx.beta.test.", "mx.beta.test. A 127.0.0.1")

	t.Run("never", func(t *testing.T) {
		mx := newTestMX(t, "127.0.0.1:0")
		mx.setRcptErr("nobody@beta.test", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No"})
		a := newAlpha(t, d, mx.addr.Port())
		env := envelope("alice@alpha.test", "nobody@beta.test")
		env.Recipients[0].Notify = "NEVER"
		submit(t, a.store, env, "never")
		a.runOnce(t)
		if q, msgs := queue(t, a.store), inbox(t, a.store, "alice@alpha.test"); len(q) != 0 || len(msgs) != 0 {
			t.Errorf("queue %d, reports %d; want none", len(q), len(msgs))
		}
	})
	t.Run("success without DSN", func(t *testing.T) {
		mx := newTestMX(t, "127.0.0.1:0")
		a := newAlpha(t, d, mx.addr.Port())
		env := envelope("alice@alpha.test", "bob@beta.test")
		env.Recipients[0].Notify = "SUCCESS,FAILURE"
		submit(t, a.store, env, "success")
		a.runOnce(t)
		rep := onlyReport(t, a.store)
		if r := rep.status[1]; r["Action"] != "relayed" || r["Status"] != "2.0.0" {
			t.Errorf("report %v", r)
		}
	})
	t.Run("passed on", func(t *testing.T) {
		mx := newTestMX(t, "127.0.0.1:0", withDSN())
		a := newAlpha(t, d, mx.addr.Port())
		env := envelope("alice@alpha.test", "bob@beta.test")
		env.Recipients[0].Notify = "SUCCESS,DELAY"
		env.Recipients[0].ORcpt = "rfc822;Bob@Beta.test"
		env.EnvID, env.Ret = "ENV-42", "HDRS"
		submit(t, a.store, env, "passed on")
		a.runOnce(t)
		got := mx.received()
		if len(got) != 1 {
			t.Fatalf("received %d", len(got))
		}
		if got[0].mail.EnvelopeID != "ENV-42" || got[0].mail.Return != smtp.DSNReturnHeaders {
			t.Errorf("MAIL options %+v", got[0].mail)
		}
		ro := got[0].rcpt[0]
		if fmt.Sprint(ro.Notify) != "[SUCCESS DELAY]" || ro.OriginalRecipient != "Bob@Beta.test" {
			t.Errorf("RCPT options %+v", ro)
		}
		if msgs := inbox(t, a.store, "alice@alpha.test"); len(msgs) != 0 {
			t.Errorf("a server with DSN reports itself; alice got %d", len(msgs))
		}
	})
}

// What the server says it takes is respected before MAIL FROM.
func TestServerLimits(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	d.Add(t, "beta.test. MX 10 mx.beta.test.", "mx.beta.test. A 127.0.0.1")
	tests := []struct {
		name   string
		opts   []mxOption
		to     string
		body   string
		status string
	}{
		{"size", []mxOption{withMaxBytes(300)}, "bob@beta.test", strings.Repeat("long line of text\r\n", 50), "5.3.4"},
		{"smtputf8 address", []mxOption{withoutUTF8()}, "j\u00f6rg@beta.test", "hi", "5.6.7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mx := newTestMX(t, "127.0.0.1:0", tt.opts...)
			a := newAlpha(t, d, mx.addr.Port())
			msg := "From: alice@alpha.test\r\nTo: bob@beta.test\r\nSubject: limits\r\n\r\n" + tt.body + "\r\n"
			if _, err := a.store.DeliverEnvelope(context.Background(), envelope("alice@alpha.test", tt.to), []byte(msg)); err != nil {
				t.Fatal(err)
			}
			a.runOnce(t)
			if got := mx.received(); len(got) != 0 {
				t.Fatalf("server got %d messages", len(got))
			}
			rep := onlyReport(t, a.store)
			if r := rep.status[1]; r["Status"] != tt.status {
				t.Errorf("report %v, want status %s", r, tt.status)
			}
		})
	}
	// With SMTPUTF8 offered, a non-ASCII address goes, with the parameter.
	mx := newTestMX(t, "127.0.0.1:0")
	a := newAlpha(t, d, mx.addr.Port())
	submit(t, a.store, envelope("alice@alpha.test", "j\u00f6rg@beta.test"), "utf8")
	a.runOnce(t)
	if got := mx.received(); len(got) != 1 || !got[0].mail.UTF8 {
		t.Fatalf("received %+v, want one message with SMTPUTF8", got)
	}
}

// Replies to DATA and to the message apply to every accepted recipient;
// one connection carries the next message after a refused one.
func TestDataRefusedAndSessionReuse(t *testing.T) {
	d, mx := betaMX(t)
	a := newAlpha(t, d, mx.addr.Port(), func(c *Config) { c.MaxConnsPerDomain = 1 })
	mx.setRcptErr("nobody@beta.test", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No"})
	submit(t, a.store, envelope("alice@alpha.test", "nobody@beta.test"), "first refused")
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test", "carol@beta.test"), "second fine")
	a.runOnce(t)
	if got := mx.received(); len(got) != 1 || len(got[0].to) != 2 {
		t.Fatalf("received %+v", got)
	}
	if conns, _ := mx.stats(); conns != 1 {
		t.Errorf("%d connections for two messages, want 1", conns)
	}

	mx.mu.Lock()
	mx.dataErr = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Content rejected"}
	mx.mu.Unlock()
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test", "carol@beta.test"), "rejected content")
	a.runOnce(t)
	msgs := inbox(t, a.store, "alice@alpha.test")
	if len(msgs) != 2 {
		t.Fatalf("alice has %d messages, want 2 reports", len(msgs))
	}
	rep := parseReport(t, msgs[1])
	if len(rep.status) != 3 || rep.status[1]["Status"] != "5.6.0" || rep.status[2]["Status"] != "5.6.0" {
		t.Errorf("report on the refused content: %v", rep.status)
	}
}

// A per-destination limit on parallel connections, and many messages per
// connection: 200 queued messages to one domain go over few connections.
func TestManyMessagesFewConnections(t *testing.T) {
	d, mx := betaMX(t)
	a := newAlpha(t, d, mx.addr.Port(), func(c *Config) { c.MaxConnsPerDomain = 3 })
	const n = 200
	for i := range n {
		submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), fmt.Sprintf("message %d", i))
	}
	a.runOnce(t)
	if got := mx.received(); len(got) != n {
		t.Fatalf("received %d messages, want %d", len(got), n)
	}
	conns, maxActive := mx.stats()
	if maxActive > 3 || maxActive < 2 {
		t.Errorf("%d connections at once, want 2 or 3 (limit 3)", maxActive)
	}
	if conns > 3 {
		t.Errorf("%d connections for %d messages, want at most 3", conns, n)
	}
	if q := queue(t, a.store); len(q) != 0 {
		t.Errorf("%d entries left", len(q))
	}
}

// The queue is in the mailstore: a relay on a reopened store finds it.
func TestQueueSurvivesRestart(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	ln := listenAny(t)
	port := netip.MustParseAddrPort(ln.Addr().String()).Port()
	ln.Close()
	d.Add(t, "beta.test. MX 10 mx.beta.test.", "mx.beta.test. A 127.0.0.1")
	clock := storetest.NewClock()
	path := t.TempDir() + "/postern.db"
	st := openStore(t, path, clock)
	st.AddDomain(context.Background(), "alpha.test")
	st.AddUser(context.Background(), "alice@alpha.test", "pw")
	a := newAlphaOn(t, st, clock, d, port)
	submit(t, st, envelope("alice@alpha.test", "bob@beta.test"), "durable")
	a.runOnce(t)
	if q := queue(t, st); len(q) != 1 || q[0].Attempts != 1 {
		t.Fatalf("queue before restart %+v", q)
	}
	st.Close()

	st2 := openStore(t, path, clock)
	mx := startTestMX(t, listenOn(t, "127.0.0.1", port))
	clock.Advance(time.Hour)
	b := newAlphaOn(t, st2, clock, d, port)
	b.runOnce(t)
	if got := mx.received(); len(got) != 1 {
		t.Fatalf("after restart the MX got %d messages", len(got))
	}
	if q := queue(t, st2); len(q) != 0 {
		t.Errorf("queue after delivery %+v", q)
	}
}

// Run delivers on Kick and stops with its context.
func TestRunAndKick(t *testing.T) {
	d, mx := betaMX(t)
	a := newAlpha(t, d, mx.addr.Port(), func(c *Config) { c.PollInterval = time.Hour })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.relay.Run(ctx) }()
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "kicked")
	a.relay.Kick()
	deadline := time.Now().Add(10 * time.Second)
	for len(mx.received()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("Kick did not deliver")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop")
	}
}

// Stopping the relay in the middle of a transfer loses nothing and does
// not count as an attempt.
func TestStopDuringDelivery(t *testing.T) {
	d, mx := betaMX(t)
	a := newAlpha(t, d, mx.addr.Port())
	inData := make(chan struct{})
	release := make(chan struct{})
	mx.onData = func() {
		close(inData)
		<-release
	}
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "interrupted")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.relay.RunOnce(ctx) }()
	<-inData
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	close(release)
	q := queue(t, a.store)
	if len(q) != 1 || q[0].Attempts != 0 {
		t.Fatalf("queue after the stop %+v, want the entry untouched", q)
	}
	mx.mu.Lock()
	mx.onData = nil
	mx.mu.Unlock()
	a.runOnce(t)
	if q := queue(t, a.store); len(q) != 0 {
		t.Fatalf("queue %+v", q)
	}
	// The server saw the first transfer cut short (no reply was read), then
	// the message again: at least once, never lost.
	if got := mx.received(); len(got) < 1 {
		t.Fatalf("received %d", len(got))
	}
}

func TestTransactions(t *testing.T) {
	created := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	e := func(id int64, sender, rcpt string, body int64) mailstore.QueueEntry {
		return mailstore.QueueEntry{ID: id, Sender: sender, Recipient: rcpt, BodyID: body, Created: created}
	}
	entries := []mailstore.QueueEntry{
		e(1, "a@x", "b@d", 1), e(2, "a@x", "c@d", 1), e(3, "a@x", "B@d", 1), // B@d again: its own transaction
		e(4, "z@x", "b@d", 1), // another sender
		e(5, "a@x", "b@d", 2), // another body
	}
	for i := range 150 {
		entries = append(entries, e(int64(100+i), "big@x", fmt.Sprintf("r%d@d", i), 3))
	}
	txs := transactions("d", entries)
	var got []string
	for _, tx := range txs {
		got = append(got, fmt.Sprintf("%s/%d/%d", tx.first().Sender, tx.first().BodyID, len(tx.entries)))
	}
	want := "a@x/1/2 a@x/1/1 z@x/1/1 a@x/2/1 big@x/3/100 big@x/3/50"
	if strings.Join(got, " ") != want {
		t.Errorf("transactions %s, want %s", strings.Join(got, " "), want)
	}
}

func TestNextAttempt(t *testing.T) {
	r := New(Config{Resolver: NewResolver("127.0.0.1:1")}, nil)
	now := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		attempts int
		want     time.Duration
	}{{0, 5 * time.Minute}, {1, 10 * time.Minute}, {3, 40 * time.Minute}, {6, 4 * time.Hour}, {40, 4 * time.Hour}} {
		for range 20 {
			got := r.nextAttempt(mailstore.QueueEntry{Attempts: tt.attempts, Created: now}, now).Sub(now)
			if got < tt.want*9/10 || got > tt.want*11/10 {
				t.Fatalf("after %d attempts: wait %v, want %v ± 10%%", tt.attempts, got, tt.want)
			}
		}
	}
	// Never past the time it is given up, so that it gets a last try then.
	old := mailstore.QueueEntry{Attempts: 30, Created: now.Add(-5*24*time.Hour + time.Minute)}
	if got := r.nextAttempt(old, now); !got.Equal(old.Created.Add(5 * 24 * time.Hour)) {
		t.Errorf("next attempt %v, want the give-up time", got)
	}
}

func TestParseNotify(t *testing.T) {
	for _, tt := range []struct {
		in             string
		failure, delay bool
		success        bool
	}{
		{"", true, true, false},
		{"NEVER", false, false, false},
		{"SUCCESS", false, false, true},
		{"failure,delay", true, true, false},
		{"FAILURE", true, false, false},
	} {
		n := parseNotify(tt.in)
		if n.wantsFailure() != tt.failure || n.wantsDelay() != tt.delay || n.success != tt.success {
			t.Errorf("parseNotify(%q) = %+v", tt.in, n)
		}
	}
}

// dialRecorder checks that the relay dials only what DNS gave, at Port.
func TestDialsConfiguredPort(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	d.Add(t, "beta.test. MX 10 mx.beta.test.", "mx.beta.test. A 127.0.0.1")
	var dialled []string
	a := newAlpha(t, d, 2526, func(c *Config) {
		c.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
			dialled = append(dialled, network+" "+addr)
			return nil, fmt.Errorf("refused by the test")
		}
	})
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "dial")
	a.runOnce(t)
	if strings.Join(dialled, ",") != "tcp 127.0.0.1:2526" {
		t.Errorf("dialled %v", dialled)
	}
}

// A server that sends an endless reply is cut off after maxReply octets:
// the entry is deferred, and the relay's memory does not follow the
// server's whim.
func TestEndlessReplyIsCut(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	ln := listenAny(t)
	port := netip.MustParseAddrPort(ln.Addr().String()).Port()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line := []byte("220-" + strings.Repeat("a", 990) + "\r\n")
		for total := 0; total < 16*maxReply; {
			n, err := c.Write(line)
			total += n
			if err != nil {
				break
			}
		}
	}()
	d.Add(t, "beta.test. MX 10 mx.beta.test.", "mx.beta.test. A 127.0.0.1")
	a := newAlpha(t, d, port)
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "endless")
	a.runOnce(t)
	ln.Close()
	q := queue(t, a.store)
	if len(q) != 1 || q[0].Attempts != 1 || !strings.Contains(q[0].LastError, "reply longer than") {
		t.Fatalf("queue after an endless reply: %+v", q)
	}
}

// Local parts that are not dot-atoms go out quoted, as RFC 5321 4.1.2
// wants: go-smtp's server hands them to us unquoted.
func TestQuotedLocalParts(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	ln := listenAny(t)
	port := netip.MustParseAddrPort(ln.Addr().String()).Port()
	mx := startTestMX(t, ln)
	d.Add(t, "beta.test. MX 10 mx.beta.test.", "mx.beta.test. A 127.0.0.1")
	a := newAlpha(t, d, port, func(c *Config) { c.Trace = true })
	// As smtpd stores them, unquoted.
	submit(t, a.store, envelope("john smith@alpha.test", "a@b@beta.test"), "quoted")
	a.runOnce(t)
	got := mx.received()
	if len(got) != 1 || got[0].from != "john smith@alpha.test" || len(got[0].to) != 1 || got[0].to[0] != "a@b@beta.test" {
		t.Fatalf("the MX received %+v", got)
	}
	log := a.log.String()
	if !strings.Contains(log, `MAIL FROM:<\"john smith\"@alpha.test>`) || !strings.Contains(log, `RCPT TO:<\"a@b\"@beta.test>`) {
		t.Errorf("the relay did not quote the local parts:\n%s", log)
	}
}

// An entry that expires while its sender's mailbox is full keeps its
// place until the failure report can be stored: the sender is told late
// rather than never.
func TestExpiredReportWaitsForRoom(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	ln := listenAny(t)
	port := netip.MustParseAddrPort(ln.Addr().String()).Port()
	ln.Close() // nothing ever listens
	d.Add(t, "beta.test. MX 10 mx.beta.test.", "mx.beta.test. A 127.0.0.1")
	a := newAlpha(t, d, port, func(c *Config) { c.DelayWarning = 0 })
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "into the void")
	ctx := context.Background()
	if err := a.store.SetQuota(ctx, "alice@alpha.test", 1); err != nil {
		t.Fatal(err)
	}
	a.clock.Advance(5*24*time.Hour + time.Minute)
	a.runOnce(t)
	if q := queue(t, a.store); len(q) != 1 {
		t.Fatalf("the entry went although its report could not be stored: %+v", q)
	}
	if err := a.store.SetQuota(ctx, "alice@alpha.test", 0); err != nil {
		t.Fatal(err)
	}
	a.clock.Advance(time.Hour)
	a.runOnce(t)
	if q := queue(t, a.store); len(q) != 0 {
		t.Fatalf("queue after the report could be stored: %+v", q)
	}
	msgs := inbox(t, a.store, "alice@alpha.test")
	if len(msgs) != 1 || !strings.Contains(string(msgs[0]), "Action: failed") {
		t.Fatalf("alice's INBOX: %d messages", len(msgs))
	}
}
