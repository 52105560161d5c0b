package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
)

// quietDemo starts the demo's two instances (alpha.test and beta.test,
// with their DNS server) printing nothing.
func quietDemo(t testing.TB) *demo {
	t.Helper()
	d, err := startDemo(&demoOut{w: io.Discard}, scenario{quiet: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.close)
	return d
}

// relayAll runs alpha's relay until its queue is empty.
func relayAll(t testing.TB, ctx context.Context, d *demo) {
	t.Helper()
	for i := 0; i < 100; i++ {
		q, err := d.alpha.store.Queue(ctx, time.Time{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(q) == 0 {
			return
		}
		if err := d.alpha.relay.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("alpha's queue did not drain")
}

// Two Postern instances on loopback with a DNS server: alice@alpha.test
// submits to bob@beta.test, alpha's relay finds beta's MX and delivers, and
// the message arrives with beta's Received field above alpha's.
func TestRelayBetweenTwoInstances(t *testing.T) {
	ctx := context.Background()
	d := quietDemo(t)
	msg := "From: alice@alpha.test\r\nTo: bob@beta.test\r\nSubject: between instances\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@alpha.test>\r\n\r\nhello bob\r\n"
	_, err := submit(ctx, submission{addr: d.alpha.submission, mode: tlsStartTLS, tls: trustDomain(t, d.alpha), helo: "laptop.alpha.test",
		user: d.alpha.user, password: d.alpha.password, from: d.alpha.user, to: []string{d.beta.user}, msg: []byte(msg)})
	if err != nil {
		t.Fatal(err)
	}
	relayAll(t, ctx, d)
	got, err := inboxMessage(ctx, d.beta)
	if err != nil {
		t.Fatal(err)
	}
	var received []string
	for _, f := range headerFields(got) {
		if strings.EqualFold(f.name, "Received") {
			received = append(received, f.text)
		}
	}
	if len(received) != 2 || !strings.Contains(received[0], "by mx.beta.test") || !strings.Contains(received[1], "by mx.alpha.test") {
		t.Fatalf("Received fields (newest first) %q", received)
	}
	if !strings.HasPrefix(string(got), "Return-Path: <alice@alpha.test>\r\n") || !bytes.HasSuffix(got, []byte(msg)) {
		t.Fatalf("message at bob:\n%s", got)
	}
}

// BenchmarkRelayEndToEnd sends 200 messages from alice@alpha.test to
// bob@beta.test through the whole path: submission, alpha's queue, the MX
// lookup, the relay, beta's MX and mailstore. The baseline, measured in
// the same run, is 200 serial Deliver calls into a fresh store.
func BenchmarkRelayEndToEnd(b *testing.B) {
	const messages = 200
	ctx := context.Background()
	msg := func(i int) []byte {
		return []byte(fmt.Sprintf("From: alice@alpha.test\r\nTo: bob@beta.test\r\nSubject: %d\r\n\r\n%s", i, strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n", 62)))
	}
	var e2e, baseline time.Duration
	for n := 0; n < b.N; n++ {
		b.StopTimer()
		d := quietDemo(b)
		st, err := mailstore.Open(filepath.Join(b.TempDir(), "base.db"), mailstore.Options{PasswordCost: mailstore.FastPasswordHash})
		if err != nil {
			b.Fatal(err)
		}
		if err := st.AddDomain(ctx, "beta.test"); err != nil {
			b.Fatal(err)
		}
		if _, err := st.AddUser(ctx, "bob@beta.test", "x"); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		for i := 0; i < messages; i++ {
			if _, err := st.Deliver(ctx, "alice@alpha.test", []string{"bob@beta.test"}, msg(i)); err != nil {
				b.Fatal(err)
			}
		}
		baseline += time.Since(start)
		st.Close()

		start = time.Now()
		for i := 0; i < messages; i++ {
			if _, err := submit(ctx, submission{addr: d.alpha.submission, mode: tlsNone, helo: "laptop.alpha.test",
				user: d.alpha.user, password: d.alpha.password, from: d.alpha.user, to: []string{d.beta.user}, msg: msg(i)}); err != nil {
				b.Fatal(err)
			}
		}
		relayAll(b, ctx, d)
		e2e += time.Since(start)
		b.StopTimer()
		u, _ := d.beta.store.UserByAddress(ctx, d.beta.user)
		in, _ := d.beta.store.MailboxByName(ctx, u.ID, "INBOX")
		if st, err := d.beta.store.Status(ctx, in.ID); err != nil || st.Messages != messages {
			b.Fatalf("bob has %d messages, want %d (%v)", st.Messages, messages, err)
		}
		d.close()
		b.StartTimer()
	}
	b.ReportMetric(float64(messages*b.N)/e2e.Seconds(), "e2e-msgs/s")
	b.ReportMetric(float64(messages*b.N)/baseline.Seconds(), "serial-deliver-msgs/s")
}

// trustDomain is a client TLS configuration that trusts dom's generated
// certificate.
func trustDomain(t testing.TB, dom *demoDomain) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(dom.dir, selfSignedCert))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("no certificate in", dom.dir)
	}
	return &tls.Config{RootCAs: pool, ServerName: "mx." + dom.name}
}
