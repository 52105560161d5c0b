package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/mailstore/limits"
)

func TestSubmissionAuthOffer(t *testing.T) {
	t.Run("loopback counts as secure", func(t *testing.T) {
		e := newTestEnv(t)
		c := e.dial(t, e.sub)
		ehlo := c.cmd("EHLO client.example.test", "250")
		if !strings.Contains(ehlo, "AUTH PLAIN LOGIN") || !strings.Contains(ehlo, "STARTTLS") {
			t.Errorf("EHLO:\n%s", ehlo)
		}
		c.cmd("AUTH PLAIN "+plainAuth(alice, alicePassword), "235 ")
	})
	t.Run("not secure: STARTTLS first", func(t *testing.T) {
		e := newTestEnv(t, insecureEverywhere)
		c := e.dial(t, e.sub)
		ehlo := c.cmd("EHLO client.example.test", "250")
		if strings.Contains(ehlo, "AUTH") {
			t.Errorf("AUTH offered without TLS:\n%s", ehlo)
		}
		c.cmd("AUTH PLAIN "+plainAuth(alice, alicePassword), "538 5.7.11 ")
		c.cmd("MAIL FROM:<"+alice+">", "530 5.7.0 ")
		c.startTLS(e.clientTLS)
		ehlo = c.cmd("EHLO client.example.test", "250")
		if !strings.Contains(ehlo, "AUTH PLAIN LOGIN") || strings.Contains(ehlo, "STARTTLS") {
			t.Errorf("EHLO under TLS:\n%s", ehlo)
		}
		c.cmd("AUTH PLAIN "+plainAuth(alice, alicePassword), "235 ")
		c.cmd("MAIL FROM:<"+alice+">", "250 ")
	})
	t.Run("allow_insecure", func(t *testing.T) {
		e := newTestEnv(t, insecureEverywhere, func(c *Config) { c.AllowInsecureAuth = true })
		c := e.dial(t, e.sub)
		if ehlo := c.cmd("EHLO client.example.test", "250"); !strings.Contains(ehlo, "AUTH PLAIN LOGIN") {
			t.Errorf("EHLO:\n%s", ehlo)
		}
		c.cmd("AUTH PLAIN "+plainAuth(alice, alicePassword), "235 ")
	})
	t.Run("implicit TLS", func(t *testing.T) {
		e := newTestEnv(t, insecureEverywhere)
		c := e.dialTLS(t)
		if c.greeting != "220 mx.example.test ESMTP Postern" {
			t.Errorf("greeting %q", c.greeting)
		}
		ehlo := c.cmd("EHLO client.example.test", "250")
		if !strings.Contains(ehlo, "AUTH PLAIN LOGIN") || strings.Contains(ehlo, "STARTTLS") {
			t.Errorf("EHLO:\n%s", ehlo)
		}
		c.cmd("AUTH PLAIN "+plainAuth(alice, alicePassword), "235 ")
	})
	t.Run("STARTTLS forgets AUTH", func(t *testing.T) {
		e := newTestEnv(t)
		c := e.dial(t, e.sub)
		c.cmd("EHLO client.example.test", "250")
		c.cmd("AUTH PLAIN "+plainAuth(alice, alicePassword), "235 ")
		c.startTLS(e.clientTLS)
		c.cmd("EHLO client.example.test", "250")
		c.cmd("MAIL FROM:<"+alice+">", "530 5.7.0 ")
	})
}

