package mailstore

import (
	"context"
	"fmt"
	"time"
)

// DKIMKey is a domain's DKIM signing key as the store keeps it: the
// private key as PEM, never interpreted here (smtpd/msgauth parses it).
type DKIMKey struct {
	Domain     string
	Selector   string
	Algorithm  string // "ed25519" or "rsa"
	PrivatePEM []byte
	Created    time.Time
	Retired    time.Time // zero while the key signs
}

// maxDKIMKeysPerDomain bounds the keys one domain keeps, retired ones
// included: rotation adds two a time.
const maxDKIMKeysPerDomain = 64

// AddDKIMKeys stores keys of local domains. A selector a domain already
// has is ErrExists; a domain that is not local is ErrNotFound.
func (s *Store) AddDKIMKeys(ctx context.Context, keys ...DKIMKey) error {
	return s.w.do(ctx, func(t *wtx) error { return t.addDKIMKeys(keys) })
}

// AddDKIMKeysIfNone stores keys, all of one local domain, only when that
// domain has no active key; added reports whether it did. Frontends of a
// shared store that start together thus make one pair between them: the
// domain's row is locked while the keys are counted, so a second
// frontend counts after the first has committed.
func (s *Store) AddDKIMKeysIfNone(ctx context.Context, domain string, keys ...DKIMKey) (added bool, err error) {
	d, err := NormalizeDomain(domain)
	if err != nil {
		return false, err
	}
	for _, k := range keys {
		if kd, err := NormalizeDomain(k.Domain); err != nil || kd != d {
			return false, fmt.Errorf("add DKIM keys of %s: a key of %q: %w", d, k.Domain, ErrInvalidName)
		}
	}
	err = s.w.do(ctx, func(t *wtx) error {
		added = false
		var name string
		if err := t.queryRow("SELECT name FROM domains WHERE name = ?"+s.d.forUpdate(), d).Scan(&name); err != nil {
			if isNoRows(err) {
				return fmt.Errorf("add DKIM keys of %s: domain %w", d, ErrNotFound)
			}
			return fmt.Errorf("add DKIM keys of %s: %w", d, err)
		}
		var active int
		if err := t.queryRow("SELECT count(*) FROM dkim_keys WHERE domain = ? AND retired = 0", d).Scan(&active); err != nil {
			return fmt.Errorf("add DKIM keys of %s: %w", d, err)
		}
		if active > 0 {
			return nil
		}
		if err := t.addDKIMKeys(keys); err != nil {
			return err
		}
		added = true
		return nil
	})
	return added, err
}

func (t *wtx) addDKIMKeys(keys []DKIMKey) error {
	for _, k := range keys {
		d, err := NormalizeDomain(k.Domain)
		if err != nil {
			return err
		}
		if k.Selector == "" || len(k.Selector) > 63 || k.Algorithm == "" || len(k.PrivatePEM) == 0 {
			return fmt.Errorf("add DKIM key %q for %s: %w", k.Selector, d, ErrInvalidName)
		}
		var local, have int
		if err := t.queryRow("SELECT count(*) FROM domains WHERE name = ?", d).Scan(&local); err != nil {
			return fmt.Errorf("add DKIM key for %s: %w", d, err)
		}
		if local == 0 {
			return fmt.Errorf("add DKIM key for %s: domain %w", d, ErrNotFound)
		}
		if err := t.queryRow("SELECT count(*) FROM dkim_keys WHERE domain = ?", d).Scan(&have); err != nil {
			return fmt.Errorf("add DKIM key for %s: %w", d, err)
		}
		if have >= maxDKIMKeysPerDomain {
			return fmt.Errorf("add DKIM key for %s: %w: %d keys kept", d, ErrLimit, have)
		}
		res, err := t.exec("INSERT INTO dkim_keys (domain, selector, algorithm, private_pem, created) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
			d, k.Selector, k.Algorithm, k.PrivatePEM, k.Created.Unix())
		if err != nil {
			return fmt.Errorf("add DKIM key %s for %s: %w", k.Selector, d, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("add DKIM key %s for %s: %w", k.Selector, d, ErrExists)
		}
	}
	return nil
}

// DKIMKeys returns a domain's keys, oldest first; with active, only those
// that are not retired.
func (s *Store) DKIMKeys(ctx context.Context, domain string, active bool) ([]DKIMKey, error) {
	d, err := NormalizeDomain(domain)
	if err != nil {
		return nil, err
	}
	q := "SELECT selector, algorithm, private_pem, created, retired FROM dkim_keys WHERE domain = ?"
	if active {
		q += " AND retired = 0"
	}
	rows, err := s.read(ctx, q+" ORDER BY created, selector", d)
	if err != nil {
		return nil, fmt.Errorf("DKIM keys of %s: %w", d, err)
	}
	defer rows.Close()
	var out []DKIMKey
	for rows.Next() {
		k := DKIMKey{Domain: d}
		var created, retired int64
		if err := rows.Scan(&k.Selector, &k.Algorithm, &k.PrivatePEM, &created, &retired); err != nil {
			return nil, fmt.Errorf("DKIM keys of %s: %w", d, err)
		}
		k.Created = time.Unix(created, 0).UTC()
		if retired != 0 {
			k.Retired = time.Unix(retired, 0).UTC()
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("DKIM keys of %s: %w", d, err)
	}
	return out, nil
}

// RetireDKIMKey stops a key from signing from at on.
func (s *Store) RetireDKIMKey(ctx context.Context, domain, selector string, at time.Time) error {
	d, err := NormalizeDomain(domain)
	if err != nil {
		return err
	}
	return s.w.do(ctx, func(t *wtx) error {
		res, err := t.exec("UPDATE dkim_keys SET retired = ? WHERE domain = ? AND selector = ? AND retired = 0", at.Unix(), d, selector)
		if err != nil {
			return fmt.Errorf("retire DKIM key %s of %s: %w", selector, d, err)
		}
		return affected(res, "retire DKIM key "+selector+" of "+d)
	})
}
