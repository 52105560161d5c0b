package main

// More scenarios of `postern demo`: where mail goes when a domain has no MX
// or a null MX, the envelope against the header (Bcc), POP3's UPDATE state,
// and IMAP's \Seen flag and UIDs.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/postern/postern/mime"
	"github.com/postern/postern/smtpd/relay"
)

// gammaDomain is the third domain of the null-mx and implicit-mx
// scenarios: it has no MX host of its own.
const gammaDomain = "gamma.test"

// showMX prints the relay's DNS lookup for domain, as step 4 of the flow
// does, and returns it.
func (d *demo) showMX(ctx context.Context, domain string) (relay.MXResult, error) {
	mx, err := relay.LookupMX(ctx, d.resolver, domain)
	if err != nil {
		return mx, fmt.Errorf("MX lookup for %s: %w", domain, err)
	}
	var lookup bytes.Buffer
	if err := printMX(&lookup, d.zone.addr, mx); err != nil {
		return mx, fmt.Errorf("MX lookup for %s: %w", domain, err)
	}
	for _, line := range strings.Split(strings.TrimRight(lookup.String(), "\n"), "\n") {
		d.out.note("%s", line)
	}
	return mx, nil
}

// nullMX: gamma.test publishes "MX 0 ." (RFC 7505): it takes no mail.
// alpha's relay fails the message at once, without connecting anywhere,
// and alice gets a report with status 5.1.10.
func (d *demo) nullMX(ctx context.Context) error {
	d.intro()
	to := "carol@" + gammaDomain
	d.out.beginStep("2. alice writes to " + to + ", whose domain publishes a null MX")
	if err := d.submitPlain(ctx, to, "Anyone at gamma?"); err != nil {
		return fmt.Errorf("step 2, submission: %w", err)
	}
	d.out.beginStep("3. The relay looks up gamma.test's MX: \"MX 0 .\" means no mail is accepted (RFC 7505 3)")
	mx, err := d.showMX(ctx, gammaDomain)
	if err != nil {
		return fmt.Errorf("step 3: %w", err)
	}
	if !mx.NullMX {
		return fmt.Errorf("step 3: %s has no null MX", gammaDomain)
	}
	d.out.note("-> the relay gives up at once: no connection, no retry (without the record, it would try the domain's A record, or retry for days where there is none)")
	if err := d.alpha.relay.RunOnce(ctx); err != nil {
		return fmt.Errorf("step 3, relay: %w", err)
	}
	d.out.beginStep("4. alice finds a delivery status report in her INBOX: status 5.1.10 (RFC 7505 4.2)")
	status, err := d.showReport(ctx)
	if err != nil {
		return fmt.Errorf("step 4: %w", err)
	}
	if !strings.Contains(status, "5.1.10") || !strings.Contains(status, "Action: failed") {
		return errors.New("step 4: the report does not say 5.1.10 failed")
	}
	d.out.emit(event{Kind: "result", Text: "OK: the null MX was refused without a connection, and alice was told with status 5.1.10."})
	return nil
}

