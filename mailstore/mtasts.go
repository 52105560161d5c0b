package mailstore

import (
	"context"
	"fmt"
	"time"
)

// MTASTSPolicy is a destination domain's MTA-STS policy (RFC 8461) as the
// relay fetched it: the policy text is kept as served and parsed by the
// relay, never here.
type MTASTSPolicy struct {
	Domain  string
	ID      string // the id of the _mta-sts TXT record it was fetched under
	Policy  []byte // the policy file's body
	Fetched time.Time
	Expires time.Time // Fetched plus the policy's max_age
}

// Bounds of a stored policy: RFC 8461 3.1 lets id be 1 to 32 characters;
// the relay reads at most 64 KiB of a policy file.
const (
	maxMTASTSIDLen  = 32
	maxMTASTSPolicy = 64 << 10
)

// PutMTASTSPolicy stores a domain's policy, replacing the one it had.
func (s *Store) PutMTASTSPolicy(ctx context.Context, p MTASTSPolicy) error {
	d, err := NormalizeDomain(p.Domain)
	if err != nil {
		return err
	}
	if p.ID == "" || len(p.ID) > maxMTASTSIDLen || len(p.Policy) > maxMTASTSPolicy {
		return fmt.Errorf("store MTA-STS policy of %s (id %q, %d bytes): %w", d, p.ID, len(p.Policy), ErrInvalidName)
	}
	return s.w.do(ctx, func(t *wtx) error {
		_, err := t.exec(`INSERT INTO mtasts_policies (domain, id, policy, fetched, expires) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (domain) DO UPDATE SET id = excluded.id, policy = excluded.policy,
			fetched = excluded.fetched, expires = excluded.expires`,
			d, p.ID, p.Policy, p.Fetched.Unix(), p.Expires.Unix())
		if err != nil {
			return fmt.Errorf("store MTA-STS policy of %s: %w", d, err)
		}
		return nil
	})
}

// MTASTSPolicyOf returns the policy stored for domain, expired or not;
// ErrNotFound when there is none.
func (s *Store) MTASTSPolicyOf(ctx context.Context, domain string) (MTASTSPolicy, error) {
	d, err := NormalizeDomain(domain)
	if err != nil {
		return MTASTSPolicy{}, err
	}
	p := MTASTSPolicy{Domain: d}
	var fetched, expires int64
	err = s.readRow(ctx, "SELECT id, policy, fetched, expires FROM mtasts_policies WHERE domain = ?", d).
		Scan(&p.ID, &p.Policy, &fetched, &expires)
	if isNoRows(err) {
		return MTASTSPolicy{}, fmt.Errorf("MTA-STS policy of %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return MTASTSPolicy{}, fmt.Errorf("MTA-STS policy of %s: %w", d, err)
	}
	p.Fetched = time.Unix(fetched, 0).UTC()
	p.Expires = time.Unix(expires, 0).UTC()
	return p, nil
}
