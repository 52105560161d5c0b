package main

// The scenarios of `postern demo -scenario NAME`.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/mime"
)

// maxStormHops bounds the mailstorm scenario: the hop limit (50 Received
// fields) must stop the loop well before.
const maxStormHops = 100

// scenario is one thing the demo can show.
type scenario struct {
	name, about string
	records     []string // extra DNS records
	quiet       bool     // relays do not trace their many sessions
	run         func(d *demo, ctx context.Context) error
}

func scenarios() []scenario {
	return []scenario{
		{name: "flow", about: "alice@alpha.test writes to bob@beta.test, who reads it over POP3 and IMAP (the default)",
			run: func(d *demo, ctx context.Context) error { return d.flow(ctx, 0) }},
		{name: "big-message", about: "the same with a 100 KiB attachment: a message over 64 KiB",
			run: func(d *demo, ctx context.Context) error { return d.flow(ctx, 100<<10) }},
		{name: "dead-mx", about: "beta.test's preferred MX is down: the relay falls back to the next preference",
			records: []string{"beta.test. 300 IN MX 5 mx1.beta.test.", "mx1.beta.test. 300 IN A 127.0.0.4"},
			run:     func(d *demo, ctx context.Context) error { return d.flow(ctx, 0) }},
		{name: "unknown-recipient", about: "a message to a user beta.test does not have comes back as an RFC 3464 report",
			run: (*demo).unknownRecipient},
		{name: "spoof", about: "a message forged as alice@alpha.test from an unauthorised host: beta refuses it (550 5.7.1) on alpha's DMARC record",
			run: (*demo).spoof},
		{name: "mailstorm", about: "two lists forward to each other; the Received hop limit stops the loop and the sender is told",
			quiet: true, run: (*demo).mailstorm},
		{name: "null-mx", about: "gamma.test publishes \"MX 0 .\" (RFC 7505): the relay refuses without connecting, and alice is told (5.1.10)",
			records: []string{gammaDomain + ". 300 IN MX 0 ."}, run: (*demo).nullMX},
		{name: "implicit-mx", about: "gamma.test has no MX, only an A record: the relay delivers to that address (RFC 5321 5.1)",
			records: []string{gammaDomain + ". 300 IN A 127.0.0.3"}, run: (*demo).implicitMX},
		{name: "bcc", about: "a blind copy: carol is in the envelope and not in the header (envelope is not header)",
			run: (*demo).bcc},
		{name: "pop3-update", about: "POP3's UPDATE state: DELE then QUIT removes, DELE then a dropped connection removes nothing; TOP shows the header only",
			run: (*demo).pop3Update},
		{name: "imap", about: "IMAP: \\Seen set by BODY[] and not by BODY.PEEK[]; UIDs against sequence numbers after an EXPUNGE",
			run: (*demo).imapSeen},
	}
}

func findScenario(name string) (scenario, bool) {
	for _, sc := range scenarios() {
		if sc.name == name {
			return sc, true
		}
	}
	return scenario{}, false
}

// demoAttachment is a binary attachment of n bytes, or none.
func demoAttachment(n int) []mime.Attachment {
	if n <= 0 {
		return nil
	}
	data := make([]byte, n)
	x := uint32(2463534242)
	for i := range data {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		data[i] = byte(x)
	}
	return []mime.Attachment{{Filename: "random.bin", ContentType: "application/octet-stream", Data: data}}
}

// submitPlain sends a short message from alice over alpha's submission
// port, traced.
func (d *demo) submitPlain(ctx context.Context, to, subject string) error {
	a := d.alpha
	msg, err := mime.Compose(mime.Draft{From: a.user, To: []string{to}, Subject: subject,
		Text: "Hello,\n\nthis is the postern demo.\n", Hostname: "alice-laptop.alpha.test"})
	if err != nil {
		return err
	}
	tw := &traceWriter{out: d.out, part: "alice client"}
	clientTLS, err := d.submissionTLS(a, tw)
	if err != nil {
		return err
	}
	reply, err := submit(ctx, submission{
		addr: a.submission, mode: tlsStartTLS, tls: clientTLS, helo: "alice-laptop.alpha.test",
		user: a.user, password: a.password, from: a.user, to: []string{to}, msg: msg, trace: tw,
	})
	if err != nil {
		return err
	}
	d.out.note("accepted: %s", reply)
	return nil
}

