package main

// The metrics of serve: a console.Metrics fed by the Hub that every log
// record of serve passes through, reading the store's queue on scrape.

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/postern/postern/cmd/postern/console"
	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
)

// domainClassTimeout bounds the store read that classes a relay domain.
const domainClassTimeout = time.Second

// newServeMetrics makes the metrics of serve. store returns the store
// once it is open (nil before); scrapes before that show no queue.
func newServeMetrics(hub *console.Hub, store func() *mailstore.Store, lim limits.Shared, log *slog.Logger) *console.Metrics {
	return console.NewMetrics(console.MetricsConfig{
		Hub:    hub,
		Logger: log,
		Conns:  lim.Conns,
		Memory: lim.Memory,
		Logins: lim.Logins,
		Queue: func(ctx context.Context, limit int) (console.QueueStats, error) {
			st := store()
			if st == nil {
				return console.QueueStats{}, nil
			}
			return queueStats(ctx, st, limit)
		},
		DomainClass: func(domain string) string {
			if strings.HasPrefix(domain, "[") {
				return "literal"
			}
			if st := store(); st != nil {
				ctx, cancel := context.WithTimeout(context.Background(), domainClassTimeout)
				defer cancel()
				if local, err := st.IsLocalDomain(ctx, domain); err == nil && local {
					return "local"
				}
			}
			return "remote"
		},
	})
}

// queueStats reads at most limit+1 queue entries: the store has no count
// of its own (a COUNT and MIN(created) in mailstore would be cheaper).
func queueStats(ctx context.Context, st *mailstore.Store, limit int) (console.QueueStats, error) {
	entries, err := st.Queue(ctx, time.Time{}, limit+1)
	if err != nil {
		return console.QueueStats{}, fmt.Errorf("queue for metrics: %w", err)
	}
	var out console.QueueStats
	if len(entries) > limit {
		entries, out.Capped = entries[:limit], true
	}
	out.Length = len(entries)
	for _, e := range entries {
		if out.Oldest.IsZero() || e.Created.Before(out.Oldest) {
			out.Oldest = e.Created
		}
	}
	return out, nil
}
