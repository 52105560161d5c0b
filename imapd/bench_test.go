package imapd

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/postern/postern/mailstore"
)

// fillInbox appends n small messages to the INBOX, several at a time so
// that they share commits.
func fillInbox(b testing.TB, env *testEnv, n int) mailstore.Mailbox {
	b.Helper()
	ctx := context.Background()
	mb, err := env.store.MailboxByName(ctx, env.user.ID, "INBOX")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	next := make(chan int)
	errs := make(chan error, 1)
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				var flags []string
				if i%3 == 0 {
					flags = []string{mailstore.FlagSeen}
				}
				if _, err := env.store.Append(ctx, mb.ID, flags, time.Time{}, []byte(testMessage(i, "bench "+strconv.Itoa(i)))); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	return mb
}

// BenchmarkSelectFetch: SELECT, then FETCH 1:* (UID FLAGS RFC822.SIZE),
// on a 10,000- and a 100,000-message INBOX (issue 17: SELECT of 100,000
// within 50 ms). The baseline is the mailstore reading the same message
// list directly (the floor of both commands). A selected mailbox holds its
// UIDs (4 bytes each), shared by every session that selects it.
func BenchmarkSelectFetch(b *testing.B) {
	for _, n := range []int{10000, 100000} {
		b.Run(fmt.Sprintf("messages=%d", n), func(b *testing.B) { benchSelectFetch(b, n) })
	}
}

func benchSelectFetch(b *testing.B, n int) {
	env := newEnv(b)
	mb := fillInbox(b, env, n)
	c, err := imapclient.DialInsecure(env.addr, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(testUser, testPass).Wait(); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var selectTime, fetchTime, baseTime time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := env.store.Messages(ctx, mb.ID, nil); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		sel, err := c.Select("INBOX", nil).Wait()
		if err != nil || sel.NumMessages != uint32(n) {
			b.Fatalf("SELECT: %v, %+v", err, sel)
		}
		t2 := time.Now()
		cmd := c.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, Flags: true, RFC822Size: true})
		count := 0
		for m := cmd.Next(); m != nil; m = cmd.Next() {
			for item := m.Next(); item != nil; item = m.Next() {
			}
			count++
		}
		if err := cmd.Close(); err != nil || count != n {
			b.Fatalf("FETCH: %d messages, %v", count, err)
		}
		t3 := time.Now()
		if err := c.Unselect().Wait(); err != nil {
			b.Fatal(err)
		}
		baseTime += t1.Sub(t0)
		selectTime += t2.Sub(t1)
		fetchTime += t3.Sub(t2)
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
	b.ReportMetric(ms(selectTime), "select-ms")
	b.ReportMetric(ms(fetchTime), "fetch-ms")
	b.ReportMetric(ms(baseTime), "store-read-ms")
	b.ReportMetric(float64(selectTime)/float64(baseTime), "select/store-read")
	b.ReportMetric(float64(fetchTime)/float64(baseTime), "fetch/store-read")
}

// BenchmarkFetchBody: FETCH BODY.PEEK[] of a 4 MiB message, streamed from
// the store. The baseline is reading the same body from the store
// directly.
func BenchmarkFetchBody(b *testing.B) {
	env := newEnv(b)
	var msg strings.Builder
	msg.WriteString("From: a@remote.test\r\nSubject: big\r\n\r\n")
	line := strings.Repeat("0123456789abcdef", 4) + "\r\n"
	for msg.Len() < 4<<20 {
		msg.WriteString(line)
	}
	env.deliver(b, msg.String())
	size := int64(msg.Len())
	ctx := context.Background()
	mb, _ := env.store.MailboxByName(ctx, env.user.ID, "INBOX")
	msgs, _ := env.store.Messages(ctx, mb.ID, nil)
	c, err := imapclient.DialInsecure(env.addr, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(testUser, testPass).Wait(); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		b.Fatal(err)
	}
	section := &imap.FetchItemBodySection{Peek: true}
	var fetchTime, baseTime time.Duration
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		body, err := env.store.OpenBody(ctx, msgs[0].BodyID)
		if err != nil {
			b.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, body); err != nil || n != size {
			b.Fatalf("read body: %d, %v", n, err)
		}
		t1 := time.Now()
		cmd := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}})
		m := cmd.Next()
		var got int64
		for item := m.Next(); item != nil; item = m.Next() {
			if bs, ok := item.(imapclient.FetchItemDataBodySection); ok {
				got, _ = io.Copy(io.Discard, bs.Literal)
			}
		}
		if err := cmd.Close(); err != nil || got != size {
			b.Fatalf("FETCH BODY[]: %d bytes, %v", got, err)
		}
		fetchTime += time.Since(t1)
		baseTime += t1.Sub(t0)
	}
	mbps := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / (1 << 20) }
	b.ReportMetric(mbps(fetchTime), "fetch-MiB/s")
	b.ReportMetric(mbps(baseTime), "store-read-MiB/s")
	b.ReportMetric(float64(fetchTime)/float64(baseTime), "fetch/store-read")
}