// implicitMX: gamma.test has no MX record, only an A record pointing at
// beta's machine, which takes gamma.test's mail too (RFC 5321 5.1).
func (d *demo) implicitMX(ctx context.Context) error {
	b := d.beta
	if err := b.store.AddDomain(ctx, gammaDomain); err != nil {
		return err
	}
	to := "bob@" + gammaDomain
	if err := b.store.AddAlias(ctx, to, b.user); err != nil {
		return err
	}
	d.intro()
	d.out.note("beta's Postern also receives mail for %s (%s is an alias of %s); %s has an A record and no MX record", gammaDomain, to, b.user, gammaDomain)
	d.out.beginStep("2. alice writes to " + to)
	if err := d.submitPlain(ctx, to, "Hello via the A record"); err != nil {
		return fmt.Errorf("step 2, submission: %w", err)
	}
	d.out.beginStep("3. The relay looks up gamma.test's MX: there is none, so the domain's own A record is used (implicit MX, RFC 5321 5.1)")
	mx, err := d.showMX(ctx, gammaDomain)
	if err != nil {
		return fmt.Errorf("step 3: %w", err)
	}
	if !mx.Implicit {
		return fmt.Errorf("step 3: %s is not an implicit MX", gammaDomain)
	}
	d.out.beginStep("4. alpha's relay delivers to the A record's address, " + b.ip)
	if err := d.alpha.relay.RunOnce(ctx); err != nil {
		return fmt.Errorf("step 4, relay: %w", err)
	}
	if q, _ := d.alpha.store.Queue(ctx, time.Time{}, 0); len(q) != 0 {
		return fmt.Errorf("step 4, relay: the message is still queued: %s", q[0].LastError)
	}
	d.out.note("verified=false: the certificate beta's machine shows is self-signed and names mx.beta.test, not gamma.test; on port 25 TLS is opportunistic (RFC 3207, RFC 7435), so the relay encrypts anyway rather than send in plain text")
	d.out.beginStep("5. The message in bob's INBOX")
	stored, err := inboxMessage(ctx, b)
	if err != nil {
		return fmt.Errorf("step 5: %w", err)
	}
	d.out.note("To: %s | Subject: %s", headerValue(stored, "To"), headerValue(stored, "Subject"))
	d.out.emit(event{Kind: "result", Text: "OK: with no MX record, the message went to gamma.test's A record and arrived."})
	return nil
}

// randomPassword is a password nobody is shown: for users the demo needs
// only as recipients.
func randomPassword() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// bcc: alice writes to bob and sends a blind copy to carol. carol is in
// the envelope (RCPT TO) and nowhere in the header: her mail program
// removed the Bcc field before sending (RFC 5322 3.6.3).
func (d *demo) bcc(ctx context.Context) error {
	a, b := d.alpha, d.beta
	carol := "carol@" + b.name
	if _, err := b.store.AddUser(ctx, carol, randomPassword()); err != nil {
		return err
	}
	d.intro()
	d.out.note("beta.test also has the user %s", carol)
	d.out.beginStep("2. alice writes to bob, with a blind copy (Bcc) to carol")
	letter, err := mime.Compose(mime.Draft{From: a.user, To: []string{b.user}, Subject: "Lunch on Friday?",
		Text: "Hello Bob,\n\nlunch on Friday?\n\nAlice\n", Hostname: "alice-laptop.alpha.test"})
	if err != nil {
		return err
	}
	d.out.note("what alice typed:  To: %s | Bcc: %s", b.user, carol)
	d.out.note("the mail program sends no Bcc field (RFC 5322 3.6.3): the header says To: %s only; carol goes in the envelope, a second RCPT TO", headerValue(letter, "To"))
	d.out.note("Envelope (what SMTP servers act on):  MAIL FROM:<%s>  RCPT TO:<%s>  RCPT TO:<%s>", a.user, b.user, carol)
	d.out.note("Letter header (what people read):     From: %s | To: %s", headerValue(letter, "From"), headerValue(letter, "To"))
	tw := &traceWriter{out: d.out, part: "alice client"}
	clientTLS, err := d.submissionTLS(a, tw)
	if err != nil {
		return err
	}
	reply, err := submit(ctx, submission{
		addr: a.submission, mode: tlsStartTLS, tls: clientTLS, helo: "alice-laptop.alpha.test",
		user: a.user, password: a.password, from: a.user, to: []string{b.user, carol}, msg: letter, trace: tw,
	})
	if err != nil {
		return fmt.Errorf("step 2, submission: %w", err)
	}
	d.out.note("accepted: %s", reply)
	d.out.beginStep("3. alpha's relay sends one copy with two recipients: the envelope is the address list")
	if err := a.relay.RunOnce(ctx); err != nil {
		return fmt.Errorf("step 3, relay: %w", err)
	}
	d.out.beginStep("4. bob's and carol's copies: the same header, and carol is in neither")
	for _, who := range []string{b.user, carol} {
		msg, err := inboxMessage(ctx, &demoDomain{store: b.store, user: who})
		if err != nil {
			return fmt.Errorf("step 4: %w", err)
		}
		head, _, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
		d.out.note("%s's copy: To: %s | Return-Path: %s | mentions carol in its header: %v",
			who, headerValue(msg, "To"), headerValue(msg, "Return-Path"), bytes.Contains(head, []byte("carol")))
		if bytes.Contains(head, []byte("carol")) {
			return fmt.Errorf("step 4: %s's copy names carol in its header", who)
		}
	}
	d.out.note("(so bob cannot tell that carol got a copy; carol sees a message To: bob, and knows she was a blind copy)")
	d.out.emit(event{Kind: "result", Text: "OK: carol got the message from the envelope alone; no header names her."})
	return nil
}

