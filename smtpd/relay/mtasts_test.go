package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/smtpd/msgauth/msgauthtest"
)

// stsServer is beta.test's policy server: HTTPS on loopback with a
// certificate for mta-sts.beta.test from a test CA, counting fetches.
type stsServer struct {
	port    uint16
	pool    *x509.CertPool
	fetches atomic.Int32
}

func newSTSServer(t *testing.T, d *msgauthtest.DNS, policy string) *stsServer {
	t.Helper()
	cert, pool := selfSigned(t, "mta-sts.beta.test")
	s := &stsServer{pool: pool}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/.well-known/mta-sts.txt" || req.Host != "mta-sts.beta.test" {
			http.NotFound(w, req)
			return
		}
		s.fetches.Add(1)
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, policy)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	s.port = uint16(srv.Listener.Addr().(*net.TCPAddr).Port)
	d.Add(t, "mta-sts.beta.test. A 127.0.0.1")
	return s
}

// stsConfig turns MTA-STS on against srv, trusting mxPool for the MX.
func stsConfig(srv *stsServer, mxPool *x509.CertPool) func(*Config) {
	return func(c *Config) {
		c.MTASTS = true
		c.MTASTSRootCAs = srv.pool
		c.MTASTSPort = int(srv.port)
		if mxPool != nil {
			c.TLS = &tls.Config{RootCAs: mxPool}
		}
	}
}

func policy(mode string, mx ...string) string {
	s := "version: STSv1\r\nmode: " + mode + "\r\n"
	for _, m := range mx {
		s += "mx: " + m + "\r\n"
	}
	return s + "max_age: 86400\r\n"
}

// betaDNS publishes beta.test's MX and its _mta-sts record with id.
func betaDNS(t *testing.T, id string) *msgauthtest.DNS {
	d := msgauthtest.NewDNS(t)
	d.Add(t, "beta.test. MX 10 mx.beta.test.", "mx.beta.test. A 127.0.0.1")
	d.AddTXT(t, "_mta-sts.beta.test", "v=STSv1; id="+id)
	return d
}

func assertDeferred(t *testing.T, a *alpha, mx *testMX, want string) {
	t.Helper()
	q := queue(t, a.store)
	if len(q) != 1 || !strings.Contains(q[0].LastError, want) {
		t.Fatalf("queue %+v, want one entry deferred with %q", q, want)
	}
	if got := mx.received(); len(got) != 0 {
		t.Fatalf("MX received %d messages despite the policy", len(got))
	}
}

// Enforce: an MX the policy does not name is not used; the mail waits.
func TestMTASTSEnforceRefusesOtherMX(t *testing.T) {
	d := betaDNS(t, "a1")
	srv := newSTSServer(t, d, policy("enforce", "mx.other.test", "*.example.test"))
	cert, pool := selfSigned(t, "mx.beta.test")
	mx := newTestMX(t, "127.0.0.1:0", withTLS(&tls.Config{Certificates: []tls.Certificate{cert}}))
	a := newAlpha(t, d, mx.addr.Port(), stsConfig(srv, pool))
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "sts other mx")
	a.runOnce(t)
	assertDeferred(t, a, mx, "MTA-STS")
	if !strings.Contains(a.log.String(), "MX does not match the policy") {
		t.Errorf("log lacks the reason:\n%s", a.log.String())
	}
}

// Enforce: the named MX without STARTTLS is refused; with verified TLS it
// takes the mail.
func TestMTASTSEnforceRequiresTLS(t *testing.T) {
	d := betaDNS(t, "a1")
	srv := newSTSServer(t, d, policy("enforce", "*.beta.test"))
	mx := newTestMX(t, "127.0.0.1:0")
	a := newAlpha(t, d, mx.addr.Port(), stsConfig(srv, nil))
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "sts no tls")
	a.runOnce(t)
	assertDeferred(t, a, mx, "requires verified TLS")
	if strings.Contains(a.log.String(), "msg=delivered") {
		t.Fatalf("delivered without TLS:\n%s", a.log.String())
	}

	// The same domain with an MX offering verified TLS: delivered.
	cert, pool := selfSigned(t, "mx.beta.test")
	tlsMX := newTestMX(t, "127.0.0.1:0", withTLS(&tls.Config{Certificates: []tls.Certificate{cert}}))
	b := newAlpha(t, d, tlsMX.addr.Port(), stsConfig(srv, pool))
	submit(t, b.store, envelope("alice@alpha.test", "bob@beta.test"), "sts tls")
	b.runOnce(t)
	if q := queue(t, b.store); len(q) != 0 {
		t.Fatalf("queue after delivery over verified TLS: %+v", q)
	}
	if len(tlsMX.received()) != 1 {
		t.Fatalf("TLS MX received %d messages", len(tlsMX.received()))
	}
}

