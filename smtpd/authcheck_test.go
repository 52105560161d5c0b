package smtpd

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/postern/postern/smtpd/msgauth"
	"github.com/postern/postern/smtpd/msgauth/msgauthtest"
)

// Keys are made once per test binary: RSA-2048 takes a while.
var (
	keysOnce sync.Once
	keysMade map[string][]msgauth.Key
)

func dkimKeys(t testing.TB, domain string) []msgauth.Key {
	t.Helper()
	keysOnce.Do(func() {
		keysMade = map[string][]msgauth.Key{}
		for _, d := range []string{testDomain, "alpha.test"} {
			k, err := msgauth.GenerateKeys(d, time.Now().Add(-time.Hour))
			if err != nil {
				panic(err)
			}
			keysMade[d] = k
		}
	})
	return keysMade[domain]
}

// authWorld is a test server with inbound checks against a loopback DNS
// server and signing with example.test's keys, which the DNS publishes.
// alpha.test is a remote domain that signs, with SPF for 127.0.0.1
// and p=reject; the test client comes from 127.0.0.1.
type authWorld struct {
	*testEnv
	dns *msgauthtest.DNS
}

func newAuthWorld(t testing.TB, opts ...func(*Config)) *authWorld {
	t.Helper()
	d := msgauthtest.NewDNS(t)
	for _, dom := range []string{testDomain, "alpha.test"} {
		for _, k := range dkimKeys(t, dom) {
			d.AddTXT(t, k.DNSName(), k.DNSRecord())
		}
	}
	d.Add(t,
		`alpha.test. 300 TXT "v=spf1 ip4:127.0.0.1 -all"`,
		`_dmarc.alpha.test. 300 TXT "v=DMARC1; p=reject"`,
		`rejecting.test. 300 TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`_dmarc.rejecting.test. 300 TXT "v=DMARC1; p=reject"`,
		`quarantining.test. 300 TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`_dmarc.quarantining.test. 300 TXT "v=DMARC1; p=quarantine"`,
		`spffail.test. 300 TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`plain.test. 300 MX 10 mx.plain.test.`,
		`mx.plain.test. 300 A 192.0.2.9`,
		`example.test. 300 MX 10 mx.example.test.`,
	)
	r, err := msgauth.NewResolver(msgauth.ResolverConfig{Server: d.Addr, Timeout: 300 * time.Millisecond})
	must(t, err)
	ks := &msgauth.MemKeyStore{}
	ks.Add(dkimKeys(t, testDomain)...)
	all := append([]func(*Config){func(c *Config) {
		c.Checks = &msgauth.Checker{Resolver: r, Timeout: 3 * time.Second}
		c.Signer = &msgauth.Signer{Keys: ks}
	}}, opts...)
	return &authWorld{testEnv: newTestEnv(t, all...), dns: d}
}

// sendMX sends one message on the MX and returns the reply to its data.
func (w *authWorld) sendMX(t *testing.T, from, to, msg string) string {
	t.Helper()
	c := w.dial(t, w.mx)
	c.cmd("EHLO client.alpha.test", "250")
	c.cmd("MAIL FROM:<"+from+">", "250 ")
	c.cmd("RCPT TO:<"+to+">", "250 ")
	return c.data(msg)
}

// verify checks the DKIM signatures of a stored message against the
// world's DNS with go-msgauth.
func (w *authWorld) verify(t *testing.T, msg []byte) []*dkim.Verification {
	t.Helper()
	r, err := msgauth.NewResolver(msgauth.ResolverConfig{Server: w.dns.Addr})
	must(t, err)
	v, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{LookupTXT: r.TXTFunc(context.Background())})
	must(t, err)
	return v
}

// arField returns the Authentication-Results field of a stored message,
// unfolded, or "".
func arField(msg []byte) string {
	s := string(msg)
	i := strings.Index(s, "Authentication-Results:")
	if i < 0 {
		return ""
	}
	rest := s[i:]
	end := 0
	for {
		n := strings.Index(rest[end:], "\r\n")
		end += n + 2
		if end >= len(rest) || (rest[end] != '\t' && rest[end] != ' ') {
			break
		}
	}
	return strings.NewReplacer("\r\n\t", " ", "\r\n", "").Replace(rest[:end])
}

// TestSubmissionSigned: a submitted message is signed with both keys
// of its From domain, whether stored locally or queued, and the
// signatures verify.
func TestSubmissionSigned(t *testing.T) {
	w := newAuthWorld(t)
	msg := simpleMessage("signed")
	must(t, w.submit(t, alice, alicePassword, alice, []string{bob, remote}, msg))
	got := w.inbox(t, bob)
	if len(got) != 1 {
		t.Fatalf("%d messages for bob", len(got))
	}
	if n := bytes.Count(got[0], []byte("DKIM-Signature:")); n != 2 {
		t.Fatalf("%d signatures:\n%s", n, got[0])
	}
	if !bytes.HasPrefix(got[0], []byte("Return-Path: <alice@example.test>\r\nDKIM-Signature:")) {
		t.Errorf("field order:\n%.300s", got[0])
	}
	for _, v := range w.verify(t, got[0]) {
		if v.Err != nil || v.Domain != testDomain {
			t.Errorf("signature of %s: %v", v.Domain, v.Err)
		}
	}
	q := w.queue(t)
	if len(q) != 1 {
		t.Fatalf("%d queued", len(q))
	}
	body, err := w.store.ReadBody(context.Background(), q[0].BodyID)
	must(t, err)
	if !bytes.Contains(body, []byte("DKIM-Signature:")) {
		t.Error("queued copy not signed")
	}
	// Date and Message-ID added at submission are signed too.
	bare := "From: alice@example.test\r\nTo: bob@example.test\r\nSubject: bare\r\n\r\nHi.\r\n"
	must(t, w.submit(t, alice, alicePassword, alice, []string{bob}, bare))
	got = w.inbox(t, bob)
	for _, v := range w.verify(t, got[1]) {
		if v.Err != nil || !strings.Contains(strings.ToLower(strings.Join(v.HeaderKeys, ":")), "date:message-id") {
			t.Errorf("signature over %v: %v", v.HeaderKeys, v.Err)
		}
	}
	// The MX does not sign.
	if reply := w.sendMX(t, "x@alpha.test", bob, messageFrom("x@alpha.test", "in")); !strings.HasPrefix(reply, "250 ") {
		t.Fatalf("MX: %s", reply)
	}
	if got := w.inbox(t, bob); bytes.Contains(got[2][:bytes.Index(got[2], []byte("From:"))], []byte("d=example.test")) {
		t.Error("a message received on the MX was signed")
	}
}

// TestInboundAuthResults: mail signed by alpha.test from an address its
// SPF allows gets spf, dkim and dmarc pass in an Authentication-Results
// field with our name; one forged with our name is removed first, one
// with another name kept. Submission adds none.
func TestInboundAuthResults(t *testing.T) {
	w := newAuthWorld(t)
	msg := messageFrom("Alice <alice@alpha.test>", "checked")
	fields, err := msgauth.Sign([]byte(msg), dkimKeys(t, "alpha.test"), time.Now())
	must(t, err)
	forged := "Authentication-Results: mx.example.test; dkim=pass header.d=example.test\r\n" +
		"Authentication-Results: other.test; spf=pass\r\n"
	if reply := w.sendMX(t, "alice@alpha.test", bob, forged+fields+msg); !strings.HasPrefix(reply, "250 ") {
		t.Fatalf("reply %s\n%s", reply, w.logs)
	}
	got := w.inbox(t, bob)[0]
	ar := arField(got)
	for _, want := range []string{"Authentication-Results: mx.example.test;", "spf=pass smtp.mailfrom=alpha.test",
		"dkim=pass header.a=ed25519-sha256 header.d=alpha.test", "dkim=pass header.a=rsa-sha256 header.d=alpha.test",
		"dmarc=pass header.from=alpha.test"} {
		if !strings.Contains(ar, want) {
			t.Errorf("Authentication-Results lacks %q:\n%s", want, ar)
		}
	}
	if n := bytes.Count(got, []byte("Authentication-Results: mx.example.test")); n != 1 {
		t.Errorf("%d fields with our authserv-id:\n%s", n, got)
	}
	if !bytes.Contains(got, []byte("Authentication-Results: other.test; spf=pass")) {
		t.Error("another server's field removed")
	}
	must(t, w.submit(t, alice, alicePassword, alice, []string{bob}, simpleMessage("sub")))
	if got := w.inbox(t, bob)[1]; bytes.Contains(got, []byte("Authentication-Results")) {
		t.Errorf("submission got Authentication-Results:\n%s", got)
	}
}

// TestInboundPolicy: each result and its action, over real SMTP.
func TestInboundPolicy(t *testing.T) {
	t.Run("dmarc reject", func(t *testing.T) {
		w := newAuthWorld(t)
		reply := w.sendMX(t, "a@rejecting.test", bob, messageFrom("a@rejecting.test", "r"))
		if !strings.HasPrefix(reply, "550 5.7.1 ") {
			t.Errorf("reply %q", reply)
		}
		if n := len(w.inbox(t, bob)); n != 0 {
			t.Errorf("%d messages stored", n)
		}
	})
	t.Run("dmarc reject accepted by policy", func(t *testing.T) {
		w := newAuthWorld(t, func(c *Config) { c.CheckPolicy.DMARCReject = ActionAccept })
		if reply := w.sendMX(t, "a@rejecting.test", bob, messageFrom("a@rejecting.test", "r")); !strings.HasPrefix(reply, "250 ") {
			t.Fatalf("reply %q", reply)
		}
		if ar := arField(w.inbox(t, bob)[0]); !strings.Contains(ar, "dmarc=fail header.from=rejecting.test") {
			t.Errorf("field %s", ar)
		}
	})
	t.Run("dmarc quarantine", func(t *testing.T) {
		w := newAuthWorld(t)
		if reply := w.sendMX(t, "a@quarantining.test", bob, messageFrom("a@quarantining.test", "q")); !strings.HasPrefix(reply, "250 ") {
			t.Fatalf("reply %q", reply)
		}
		// Into bob's \Junk mailbox, not INBOX, with the result recorded.
		if n := len(w.inbox(t, bob)); n != 0 {
			t.Errorf("%d messages in INBOX", n)
		}
		junk := w.mailbox(t, bob, "Junk")
		if len(junk) != 1 {
			t.Fatalf("%d messages in Junk", len(junk))
		}
		if ar := arField(junk[0]); !strings.Contains(ar, "dmarc=fail") {
			t.Errorf("field %s", ar)
		}
		if !strings.Contains(w.logs.String(), "junk=true mailbox=Junk") {
			t.Errorf("log does not say junk:\n%s", w.logs)
		}
	})
	t.Run("dmarc quarantine creates Junk", func(t *testing.T) {
		w := newAuthWorld(t)
		ctx := context.Background()
		u, err := w.store.UserByAddress(ctx, bob)
		must(t, err)
		must(t, w.store.DeleteMailbox(ctx, u.ID, "Junk"))
		if reply := w.sendMX(t, "a@quarantining.test", bob, messageFrom("a@quarantining.test", "q")); !strings.HasPrefix(reply, "250 ") {
			t.Fatalf("reply %q", reply)
		}
		mb, err := w.store.MailboxByName(ctx, u.ID, "Junk")
		must(t, err)
		if mb.SpecialUse != `\Junk` || !mb.Subscribed {
			t.Errorf("Junk created as %+v", mb)
		}
		if n := len(w.mailbox(t, bob, "Junk")); n != 1 {
			t.Errorf("%d messages in Junk", n)
		}
	})
	t.Run("spf fail without dmarc", func(t *testing.T) {
		w := newAuthWorld(t)
		if reply := w.sendMX(t, "a@spffail.test", bob, messageFrom("a@spffail.test", "s")); !strings.HasPrefix(reply, "250 ") {
			t.Fatalf("reply %q", reply)
		}
		if ar := arField(w.inbox(t, bob)[0]); !strings.Contains(ar, "spf=fail smtp.mailfrom=spffail.test") || !strings.Contains(ar, "dmarc=none") {
			t.Errorf("field %s", ar)
		}
		w = newAuthWorld(t, func(c *Config) { c.CheckPolicy.SPFFail = ActionReject })
		if reply := w.sendMX(t, "a@spffail.test", bob, messageFrom("a@spffail.test", "s")); !strings.HasPrefix(reply, "550 5.7.1 ") {
			t.Errorf("with spf_fail = reject: %q", reply)
		}
	})
	t.Run("only MX and A records", func(t *testing.T) {
		w := newAuthWorld(t)
		if reply := w.sendMX(t, "a@plain.test", bob, messageFrom("a@plain.test", "p")); !strings.HasPrefix(reply, "250 ") {
			t.Fatalf("reply %q", reply)
		}
		if ar := arField(w.inbox(t, bob)[0]); !strings.Contains(ar, "spf=none") || !strings.Contains(ar, "dkim=none") || !strings.Contains(ar, "dmarc=none") {
			t.Errorf("field %s", ar)
		}
	})
}

// TestInboundTempError: a DNS server that does not answer delays a
// message no more than the check timeout; it is accepted with temperror,
// or deferred with 451 4.4.3 when the policy says so.
func TestInboundTempError(t *testing.T) {
	silent := func(c *Config) {
		r, err := msgauth.NewResolver(msgauth.ResolverConfig{Server: msgauthtest.Silent(t), Timeout: 200 * time.Millisecond})
		must(t, err)
		c.Checks = &msgauth.Checker{Resolver: r, Timeout: 2 * time.Second}
	}
	w := newAuthWorld(t, silent)
	start := time.Now()
	if reply := w.sendMX(t, "a@alpha.test", bob, messageFrom("a@alpha.test", "t")); !strings.HasPrefix(reply, "250 ") {
		t.Fatalf("reply %q", reply)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("delivery took %v", took)
	}
	if ar := arField(w.inbox(t, bob)[0]); !strings.Contains(ar, "spf=temperror") || !strings.Contains(ar, "dmarc=temperror") {
		t.Errorf("field %s", ar)
	}
	w = newAuthWorld(t, silent, func(c *Config) { c.CheckPolicy.TempError = ActionDefer })
	if reply := w.sendMX(t, "a@alpha.test", bob, messageFrom("a@alpha.test", "t")); !strings.HasPrefix(reply, "451 4.4.3 ") {
		t.Errorf("with temperror = defer: %q", reply)
	}
}

// TestSpoofOwnDomain: mail claiming example.test, ours, from a client that
// did not log in is refused unless SPF or DKIM passes for example.test,
// although example.test publishes no SPF or DMARC record here.
func TestSpoofOwnDomain(t *testing.T) {
	w := newAuthWorld(t)
	cases := []struct{ from, header string }{
		{alice, "Alice <alice@example.test>"},          // MAIL FROM and From
		{"x@alpha.test", "Alice <alice@example.test>"}, // From only; SPF passes for alpha.test
		{alice, "x@plain.test"},                        // MAIL FROM only
	}
	for _, tc := range cases {
		reply := w.sendMX(t, tc.from, bob, messageFrom(tc.header, "spoof"))
		if !strings.HasPrefix(reply, "550 5.7.1 ") {
			t.Errorf("MAIL FROM <%s>, From %s: %q", tc.from, tc.header, reply)
		}
	}
	if n := len(w.inbox(t, bob)); n != 0 {
		t.Fatalf("%d spoofed messages stored", n)
	}
	// Signed by example.test's key (as our submission does), it passes.
	msg := messageFrom("Alice <alice@example.test>", "relayed")
	fields, err := msgauth.Sign([]byte(msg), dkimKeys(t, testDomain), time.Now())
	must(t, err)
	if reply := w.sendMX(t, "x@alpha.test", bob, fields+msg); !strings.HasPrefix(reply, "250 ") {
		t.Errorf("signed by our key: %q", reply)
	}
	// And when our SPF names the client, too (a new world: the answer
	// without it is cached).
	w = newAuthWorld(t)
	w.dns.Add(t, `example.test. 300 TXT "v=spf1 ip4:127.0.0.1 -all"`)
	if reply := w.sendMX(t, alice, bob, messageFrom("Alice <alice@example.test>", "spf")); !strings.HasPrefix(reply, "250 ") {
		t.Errorf("SPF pass for our domain: %q", reply)
	}
}
