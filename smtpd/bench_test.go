package smtpd

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/mailstore"
)

// benchMessage is a 4 KiB message.
func benchMessage() string {
	msg := simpleMessage("bench")
	line := strings.Repeat("0123456789abcdef", 4) + "\r\n" // 66 octets
	for len(msg)+len(line) <= 4096 {
		msg += line
	}
	return msg + strings.Repeat("x", 4096-len(msg)-2) + "\r\n"
}

var (
	serialOnce sync.Once
	serialRate float64
)

// serialDeliverRate is the baseline: messages per second that one caller
// gets from mailstore.Deliver into a fresh durable store, one at a time
// (each waits for its own commit).
func serialDeliverRate(b *testing.B, msg string) float64 {
	serialOnce.Do(func() {
		store, err := mailstore.Open(filepath.Join(b.TempDir(), "serial.db"), mailstore.Options{PasswordCost: mailstore.FastPasswordHash})
		must(b, err)
		defer store.Close()
		ctx := context.Background()
		must(b, store.AddDomain(ctx, testDomain))
		_, err = store.AddUser(ctx, alice, alicePassword)
		must(b, err)
		const n = 1000
		start := time.Now()
		for range n {
			if _, err := store.Deliver(ctx, "s@elsewhere.test", []string{alice}, []byte(msg)); err != nil {
				b.Fatal(err)
			}
		}
		serialRate = n / time.Since(start).Seconds()
	})
	return serialRate
}

// BenchmarkSMTPDeliver sends 4 KiB messages from 32 parallel clients over
// loopback into a fresh durable store and reports the messages accepted and
// stored per second, beside the mailstore's serial Deliver rate.
func BenchmarkSMTPDeliver(b *testing.B) {
	const clients = 32
	msg := benchMessage()
	serial := serialDeliverRate(b, msg)
	e := newTestEnv(b)
	conns := make([]*smtp.Client, clients)
	for i := range conns {
		c, err := smtp.Dial(e.mx)
		must(b, err)
		must(b, c.Hello("bench.example.test"))
		conns[i] = c
	}
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	start := time.Now()
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := c.SendMail("s@elsewhere.test", []string{alice}, strings.NewReader(msg)); err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	for _, c := range conns {
		c.Quit()
	}
	rate := float64(b.N) / elapsed.Seconds()
	b.ReportMetric(rate, "msgs/s")
	b.ReportMetric(serial, "serial-deliver-msgs/s")
	b.ReportMetric(rate/serial, "x-serial")
}