func TestSubmissionAuthMechanisms(t *testing.T) {
	e := newTestEnv(t)
	tests := []struct {
		name  string
		lines []string // client lines after EHLO
		want  []string // reply prefixes
	}{
		{"plain", []string{"AUTH PLAIN " + plainAuth(alice, alicePassword)}, []string{"235 2.0.0 "}},
		{"plain, no initial response", []string{"AUTH PLAIN", plainAuth(alice, alicePassword)}, []string{"334 ", "235 "}},
		{"plain, wrong password", []string{"AUTH PLAIN " + plainAuth(alice, "wrong")}, []string{"535 5.7.8 "}},
		{"plain, unknown user", []string{"AUTH PLAIN " + plainAuth("nobody@example.test", "x")}, []string{"535 5.7.8 "}},
		{"plain, other authorization identity", []string{"AUTH PLAIN " + base64Std(bob+"\x00"+alice+"\x00"+alicePassword)}, []string{"535 5.7.8 "}},
		{"plain, malformed", []string{"AUTH PLAIN " + base64Std("no separators")}, []string{"501 5.5.2 "}},
		{"plain, cancelled", []string{"AUTH PLAIN", "*"}, []string{"334 ", "501 "}},
		{"login", []string{"AUTH LOGIN", base64Std(alice), base64Std(alicePassword)}, []string{"334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", "235 "}},
		{"login, initial response", []string{"AUTH LOGIN " + base64Std(alice), base64Std(alicePassword)}, []string{"334 UGFzc3dvcmQ6", "235 "}},
		{"login, wrong password", []string{"AUTH LOGIN " + base64Std(alice), base64Std("nope")}, []string{"334 ", "535 5.7.8 "}},
		{"unknown mechanism", []string{"AUTH CRAM-MD5"}, []string{"504 5.5.4 "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := e.dial(t, e.sub)
			c.cmd("EHLO client.example.test", "250")
			for i, line := range tt.lines {
				c.cmd(line, tt.want[i])
			}
		})
	}
	// go-sasl's LOGIN client against our LOGIN server.
	cl, err := smtp.Dial(e.sub)
	must(t, err)
	defer cl.Close()
	must(t, cl.Auth(sasl.NewLoginClient(bob, bobPassword)))
	must(t, cl.SendMail(bob, []string{alice}, strings.NewReader(messageFrom(bob, "login"))))
}

func TestAuthFailuresRefused(t *testing.T) {
	logins := limits.NewLogins(limits.LoginPolicy{MaxFailures: 5, FailureDelay: -1})
	e := newTestEnv(t, func(c *Config) { c.Shared.Logins = logins })
	for i := range 5 {
		c := e.dial(t, e.sub)
		c.cmd("EHLO client.example.test", "250")
		c.cmd("AUTH PLAIN "+plainAuth(alice, "guess"+itoa(i)), "535 5.7.8 ")
	}
	// Blocked now, even with the right password.
	c := e.dial(t, e.sub)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("AUTH PLAIN "+plainAuth(alice, alicePassword), "454 4.7.0 ")
	// One line per failure, in the form limits writes for fail2ban.
	failLine := regexp.MustCompile(`level=WARN msg="login failed" session=\w+ proto=submission listener=submission remote=\S+ protocol=smtp remote=127\.0\.0\.1 user=alice@example\.test mechanism=PLAIN reason=`)
	if n := len(failLine.FindAllString(e.logs.String(), -1)); n != 6 {
		t.Errorf("%d failure lines, want 6:\n%s", n, e.logs.String())
	}
	// Three failures end a session.
	e.srv.sh.Logins = limits.NewLogins(limits.LoginPolicy{MaxFailures: 100, FailureDelay: -1})
	c = e.dial(t, e.sub)
	c.cmd("EHLO client.example.test", "250")
	for range 3 {
		c.cmd("AUTH PLAIN "+plainAuth(alice, "guess"), "535 5.7.8 ")
	}
	c.send("NOOP")
	c.expect("421 ")
}

