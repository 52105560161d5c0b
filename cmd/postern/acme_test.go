package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/postern/postern/mailstore/storetest"
)

// pebble is Let's Encrypt's test CA, started by a test.
type pebble struct {
	directory string // ACME directory URL
	caFile    string // the certificate of pebble's own HTTPS, to trust
	mgmt      string // management interface base URL
	client    *http.Client
	log       *storetest.SyncBuffer
}

// startPebble runs pebble on loopback. It checks challenges for real
// (PEBBLE_VA_ALWAYS_VALID is not set), resolving names through dnsAddr and
// connecting to tlsPort for TLS-ALPN-01 and httpPort for HTTP-01; its
// certificates are valid for validity.
func startPebble(t *testing.T, dnsAddr string, tlsPort, httpPort int, validity time.Duration) *pebble {
	t.Helper()
	bin, err := exec.LookPath("pebble")
	if err != nil {
		if os.Getenv("POSTERN_REQUIRE_INTEROP") == "1" {
			t.Fatalf("pebble (Debian package pebble) is needed: %v", err)
		}
		t.Skipf("pebble missing (Debian package pebble): %v", err)
	}
	dir := t.TempDir()
	p := &pebble{caFile: filepath.Join(dir, "cert.pem")}
	if err := writeSelfSigned("localhost", p.caFile, filepath.Join(dir, "key.pem")); err != nil {
		t.Fatal(err)
	}
	acmePort, mgmtPort := storetest.FreePort(t), storetest.FreePort(t)
	conf := map[string]any{"pebble": map[string]any{
		"listenAddress":             fmt.Sprintf("127.0.0.1:%d", acmePort),
		"managementListenAddress":   fmt.Sprintf("127.0.0.1:%d", mgmtPort),
		"certificate":               p.caFile,
		"privateKey":                filepath.Join(dir, "key.pem"),
		"httpPort":                  httpPort,
		"tlsPort":                   tlsPort,
		"ocspResponderURL":          "",
		"certificateValidityPeriod": int(validity.Seconds()),
	}}
	data, _ := json.Marshal(conf)
	confFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(confFile, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-config", confFile, "-dnsserver", dnsAddr)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PEBBLE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	// Real challenge checks (no PEBBLE_VA_ALWAYS_VALID), without the
	// random delays.
	cmd.Env = append(cmd.Env, "PEBBLE_VA_NOSLEEP=1")
	log := &storetest.SyncBuffer{}
	p.log = log
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("pebble's log:\n%s", log.String())
		}
	})
	p.directory = fmt.Sprintf("https://127.0.0.1:%d/dir", acmePort)
	p.mgmt = fmt.Sprintf("https://127.0.0.1:%d", mgmtPort)
	certs, err := loadCAFile(p.caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(certs[0])
	p.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := p.client.Get(p.directory)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble did not answer at %s: %v\n%s", p.directory, err, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// roots is the pool of pebble's root for the certificates it issues.
func (p *pebble) roots(t *testing.T) *x509.CertPool {
	t.Helper()
	resp, err := p.client.Get(p.mgmt + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		t.Fatalf("pebble's root: %q", data)
	}
	return pool
}

// verifiedSerial opens a TLS connection to addr naming serverName (none
// when empty), verifies the certificate against roots for
// mail.example.test and returns its serial.
func verifiedSerial(t *testing.T, addr, serverName string, roots *x509.CertPool) *big.Int {
	t.Helper()
	var cert *x509.Certificate
	conf := &tls.Config{ServerName: serverName, InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			cert = cs.PeerCertificates[0]
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cert.Verify(x509.VerifyOptions{DNSName: "mail.example.test", Roots: roots, Intermediates: inter})
			return err
		}}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 30 * time.Second}, "tcp", addr, conf)
	if err != nil {
		t.Fatalf("TLS to %s (server name %q): %v", addr, serverName, err)
	}
	conn.Close()
	return cert.SerialNumber
}

