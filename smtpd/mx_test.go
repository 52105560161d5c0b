package smtpd

import (
	"bytes"
	"context"
	"net"
	"regexp"
	"strings"
	"testing"
)

func TestGreetingAndEHLO(t *testing.T) {
	e := newTestEnv(t)
	c := e.dial(t, e.mx)
	// The textbook line: the server speaks first and names itself.
	if c.greeting != "220 mx.example.test ESMTP Postern" {
		t.Errorf("greeting %q", c.greeting)
	}
	ehlo := c.cmd("EHLO client.example.test", "250-")
	for _, ext := range []string{"PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 33554432", "ENHANCEDSTATUSCODES", "CHUNKING", "STARTTLS", "DSN"} {
		if !regexp.MustCompile(`(?m)^250[- ]` + ext + `$`).MatchString(ehlo) {
			t.Errorf("EHLO does not offer %s:\n%s", ext, ehlo)
		}
	}
	if strings.Contains(ehlo, "AUTH") {
		t.Errorf("MX offers AUTH:\n%s", ehlo)
	}
	c.cmd("AUTH PLAIN "+plainAuth(alice, alicePassword), "502 5.5.1 ")
	c.cmd("QUIT", "221 ")
}

func TestMXDelivery(t *testing.T) {
	e := newTestEnv(t)
	c := e.dial(t, e.mx)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("MAIL FROM:<sender@elsewhere.test>", "250 ")
	c.cmd("RCPT TO:<Alice@EXAMPLE.test>", "250 ")
	msg := simpleMessage("mx")
	c.send("DATA")
	c.expect("354 ")
	c.send(dotStuff(msg) + ".")
	c.expect("250 2.0.0 ")
	c.cmd("QUIT", "221 ")

	got := e.inbox(t, alice)
	if len(got) != 1 {
		t.Fatalf("%d messages in alice's INBOX, want 1", len(got))
	}
	prefix := trimTrace(t, got[0], msg)
	want := regexp.MustCompile(`^Return-Path: <sender@elsewhere\.test>\r\n` +
		`Received: from client\.example\.test \(\[127\.0\.0\.1\]\)\r\n` +
		`\tby mx\.example\.test with ESMTP id [a-z2-7]{10}-1\r\n` +
		`\tfor <alice@example\.test>; [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\r\n$`)
	if !want.MatchString(prefix) {
		t.Errorf("trace fields:\n%s", prefix)
	}
	if len(e.inbox(t, bob)) != 0 {
		t.Error("bob got alice's message")
	}
}

func TestMXRefusals(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.MaxMessageBytes = 10000; c.MaxRecipients = 3 })
	c := e.dial(t, e.mx)
	c.cmd("EHLO client.example.test", "250")
	// SIZE over the limit is refused at MAIL (RFC 1870).
	c.cmd("MAIL FROM:<s@elsewhere.test> SIZE=10001", "552 5.3.4 ")
	c.cmd("MAIL FROM:<s@elsewhere.test> SIZE=10000", "250 ")
	c.cmd("RCPT TO:<nobody@example.test>", "550 5.1.1 ")
	c.cmd("RCPT TO:<someone@remote.test>", "554 5.7.1 ")
	c.cmd("RCPT TO:<a@[127.0.0.1]>", "554 5.7.1 ")
	c.cmd("RCPT TO:<a@bad_domain.test>", "501 5.1.3 ")
	c.cmd("RCPT TO:<josé@example.test>", "553 5.6.7 ")
	c.cmd("RCPT TO:<"+alice+">", "250 ")
	c.cmd("RCPT TO:<"+bob+">", "250 ")
	c.cmd("RCPT TO:<"+team+">", "250 ")
	c.cmd("RCPT TO:<postmaster@example.test>", "452 4.5.3 ")
	c.cmd("RSET", "250 ")
	c.cmd("MAIL FROM:<bad address@x>", "501 ")
	c.cmd("MAIL FROM:<a@b..test>", "553 5.1.7 ")
	c.cmd("QUIT", "221 ")
	if len(e.queue(t)) != 0 || len(e.inbox(t, alice)) != 0 {
		t.Error("something was stored")
	}
}

