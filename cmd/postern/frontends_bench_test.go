package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/postern/postern/mailstore/storetest"
)

// BenchmarkFrontendsSMTP: durable deliveries per second from 32 SMTP
// clients with 4 KiB messages, spread over 1, 2 and 3 `postern serve`
// processes on one PostgreSQL database, beside one process on SQLite, in
// one run (issue 13). Every message goes to one mailbox, so the frontends
// meet on its row lock; the processes and the database share the
// machine's cores.
//
//	go test -run '^$' -bench FrontendsSMTP -benchtime 3000x ./cmd/postern/
func BenchmarkFrontendsSMTP(b *testing.B) {
	b.Run("sqlite", func(b *testing.B) {
		c := startChild(b, "[limits.mx]\nconnections_per_address = 100\n")
		benchSMTPSpread(b, []string{c.addrs["smtp"]}, "user@example.test")
	})
	for n := 1; n <= 3; n++ {
		b.Run(fmt.Sprintf("postgres-%d", n), func(b *testing.B) {
			b.Setenv(storeDSNEnv, "")
			fronts := startFrontends(b, storetest.PostgresDSN(b), n, "bench@example.test", "bench password 1")
			var addrs []string
			for _, f := range fronts {
				addrs = append(addrs, f.addrs["smtp"])
			}
			benchSMTPSpread(b, addrs, "bench@example.test")
		})
	}
}

// benchSMTPSpread sends b.N messages of 4 KiB to rcpt from 32 clients, the
// i-th connected to addrs[i % len(addrs)], and reports messages per
// second.
func benchSMTPSpread(b *testing.B, addrs []string, rcpt string) {
	const clients = 32
	body := strings.Repeat(strings.Repeat("x", 76)+"\r\n", 4096/78)
	b.SetBytes(4096)
	b.ResetTimer()
	elapsed := storetest.SendParallel(b, addrs, "s@remote.test", rcpt, clients, b.N, func(n int64) string {
		return fmt.Sprintf("From: s@remote.test\r\nTo: %s\r\nSubject: bench %d\r\nMessage-ID: <%d@bench.remote.test>\r\n\r\n%s", rcpt, n, n, body)
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
}
