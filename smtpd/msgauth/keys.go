package msgauth

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Algorithm is a DKIM key type, the k= tag of its DNS record.
type Algorithm string

const (
	Ed25519 Algorithm = "ed25519" // RFC 8463
	RSA     Algorithm = "rsa"     // RFC 6376; RFC 8301 wants at least 1024 bits
)

// rsaBits is the size of the RSA keys GenerateKeys makes.
const rsaBits = 2048

// Key is one DKIM signing key of a domain.
type Key struct {
	Domain    string
	Selector  string
	Algorithm Algorithm
	Private   crypto.Signer // ed25519.PrivateKey or *rsa.PrivateKey
	Created   time.Time
}

// GenerateKeys makes the keys a local domain signs with: an Ed25519 one
// and an RSA-2048 one for verifiers without Ed25519 (RFC 8463 asks
// signers to keep both for now), with selectors derived from the date,
// "p20261201e" and "p20261201r", so that a rotation gets new names.
func GenerateKeys(domain string, now time.Time) ([]Key, error) {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	day := now.UTC().Format("20060102")
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("dkim key for %s: ed25519: %w", domain, err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, rsaBits)
	if err != nil {
		return nil, fmt.Errorf("dkim key for %s: rsa: %w", domain, err)
	}
	return []Key{
		{Domain: domain, Selector: "p" + day + "e", Algorithm: Ed25519, Private: edKey, Created: now},
		{Domain: domain, Selector: "p" + day + "r", Algorithm: RSA, Private: rsaKey, Created: now},
	}, nil
}

// DNSName is where the key's record is published:
// SELECTOR._domainkey.DOMAIN (RFC 6376 3.6.2.1).
func (k Key) DNSName() string { return k.Selector + "._domainkey." + k.Domain }

// DNSRecord is the TXT value to publish at DNSName: "v=DKIM1; k=ed25519;
// p=..." (RFC 6376 3.6.1). An Ed25519 key is its 32 octets (RFC 8463
// 4.2); an RSA key is a SubjectPublicKeyInfo. A record longer than 255
// octets must be split into several strings of one TXT record.
func (k Key) DNSRecord() string {
	var pub []byte
	switch p := k.Private.Public().(type) {
	case ed25519.PublicKey:
		pub = p
	default:
		b, err := x509.MarshalPKIXPublicKey(p)
		if err != nil {
			return "" // a Key that Private can be marshalled from does not fail here
		}
		pub = b
	}
	return "v=DKIM1; k=" + string(k.Algorithm) + "; p=" + base64.StdEncoding.EncodeToString(pub)
}

// MarshalPrivateKey returns the private key as a PEM "PRIVATE KEY" block
// (PKCS #8), the form keys are stored and exported in.
func (k Key) MarshalPrivateKey() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k.Private)
	if err != nil {
		return nil, fmt.Errorf("dkim key %s: %w", k.DNSName(), err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePrivateKey reads what MarshalPrivateKey wrote into a Key of
// domain and selector; the algorithm comes from the key.
func ParsePrivateKey(domain, selector string, created time.Time, pemData []byte) (Key, error) {
	name := selector + "._domainkey." + domain
	block, _ := pem.Decode(pemData)
	if block == nil || block.Type != "PRIVATE KEY" {
		return Key{}, fmt.Errorf("dkim key %s: no PEM PRIVATE KEY block", name)
	}
	priv, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return Key{}, fmt.Errorf("dkim key %s: %w", name, err)
	}
	k := Key{Domain: strings.ToLower(domain), Selector: selector, Created: created}
	switch p := priv.(type) {
	case ed25519.PrivateKey:
		k.Algorithm, k.Private = Ed25519, p
	case *rsa.PrivateKey:
		if p.N.BitLen() < 1024 {
			return Key{}, fmt.Errorf("dkim key %s: RSA key of %d bits, under 1024 (RFC 8301 3.2)", name, p.N.BitLen())
		}
		k.Algorithm, k.Private = RSA, p
	default:
		return Key{}, fmt.Errorf("dkim key %s: unsupported key type %T", name, priv)
	}
	return k, nil
}

// KeyStore gives the keys a domain signs with now; none (and no error)
// means the domain does not sign.
type KeyStore interface {
	SigningKeys(ctx context.Context, domain string) ([]Key, error)
}

// MemKeyStore is a KeyStore in memory, for tests and demos.
type MemKeyStore struct {
	mu   sync.Mutex
	keys map[string][]Key
}

// Add sets the keys of their domains (replacing those the domain had).
func (m *MemKeyStore) Add(keys ...Key) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.keys == nil {
		m.keys = make(map[string][]Key)
	}
	seen := map[string]bool{}
	for _, k := range keys {
		if !seen[k.Domain] {
			m.keys[k.Domain] = nil
			seen[k.Domain] = true
		}
		m.keys[k.Domain] = append(m.keys[k.Domain], k)
	}
}

// SigningKeys implements KeyStore.
func (m *MemKeyStore) SigningKeys(_ context.Context, domain string) ([]Key, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Key(nil), m.keys[strings.ToLower(domain)]...), nil
}
