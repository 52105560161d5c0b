package main

// The TLS certificate every listener uses: the configured one, or a
// self-signed one generated into data_dir on first start and reused.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// The generated certificate's files inside data_dir.
const (
	selfSignedCert = "tls-cert.pem"
	selfSignedKey  = "tls-key.pem"
	// selfSignedLifetime is long: nobody renews a self-signed certificate,
	// and clients that accept it once pin it.
	selfSignedLifetime = 10 * 365 * 24 * time.Hour
)

// loadTLS returns the server TLS configuration for cfg. TLS 1.2 is the
// minimum (RFC 8996 retired 1.0 and 1.1).
func loadTLS(cfg *Config) (*tls.Config, error) {
	certFile, keyFile := cfg.TLS.Cert, cfg.TLS.Key
	if certFile == "" {
		certFile = filepath.Join(cfg.DataDir, selfSignedCert)
		keyFile = filepath.Join(cfg.DataDir, selfSignedKey)
		if _, err := os.Stat(certFile); errors.Is(err, os.ErrNotExist) {
			if err := writeSelfSigned(cfg.Hostname, certFile, keyFile); err != nil {
				return nil, err
			}
		}
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %s and key %s: %w", certFile, keyFile, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// certCheckInterval is how often serve looks at the modification times of
// the configured certificate and key files, so that a renewal (certbot,
// acme.sh) is picked up without a SIGHUP.
const certCheckInterval = 30 * time.Second

// serveTLS returns the server TLS configuration for serve. With configured
// certificate files it also returns the reloader that serves the pair
// through GetCertificate, so that a new pair reaches new connections while
// open sessions keep theirs (the servers clone the tls.Config; a clone
// keeps GetCertificate). The self-signed default has no reloader.
func serveTLS(cfg *Config, log *slog.Logger) (*tls.Config, *certReloader, error) {
	if cfg.TLS.Cert == "" {
		c, err := loadTLS(cfg)
		return c, nil, err
	}
	r := &certReloader{certFile: cfg.TLS.Cert, keyFile: cfg.TLS.Key, log: log}
	if err := r.reload(); err != nil {
		return nil, nil, err
	}
	return &tls.Config{GetCertificate: r.getCertificate, MinVersion: tls.VersionTLS12}, r, nil
}

// certReloader holds the configured certificate pair and swaps in a new
// one when asked (SIGHUP) or when the files change.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger

	cert atomic.Pointer[tls.Certificate]

	mu sync.Mutex // serializes reloads and guards the times below
	// certMod and keyMod are the files' modification times when they
	// were last read, good pair or not, so that a broken pair is
	// reported once per change rather than on every check.
	certMod, keyMod time.Time
}

func (r *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cert.Load(), nil
}

// reload reads the pair again. A pair that does not load leaves the
// current one in place; the error names the file at fault.
func (r *certReloader) reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reloadLocked()
}

func (r *certReloader) reloadLocked() error {
	r.certMod, r.keyMod = modTime(r.certFile), modTime(r.keyFile)
	cert, err := loadPair(r.certFile, r.keyFile)
	if err != nil {
		if r.cert.Load() != nil {
			r.log.Error("TLS certificate not reloaded; keeping the current one", "cert", r.certFile, "key", r.keyFile, "err", err)
		}
		return err
	}
	r.cert.Store(cert)
	r.log.Info("TLS certificate loaded", "cert", r.certFile, "serial", cert.Leaf.SerialNumber.Text(16),
		"subject", cert.Leaf.Subject.String(), "not_after", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// checkModified reloads the pair when either file's modification time
// differs from when it was last read.
func (r *certReloader) checkModified() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if modTime(r.certFile).Equal(r.certMod) && modTime(r.keyFile).Equal(r.keyMod) {
		return
	}
	r.reloadLocked()
}

// watch calls checkModified every interval until ctx is done.
func (r *certReloader) watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.checkModified()
		}
	}
}

// modTime is path's modification time, or zero when it cannot be read.
func modTime(path string) time.Time {
	fi, err := os.Stat(path)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}

// loadPair loads a certificate chain and its key, naming in the error the
// file that is wrong where that can be told apart.
func loadPair(certFile, keyFile string) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("read TLS certificate %s: %w", certFile, err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("read TLS key %s: %w", keyFile, err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("TLS certificate %s: no PEM CERTIFICATE block", certFile)
	}
	if _, err := x509.ParseCertificate(block.Bytes); err != nil {
		return nil, fmt.Errorf("TLS certificate %s: %w", certFile, err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("TLS key %s with certificate %s: %w", keyFile, certFile, err)
	}
	if cert.Leaf == nil { // GODEBUG=x509keypairleaf=0 leaves it out
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("TLS certificate %s: %w", certFile, err)
		}
	}
	return &cert, nil
}

// writeSelfSigned generates an ECDSA P-256 certificate for hostname (and
// localhost and the loopback addresses, which the embedded default listens
// on). The key file is written first and private.
func writeSelfSigned(hostname, certFile, keyFile string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate TLS key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return fmt.Errorf("generate certificate serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hostname, Organization: []string{"Postern self-signed"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(selfSignedLifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{hostname},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if hostname != "localhost" {
		tmpl.DNSNames = append(tmpl.DNSNames, "localhost")
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("create self-signed certificate for %s: %w", hostname, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode TLS key: %w", err)
	}
	if err := writePEM(keyFile, "PRIVATE KEY", keyDER, 0o600); err != nil {
		return err
	}
	return writePEM(certFile, "CERTIFICATE", der, 0o644)
}

// writePEM writes one PEM block atomically (temporary file, then rename).
func writePEM(path, blockType string, der []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := pem.Encode(tmp, &pem.Block{Type: blockType, Bytes: der}); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
