package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
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
