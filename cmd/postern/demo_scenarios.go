package main

// The scenarios of `postern demo -scenario NAME`.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/mime"
)

// scenario is one thing the demo can show.
type scenario struct {
	name, about string
	records     []string // extra DNS records
	quiet       bool     // relays do not trace their many sessions
	maxReceived int      // the MX hop limit; 0: smtpd's default
	greylist    bool     // a greylisting front answers on beta's MX address
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
		{name: "mailstorm", about: "two mailing lists on two domains contain each other: the copies double each hop until the Received hop limit refuses them; List-Id and Auto-Submitted stop it at once",
			quiet: true, maxReceived: stormMaxReceived, run: (*demo).mailstorm},
		{name: "greylist", about: "beta's MX greylists: 451 4.7.1 the first time; the message waits in alpha's queue and is delivered on the retry",
			greylist: true, run: (*demo).greylist},
		{name: "null-mx", about: "gamma.test publishes \"MX 0 .\" (RFC 7505): the relay refuses without connecting, and alice is told (5.1.10)",
			records: []string{gammaDomain + ". 300 IN MX 0 ."}, run: (*demo).nullMX},
		{name: "implicit-mx", about: "gamma.test has no MX, only an A record: the relay delivers to that address (RFC 5321 5.1)",
			records: []string{gammaDomain + ". 300 IN A 127.0.0.3"}, run: (*demo).implicitMX},
		{name: "bcc", about: "a blind copy: carol is in the envelope and not in the header (envelope is not header)",
			run: (*demo).bcc},
		{name: "pop3-update", about: "POP3's UPDATE state: DELE then QUIT removes, DELE then a dropped connection removes nothing; TOP shows the header only",
			run: (*demo).pop3Update},
		{name: "imap", about: "IMAP: \\Seen set by BODY[] and not by BODY.PEEK[]; UIDs against sequence numbers after an EXPUNGE; IDLE announcing a new message",
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
	return d.submitTraced(ctx, to, subject, true)
}

// submitQuiet is submitPlain without the trace.
func (d *demo) submitQuiet(ctx context.Context, to, subject string) error {
	return d.submitTraced(ctx, to, subject, false)
}

func (d *demo) submitTraced(ctx context.Context, to, subject string, trace bool) error {
	a := d.alpha
	msg, err := mime.Compose(mime.Draft{From: a.user, To: []string{to}, Subject: subject,
		Text: "Hello,\n\nthis is the postern demo.\n", Hostname: "alice-laptop.alpha.test"})
	if err != nil {
		return err
	}
	var tw io.Writer = io.Discard
	if trace {
		tw = &traceWriter{out: d.out, part: "alice client"}
	}
	clientTLS, err := d.submissionTLS(a, tw)
	if err != nil {
		return err
	}
	s := submission{
		addr: a.submission, mode: tlsStartTLS, tls: clientTLS, helo: "alice-laptop.alpha.test",
		user: a.user, password: a.password, from: a.user, to: []string{to}, msg: msg,
	}
	if trace {
		s.trace = tw
	}
	reply, err := submit(ctx, s)
	if err != nil {
		return err
	}
	if trace {
		d.out.note("accepted: %s", reply)
	}
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
	if d.fallback {
		return fmt.Errorf("the forger needs a loopback address of its own, %s, and only 127.0.0.1 can be bound here", spoofHost)
	}
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
