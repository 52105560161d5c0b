package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore/storetest"
)

func TestSelfSignedCertificateIsMadeOnceAndReused(t *testing.T) {
	cfg := &Config{Hostname: "mail.example.test", DataDir: t.TempDir()}
	first, err := loadTLS(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if first.MinVersion != tls.VersionTLS12 {
		t.Errorf("MinVersion %x, want TLS 1.2", first.MinVersion)
	}
	keyInfo, err := os.Stat(filepath.Join(cfg.DataDir, selfSignedKey))
	if err != nil {
		t.Fatal(err)
	}
	if keyInfo.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", keyInfo.Mode().Perm())
	}
	second, err := loadTLS(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.Certificates[0].Certificate[0], second.Certificates[0].Certificate[0]) {
		t.Error("a second start generated a new certificate")
	}
	cert, err := x509.ParseCertificate(first.Certificates[0].Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"mail.example.test", "localhost", "127.0.0.1"} {
		if err := cert.VerifyHostname(name); err != nil {
			t.Errorf("certificate not valid for %s: %v", name, err)
		}
	}
}

func TestConfiguredCertificateMustLoad(t *testing.T) {
	dir := t.TempDir()
	cfg := &Config{Hostname: "mail.example.test", DataDir: dir}
	cfg.TLS.Cert = filepath.Join(dir, "missing-cert.pem")
	cfg.TLS.Key = filepath.Join(dir, "missing-key.pem")
	if _, err := loadTLS(cfg); err == nil {
		t.Fatal("missing configured certificate accepted")
	}
	if _, err := os.Stat(filepath.Join(dir, selfSignedCert)); err == nil {
		t.Error("generated a certificate although one is configured")
	}
}

// certSerial is the serial number of the certificate in the PEM file path.
func certSerial(t *testing.T, path string) *big.Int {
	t.Helper()
	pair, err := loadPair(path, strings.TrimSuffix(path, "cert.pem")+"key.pem")
	if err != nil {
		t.Fatal(err)
	}
	return pair.Leaf.SerialNumber
}

func TestCertReloaderFollowsFileChanges(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := writeSelfSigned("mail.example.test", certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	serialA := certSerial(t, certFile)
	var logs storetest.SyncBuffer
	cfg := &Config{Hostname: "mail.example.test", DataDir: dir}
	cfg.TLS.Cert, cfg.TLS.Key = certFile, keyFile
	tlsConfig, r, err := serveTLS(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if r == nil || tlsConfig.GetCertificate == nil || len(tlsConfig.Certificates) != 0 {
		t.Fatal("configured certificate files are not served through GetCertificate")
	}
	served := func() *big.Int {
		c, err := tlsConfig.Clone().GetCertificate(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatal(err)
		}
		return c.Leaf.SerialNumber
	}
	if served().Cmp(serialA) != 0 {
		t.Fatal("first pair not served")
	}
	// Unchanged files: nothing is read again.
	r.checkModified()
	if n := strings.Count(logs.String(), "TLS certificate loaded"); n != 1 {
		t.Fatalf("%d loads for unchanged files:\n%s", n, logs.String())
	}

	// A renewal: the files change, the next check serves the new pair.
	if err := writeSelfSigned("mail.example.test", certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Minute)
	os.Chtimes(certFile, later, later)
	serialB := certSerial(t, certFile)
	r.checkModified()
	if served().Cmp(serialB) != 0 {
		t.Fatalf("changed files not reloaded:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "serial="+serialB.Text(16)) {
		t.Errorf("new serial not logged:\n%s", logs.String())
	}

	// A broken certificate keeps the current pair and is reported once,
	// naming the file.
	if err := os.WriteFile(certFile, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	later = later.Add(time.Minute)
	os.Chtimes(certFile, later, later)
	r.checkModified()
	r.checkModified()
	if served().Cmp(serialB) != 0 {
		t.Fatal("a broken pair replaced the good one")
	}
	if n := strings.Count(logs.String(), "not reloaded"); n != 1 {
		t.Errorf("broken pair reported %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "TLS certificate "+certFile+": no PEM") {
		t.Errorf("error does not name the certificate file:\n%s", logs.String())
	}
	// An explicit reload (SIGHUP) tries again and fails the same way.
	if err := r.reload(); err == nil || !strings.Contains(err.Error(), certFile) {
		t.Errorf("reload of a broken pair: %v", err)
	}
	if served().Cmp(serialB) != 0 {
		t.Fatal("a broken pair replaced the good one")
	}
}
