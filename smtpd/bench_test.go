package smtpd

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/storetest"
	"github.com/postern/postern/smtpd/msgauth"
)

// benchMessage is a 4 KiB message.
// roundShare is the number of messages of round i when total are sent in
// rounds alternating between servers: the first round takes the rest.
func roundShare(total, rounds, i int) int {
	n := total / rounds
	if i == 0 {
		n += total % rounds
	}
	return n
}

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

// benchSeq numbers the messages sendParallel sends, in the whole process.
var benchSeq atomic.Int64

// sendParallel sends n copies of msg from clients parallel connections to
// addr and returns the time taken. Each copy starts with its own
// X-Bench-Seq field, so that every message is a distinct body, as real
// mail is: identical copies would let a store that keeps bodies once by
// their hash (the mailstore does) skip the body insert and its full-text
// indexing, which a server that adds a Received field never can.
func sendParallel(b *testing.B, addr, from, msg string, clients, n int) time.Duration {
	return storetest.SendParallel(b, []string{addr}, from, alice, clients, n, func(int64) string {
		return "X-Bench-Seq: " + strconv.FormatInt(benchSeq.Add(1), 10) + "\r\n" + msg
	})
}

// BenchmarkInboundChecks sends the same 4 KiB message, signed by
// alpha.test with Ed25519 and RSA-2048 and from an address its SPF
// allows, to the MX with checks off and then on (DNS from the loopback
// server, cached after the first message), in one run, and reports both
// rates and their ratio: what the checks cost.
func BenchmarkInboundChecks(b *testing.B) {
	const clients = 32
	msg := strings.Replace(benchMessage(), "Alice <alice@example.test>", "Alice <alice@alpha.test>", 1)
	fields, err := msgauth.Sign([]byte(msg), dkimKeys(b, "alpha.test"), time.Now())
	must(b, err)
	msg = fields + msg
	off := newTestEnv(b)
	on := newAuthWorld(b)
	// One message first fills the DNS cache; then rounds alternate, so
	// that both see the same disk (fsync times vary on a shared machine).
	sendParallel(b, on.mx, "alice@alpha.test", msg, 1, 1)
	const rounds = 4
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	var tOff, tOn time.Duration
	for i := range rounds {
		n := roundShare(b.N, rounds, i)
		if n == 0 {
			continue
		}
		tOff += sendParallel(b, off.mx, "alice@alpha.test", msg, clients, n)
		tOn += sendParallel(b, on.mx, "alice@alpha.test", msg, clients, n)
	}
	b.StopTimer()
	if got := on.inbox(b, alice); !strings.Contains(arField(got[len(got)-1]), "dmarc=pass") {
		b.Fatalf("checks did not pass:\n%s", got[len(got)-1])
	}
	rateOff, rateOn := float64(b.N)/tOff.Seconds(), float64(b.N)/tOn.Seconds()
	b.ReportMetric(rateOff, "off-msgs/s")
	b.ReportMetric(rateOn, "on-msgs/s")
	b.ReportMetric(rateOn/rateOff, "on/off")
}
