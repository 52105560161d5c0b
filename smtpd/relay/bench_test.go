package relay

import (
	"fmt"
	"testing"

	"github.com/postern/postern/smtpd/msgauth/msgauthtest"
)

// BenchmarkRelay200 sends 200 messages from alpha to beta over loopback
// through the path this package has: queued in alpha's mailstore (as
// submission would), MX lookup, SMTP, and stored in beta's mailstore by a
// go-smtp receiver standing in for smtpd. "serial" is the baseline: one
// connection at a time and one message per connection; "pooled" is the
// relay's defaults (several connections per domain, many messages each).
func BenchmarkRelay200(b *testing.B) {
	const n = 200
	for _, bc := range []struct {
		name           string
		conns, perConn int
	}{
		{"serial", 1, 1},
		{"pooled", 0, 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			d := msgauthtest.NewDNS(b)
			beta := newStore(b, nil, []string{"beta.test"}, "bob@beta.test")
			mx := newTestMX(b, "127.0.0.1:0")
			mx.store = beta
			d.Add(b, "beta.test. MX 10 mx.beta.test.", "mx.beta.test. A 127.0.0.1")
			st := newStore(b, nil, []string{"alpha.test"}, "alice@alpha.test")
			a := newAlphaOn(b, st, nil, d, mx.addr.Port(), func(c *Config) {
				c.MaxConnsPerDomain, c.MaxMessagesPerConn = bc.conns, bc.perConn
			})
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for j := range n {
					submit(b, st, envelope("alice@alpha.test", "bob@beta.test"), fmt.Sprintf("bench %d %d", i, j))
				}
				a.runOnce(b)
			}
			b.StopTimer()
			if got := len(mx.received()); got != n*b.N {
				b.Fatalf("beta got %d messages, want %d", got, n*b.N)
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