// stubSession is imapserver with next to no backend: the baseline for the
// memory of an idle connection.
type stubSession struct{}

func (stubSession) Close() error                                     { return nil }
func (stubSession) Login(string, string) error                       { return nil }
func (stubSession) Create(string, *imap.CreateOptions) error         { return nil }
func (stubSession) Delete(string) error                              { return nil }
func (stubSession) Rename(string, string, *imap.RenameOptions) error { return nil }
func (stubSession) Subscribe(string) error                           { return nil }
func (stubSession) Unsubscribe(string) error                         { return nil }
func (stubSession) List(*imapserver.ListWriter, string, []string, *imap.ListOptions) error {
	return nil
}
func (stubSession) Status(string, *imap.StatusOptions) (*imap.StatusData, error) { return nil, nil }
func (stubSession) Append(string, imap.LiteralReader, *imap.AppendOptions) (*imap.AppendData, error) {
	return nil, nil
}
func (stubSession) Poll(*imapserver.UpdateWriter, bool) error { return nil }
func (stubSession) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	<-stop
	return nil
}
func (stubSession) Select(string, *imap.SelectOptions) (*imap.SelectData, error) {
	return &imap.SelectData{UIDNext: 1, UIDValidity: 1, Flags: mailboxFlags(nil), PermanentFlags: mailboxFlags(nil)}, nil
}
func (stubSession) Unselect() error                                       { return nil }
func (stubSession) Expunge(*imapserver.ExpungeWriter, *imap.UIDSet) error { return nil }
func (stubSession) Search(imapserver.NumKind, *imap.SearchCriteria, *imap.SearchOptions) (*imap.SearchData, error) {
	return nil, nil
}
func (stubSession) Fetch(*imapserver.FetchWriter, imap.NumSet, *imap.FetchOptions) error { return nil }
func (stubSession) Store(*imapserver.FetchWriter, imap.NumSet, *imap.StoreFlags, *imap.StoreOptions) error {
	return nil
}
func (stubSession) Copy(imap.NumSet, string) (*imap.CopyData, error) { return nil, nil }

// idleClients opens n connections to addr that log in, select INBOX and
// IDLE. They are plain sockets read synchronously: no client goroutines.
func idleClients(b *testing.B, addr string, n int, clientTLS *tls.Config) []net.Conn {
	b.Helper()
	conns := make([]net.Conn, 0, n)
	for i := 0; i < n; i++ {
		var c net.Conn
		var err error
		if clientTLS != nil {
			c, err = tls.Dial("tcp", addr, clientTLS)
		} else {
			c, err = net.Dial("tcp", addr)
		}
		if err != nil {
			b.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		r := bufio.NewReaderSize(c, 1024)
		expect := func(prefix string) {
			c.SetReadDeadline(time.Now().Add(waitTimeout))
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					b.Fatalf("connection %d: %v", i, err)
				}
				if strings.HasPrefix(line, prefix) {
					return
				}
			}
		}
		expect("* OK")
		fmt.Fprintf(c, "a LOGIN %s \"%s\"\r\n", testUser, testPass)
		expect("a OK")
		fmt.Fprintf(c, "b SELECT INBOX\r\n")
		expect("b OK")
		fmt.Fprintf(c, "c IDLE\r\n")
		expect("+")
	}
	return conns
}

