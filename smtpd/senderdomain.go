package smtpd

import (
	"context"
	"sync"
	"time"

	"github.com/postern/postern/mailstore"
)

// localDomains remembers, for a few seconds, whether sender domains seen
// by the MX are local, so that a client sending one message per
// connection (most MTAs do) does not cost a store read per message only
// to log "unauthenticated sender in a local domain". The answer only
// feeds that log line: a domain added or removed shows there a few
// seconds late.
type localDomains struct {
	store *mailstore.Store
	now   func() time.Time

	mu      sync.Mutex
	entries map[string]localDomain
}

type localDomain struct {
	local bool
	until time.Time
}

const (
	// localDomainTTL is how long an answer is reused.
	localDomainTTL = 5 * time.Second
	// maxLocalDomains bounds the domains remembered: senders choose their
	// domains, so past this the map starts again empty.
	maxLocalDomains = 1024
)

func (d *localDomains) isLocal(ctx context.Context, domain string) (bool, error) {
	now := d.now()
	d.mu.Lock()
	e, ok := d.entries[domain]
	d.mu.Unlock()
	if ok && now.Before(e.until) {
		return e.local, nil
	}
	local, err := d.store.IsLocalDomain(ctx, domain)
	if err != nil {
		return false, err
	}
	d.mu.Lock()
	if d.entries == nil || len(d.entries) >= maxLocalDomains {
		d.entries = make(map[string]localDomain)
	}
	d.entries[domain] = localDomain{local: local, until: now.Add(localDomainTTL)}
	d.mu.Unlock()
	return local, nil
}