// deliverLocal puts n short messages from alice straight into dom's
// user's INBOX, as dom's MX would after accepting them, and returns them.
func (d *demo) deliverLocal(ctx context.Context, dom *demoDomain, subjects ...string) error {
	for _, subject := range subjects {
		msg, err := mime.Compose(mime.Draft{From: d.alpha.user, To: []string{dom.user}, Subject: subject,
			Text: "Hello,\n\nthis is the postern demo.\n", Hostname: "alice-laptop.alpha.test"})
		if err != nil {
			return err
		}
		if _, err := dom.store.Deliver(ctx, d.alpha.user, []string{dom.user}, msg); err != nil {
			return fmt.Errorf("deliver %q to %s: %w", subject, dom.user, err)
		}
	}
	d.out.note("%d %s from alice put in %s's INBOX (as beta's MX delivers them): %s", len(subjects), plural(len(subjects), "message", "messages"), dom.user, strings.Join(subjects, ", "))
	return nil
}

// inboxCount is the number of messages in dom's user's INBOX.
func inboxCount(ctx context.Context, dom *demoDomain) (int, error) {
	u, err := dom.store.UserByAddress(ctx, dom.user)
	if err != nil {
		return 0, err
	}
	in, err := dom.store.MailboxByName(ctx, u.ID, "INBOX")
	if err != nil {
		return 0, err
	}
	msgs, err := dom.store.Messages(ctx, in.ID, nil)
	return len(msgs), err
}

// pop3Session is the demo's POP3 client: the protocol lines come from the
// server's trace.
type pop3Session struct {
	conn net.Conn
	c    *textproto.Conn
}

// pop3Login connects to dom's POP3 server and logs in as dom's user.
func pop3Login(dom *demoDomain) (*pop3Session, error) {
	conn, err := net.DialTimeout("tcp", dom.pop3Addr, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", dom.pop3Addr, err)
	}
	conn.SetDeadline(time.Now().Add(time.Minute))
	p := &pop3Session{conn: conn, c: textproto.NewConn(conn)}
	for _, line := range []string{"", "USER " + dom.user, "PASS " + dom.password} {
		if _, err := p.cmd(line); err != nil {
			conn.Close()
			return nil, err
		}
	}
	return p, nil
}

// cmd sends line (none when empty: the greeting) and reads a +OK reply.
func (p *pop3Session) cmd(line string) (string, error) {
	if line != "" {
		if err := p.c.PrintfLine("%s", line); err != nil {
			return "", fmt.Errorf("POP3 %s: %w", strings.Fields(line)[0], err)
		}
	}
	reply, err := p.c.ReadLine()
	if err != nil {
		return "", fmt.Errorf("POP3 %s: %w", strings.Fields(line + " greeting")[0], err)
	}
	if !strings.HasPrefix(reply, "+OK") {
		return reply, fmt.Errorf("POP3 %s: %s", strings.Fields(line + " greeting")[0], reply)
	}
	return reply, nil
}