// showReport prints the delivery status part of the newest message in
// dom's user's INBOX and returns it.
func (d *demo) showReport(ctx context.Context) (string, error) {
	report, err := inboxMessage(ctx, d.alpha)
	if err != nil {
		return "", err
	}
	for _, f := range headerFields(report) {
		switch strings.ToLower(f.name) {
		case "from", "to", "subject", "content-type":
			d.out.note("%s", f.text)
		}
	}
	i := bytes.Index(report, []byte("message/delivery-status"))
	if i < 0 {
		return "", errors.New("the report has no message/delivery-status part")
	}
	d.out.note("...")
	status := report[i:]
	if j := bytes.Index(status, []byte("\r\n--")); j >= 0 {
		status = status[:j]
	}
	for _, line := range strings.Split(string(status), "\r\n") {
		d.out.note("| %s", line)
	}
	return string(status), nil
}

// unknownRecipient: alice writes to nobody@beta.test; beta's MX refuses
// the recipient, and alpha's relay reports the failure to alice.
func (d *demo) unknownRecipient(ctx context.Context) error {
	d.intro()
	d.out.beginStep("2. alice writes to nobody@beta.test, a user beta.test does not have")
	if err := d.submitPlain(ctx, "nobody@beta.test", "Is anybody there?"); err != nil {
		return fmt.Errorf("step 2, submission: %w", err)
	}
	d.out.beginStep("3. alpha's relay tries beta's MX, which refuses the recipient (550 5.1.1)")
	if err := d.alpha.relay.RunOnce(ctx); err != nil {
		return fmt.Errorf("step 3, relay: %w", err)
	}
	d.out.beginStep("4. alice finds a delivery status report (RFC 3464) in her INBOX")
	status, err := d.showReport(ctx)
	if err != nil {
		return fmt.Errorf("step 4: %w", err)
	}
	if !strings.Contains(status, "Status: 5.1.1") || !strings.Contains(status, "Action: failed") {
		return errors.New("step 4: the report does not say 5.1.1 failed")
	}
	d.out.emit(event{Kind: "result", Text: "OK: the refusal came back to alice as a report with Status 5.1.1."})
	return nil
}

// spoofHost is the loopback address of the forger in the spoof scenario:
// neither domain's MX.
const spoofHost = "127.0.0.66"

// spoof: a host that is not alpha's connects to beta's MX and sends a
// message From alice@alpha.test without a signature. SPF fails (the host
// is not alpha's MX), there is no DKIM signature, so DMARC fails, and
// alpha.test publishes p=reject: beta refuses it at the end of DATA.
func (d *demo) spoof(ctx context.Context) error {
	d.intro()
	a, b := d.alpha, d.beta
	d.out.beginStep("2. A forger at " + spoofHost + " sends beta's MX a message claiming to be from " + a.user)
	msg, err := mime.Compose(mime.Draft{From: "Alice <" + a.user + ">", To: []string{b.user},
		Subject: "Urgent: please send me your password", Text: "Hi Bob,\n\nI lost it, send me yours.\n\nAlice\n",
		Hostname: "forger.example"})
	if err != nil {
		return err
	}
	reply, err := submit(ctx, submission{
		addr: b.mx, mode: tlsNone, helo: "forger.example", from: a.user, to: []string{b.user}, msg: msg,
		trace: &traceWriter{out: d.out, part: "forger client"},
		local: &net.TCPAddr{IP: net.ParseIP(spoofHost)},
	})
	if err == nil {
		return fmt.Errorf("step 2: beta accepted the forged message: %s", reply)
	}
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
		return fmt.Errorf("step 2: want 550 5.7.1, got %w", err)
	}
	d.out.note("refused at the end of DATA: 550 5.7.1 %s", se.Message)

	d.out.beginStep("3. Why: the records beta's MX looked up for alpha.test")
	for _, q := range []struct{ name, why string }{
		{a.name, "SPF (RFC 7208): only alpha's MX hosts send its mail; " + spoofHost + " is not one -> spf=fail"},
		{"_dmarc." + a.name, "DMARC (RFC 7489): no aligned SPF or DKIM pass -> dmarc=fail, and p=reject says refuse it"},
	} {
		txts, err := d.checks.LookupTXT(ctx, q.name)
		if err != nil {
			return fmt.Errorf("step 3: TXT %s: %w", q.name, err)
		}
		for _, t := range txts {
			d.out.note("%s\tTXT\t%q", q.name, t)
		}
		d.out.note("  -> %s", q.why)
	}
	d.out.note("(the message carried no DKIM signature: only alpha's submission server can make one, with alpha's private key)")
	if _, err := inboxMessage(ctx, b); err == nil {
		return errors.New("step 3: the forged message is in bob's INBOX")
	}
	d.out.emit(event{Kind: "result", Text: "OK: the forgery was refused with 550 5.7.1 because alpha.test's DMARC record says p=reject."})
	return nil
}

