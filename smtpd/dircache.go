package smtpd

import (
	"context"
	"sync"
	"time"
)

// dirCache remembers, for dirCacheTTL, answers the store gave about its
// directory (domains, users, aliases), across connections: most MTAs send
// one message per connection, and most mail goes to the same few
// recipients, so without it every message would cost the same store
// reads again. Only answers whose staleness is harmless are kept (see
// Server.senderDomains and Server.recipients); a change to the directory
// shows in them at most dirCacheTTL late.
type dirCache[V any] struct {
	now func() time.Time

	mu      sync.Mutex
	entries map[string]dirEntry[V]
}

type dirEntry[V any] struct {
	v     V
	until time.Time
}

const (
	// dirCacheTTL is how long an answer is reused.
	dirCacheTTL = 5 * time.Second
	// maxDirCache bounds the answers one cache keeps: clients choose the
	// keys (sender domains, recipient addresses), so past this the map
	// starts again empty.
	maxDirCache = 1024
)

func newDirCache[V any](now func() time.Time) *dirCache[V] {
	return &dirCache[V]{now: now}
}

// get returns the answer kept for key, if it is still fresh.
func (c *dirCache[V]) get(key string) (V, bool) {
	now := c.now()
	c.mu.Lock()
	e, ok := c.entries[key]
	c.mu.Unlock()
	if !ok || !now.Before(e.until) {
		var zero V
		return zero, false
	}
	return e.v, true
}

// put keeps v as the answer for key.
func (c *dirCache[V]) put(key string, v V) {
	until := c.now().Add(dirCacheTTL)
	c.mu.Lock()
	if _, ok := c.entries[key]; !ok && len(c.entries) >= maxDirCache || c.entries == nil {
		c.entries = make(map[string]dirEntry[V])
	}
	c.entries[key] = dirEntry[V]{v: v, until: until}
	c.mu.Unlock()
}

// isLocalSenderDomain reports whether an MX sender's domain is local. The
// answer only feeds the log line "unauthenticated sender in a local
// domain" (the DATA check asks the store again), so it is reused for
// dirCacheTTL whether yes or no.
func (s *Server) isLocalSenderDomain(ctx context.Context, domain string) (bool, error) {
	if local, ok := s.senderDomains.get(domain); ok {
		return local, nil
	}
	local, err := s.store.IsLocalDomain(ctx, domain)
	if err != nil {
		return false, err
	}
	s.senderDomains.put(domain, local)
	return local, nil
}
