package console

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
	"github.com/postern/postern/smtpd"
)

// BenchmarkFanOut is the cost of the Hub on SMTP throughput: messages
// over the MX on one loopback connection, traced into a Hub with 0, 1 and
// 50 subscribers reading. Compare ns/op with subscribers=0.
func BenchmarkFanOut(b *testing.B) {
	for _, subs := range []int{0, 1, 50} {
		b.Run(fmt.Sprintf("subscribers=%d", subs), func(b *testing.B) {
			st, err := mailstore.Open(filepath.Join(b.TempDir(), "postern.db"), mailstore.Options{PasswordCost: mailstore.FastPasswordHash})
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			ctx := context.Background()
			st.AddDomain(ctx, "example.test")
			st.AddUser(ctx, "bob@example.test", "x")
			hub := NewHub(slog.DiscardHandler, slog.LevelInfo, 0)
			for range subs {
				sub, _ := hub.Subscribe(eventBuffer)
				go func() {
					for range sub.C {
					}
				}()
				defer sub.Close()
			}
			srv := smtpd.New(smtpd.Config{Hostname: "mx.example.test", Logger: slog.New(hub.Handler()), Trace: true,
				Limits: limits.Protocol{MaxErrors: 1 << 30}}, st)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			go srv.ServeMX(ln)
			defer srv.Shutdown(ctx)
			c, err := smtp.Dial(ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			msg := "From: a@remote.test\r\nTo: bob@example.test\r\nSubject: bench\r\n\r\n" + strings.Repeat("line of text\r\n", 100)
			b.ResetTimer()
			for range b.N {
				if err := c.SendMail("a@remote.test", []string{"bob@example.test"}, strings.NewReader(msg)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkConsoleSessions reports the heap that 50 logged-in console
// sessions, each reading /api/events, hold.
func BenchmarkConsoleSessions(b *testing.B) {
	const n = 50
	e := startWeb(b, func(c *Config) { c.MaxConnectionsPerAddress = 2 * n })
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var streams []*http.Response
	alice := mustUser(b, e, "alice@example.test")
	for range n {
		tok := e.srv.web.start(alice.Address, alice.ID, nil)
		req, _ := http.NewRequest("GET", e.base+"/api/events", nil)
		req.AddCookie(&http.Cookie{Name: sessionCookie, Value: tok})
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil || resp.StatusCode != 200 {
			b.Fatalf("stream: %v %v", resp, err)
		}
		streams = append(streams, resp)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-bytes/session")
	for _, r := range streams {
		r.Body.Close()
	}
}
