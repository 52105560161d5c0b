package main

// Certificates from an ACME CA (RFC 8555), such as Let's Encrypt, with
// golang.org/x/crypto/acme/autocert: [tls] acme = true.
//
// One autocert.Manager serves every TLS listener through GetCertificate
// (SMTP STARTTLS, 465, 993, 995 and HTTPS), so a renewed certificate
// reaches new connections without a restart while open sessions keep
// theirs. The names asked for are the mail hostname and the autoconfig.
// and mta-sts. names of the local domains (read again from the store when
// a name is not known, so that `postern domain add` needs no restart).
// The CA checks control of a name with TLS-ALPN-01 (RFC 8737) on any TLS
// listener it reaches on port 443, or with HTTP-01 on [http] listen_acme
// (port 80), which redirects every other request to https.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
)

// acmeCacheDir is where certificates and the account key are kept, inside
// data_dir.
const acmeCacheDir = "acme"

// acmeHostsRefresh bounds how often the names are read again from the
// store: at most this often, and only when a name is asked for.
const acmeHostsRefresh = 10 * time.Second

// validateACME checks the ACME keys of [tls] and http.listen_acme.
func (c *Config) validateACME(bad func(key, format string, args ...any)) {
	t := c.TLS
	if !t.ACME {
		for key, set := range map[string]bool{"tls.acme_email": t.ACMEEmail != "", "tls.acme_directory": t.ACMEDirectory != "",
			"tls.acme_ca": t.ACMECA != "", "http.listen_acme": c.HTTP.ListenACME != ""} {
			if set {
				bad(key, "is used only with tls.acme = true")
			}
		}
		return
	}
	if t.Cert != "" || t.Key != "" {
		bad("tls.acme", "cannot be used with tls.cert and tls.key: choose certificate files or ACME")
	}
	if !strings.Contains(c.Hostname, ".") {
		bad("tls.acme", "needs a hostname that is a public DNS name, not %q: a CA issues no certificate for it", c.Hostname)
	}
	if t.ACMEDirectory != "" {
		if u, err := url.Parse(t.ACMEDirectory); err != nil || u.Scheme != "https" || u.Host == "" {
			bad("tls.acme_directory", "must be an https:// URL, not %q", t.ACMEDirectory)
		}
	}
	if t.ACMEEmail != "" && (!strings.Contains(t.ACMEEmail, "@") || strings.ContainsAny(t.ACMEEmail, " <>")) {
		bad("tls.acme_email", "must be an address such as postmaster@example.com, not %q", t.ACMEEmail)
	}
	if t.ACMECA != "" {
		if _, err := loadCAFile(t.ACMECA); err != nil {
			bad("tls.acme_ca", "%v", err)
		}
	}
}

// loadCAFile reads the PEM certificates in path, to trust.
func loadCAFile(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return certs, nil
}

// acmeCerts is the ACME certificate source of serve.
type acmeCerts struct {
	m        *autocert.Manager
	hostname string
	store    *mailstore.Store
	log      *slog.Logger

	mu        sync.Mutex
	hosts     map[string]bool
	refreshed time.Time
	serials   map[string]string // name -> serial last logged
}

// newACME makes the certificate manager for cfg. Nothing is asked of the
// CA until a certificate is needed (see prefetch).
func newACME(cfg *Config, store *mailstore.Store, log *slog.Logger) (*acmeCerts, error) {
	dir := filepath.Join(cfg.DataDir, acmeCacheDir)
	// The account key and the certificates' private keys are in it.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("acme cache: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("acme cache: %w", err)
	}
	directory := cfg.TLS.ACMEDirectory
	if directory == "" {
		directory = autocert.DefaultACMEDirectory
	}
	client := &acme.Client{DirectoryURL: directory, UserAgent: "postern/" + version}
	if cfg.TLS.ACMECA != "" {
		certs, err := loadCAFile(cfg.TLS.ACMECA)
		if err != nil {
			return nil, fmt.Errorf("tls.acme_ca: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		for _, c := range certs {
			pool.AddCert(c)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		client.HTTPClient = &http.Client{Transport: tr, Timeout: 2 * time.Minute}
	}
	a := &acmeCerts{hostname: cfg.Hostname, store: store, log: log.With("part", "acme"), serials: map[string]string{}}
	a.m = &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		Cache:      autocert.DirCache(dir),
		HostPolicy: a.hostPolicy,
		Email:      cfg.TLS.ACMEEmail,
		Client:     client,
	}
	a.log.Info("certificates from ACME", "directory", directory, "hostname", cfg.Hostname, "cache", dir)
	return a, nil
}

// names is the set of names certificates are asked for, read again from
// the store when older than acmeHostsRefresh (or when force is set and
// the set is older than that).
func (a *acmeCerts) names(ctx context.Context) map[string]bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.hosts != nil && time.Since(a.refreshed) < acmeHostsRefresh {
		return a.hosts
	}
	hosts := map[string]bool{a.hostname: true}
	domains, err := a.store.Domains(ctx)
	if err != nil {
		a.log.Warn("cannot read the local domains for the certificate names", "err", err)
		if a.hosts != nil {
			return a.hosts
		}
	}
	for _, d := range domains {
		hosts["autoconfig."+d] = true
		hosts["mta-sts."+d] = true
	}
	a.hosts, a.refreshed = hosts, time.Now()
	return hosts
}