// mailstorm: list@alpha.test forwards to list@beta.test and back. Each hop
// adds a Received field; past 50 an MX refuses the message (554 5.4.6) and
// alice, the original sender, gets a report.
func (d *demo) mailstorm(ctx context.Context) error {
	d.intro()
	a, b := d.alpha, d.beta
	if err := a.store.AddAlias(ctx, "list@alpha.test", "list@beta.test"); err != nil {
		return err
	}
	if err := b.store.AddAlias(ctx, "list@beta.test", "list@alpha.test"); err != nil {
		return err
	}
	d.out.note("aliases: list@alpha.test -> list@beta.test, and list@beta.test -> list@alpha.test: a loop")
	d.out.beginStep("2. alice writes to list@alpha.test")
	if err := d.submitPlain(ctx, "list@alpha.test", "Storm warning"); err != nil {
		return fmt.Errorf("step 2, submission: %w", err)
	}
	d.out.beginStep("3. The message circulates: each relay hands it to the other domain")
	hops := 0
	for hops < maxStormHops {
		moved := false
		for _, dom := range []*demoDomain{a, b} {
			q, err := dom.store.Queue(ctx, time.Time{}, 0)
			if err != nil {
				return err
			}
			if len(q) == 0 {
				continue
			}
			body, err := dom.store.ReadBody(ctx, q[0].BodyID)
			if err != nil {
				return err
			}
			received := 0
			if h, err := mime.ReadHeader(body); err == nil {
				received = mime.CountReceived(h)
			}
			if err := dom.relay.RunOnce(ctx); err != nil {
				return fmt.Errorf("relay of %s: %w", dom.name, err)
			}
			hops++
			other := b.name
			if dom == b {
				other = a.name
			}
			copies, err := d.queued(ctx)
			if err != nil {
				return err
			}
			kind := "message"
			if q[0].Sender == "" {
				kind = "report"
			}
			d.out.note("hop %2d: %s -> %s, the %s to <%s> carries %d Received fields; copies in the queues now: %d",
				hops, dom.name, other, kind, q[0].Recipient, received, copies)
			moved = true
		}
		if !moved {
			break
		}
	}
	if hops >= maxStormHops {
		return fmt.Errorf("the loop was not stopped after %d hops", hops)
	}
	d.out.beginStep("4. An MX refused the looping message (554 5.4.6), and alice got a report")
	status, err := d.showReport(ctx)
	if err != nil {
		return fmt.Errorf("step 4: %w", err)
	}
	if !strings.Contains(status, "5.4.6") {
		return errors.New("step 4: the report does not give the loop status 5.4.6")
	}
	d.out.emit(event{Kind: "result", Text: fmt.Sprintf(
		"OK: the storm stopped after %d hops; there was never more than one copy in flight, and alice was told.", hops)})
	return nil
}

// queued counts the entries in both domains' queues.
func (d *demo) queued(ctx context.Context) (int, error) {
	n := 0
	for _, dom := range []*demoDomain{d.alpha, d.beta} {
		q, err := dom.store.Queue(ctx, time.Time{}, 0)
		if err != nil {
			return 0, err
		}
		n += len(q)
	}
	return n, nil
}