func TestACMEWithPebble(t *testing.T) {
	dnsAddr := mxTestDNS(t,
		"mail.example.test. A 127.0.0.1",
		"autoconfig.example.test. A 127.0.0.1",
	)
	httpsPort := storetest.FreePort(t)
	// 30 s certificates: autocert renews at two thirds of the lifetime.
	p := startPebble(t, dnsAddr, httpsPort, 1, 30*time.Second)
	r := startServeDNS(t, dnsAddr, fmt.Sprintf(`[tls]
acme = true
acme_email = "postmaster@example.test"
acme_directory = %q
acme_ca = %q
[http]
listen_tls = "127.0.0.1:%d"
`, p.directory, p.caFile, httpsPort))
	r.addUser(t, "bob@example.test", "bob's password")
	roots := p.roots(t)

	// The certificate comes from the CA (checked by TLS-ALPN-01 on the
	// HTTPS listener) and is the one IMAPS and SMTPS present, with or
	// without a server name in the client's hello. serve asks for it at
	// start; wait for that.
	r.waitLog(t, `msg="TLS certificate from ACME"`, 60*time.Second)
	serial := verifiedSerial(t, r.addrs["imaps"], "mail.example.test", roots)
	if got := verifiedSerial(t, r.addrs["submissions"], "mail.example.test", roots); got.Cmp(serial) != 0 {
		t.Errorf("submissions presents serial %x, imaps %x", got, serial)
	}
	if got := verifiedSerial(t, r.addrs["imaps"], "", roots); got.Cmp(serial) != 0 {
		t.Errorf("imaps without a server name presents serial %x, want %x", got, serial)
	}
	if got := verifiedSerial(t, r.addrs["pop3s"], "unknown.example.test", roots); got.Cmp(serial) != 0 {
		t.Errorf("pop3s for an unknown name presents serial %x, want the hostname's %x", got, serial)
	}

	// A session opened now outlives the renewal.
	c, err := imapclient.DialTLS(r.addrs["imaps"], &imapclient.Options{TLSConfig: &tls.Config{ServerName: "mail.example.test", RootCAs: roots}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("bob@example.test", "bob's password").Wait(); err != nil {
		t.Fatal(err)
	}

	// The cache is private.
	cache := filepath.Join(r.dataDir, acmeCacheDir)
	fi, err := os.Stat(cache)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("acme cache %s: %v %v", cache, fi.Mode(), err)
	}
	entries, _ := os.ReadDir(cache)
	if len(entries) < 2 {
		t.Errorf("acme cache holds %d files, want the account key and the certificate", len(entries))
	}
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && fi.Mode().Perm() != 0o600 {
			t.Errorf("acme cache file %s has mode %v, want 0600", e.Name(), fi.Mode().Perm())
		}
	}

	// Renewal without a restart: new connections get a new certificate
	// before the first expires.
	deadline := time.Now().Add(40 * time.Second)
	for {
		got := verifiedSerial(t, r.addrs["imaps"], "mail.example.test", roots)
		if got.Cmp(serial) != 0 {
			if s := verifiedSerial(t, r.addrs["submissions"], "mail.example.test", roots); s.Cmp(got) != 0 {
				t.Errorf("after renewal submissions presents %x, imaps %x", s, got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("certificate %x not renewed\n%s", serial, r.stderr.String())
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err := c.Noop().Wait(); err != nil {
		t.Errorf("session opened before the renewal: NOOP: %v", err)
	}
	// Only TLS-ALPN-01 is offered (no listen_acme for HTTP-01), and
	// pebble checks it for real.
	if !strings.Contains(p.log.String(), "set VALID by completed challenge") {
		t.Errorf("pebble validated no challenge")
	}
}

func TestACMEConfigErrors(t *testing.T) {
	for _, tc := range []struct{ body, key string }{
		{"[tls]\nacme_email = \"a@example.com\"\n", "tls.acme_email"},
		{"[http]\nlisten_acme = \":80\"\n", "http.listen_acme"},
		{"[tls]\nacme = true\ncert = \"c.pem\"\nkey = \"k.pem\"\n", "tls.acme"},
		{"[tls]\nacme = true\nacme_directory = \"http://ca.example/dir\"\n", "tls.acme_directory"},
		{"[tls]\nacme = true\nacme_ca = \"/nonexistent/ca.pem\"\n", "tls.acme_ca"},
		{"[tls]\nacme = true\nacme_email = \"not an address\"\n", "tls.acme_email"},
		{"hostname = \"mailhost\"\n[tls]\nacme = true\n", "tls.acme"},
	} {
		body := tc.body
		if !strings.HasPrefix(body, "hostname") {
			body = "hostname = \"mail.example.com\"\n" + body
		}
		_, err := parseConfig("t.toml", []byte(body))
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.key)) {
			t.Errorf("%q: error %v, want one naming %s", tc.body, err, tc.key)
		}
	}
	if _, err := parseConfig("t.toml", []byte("hostname = \"mail.example.com\"\n[tls]\nacme = true\nacme_email = \"a@example.com\"\n[http]\nlisten_acme = \":80\"\n")); err != nil {
		t.Errorf("a good ACME configuration: %v", err)
	}
}

// TestACMEHTTP01 has no HTTPS listener: the CA's TLS-ALPN-01 check finds
// nothing on its port, and the certificate comes through HTTP-01 on
// http.listen_acme, which sends every other request to https.
func TestACMEHTTP01(t *testing.T) {
	dnsAddr := mxTestDNS(t, "mail.example.test. A 127.0.0.1")
	httpPort := storetest.FreePort(t)
	p := startPebble(t, dnsAddr, storetest.FreePort(t), httpPort, time.Hour)
	r := startServeDNS(t, dnsAddr, fmt.Sprintf(`[tls]
acme = true
acme_directory = %q
acme_ca = %q
[http]
listen_acme = "127.0.0.1:%d"
`, p.directory, p.caFile, httpPort))
	roots := p.roots(t)
	r.waitLog(t, `msg="TLS certificate from ACME"`, 60*time.Second)
	verifiedSerial(t, r.addrs["imaps"], "mail.example.test", roots)

	client := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/mail/config-v1.1.xml?emailaddress=a%%40example.test", httpPort), nil)
	req.Host = "autoconfig.example.test"
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusFound ||
		loc != "https://autoconfig.example.test/mail/config-v1.1.xml?emailaddress=a%40example.test" {
		t.Errorf("plain request on listen_acme: %d to %q, want a redirect to https", resp.StatusCode, loc)
	}
}