// hostPolicy allows the mail hostname and the autoconfig. and mta-sts.
// names of the local domains.
// HTTP-01 requests give it the Host header, which may carry a port.
func (a *acmeCerts) hostPolicy(ctx context.Context, host string) error {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if a.names(ctx)[strings.ToLower(strings.TrimSuffix(host, "."))] {
		return nil
	}
	return fmt.Errorf("acme: no certificate for %q: it is neither the hostname nor an autoconfig. or mta-sts. name of a local domain", host)
}

// getCertificate is the GetCertificate of every TLS listener. A client
// that names no server (mail clients often do not) or a name this server
// has no certificate for gets the hostname's certificate, so that it sees
// a certificate it can check against the name it dialled.
func (a *acmeCerts) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acme.ALPNProto {
		return a.m.GetCertificate(hello) // a TLS-ALPN-01 check by the CA
	}
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if name == "" || !a.names(context.Background())[name] {
		h := *hello
		h.ServerName = a.hostname
		hello = &h
	}
	cert, err := a.m.GetCertificate(hello)
	if err != nil {
		a.log.Error("ACME certificate not obtained", "name", hello.ServerName, "err", err)
		return nil, err
	}
	a.logNew(hello.ServerName, cert)
	return cert, nil
}

// logNew logs a certificate the first time it is served for name.
func (a *acmeCerts) logNew(name string, cert *tls.Certificate) {
	leaf := cert.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return
		}
	}
	serial := leaf.SerialNumber.Text(16)
	a.mu.Lock()
	seen := a.serials[name] == serial
	a.serials[name] = serial
	a.mu.Unlock()
	if !seen {
		a.log.Info("TLS certificate from ACME", "name", name, "serial", serial, "issuer", leaf.Issuer.String(),
			"not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
}

// tlsConfig is the server configuration of every TLS listener. A client
// hello that offers only acme-tls/1 is the CA's TLS-ALPN-01 check: it
// gets a configuration that negotiates that protocol whatever the
// listener's own NextProtos (the HTTPS listener sets http/1.1).
func (a *acmeCerts) tlsConfig() *tls.Config {
	challenge := &tls.Config{
		GetCertificate: a.m.GetCertificate,
		NextProtos:     []string{acme.ALPNProto},
		MinVersion:     tls.VersionTLS12,
	}
	return &tls.Config{
		GetCertificate: a.getCertificate,
		MinVersion:     tls.VersionTLS12,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			if slices.Equal(hello.SupportedProtos, []string{acme.ALPNProto}) {
				return challenge, nil
			}
			return nil, nil
		},
	}
}

// prefetch obtains the hostname's certificate at start, so that the
// first client does not wait for the CA; failures are retried with
// backoff until ctx is done, and logged.
func (a *acmeCerts) prefetch(ctx context.Context) {
	wait := 10 * time.Second
	for {
		hello := &tls.ClientHelloInfo{
			ServerName:       a.hostname,
			SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256},
			SupportedCurves:  []tls.CurveID{tls.CurveP256},
			CipherSuites:     []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		}
		if _, err := a.getCertificate(hello); err == nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Hour)
	}
}

// acmeHTTP is the listener of http.listen_acme: HTTP-01 answers
// (/.well-known/acme-challenge/) and a redirect to https for the rest.
type acmeHTTP struct {
	hs    *http.Server
	conns *limits.Conns
	log   *slog.Logger
}

func newACMEHTTP(a *acmeCerts, conns *limits.Conns, log *slog.Logger) *acmeHTTP {
	return &acmeHTTP{
		hs: &http.Server{
			Handler:           a.m.HTTPHandler(nil), // nil: redirect to https
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       60 * time.Second,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		},
		conns: conns,
		log:   log,
	}
}

func (h *acmeHTTP) Serve(ln net.Listener) error {
	err := h.hs.Serve(&budgetedListener{Listener: ln, conns: h.conns, log: h.log})
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("acme http on %s: %w", ln.Addr(), err)
}

func (h *acmeHTTP) Shutdown(ctx context.Context) error {
	if err := h.hs.Shutdown(ctx); err != nil {
		h.hs.Close()
		return err
	}
	return nil
}

// budgetedListener takes each connection out of the process-wide budget
// (limits.connections) and closes those it has no room for.
type budgetedListener struct {
	net.Listener
	conns *limits.Conns
	log   *slog.Logger
}

func (l *budgetedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.conns == nil {
			return c, nil
		}
		release, err := l.conns.Acquire(limits.RemoteIP(c))
		if err != nil {
			l.log.Warn("acme http connection refused", "remote", c.RemoteAddr().String(), "reason", err.Error())
			c.Close()
			continue
		}
		return &releasingConn{Conn: c, release: release}, nil
	}
}

type releasingConn struct {
	net.Conn
	release func()
}

func (c *releasingConn) Close() error {
	err := c.Conn.Close()
	c.release() // at most once: Conns.Acquire's release is idempotent
	return err
}