// memNow is the process's Go memory in use (heap and stacks) and RSS.
// memSample is the process's memory at one moment.
type memSample struct {
	heap, stack, rss uint64 // live heap objects, goroutine stacks, resident set
}

func memNow() memSample {
	// Several collections: each may halve a goroutine stack that grew
	// during a command and is mostly unused while idle.
	for i := 0; i < 12; i++ {
		runtime.GC()
	}
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/stacks:bytes"},
	}
	metrics.Read(samples)
	var m memSample
	m.heap, m.stack = samples[0].Value.Uint64(), samples[1].Value.Uint64()
	if os.Getenv("POSTERN_BENCH_MEM") != "" {
		fmt.Fprintf(os.Stderr, "heap %d stack %d goroutines %d\n", m.heap, m.stack, runtime.NumGoroutine())
	}
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		f := strings.Fields(string(b))
		if len(f) > 1 {
			pages, _ := strconv.ParseUint(f[1], 10, 64)
			m.rss = pages * uint64(os.Getpagesize())
		}
	}
	return m
}

// perConn is the growth from a to b per connection, for each measure.
func perConn(a, b memSample, n int) (heap, stack, rss float64) {
	d := func(x, y uint64) float64 { return float64(int64(y)-int64(x)) / float64(n) }
	return d(a.heap, b.heap), d(a.stack, b.stack), d(a.rss, b.rss)
}

// BenchmarkIdleConnections: 2000 connections logged in with INBOX
// selected and in IDLE; memory per connection, for Postern's server and,
// as the baseline, for imapserver with a stub backend. Both sides of the
// sockets are in this process: the client side is a bare socket.
//
// Go starts new goroutines with the average stack size it has seen
// (GODEBUG adaptivestackstart), and the stub runs first, in a process that
// has not yet run SQLite: run with GODEBUG=adaptivestackstart=0 to compare
// like with like.
//
// POSTERN_BENCH_PROFILE=DIR writes, while the connections idle, a heap
// profile of every allocation (heap-library.pprof, heap-postern.pprof; read
// with go tool pprof -sample_index=inuse_space) and a goroutine dump
// (goroutines-*.txt) to DIR.
func BenchmarkIdleConnections(b *testing.B) { benchIdle(b, false) }

// BenchmarkIdleConnectionsTLS: the same over implicit TLS (port 993), on
// both sides; the client side's TLS state is in both figures alike.
func BenchmarkIdleConnectionsTLS(b *testing.B) { benchIdle(b, true) }

func benchIdle(b *testing.B, useTLS bool) {
	const n = 2000
	profDir := os.Getenv("POSTERN_BENCH_PROFILE")
	if profDir != "" {
		defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
		runtime.MemProfileRate = 1
	}
	var clientTLS *tls.Config
	measure := func(addr, label string) (heap, stack, rss float64) {
		m0 := memNow()
		conns := idleClients(b, addr, n, clientTLS)
		time.Sleep(200 * time.Millisecond)
		m1 := memNow()
		if profDir != "" {
			writeProfiles(b, profDir, label)
		}
		for _, c := range conns {
			c.Write([]byte("DONE\r\nz LOGOUT\r\n"))
			c.Close()
		}
		return perConn(m0, m1, n)
	}
	// The runtime never frees a goroutine's descriptor (runtime.g, some
	// 400 bytes); it reuses it. Whichever side ran first would pay for
	// the descriptors of both: make them now, so that neither does.
	// Both sides run two goroutines per idle connection (imapserver's).
	warmGoroutines(3 * n)
	for i := 0; i < b.N; i++ {
		opts := &imapserver.Options{
			NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
				return stubSession{}, nil, nil
			},
			Caps:         imap.CapSet{imap.CapIMAP4rev1: {}},
			InsecureAuth: true,
			Logger:       libLogger{&Server{log: newEnvLogger()}, "stub"},
		}
		var ln net.Listener
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		if useTLS {
			serverTLS, cert := selfSigned(b)
			opts.TLSConfig = serverTLS
			ln = tls.NewListener(ln, serverTLS)
			clientTLS = (&testEnv{cert: cert}).clientTLS()
		}
		stub := imapserver.New(opts)
		go stub.Serve(ln)
		baseHeap, baseStack, baseRSS := measure(ln.Addr().String(), "library")
		stub.Close()

		env := newEnv(b, func(c *Config) {
			c.Limits.MaxConnectionsPerAddress = n + 10
			// Info level, as in production: lines are formatted, then
			// dropped rather than kept in the test's buffer.
			c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		})
		env.deliver(b, testMessage(1, "one"))
		addr := env.addr
		if useTLS {
			addr, clientTLS = env.tls, env.clientTLS()
		}
		oursHeap, oursStack, oursRSS := measure(addr, "postern")

		b.ReportMetric(baseHeap, "library-heap-B/conn")
		b.ReportMetric(baseStack, "library-stack-B/conn")
		b.ReportMetric(oursHeap, "postern-heap-B/conn")
		b.ReportMetric(oursStack, "postern-stack-B/conn")
		b.ReportMetric(oursHeap+oursStack-baseHeap-baseStack, "backend-B/conn")
		b.ReportMetric(baseRSS, "library-rss-B/conn")
		b.ReportMetric(oursRSS, "postern-rss-B/conn")
	}
}

