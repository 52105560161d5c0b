package storetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Cert is a self-signed server certificate for tests and a pool that
// trusts it.
type Cert struct {
	TLS  tls.Certificate // with Leaf set
	Pool *x509.CertPool
}

// SelfSigned makes a P-256 certificate, valid from an hour ago for a day,
// for names: each is an IP address or a DNS name, and the first is also
// the subject's common name. It is its own CA, so Pool trusts it.
func SelfSigned(tb testing.TB, names ...string) Cert {
	tb.Helper()
	if len(names) == 0 {
		tb.Fatal("storetest: SelfSigned needs at least one name")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("storetest: certificate key: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: names[0]},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatalf("storetest: certificate for %v: %v", names, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("storetest: parse the certificate for %v: %v", names, err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return Cert{TLS: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, Pool: pool}
}

// Leaf is the parsed certificate.
func (c Cert) Leaf() *x509.Certificate { return c.TLS.Leaf }

// Server is a server configuration presenting the certificate.
func (c Cert) Server() *tls.Config { return &tls.Config{Certificates: []tls.Certificate{c.TLS}} }

// Client is a client configuration that trusts the certificate and expects
// serverName.
func (c Cert) Client(serverName string) *tls.Config {
	return &tls.Config{RootCAs: c.Pool, ServerName: serverName}
}

// WritePEM writes the certificate as PEM to a file in a temporary
// directory, for clients outside Go, and returns its path.
func (c Cert) WritePEM(tb testing.TB) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "cert.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.TLS.Leaf.Raw}), 0o600); err != nil {
		tb.Fatalf("storetest: write the certificate: %v", err)
	}
	return path
}