func TestSubmissionSender(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	must(t, e.store.AddAlias(ctx, "alice.smith@example.test", alice))
	c := e.dial(t, e.sub)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("MAIL FROM:<"+alice+">", "530 5.7.0 ")
	c.cmd("AUTH PLAIN "+plainAuth(alice, alicePassword), "235 ")
	for _, tt := range []struct{ from, want string }{
		{alice, "250 "},
		{"ALICE@Example.Test", "250 "},
		{"alice.smith@example.test", "250 "}, // alias of alice
		{team, "250 "},                       // alias that reaches alice
		{"", "250 "},                         // null path: MDNs, notifications
		{bob, "553 5.7.1 "},
		{"alice@elsewhere.test", "553 5.7.1 "},
		{forward, "553 5.7.1 "},
		{"nobody@example.test", "553 5.7.1 "},
	} {
		c.cmd("MAIL FROM:<"+tt.from+">", tt.want)
		c.cmd("RSET", "250 ")
	}
}

func TestSubmissionDelivery(t *testing.T) {
	e := newTestEnv(t)
	c := e.dial(t, e.sub)
	c.cmd("EHLO laptop.example.test", "250")
	c.cmd("AUTH PLAIN "+plainAuth(alice, alicePassword), "235 ")
	c.cmd("MAIL FROM:<"+alice+"> RET=HDRS ENVID=env+2B1", "250 ")
	c.cmd("RCPT TO:<"+bob+"> NOTIFY=FAILURE", "250 ")
	c.cmd("RCPT TO:<dave@Remote.Test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;dave+2Bx@remote.test", "250 ")
	c.cmd("RCPT TO:<"+forward+">", "250 ")
	c.cmd("RCPT TO:<x@[192.0.2.1]>", "553 5.1.3 ")
	// No Date, no Message-ID: the submission server adds them.
	msg := "From: Alice <alice@example.test>\r\nTo: bob@example.test, dave@remote.test\r\nSubject: plans\r\n\r\nSee you.\r\n"
	if r := c.data(msg); !strings.HasPrefix(r, "250 ") {
		t.Fatal(r)
	}
	got := e.inbox(t, bob)
	if len(got) != 1 {
		t.Fatalf("bob has %d messages", len(got))
	}
	prefix := trimTrace(t, got[0], msg, "Date", "Message-ID")
	for _, re := range []string{
		`^Return-Path: <alice@example\.test>\r\n`,
		`\r\n\tby mx\.example\.test with ESMTPA id `,
		`\r\nDate: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\r\n`,
		`\r\nMessage-ID: <[^@>]+@mx\.example\.test>\r\n`,
	} {
		if !regexp.MustCompile(re).MatchString(prefix) {
			t.Errorf("trace fields do not match %s:\n%s", re, prefix)
		}
	}
	q := e.queue(t)
	if len(q) != 2 {
		t.Fatalf("queue has %d entries, want 2: %+v", len(q), q)
	}
	byRcpt := map[string]int{}
	for i, entry := range q {
		byRcpt[entry.Recipient] = i
	}
	dave, ok := byRcpt["dave@remote.test"]
	if !ok {
		t.Fatalf("dave not queued: %+v", q)
	}
	if d := q[dave]; d.Sender != alice || d.Ret != "HDRS" || d.EnvID != "env+1" || d.Notify != "SUCCESS,FAILURE" || d.ORcpt != "RFC822;dave+x@remote.test" {
		t.Errorf("DSN parameters not queued: %+v", d)
	}
	if _, ok := byRcpt[remote]; !ok {
		t.Errorf("alias to %s not queued: %+v", remote, q)
	}
	body, err := e.store.ReadBody(context.Background(), q[dave].BodyID)
	must(t, err)
	if q[dave].BodyID != q[byRcpt[remote]].BodyID || string(body) != string(got[0]) {
		t.Error("the queued copy differs from the stored one")
	}
	// Remote recipients alone: no Return-Path, which is for final delivery.
	c.cmd("MAIL FROM:<"+alice+">", "250 ")
	c.cmd("RCPT TO:<erin@remote.test>", "250 ")
	if r := c.data(simpleMessage("remote only")); !strings.HasPrefix(r, "250 ") {
		t.Fatal(r)
	}
	for _, entry := range e.queue(t) {
		if entry.Recipient == "erin@remote.test" {
			b, err := e.store.ReadBody(context.Background(), entry.BodyID)
			must(t, err)
			if !strings.HasPrefix(string(b), "Received: from laptop.example.test ") {
				t.Errorf("queued message starts %.80q", b)
			}
		}
	}
	// With Date and Message-ID present, nothing is added.
	msg = simpleMessage("dated")
	c.cmd("MAIL FROM:<"+alice+">", "250 ")
	c.cmd("RCPT TO:<"+bob+">", "250 ")
	if r := c.data(msg); !strings.HasPrefix(r, "250 ") {
		t.Fatal(r)
	}
	trimTrace(t, e.inbox(t, bob)[1], msg)
}