func TestAliases(t *testing.T) {
	e := newTestEnv(t)
	c := e.dial(t, e.mx)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	c.cmd("RCPT TO:<"+team+">", "250 ")
	c.cmd("RCPT TO:<"+alice+">", "250 ") // also through team: one copy
	c.cmd("RCPT TO:<"+forward+">", "250 ")
	msg := simpleMessage("alias")
	if r := c.data(msg); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("DATA: %s", r)
	}
	for _, u := range []string{alice, bob} {
		got := e.inbox(t, u)
		if len(got) != 1 {
			t.Fatalf("%s has %d messages, want 1", u, len(got))
		}
		prefix := trimTrace(t, got[0], msg)
		if strings.Contains(prefix, "\tfor ") {
			t.Errorf("Received names a recipient of several: %q", prefix)
		}
	}
	q := e.queue(t)
	if len(q) != 1 || q[0].Recipient != remote || q[0].Sender != "s@elsewhere.test" {
		t.Fatalf("queue %+v, want one entry for %s", q, remote)
	}
}

func TestMessageSizes(t *testing.T) {
	const limit = 100 << 10
	e := newTestEnv(t, func(c *Config) { c.MaxMessageBytes = limit })
	header := "From: a@elsewhere.test\r\nSubject: size\r\n\r\n"
	// body builds a message of exactly n octets, CRLF lines under 998.
	body := func(n int) string {
		var b strings.Builder
		b.WriteString(header)
		for b.Len() < n {
			line := strings.Repeat("x", min(76, n-b.Len()-2))
			if n-b.Len() < 2 {
				line = strings.Repeat("y", n-b.Len())
				b.WriteString(line)
				break
			}
			b.WriteString(line + "\r\n")
		}
		return b.String()
	}
	tests := []struct {
		name string
		size int
		want string
	}{
		{"empty body", len(header), "250 "},
		{"64 KiB + 1", 64<<10 + 1, "250 "},
		{"exactly the limit", limit, "250 "},
		{"limit + 1", limit + 1, "552 5.3.4 "},
		{"twice the limit", 2 * limit, "552 5.3.4 "},
	}
	for _, tt := range tests {
		for _, bdat := range []bool{false, true} {
			name := tt.name + map[bool]string{false: " DATA", true: " BDAT"}[bdat]
			t.Run(name, func(t *testing.T) {
				msg := body(tt.size)
				if len(msg) != tt.size {
					t.Fatalf("built %d octets, want %d", len(msg), tt.size)
				}
				before := len(e.inbox(t, alice))
				c := e.dial(t, e.mx)
				c.cmd("EHLO client.example.test", "250")
				c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
				c.cmd("RCPT TO:<"+alice+">", "250 ")
				var r string
				if bdat {
					c.send("BDAT " + itoa(len(msg)) + " LAST")
					c.conn.Write([]byte(msg))
					r = c.reply()
				} else {
					r = c.data(msg)
				}
				if !strings.HasPrefix(r, tt.want) {
					t.Fatalf("reply %q, want %q", r, tt.want)
				}
				// The session goes on.
				c.cmd("NOOP", "250 ")
				got := e.inbox(t, alice)
				if tt.want == "250 " {
					if len(got) != before+1 {
						t.Fatalf("%d messages, want %d", len(got), before+1)
					}
					trimTrace(t, got[len(got)-1], msg)
				} else if len(got) != before {
					t.Fatal("a refused message was stored")
				}
			})
		}
	}
}

