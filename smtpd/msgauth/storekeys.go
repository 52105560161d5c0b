package msgauth

import (
	"context"
	"fmt"
	"time"

	"github.com/postern/postern/mailstore"
)

// StoreKeys is the KeyStore of a running Postern: the keys are kept in
// the mailstore, as PEM, and parsed here.
type StoreKeys struct{ Store *mailstore.Store }

// SigningKeys implements KeyStore: the domain's keys that are not
// retired.
func (s StoreKeys) SigningKeys(ctx context.Context, domain string) ([]Key, error) {
	rows, err := s.Store.DKIMKeys(ctx, domain, true)
	if err != nil {
		return nil, err
	}
	keys := make([]Key, 0, len(rows))
	for _, r := range rows {
		k, err := ParsePrivateKey(r.Domain, r.Selector, r.Created, r.PrivatePEM)
		if err != nil {
			return nil, fmt.Errorf("signing keys of %s: %w", domain, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// AddGeneratedKeys makes a domain's keys (GenerateKeys) and stores them.
func AddGeneratedKeys(ctx context.Context, st *mailstore.Store, domain string, now time.Time) ([]Key, error) {
	keys, err := GenerateKeys(domain, now)
	if err != nil {
		return nil, err
	}
	rows := make([]mailstore.DKIMKey, len(keys))
	for i, k := range keys {
		pem, err := k.MarshalPrivateKey()
		if err != nil {
			return nil, err
		}
		rows[i] = mailstore.DKIMKey{Domain: k.Domain, Selector: k.Selector, Algorithm: string(k.Algorithm), PrivatePEM: pem, Created: k.Created}
	}
	if err := st.AddDKIMKeys(ctx, rows...); err != nil {
		return nil, err
	}
	return keys, nil
}