func TestSubmissionOverTLS(t *testing.T) {
	e := newTestEnv(t, insecureEverywhere)
	// go-smtp's client over implicit TLS (465).
	c, err := smtp.DialTLS(e.subTLS, e.clientTLS)
	must(t, err)
	defer c.Close()
	must(t, c.Auth(saslPlain(alice, alicePassword)))
	msg := simpleMessage("tls")
	must(t, c.SendMail(alice, []string{bob}, strings.NewReader(msg)))
	// And with STARTTLS (587).
	c2, err := smtp.DialStartTLS(e.sub, e.clientTLS)
	must(t, err)
	defer c2.Close()
	must(t, c2.Auth(saslPlain(alice, alicePassword)))
	must(t, c2.SendMail(alice, []string{bob}, strings.NewReader(msg)))
	got := e.inbox(t, bob)
	if len(got) != 2 {
		t.Fatalf("%d messages", len(got))
	}
	for _, b := range got {
		prefix := trimTrace(t, b, msg)
		if !regexp.MustCompile(` with ESMTPSA \(TLS1\.[23] TLS_[A-Z0-9_]+\) id `).MatchString(prefix) {
			t.Errorf("Received does not show TLS and AUTH:\n%s", prefix)
		}
	}
	// The plaintext submission port still refuses AUTH.
	c3, err := smtp.Dial(e.sub)
	must(t, err)
	defer c3.Close()
	var se *smtp.SMTPError
	if err := c3.Auth(saslPlain(alice, alicePassword)); !errors.As(err, &se) || se.Code != 502 && se.Code != 538 {
		t.Errorf("AUTH without TLS: %v", err)
	}
}

func TestTLSMinimumVersion(t *testing.T) {
	e := newTestEnv(t)
	cfg := e.clientTLS.Clone()
	cfg.MaxVersion = tls.VersionTLS11
	cfg.MinVersion = tls.VersionTLS10
	if _, err := tls.Dial("tcp", e.subTLS, cfg); err == nil {
		t.Error("TLS 1.1 handshake succeeded")
	}
}

// A remote recipient is queued with its local part as given: only the
// remote server may treat case as significant.
func TestRemoteRecipientKeepsCase(t *testing.T) {
	e := newTestEnv(t)
	if err := e.submit(t, alice, alicePassword, alice, []string{"Dave.Far@Far.TEST"}, simpleMessage("case")); err != nil {
		t.Fatal(err)
	}
	q := e.queue(t)
	if len(q) != 1 || q[0].Recipient != "Dave.Far@far.test" || q[0].Domain != "far.test" {
		t.Fatalf("queue %+v", q)
	}
}

// The relay is told at once when a submission queues something, and not
// for local mail.
func TestQueuedHook(t *testing.T) {
	var calls atomic.Int32
	e := newTestEnv(t, func(c *Config) { c.Queued = func() { calls.Add(1) } })
	if err := e.submit(t, alice, alicePassword, alice, []string{bob}, simpleMessage("local")); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("local delivery called Queued %d times", n)
	}
	if err := e.submit(t, alice, alicePassword, alice, []string{"dave@far.test"}, simpleMessage("remote")); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("remote delivery called Queued %d times, want 1", n)
	}
}