// warmGoroutines starts n goroutines and waits for them to end.
func warmGoroutines(n int) {
	var wg sync.WaitGroup
	release := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-release
		}()
	}
	close(release)
	wg.Wait()
}

// writeProfiles writes the heap profile and a goroutine dump of this
// moment to dir, named after label.
func writeProfiles(b *testing.B, dir, label string) {
	b.Helper()
	for _, p := range []struct {
		profile, file string
		debug         int
	}{
		{"heap", "heap-" + label + ".pprof", 0},
		{"goroutine", "goroutines-" + label + ".txt", 1},
	} {
		f, err := os.Create(dir + "/" + p.file)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.Lookup(p.profile).WriteTo(f, p.debug); err != nil {
			b.Fatalf("write %s: %v", p.file, err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPollIdle: the poll that follows every command, with a mailbox
// selected and nothing new. The baseline is an uncontended mutex
// lock/unlock.
func BenchmarkPollIdle(b *testing.B) {
	env := newEnv(b)
	env.deliver(b, testMessage(1, "one"))
	ctx := context.Background()
	mb, _ := env.store.MailboxByName(ctx, env.user.ID, "INBOX")
	v, _, err := env.srv.boxes.open(ctx, mb, false)
	if err != nil {
		b.Fatal(err)
	}
	defer v.close()
	var mu sync.Mutex
	t0 := time.Now()
	for i := 0; i < b.N; i++ {
		mu.Lock()
		mu.Unlock()
	}
	base := time.Since(t0)
	b.ResetTimer()
	t1 := time.Now()
	for i := 0; i < b.N; i++ {
		if err := v.poll(ctx, nil, true); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(time.Since(t1))/float64(base), "poll/mutex")
}

// BenchmarkSearch: SEARCH on a 20,000-message INBOX (a third \Seen),
// with the store selecting by flags, sizes, dates and UIDs, against the
// matcher alone reading every message (as before), alternately in the
// same run. Reports each query's milliseconds both ways and their ratio.
func BenchmarkSearch(b *testing.B) {
	const n = 20000
	env := newEnv(b)
	fillInbox(b, env, n)
	c, err := imapclient.DialInsecure(env.addr, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(testUser, testPass).Wait(); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		b.Fatal(err)
	}
	defer searchInGo.Store(false)
	queries := []struct {
		name string
		crit imap.SearchCriteria
	}{
		{"seen", imap.SearchCriteria{Flag: []imap.Flag{imap.FlagSeen}}},
		{"flagged", imap.SearchCriteria{Flag: []imap.Flag{imap.FlagFlagged}}},
		{"unseen-larger", imap.SearchCriteria{NotFlag: []imap.Flag{imap.FlagSeen}, Larger: 100}},
		{"since-today", imap.SearchCriteria{Since: time.Now().Add(-24 * time.Hour)}},
		{"uid-last-100", imap.SearchCriteria{UID: []imap.UIDSet{{{Start: n - 99, Stop: 0}}}}},
		{"unseen-subject", imap.SearchCriteria{NotFlag: []imap.Flag{imap.FlagSeen}, Header: []imap.SearchCriteriaHeaderField{{Key: "Subject", Value: "bench 1999"}}}},
	}
	inGo := make([]time.Duration, len(queries))
	inStore := make([]time.Duration, len(queries))
	var counts [2][]uint32
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for q := range queries {
			order := []bool{true, false}
			if i%2 == 1 {
				order = []bool{false, true} // neither always pays for the other's garbage
			}
			for _, goOnly := range order {
				k := 1
				if goOnly {
					k = 0
				}
				searchInGo.Store(goOnly)
				t0 := time.Now()
				data, err := c.UIDSearch(&queries[q].crit, nil).Wait()
				if err != nil {
					b.Fatalf("%s: %v", queries[q].name, err)
				}
				if goOnly {
					inGo[q] += time.Since(t0)
				} else {
					inStore[q] += time.Since(t0)
				}
				if i == 0 {
					counts[k] = append(counts[k], uint32(len(data.AllUIDs())))
				}
			}
		}
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
	for q, qq := range queries {
		if counts[0][q] != counts[1][q] {
			b.Errorf("%s: %d hits by the matcher, %d with the store", qq.name, counts[0][q], counts[1][q])
		}
		b.ReportMetric(ms(inGo[q]), qq.name+"-go-ms")
		b.ReportMetric(ms(inStore[q]), qq.name+"-store-ms")
		b.ReportMetric(float64(inGo[q])/float64(inStore[q]), qq.name+"-go/store")
	}
}

// BenchmarkSearchText: SEARCH BODY and SUBJECT for a word on a large INBOX
// (POSTERN_BENCH_MESSAGES, default 100,000), with the full-text index
// narrowing the candidates against the matcher reading every message, in
// the same run. Reports milliseconds both ways and their ratio.
func BenchmarkSearchText(b *testing.B) {
	n := 100000
	if v, err := strconv.Atoi(os.Getenv("POSTERN_BENCH_MESSAGES")); err == nil && v > 0 {
		n = v
	}
	env := newEnv(b)
	fillInbox(b, env, n)
	indexStart := time.Now()
	for {
		left, err := env.store.IndexBacklog(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if left == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Logf("%d messages; the indexer caught up %v after the last", n, time.Since(indexStart))
	c, err := imapclient.DialInsecure(env.addr, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(testUser, testPass).Wait(); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		b.Fatal(err)
	}
	defer searchInGo.Store(false)
	word := fmt.Sprintf("message %d.", n/2) // one message's body
	queries := []struct {
		name string
		crit imap.SearchCriteria
		hits int
	}{
		{"body", imap.SearchCriteria{Body: []string{word}}, 1},
		{"subject", imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Subject", Value: fmt.Sprintf("bench %d", n/2)}}}, -1},
	}
	inGo := make([]time.Duration, len(queries))
	inIndex := make([]time.Duration, len(queries))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for q, qq := range queries {
			for _, goOnly := range []bool{false, true} {
				searchInGo.Store(goOnly)
				t0 := time.Now()
				data, err := c.UIDSearch(&qq.crit, nil).Wait()
				if err != nil {
					b.Fatalf("%s: %v", qq.name, err)
				}
				if goOnly {
					inGo[q] += time.Since(t0)
				} else {
					inIndex[q] += time.Since(t0)
				}
				if got := len(data.AllUIDs()); qq.hits >= 0 && got != qq.hits || got == 0 {
					b.Fatalf("%s: %d hits", qq.name, got)
				}
			}
		}
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
	for q, qq := range queries {
		b.ReportMetric(ms(inIndex[q]), qq.name+"-index-ms")
		b.ReportMetric(ms(inGo[q]), qq.name+"-scan-ms")
		b.ReportMetric(float64(inGo[q])/float64(inIndex[q]), qq.name+"-scan/index")
	}
}
