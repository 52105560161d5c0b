package storetest

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// SendParallel sends n messages from clients SMTP connections at once,
// the i-th connected to addrs[i % len(addrs)], each message msg(k) for
// k = 1..n from sender to rcpt; it returns the time from the first
// message to the last 250. Benchmarks of ingest share it.
func SendParallel(tb testing.TB, addrs []string, sender, rcpt string, clients, n int, msg func(k int64) string) time.Duration {
	tb.Helper()
	conns := make([]*smtp.Client, clients)
	for i := range conns {
		c, err := smtp.Dial(addrs[i%len(addrs)])
		if err != nil {
			tb.Fatal(err)
		}
		if err := c.Hello("client.alpha.test"); err != nil {
			tb.Fatal(err)
		}
		conns[i] = c
	}
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := next.Add(1); k <= int64(n); k = next.Add(1) {
				if err := c.SendMail(sender, []string{rcpt}, strings.NewReader(msg(k))); err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err, _ := failed.Load().(error); err != nil {
		tb.Fatal(err)
	}
	for _, c := range conns {
		c.Quit()
	}
	return elapsed
}
