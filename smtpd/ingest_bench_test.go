package smtpd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/cmd/postern/console"
	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mime"
)

// ceilingBackend is the bare ceiling of SMTP ingest: go-smtp with a
// backend that reads the message and commits it with mailstore.Deliver,
// and nothing else (no policy, no spool, no limits, no checks). It stores
// the same rows as Postern's MX: the message with a Return-Path and a
// Received field of the same form in front, each with its own ID (a
// ceiling that stored smaller bodies, with fewer distinct words to index,
// would measure the store, not the server). Postern's MX does the same
// work plus everything a server on the Internet must do;
// BenchmarkSMTPIngest reports how close it comes.
type ceilingBackend struct{ store *mailstore.Store }

func (b ceilingBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &ceilingSession{store: b.store, conn: c, id: newSessionID()}, nil
}

type ceilingSession struct {
	store *mailstore.Store
	conn  *smtp.Conn
	id    string // the session's, as Postern's MX names its sessions
	n     int    // messages so far
	from  string
	rcpts []string
}

func (s *ceilingSession) Mail(from string, _ *smtp.MailOptions) error {
	s.from = from
	return nil
}

func (s *ceilingSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.rcpts = append(s.rcpts, to)
	return nil
}

func (s *ceilingSession) Data(r io.Reader) error {
	body, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("read message: %w", err)
	}
	s.n++
	ip, _ := netip.ParseAddrPort(s.conn.Conn().RemoteAddr().String())
	rec := mime.Received{
		Helo: s.conn.Hostname(), ClientIP: ip.Addr(), By: testHost, With: "ESMTP",
		ID: s.id + "-" + strconv.Itoa(s.n), Date: time.Now(),
	}
	if len(s.rcpts) == 1 {
		rec.For = s.rcpts[0]
	}
	body = append([]byte(mime.ReturnPath(s.from)+rec.Field()), body...)
	if _, err := s.store.Deliver(context.Background(), s.from, s.rcpts, body); err != nil {
		return fmt.Errorf("deliver: %w", err)
	}
	return nil
}

func (s *ceilingSession) Reset()        { s.from, s.rcpts = "", nil }
func (s *ceilingSession) Logout() error { return nil }

// newCeiling starts the bare ceiling server on a fresh durable store with
// alice as its one user.
func newCeiling(b *testing.B) (addr string, store *mailstore.Store) {
	store, err := mailstore.Open(filepath.Join(b.TempDir(), "ceiling.db"), mailstore.Options{PasswordCost: mailstore.FastPasswordHash})
	must(b, err)
	b.Cleanup(func() { store.Close() })
	ctx := context.Background()
	must(b, store.AddDomain(ctx, testDomain))
	_, err = store.AddUser(ctx, alice, alicePassword)
	must(b, err)
	srv := smtp.NewServer(ceilingBackend{store})
	srv.Domain = testHost
	srv.MaxMessageBytes = 32 << 20
	srv.ReadTimeout = time.Minute
	srv.WriteTimeout = time.Minute
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(b, err)
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), store
}