// end ends the session, with QUIT or by dropping the connection, and
// waits until beta's POP3 server has logged the session's end, so that what
// follows is printed after it.
func (p *pop3Session) end(out *demoOut, quit bool) error {
	const part = "beta pop3"
	before := out.seenCount(part, "session end")
	var err error
	if quit {
		_, err = p.cmd("QUIT")
	}
	p.conn.Close()
	if err != nil {
		return err
	}
	for i := 0; out.seenCount(part, "session end") == before; i++ {
		if i == 250 {
			return errors.New("the POP3 server did not end the session")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// multi sends line and reads its multi-line answer (RFC 1939 3).
func (p *pop3Session) multi(line string) ([]byte, error) {
	if _, err := p.cmd(line); err != nil {
		return nil, err
	}
	b, err := p.c.ReadDotBytes()
	if err != nil {
		return nil, fmt.Errorf("POP3 %s: %w", line, err)
	}
	return b, nil
}

// pop3Update: DELE only marks; QUIT's UPDATE state removes (RFC 1939 6),
// and a connection that drops before QUIT removes nothing. TOP gives the
// header and no body lines.
func (d *demo) pop3Update(ctx context.Context) error {
	b := d.beta
	d.intro()
	if err := d.deliverLocal(ctx, b, "First", "Second", "Third"); err != nil {
		return err
	}
	check := func(step string, want int) error {
		n, err := inboxCount(ctx, b)
		if err != nil {
			return fmt.Errorf("%s: %w", step, err)
		}
		d.out.note("-> bob's INBOX holds %d messages", n)
		if n != want {
			return fmt.Errorf("%s: bob's INBOX holds %d messages, want %d", step, n, want)
		}
		return nil
	}

	d.out.beginStep("2. DELE then QUIT: DELE only marks the message; QUIT enters UPDATE, which removes it (RFC 1939 6)")
	p, err := pop3Login(b)
	if err != nil {
		return fmt.Errorf("step 2: %w", err)
	}
	if _, err := p.cmd("STAT"); err != nil {
		p.conn.Close()
		return fmt.Errorf("step 2: %w", err)
	}
	if _, err := p.cmd("DELE 1"); err != nil {
		p.conn.Close()
		return fmt.Errorf("step 2: %w", err)
	}
	d.out.note("-- message 1 is marked deleted; it is still in the maildrop")
	if err := p.end(d.out, true); err != nil {
		return fmt.Errorf("step 2: %w", err)
	}
	if err := check("step 2", 2); err != nil {
		return err
	}

	d.out.beginStep("3. DELE then a dropped connection: no QUIT, no UPDATE state, nothing is removed")
	if p, err = pop3Login(b); err != nil {
		return fmt.Errorf("step 3: %w", err)
	}
	if _, err := p.cmd("DELE 1"); err != nil {
		p.conn.Close()
		return fmt.Errorf("step 3: %w", err)
	}
	d.out.note("-- the connection drops now, before QUIT (a laptop closed, a train in a tunnel)")
	if err := p.end(d.out, false); err != nil {
		return fmt.Errorf("step 3: %w", err)
	}
	if err := check("step 3", 2); err != nil {
		return err
	}

	d.out.beginStep("4. TOP 1 0: the header and no line of the body (RFC 1939 7), so a client can list messages without downloading them")
	if p, err = pop3Login(b); err != nil {
		return fmt.Errorf("step 4: %w", err)
	}
	top, err := p.multi("TOP 1 0")
	if err != nil {
		p.conn.Close()
		return fmt.Errorf("step 4: %w", err)
	}
	for _, line := range strings.Split(strings.TrimRight(string(top), "\n"), "\n") {
		d.out.note("| %s", line)
	}
	if !bytes.Contains(top, []byte("Subject: Second")) || bytes.Contains(top, []byte("postern demo")) {
		return errors.New("step 4: TOP 1 0 did not give the second message's header alone")
	}
	d.out.note("(the header of \"Second\": \"First\" was removed in step 2, and the messages are numbered afresh in each session)")
	if err := p.end(d.out, true); err != nil {
		return fmt.Errorf("step 4: %w", err)
	}
	d.out.emit(event{Kind: "result", Text: "OK: only DELE followed by QUIT removed a message; TOP showed the header alone."})
	return nil
}

// imapSeen: IMAP's \Seen flag is set by fetching BODY[] and not by
// BODY.PEEK[] (RFC 9051 6.4.5), and a message keeps its UID when an
// EXPUNGE renumbers the sequence numbers (RFC 9051 2.3.1).
func (d *demo) imapSeen(ctx context.Context) error {
	b := d.beta
	d.intro()
	if err := d.deliverLocal(ctx, b, "First", "Second", "Third"); err != nil {
		return err
	}
	d.out.beginStep("2. BODY.PEEK[] reads message 1 and leaves it unread; BODY[] marks it \\Seen (RFC 9051 6.4.5)")
	conn, err := net.DialTimeout("tcp", b.imapAddr, 10*time.Second)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", b.imapAddr, err)
	}
	conn.SetDeadline(d.sessionDeadline())
	literals := make(chan literal, 4)
	part := "beta imap"
	d.out.showLiterals(part, literals)
	defer d.out.showLiterals("", nil)
	// The one session stays open through steps 2 to 4.
	d.out.span(part, 1)
	spanning := true
	defer func() {
		if spanning {
			d.out.span(part, -1)
		}
	}()
	// exists gets the message counts the server announces unasked.
	exists := make(chan uint32, 16)
	c := imapclient.New(&literalTap{Conn: conn, found: literals, full: d.showBody}, &imapclient.Options{
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{Mailbox: func(m *imapclient.UnilateralDataMailbox) {
			if m.NumMessages != nil {
				select {
				case exists <- *m.NumMessages:
				default:
				}
			}
		}},
	})
	defer c.Close()
	if err := c.Login(b.user, b.password).Wait(); err != nil {
		return fmt.Errorf("LOGIN: %w", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		return fmt.Errorf("SELECT INBOX: %w", err)
	}
	// seen fetches message num's flags and says whether \Seen is set.
	seen := func(num uint32) (bool, error) {
		msgs, err := c.Fetch(imap.SeqSetNum(num), &imap.FetchOptions{Flags: true}).Collect()
		if err != nil || len(msgs) != 1 {
			return false, fmt.Errorf("FETCH %d FLAGS: %d messages, %v", num, len(msgs), err)
		}
		for _, f := range msgs[0].Flags {
			if f == imap.FlagSeen {
				return true, nil
			}
		}
		return false, nil
	}

	for _, peek := range []bool{true, false} {
		section := &imap.FetchItemBodySection{Peek: peek}
		msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
		if err != nil || len(msgs) != 1 || len(msgs[0].FindBodySection(section)) == 0 {
			return fmt.Errorf("step 2: FETCH 1 BODY[] (peek %v): %d messages, %v", peek, len(msgs), err)
		}
		isSeen, err := seen(1)
		if err != nil {
			return fmt.Errorf("step 2: %w", err)
		}
		name := "BODY[]"
		if peek {
			name = "BODY.PEEK[]"
		}
		d.out.note("-> after %s, message 1 is \\Seen: %v", name, isSeen)
		if isSeen == peek {
			return fmt.Errorf("step 2: after %s, \\Seen is %v", name, isSeen)
		}
	}

	d.out.beginStep("3. UIDs against sequence numbers: EXPUNGE renumbers the messages, their UIDs stay (RFC 9051 2.3.1)")
	uids := func() (map[uint32]imap.UID, error) {
		msgs, err := c.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true}).Collect()
		if err != nil {
			return nil, fmt.Errorf("FETCH 1:* UID: %w", err)
		}
		m := map[uint32]imap.UID{}
		var pairs []string
		for _, msg := range msgs {
			m[msg.SeqNum] = msg.UID
			pairs = append(pairs, fmt.Sprintf("%d -> UID %d", msg.SeqNum, msg.UID))
		}
		d.out.note("-> sequence number -> UID: %s", strings.Join(pairs, ", "))
		return m, nil
	}
	before, err := uids()
	if err != nil {
		return fmt.Errorf("step 3: %w", err)
	}
	d.out.note("-- message 1 is marked \\Deleted, and EXPUNGE removes it")
	if err := c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close(); err != nil {
		return fmt.Errorf("step 3: STORE: %w", err)
	}
	if _, err := c.Expunge().Collect(); err != nil {
		return fmt.Errorf("step 3: EXPUNGE: %w", err)
	}
	after, err := uids()
	if err != nil {
		return fmt.Errorf("step 3: %w", err)
	}
	if len(after) != len(before)-1 || after[1] != before[2] || after[2] != before[3] {
		return fmt.Errorf("step 3: before EXPUNGE %v, after %v", before, after)
	}
	d.out.note("-> what was message 2 is now message 1, with the same UID %d; a client that remembers UIDs finds it again, one that remembers sequence numbers would fetch the wrong message", after[1])
	third := before[3]
	d.out.note("-- UID FETCH %d: the third message, by its UID, whatever its sequence number now", third)
	msgs, err := c.Fetch(imap.UIDSetNum(third), &imap.FetchOptions{UID: true, Envelope: true}).Collect()
	if err != nil || len(msgs) != 1 || msgs[0].Envelope == nil || msgs[0].Envelope.Subject != "Third" {
		return fmt.Errorf("step 3: UID FETCH %d: %d messages, %v", third, len(msgs), err)
	}
	d.out.note("-> UID %d is message %d now: %q", third, msgs[0].SeqNum, msgs[0].Envelope.Subject)

	d.out.beginStep("4. IDLE: the server tells the waiting client of a new message as it arrives (RFC 9051 6.3.13)")
	for len(exists) > 0 {
		<-exists
	}
	d.out.note("-- bob's mail program waits in IDLE: no polling, the server speaks when something changes")
	// EXISTS lines shown so far, by count: DONE waits until the trace
	// has shown the one IDLE brings.
	shownBefore := map[uint32]int{}
	for k := uint32(1); k <= 8; k++ {
		shownBefore[k] = d.out.seenCount(part, fmt.Sprintf("S: * %d EXISTS", k))
	}
	idle, err := c.Idle()
	if err != nil {
		return fmt.Errorf("step 4: IDLE: %w", err)
	}
	if err := d.deliverLocal(ctx, b, "Fourth"); err != nil {
		idle.Close()
		return fmt.Errorf("step 4: %w", err)
	}
	var n uint32
	select {
	case n = <-exists:
	case <-time.After(10 * time.Second):
		idle.Close()
		return errors.New("step 4: no EXISTS arrived during IDLE")
	}
	shown := fmt.Sprintf("S: * %d EXISTS", n)
	for i := 0; d.out.seenCount(part, shown) <= shownBefore[n] && i < 500; i++ { // up to 10 s on a busy machine
		time.Sleep(20 * time.Millisecond)
	}
	if err := idle.Close(); err != nil {
		return fmt.Errorf("step 4: DONE: %w", err)
	}
	if err := idle.Wait(); err != nil {
		return fmt.Errorf("step 4: IDLE: %w", err)
	}
	d.out.note("-> * %d EXISTS arrived during IDLE, unasked: the INBOX holds %d messages now; DONE ended IDLE, and the client can fetch the new one", n, n)
	if n != 3 {
		return fmt.Errorf("step 4: EXISTS said %d messages, want 3", n)
	}
	if err := c.Logout().Wait(); err != nil {
		return fmt.Errorf("LOGOUT: %w", err)
	}
	d.out.span(part, -1)
	spanning = false
	d.out.emit(event{Kind: "result", Text: "OK: BODY.PEEK[] left the message unread and BODY[] marked it \\Seen; after EXPUNGE the UIDs stayed and the sequence numbers moved; IDLE announced the new message with EXISTS."})
	return nil
}