// Testing mode delivers and logs what enforce would have refused.
func TestMTASTSTestingDeliversAndLogs(t *testing.T) {
	d := betaDNS(t, "a1")
	srv := newSTSServer(t, d, policy("testing", "mx.other.test"))
	mx := newTestMX(t, "127.0.0.1:0")
	a := newAlpha(t, d, mx.addr.Port(), stsConfig(srv, nil))
	submit(t, a.store, envelope("alice@alpha.test", "bob@beta.test"), "sts testing")
	a.runOnce(t)
	if q := queue(t, a.store); len(q) != 0 {
		t.Fatalf("queue in testing mode: %+v", q)
	}
	if len(mx.received()) != 1 {
		t.Fatalf("MX received %d messages", len(mx.received()))
	}
	log := a.log.String()
	for _, want := range []string{"MTA-STS testing: MX does not match the policy", "MTA-STS testing: enforce would refuse this MX", "reason=\"no TLS\""} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
}

// A fetched policy is kept in the store: after a restart it applies
// without a fetch, and a new id in the TXT record makes the relay fetch
// again.
func TestMTASTSCacheSurvivesRestartAndIDChange(t *testing.T) {
	d := betaDNS(t, "a1")
	srv := newSTSServer(t, d, policy("enforce", "mx.beta.test"))
	cert, pool := selfSigned(t, "mx.beta.test")
	mx := newTestMX(t, "127.0.0.1:0", withTLS(&tls.Config{Certificates: []tls.Certificate{cert}}))
	path := filepath.Join(t.TempDir(), "alpha.db")
	ctx := context.Background()

	st, err := mailstore.Open(path, mailstore.Options{PasswordCost: mailstore.FastPasswordHash})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.AddDomain(ctx, "alpha.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddUser(ctx, "alice@alpha.test", "pw"); err != nil {
		t.Fatal(err)
	}
	a := newAlphaOn(t, st, nil, d, mx.addr.Port(), stsConfig(srv, pool))
	submit(t, st, envelope("alice@alpha.test", "bob@beta.test"), "before restart")
	a.runOnce(t)
	if n := srv.fetches.Load(); n != 1 || len(mx.received()) != 1 {
		t.Fatalf("first delivery: %d fetches, %d received", n, len(mx.received()))
	}
	st.Close()

	st = openStore(t, path, nil)
	a = newAlphaOn(t, st, nil, d, mx.addr.Port(), stsConfig(srv, pool))
	submit(t, st, envelope("alice@alpha.test", "bob@beta.test"), "after restart")
	a.runOnce(t)
	if n := srv.fetches.Load(); n != 1 || len(mx.received()) != 2 {
		t.Fatalf("after restart: %d fetches (want the cached policy), %d received", n, len(mx.received()))
	}

	// The domain publishes a new id: the policy is fetched again.
	d2 := betaDNS(t, "b2")
	d2.Add(t, "mta-sts.beta.test. A 127.0.0.1")
	a = newAlphaOn(t, st, nil, d2, mx.addr.Port(), stsConfig(srv, pool))
	submit(t, st, envelope("alice@alpha.test", "bob@beta.test"), "new id")
	a.runOnce(t)
	if n := srv.fetches.Load(); n != 2 || len(mx.received()) != 3 {
		t.Fatalf("after the id changed: %d fetches, want 2; %d received", n, len(mx.received()))
	}
	if p, err := st.MTASTSPolicyOf(ctx, "beta.test"); err != nil || p.ID != "b2" {
		t.Fatalf("cached policy %+v, %v; want id b2", p, err)
	}
}

func TestSTSPolicyParseAndMatch(t *testing.T) {
	p, err := parseSTSPolicy([]byte("version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 9999999999\nextra: ignored\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p.maxAge != maxPolicyAge {
		t.Errorf("max_age %v, want capped at a year", p.maxAge)
	}
	for host, want := range map[string]bool{"mail.example.com": true, "MAIL.example.com.": true, "a.example.net": true,
		"a.b.example.net": false, "example.net": false, "other.example.com": false} {
		if p.matches(host) != want {
			t.Errorf("matches(%q) = %v", host, !want)
		}
	}
	for _, bad := range []string{"mode: enforce\nmx: a\nmax_age: 1\n", "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
		"version: STSv1\nmode: enforce\nmax_age: 1\n", "version: STSv1\nmode: testing\nmx: a\n"} {
		if _, err := parseSTSPolicy([]byte(bad)); err == nil {
			t.Errorf("policy %q accepted", bad)
		}
	}
}