// waitIndexed waits, with the benchmark timer stopped, until the store's
// background full-text indexer has caught up, so that neither side of a
// comparison pays in its round for the other's backlog. The indexer is
// the same code on both sides; what is compared is the time to 250.
func waitIndexed(b *testing.B, st *mailstore.Store) {
	b.StopTimer()
	defer b.StartTimer()
	deadline := time.Now().Add(time.Minute)
	for {
		n, err := st.IndexBacklog(context.Background())
		must(b, err)
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("full-text indexer still has %d bodies after a minute", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkSMTPIngest: distinct 4 KiB messages (sendParallel) from 32
// parallel clients into a fresh durable store, through Postern's MX
// (logging at info level, as in production) and through the bare ceiling
// (newCeiling), in alternating rounds so that both see the same disk;
// reports both rates and ours/ceiling. The goal of issue 17 is
// ours/ceiling >= 0.9.
func BenchmarkSMTPIngest(b *testing.B) {
	benchIngest(b, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	})
}

// BenchmarkSMTPIngestTraceHub is BenchmarkSMTPIngest as serve runs the MX
// when the web console is on: the protocol trace on, and the logger built
// on the console's Hub, which keeps every record in its ring (with no
// subscriber, the usual case) and filters trace records out of the log
// output (console.TraceFilter), as serve's withHub does. Its ratio against
// BenchmarkSMTPIngest's is what the console costs ingest.
func BenchmarkSMTPIngestTraceHub(b *testing.B) {
	var hub *console.Hub
	benchIngest(b, func(c *Config) {
		hub = console.NewHub(console.TraceFilter(slog.NewTextHandler(io.Discard, nil), false), slog.LevelInfo, 0)
		c.Logger = slog.New(hub.Handler())
		c.Trace = true
	})
	// The ring has the trace: the benchmark measured the real thing.
	recent := hub.Recent()
	traced := 0
	for _, e := range recent {
		if e.Msg == "trace" {
			traced++
		}
	}
	if traced < len(recent)/2 {
		b.Fatalf("%d of the hub's %d recent events are trace lines", traced, len(recent))
	}
}

// benchIngest runs the ingest comparison with Postern's Config adjusted
// by opts.
func benchIngest(b *testing.B, opts func(*Config)) {
	const clients = 32
	msg := benchMessage()
	// Every goroutine the two sides start (store writer and indexer,
	// listeners, sessions) carries its side's label, so that a CPU
	// profile of the benchmark splits by side: go tool pprof
	// -tagfocus side=postern (or ceiling).
	var ours *testEnv
	pprof.Do(context.Background(), pprof.Labels("side", "postern"), func(context.Context) { ours = newTestEnv(b, opts) })
	var ceiling string
	var ceilingStore *mailstore.Store
	pprof.Do(context.Background(), pprof.Labels("side", "ceiling"), func(context.Context) { ceiling, ceilingStore = newCeiling(b) })
	// One message each first: connections, statements and caches warm.
	sendParallel(b, ours.mx, "s@elsewhere.test", msg, 1, 1)
	sendParallel(b, ceiling, "s@elsewhere.test", msg, 1, 1)
	// Many short rounds, alternating, so that both see the same disk and
	// the same neighbours on a shared machine.
	const rounds = 16
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	var tOurs, tCeiling, cpuOurs, cpuCeiling time.Duration
	var roundRatios []float64
	for i := range rounds {
		n := roundShare(b.N, rounds, i)
		if n == 0 {
			continue
		}
		side := func(addr string, st *mailstore.Store, elapsed, cpu *time.Duration) time.Duration {
			c0 := mailstore.ProcessCPU()
			t := sendParallel(b, addr, "s@elsewhere.test", msg, clients, n)
			*cpu += mailstore.ProcessCPU() - c0
			*elapsed += t
			waitIndexed(b, st)
			return t
		}
		// Each side goes first in every other round: what one side
		// leaves behind (garbage to collect, pages to write back) falls
		// on the other as often as on itself.
		var t, tc time.Duration
		if i%2 == 0 {
			t = side(ours.mx, ours.store, &tOurs, &cpuOurs)
			tc = side(ceiling, ceilingStore, &tCeiling, &cpuCeiling)
		} else {
			tc = side(ceiling, ceilingStore, &tCeiling, &cpuCeiling)
			t = side(ours.mx, ours.store, &tOurs, &cpuOurs)
		}
		roundRatios = append(roundRatios, tc.Seconds()/t.Seconds())
	}
	b.StopTimer()
	// Both stored every message: a server that answered 250 without
	// storing would look fast.
	for name, st := range map[string]*mailstore.Store{"postern": ours.store, "ceiling": ceilingStore} {
		u, err := st.UserByAddress(context.Background(), alice)
		must(b, err)
		in, err := st.MailboxByName(context.Background(), u.ID, "INBOX")
		must(b, err)
		status, err := st.Status(context.Background(), in.ID)
		must(b, err)
		if status.Messages != uint32(b.N+1) {
			b.Fatalf("%s stored %d messages, want %d", name, status.Messages, b.N+1)
		}
	}
	if !strings.Contains(msg, "Subject: bench") {
		b.Fatal("not the bench message")
	}
	rOurs, rCeiling := float64(b.N)/tOurs.Seconds(), float64(b.N)/tCeiling.Seconds()
	b.ReportMetric(rOurs, "postern-msgs/s")
	b.ReportMetric(rCeiling, "ceiling-msgs/s")
	b.ReportMetric(rOurs/rCeiling, "postern/ceiling")
	// The median of the rounds' ratios: a burst of load from a neighbour
	// on a shared machine spoils a round or two, which the sum above
	// counts in full and the median leaves out.
	slices.Sort(roundRatios)
	b.ReportMetric(roundRatios[len(roundRatios)/2], "postern/ceiling-median")
	// CPU of the whole process (clients included) per message during
	// each side's rounds: steadier than rates on a shared machine.
	b.ReportMetric(float64(cpuOurs.Microseconds())/float64(b.N), "postern-cpu-us/msg")
	b.ReportMetric(float64(cpuCeiling.Microseconds())/float64(b.N), "ceiling-cpu-us/msg")
}