func TestMessageText(t *testing.T) {
	e := newTestEnv(t)
	long := strings.Repeat("x", 998)
	tests := []struct {
		name   string
		msg    string // as sent, dot-stuffed by data
		want   string
		stored string // "" when refused; else what follows the trace fields
	}{
		{"998 octets", "Subject: a\r\n\r\n" + long + "\r\n", "250 ", "Subject: a\r\n\r\n" + long + "\r\n"},
		{"999 octets", "Subject: a\r\n\r\n" + long + "x\r\n", "554 5.6.0 ", ""},
		{"long header line", "Subject: " + long + "\r\n\r\nx\r\n", "554 5.6.0 ", ""},
		{"NUL", "Subject: a\r\n\r\nnul\x00here\r\n", "554 5.6.0 ", ""},
		{"bare LF", "Subject: a\n\nline one\nline two\r\n", "250 ", "Subject: a\r\n\r\nline one\r\nline two\r\n"},
		{"bare CR", "Subject: a\r\n\r\none\rtwo\r\n", "250 ", "Subject: a\r\n\r\none\r\ntwo\r\n"},
		{"smuggled end", "Subject: a\r\n\r\nbody\n.\nMAIL FROM:<x@evil.test>\r\n", "250 ",
			"Subject: a\r\n\r\nbody\r\n.\r\nMAIL FROM:<x@evil.test>\r\n"},
		{"malformed header", "Subject: a\r\nnot a header line\r\n\r\nbody\r\n", "554 5.6.0 ", ""},
		{"folded header", "Subject: a\r\n b\r\n\r\nbody\r\n", "250 ", "Subject: a\r\n b\r\n\r\nbody\r\n"},
		{"no header", "\r\njust a body\r\n", "250 ", "\r\njust a body\r\n"},
		{"nothing at all", "", "250 ", ""},
		{"dot lines", "Subject: dots\r\n\r\n.\r\n..\r\n.x\r\n", "250 ", "Subject: dots\r\n\r\n.\r\n..\r\n.x\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(e.inbox(t, alice))
			c := e.dial(t, e.mx)
			c.cmd("EHLO client.example.test", "250")
			c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
			c.cmd("RCPT TO:<"+alice+">", "250 ")
			if r := c.data(tt.msg); !strings.HasPrefix(r, tt.want) {
				t.Fatalf("reply %q, want %q", r, tt.want)
			}
			c.cmd("NOOP", "250 ")
			got := e.inbox(t, alice)
			if tt.want != "250 " {
				if len(got) != before {
					t.Fatal("a refused message was stored")
				}
				return
			}
			if len(got) != before+1 {
				t.Fatalf("%d messages, want %d", len(got), before+1)
			}
			trimTrace(t, got[len(got)-1], tt.stored)
		})
	}
}

func TestLineOverCommandLimitEndsSession(t *testing.T) {
	e := newTestEnv(t)
	c := e.dial(t, e.mx)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	c.cmd("RCPT TO:<"+alice+">", "250 ")
	c.cmd("DATA", "354 ")
	c.send("Subject: a", "", strings.Repeat("x", 3000), ".")
	c.expect("554 5.6.0 ")
	c.expect("500 5.4.0 ") // go-smtp ends the session
	if len(e.inbox(t, alice)) != 0 {
		t.Fatal("stored")
	}
}

func TestMailLoop(t *testing.T) {
	e := newTestEnv(t)
	hops := func(n int) string {
		return strings.Repeat("Received: from a by b; Tue, 24 Nov 2026 10:00:00 +0000\r\n", n) + "Subject: loop\r\n\r\nx\r\n"
	}
	for _, tt := range []struct {
		n    int
		want string
	}{{50, "250 "}, {51, "554 5.4.6 "}} {
		c := e.dial(t, e.mx)
		c.cmd("EHLO client.example.test", "250")
		c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
		c.cmd("RCPT TO:<"+alice+">", "250 ")
		if r := c.data(hops(tt.n)); !strings.HasPrefix(r, tt.want) {
			t.Errorf("%d Received fields: %q, want %q", tt.n, r, tt.want)
		}
	}
	if got := e.inbox(t, alice); len(got) != 1 {
		t.Errorf("%d messages stored, want 1", len(got))
	}
}

func TestQuota(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	msg := simpleMessage("quota") + strings.Repeat("0123456789\r\n", 100)
	send := func(c *raw, want string) {
		t.Helper()
		if r := c.data(msg); !strings.HasPrefix(r, want) {
			t.Fatalf("DATA: %q, want %q", r, want)
		}
	}
	// Room for one message (with its trace fields), not two.
	must(t, e.store.SetQuota(ctx, alice, int64(len(msg))+1000))
	c := e.dial(t, e.mx)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	c.cmd("RCPT TO:<"+alice+">", "250 ")
	send(c, "250 ")
	// Not full yet, but the SIZE given does not fit: refused at RCPT.
	c.cmd("MAIL FROM:<s@elsewhere.test> SIZE="+itoa(len(msg)), "250 ")
	c.cmd("RCPT TO:<"+alice+">", "552 5.2.2 ")
	c.cmd("RSET", "250 ")
	// Without SIZE the store finds out at commit: refused after DATA.
	c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	c.cmd("RCPT TO:<"+alice+">", "250 ")
	send(c, "552 5.2.2 ")
	// Full: refused at RCPT.
	must(t, e.store.SetQuota(ctx, alice, 100))
	c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	c.cmd("RCPT TO:<"+alice+">", "552 5.2.2 ")
	// An alias that reaches someone with room is accepted, and the full
	// mailbox is skipped (logged).
	c.cmd("RCPT TO:<"+team+">", "250 ")
	send(c, "250 ")
	if n := len(e.inbox(t, alice)); n != 1 {
		t.Errorf("alice has %d messages, want 1", n)
	}
	if n := len(e.inbox(t, bob)); n != 1 {
		t.Errorf("bob has %d messages, want 1", n)
	}
	if !strings.Contains(e.logs.String(), "recipient did not get the message") {
		t.Error("the partial failure was not logged")
	}
	// The 250 answered for everyone: the sender learns of the mailbox
	// that got nothing from a report, queued for its remote domain.
	q := e.queue(t)
	if len(q) != 1 || q[0].Sender != "" || q[0].Recipient != "s@elsewhere.test" {
		t.Fatalf("queue after the partial failure: %+v", q)
	}
	report, err := e.store.ReadBody(ctx, q[0].BodyID)
	must(t, err)
	for _, want := range []string{"report-type=delivery-status", "Final-Recipient: rfc822;" + team, "Action: failed", "Status: 5.2.2"} {
		if !strings.Contains(string(report), want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
}

func TestStoreFailure(t *testing.T) {
	e := newTestEnv(t)
	c := e.dial(t, e.mx)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	c.cmd("RCPT TO:<"+alice+">", "250 ")
	e.store.Close()
	r := c.data(simpleMessage("lost"))
	if !strings.HasPrefix(r, "451 4.3.0 ") || strings.Contains(r, "mailstore") || strings.Contains(r, "closed") {
		t.Fatalf("reply %q, want 451 4.3.0 without internal text", r)
	}
	c.cmd("RCPT TO:<"+alice+">", "502 5.5.1 ") // the transaction is over
}

func TestPipelining(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	var rcpts []string
	for i := range 50 {
		addr := "user" + itoa(i) + "@example.test"
		_, err := e.store.AddUser(ctx, addr, "pw")
		must(t, err)
		rcpts = append(rcpts, addr)
	}
	c := e.dial(t, e.mx)
	c.cmd("EHLO client.example.test", "250")
	msg := simpleMessage("pipelined")
	// RFC 2920: the whole envelope in one write, replies afterwards.
	lines := []string{"MAIL FROM:<s@elsewhere.test>"}
	for _, r := range rcpts {
		lines = append(lines, "RCPT TO:<"+r+">")
	}
	lines = append(lines, "RCPT TO:<nobody@example.test>", "DATA")
	c.send(lines...)
	c.expect("250 ")
	for range rcpts {
		c.expect("250 ")
	}
	c.expect("550 5.1.1 ")
	c.expect("354 ")
	c.send(dotStuff(msg)+".", "MAIL FROM:<s@elsewhere.test>", "RCPT TO:<"+alice+">", "DATA")
	c.expect("250 ")
	c.expect("250 ")
	c.expect("250 ")
	c.expect("354 ")
	c.send(".", "QUIT")
	c.expect("250 ")
	c.expect("221 ")
	for _, r := range rcpts {
		got := e.inbox(t, r)
		if len(got) != 1 {
			t.Fatalf("%s has %d messages", r, len(got))
		}
		trimTrace(t, got[0], msg)
	}
	if got := e.inbox(t, alice); len(got) != 1 {
		t.Fatalf("alice has %d messages, want the empty one", len(got))
	}
}

func TestChunking(t *testing.T) {
	e := newTestEnv(t)
	c := e.dial(t, e.mx)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	c.cmd("RCPT TO:<"+alice+">", "250 ")
	msg := simpleMessage("chunks") + ".\r\n..\r\nend\r\n"
	parts := []string{msg[:10], msg[10:50], "", msg[50:]}
	for i, p := range parts {
		last := ""
		if i == len(parts)-1 {
			last = " LAST"
		}
		c.conn.Write([]byte("BDAT " + itoa(len(p)) + last + "\r\n" + p))
		c.expect("250 ")
	}
	// A chunk without a transaction is read and refused.
	c.conn.Write([]byte("BDAT 5 LAST\r\nhello"))
	c.expect("502 ")
	c.cmd("NOOP", "250 ")
	got := e.inbox(t, alice)
	if len(got) != 1 {
		t.Fatalf("%d messages", len(got))
	}
	// BDAT data is not dot-stuffed: the dots are the message's.
	trimTrace(t, got[0], msg)
	if !bytes.Contains(got[0], []byte("\r\n.\r\n..\r\nend")) {
		t.Error("dots changed")
	}
}

func TestSMTPUTF8(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	_, err := e.store.AddUser(ctx, "josé@example.test", "pw")
	must(t, err)
	c := e.dial(t, e.mx)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("MAIL FROM:<zoë@elsewhere.test>", "553 5.6.7 ")
	c.cmd("MAIL FROM:<zoë@elsewhere.test> SMTPUTF8", "250 ")
	c.cmd("RCPT TO:<josé@example.test>", "250 ")
	msg := "From: zoë@elsewhere.test\r\nSubject: ¡hola!\r\n\r\nGrüße\r\n"
	if r := c.data(msg); !strings.HasPrefix(r, "250 ") {
		t.Fatal(r)
	}
	got := e.inbox(t, "josé@example.test")
	if len(got) != 1 {
		t.Fatal("not stored")
	}
	prefix := trimTrace(t, got[0], msg)
	if !strings.Contains(prefix, "Return-Path: <zoë@elsewhere.test>") || !strings.Contains(prefix, " with UTF8SMTP id ") ||
		!strings.Contains(prefix, "for <josé@example.test>") {
		t.Errorf("trace fields %q", prefix)
	}
}

func TestHeloAndSourceRoute(t *testing.T) {
	e := newTestEnv(t)
	c := e.dial(t, e.mx)
	c.cmd("HELO old.example.test", "250 ")
	c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	// RFC 5321 appendix C: a source route is ignored; the mailbox is local.
	c.cmd("RCPT TO:<@relay.remote.test:alice@example.test>", "250 ")
	if r := c.data(simpleMessage("helo")); !strings.HasPrefix(r, "250 ") {
		t.Fatal(r)
	}
	got := e.inbox(t, alice)
	if len(got) != 1 {
		t.Fatalf("%d messages", len(got))
	}
	if !strings.Contains(string(got[0]), "Received: from old.example.test ([127.0.0.1])\r\n") {
		t.Errorf("Received:\n%.300s", got[0])
	}
	if len(e.queue(t)) != 0 {
		t.Error("queued")
	}
}

func TestServeEdges(t *testing.T) {
	e := newTestEnv(t)
	noTLS := New(Config{Hostname: testHost}, e.store)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	if err := noTLS.ServeSubmissionTLS(ln); err == nil {
		t.Error("implicit TLS without a certificate")
	}
	// Without TLS, STARTTLS is not offered.
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	go noTLS.ServeMX(ln)
	c := e.dial(t, ln.Addr().String())
	if ehlo := c.cmd("EHLO client.example.test", "250"); strings.Contains(ehlo, "STARTTLS") {
		t.Errorf("STARTTLS offered without TLS:\n%s", ehlo)
	}
	c.cmd("QUIT", "221 ")
	must(t, noTLS.Shutdown(context.Background()))
	// Serving after Shutdown returns at once.
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	if err := noTLS.ServeMX(ln); err != nil {
		t.Errorf("ServeMX after Shutdown: %v", err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Error("listener still open")
	}
}
