package mailstore

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/mime"
)

// benchMessage is a 4 KiB message; n makes each one distinct so that no
// body is shared.
func benchMessage(n int64) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: a@remote.test\r\nTo: u@example.test\r\nSubject: bench %d\r\n\r\n", n)
	for b.Len() < 4096-2 {
		b.WriteString("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n")
	}
	return b.Bytes()[:4096]
}

func benchStore(b *testing.B) (*Store, User) {
	b.Helper()
	// On the backend of the suite's pass: run with
	// POSTERN_TEST_POSTGRES_DSN set for the PostgreSQL figures beside
	// SQLite's.
	s := newTestDB(b).open(b, Options{PasswordCost: FastPasswordHash})
	b.Cleanup(func() { s.Close() })
	ctx := context.Background()
	if err := s.AddDomain(ctx, "example.test"); err != nil {
		b.Fatal(err)
	}
	u, err := s.AddUser(ctx, "u@example.test", "pw")
	if err != nil {
		b.Fatal(err)
	}
	return s, u
}

// BenchmarkDeliverSerial: one durable Deliver at a time (one commit each).
func BenchmarkDeliverSerial(b *testing.B) {
	s, u := benchStore(b)
	ctx := context.Background()
	rcpt := []string{u.Address}
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := s.Deliver(ctx, "a@remote.test", rcpt, benchMessage(int64(i))); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "deliveries/s")
}

// BenchmarkDeliverParallel: 32 goroutines delivering at once, sharing
// commits. Reports throughput, the p99 latency of one Deliver, and per
// delivery the process's CPU time and the writer's busy time (its group
// commits: statements, WAL writes and fsync), which a shared machine
// disturbs less than throughput.
func BenchmarkDeliverParallel(b *testing.B) {
	s, u := benchStore(b)
	ctx := context.Background()
	rcpt := []string{u.Address}
	const producers = 32
	var next atomic.Int64
	lat := make([][]time.Duration, producers)
	var wg sync.WaitGroup
	b.ResetTimer()
	start, cpu0 := time.Now(), ProcessCPU()
	fore0, _ := s.w.load()
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			for {
				n := next.Add(1)
				if n > int64(b.N) {
					return
				}
				t0 := time.Now()
				if _, err := s.Deliver(ctx, "a@remote.test", rcpt, benchMessage(n)); err != nil {
					b.Error(err)
					return
				}
				lat[p] = append(lat[p], time.Since(t0))
			}
		}(p)
	}
	wg.Wait()
	elapsed, cpu := time.Since(start), ProcessCPU()-cpu0
	fore, _ := s.w.load()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "deliveries/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/delivery")
	b.ReportMetric(float64((fore-fore0).Microseconds())/float64(b.N), "writer-us/delivery")
	if len(all) > 0 {
		b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
	}
}

// BenchmarkAuthenticate measures a login with the production hash cost:
// cold (every login hashes) and cached (the login cache answers).
func BenchmarkAuthenticate(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "postern.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.AddDomain(ctx, "example.test"); err != nil {
		b.Fatal(err)
	}
	if _, err := s.AddUser(ctx, "u@example.test", "correct horse"); err != nil {
		b.Fatal(err)
	}
	b.Run("cold", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			s.auth.drop("u@example.test")
			if _, err := s.Authenticate(ctx, "u@example.test", "correct horse"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := s.Authenticate(ctx, "u@example.test", "correct horse"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("unknown-user", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := s.Authenticate(ctx, "nobody@example.test", "correct horse"); err == nil {
				b.Fatal("unknown user logged in")
			}
		}
	})
}

// fillMailbox adds n messages (sharing one body) to a mailbox in one
// transaction, as fast as the store can take them.
func fillMailbox(b *testing.B, s *Store, mailboxID int64, n int) {
	b.Helper()
	body := prepareBody(benchMessage(-1))
	err := s.w.do(context.Background(), func(t *wtx) error {
		bodyID, err := t.storeBody(body)
		if err != nil {
			return err
		}
		h, err := t.head(mailboxID)
		if err != nil {
			return err
		}
		first := h.uidnext
		if err := t.bump(mailboxID, &h, uint32(n), nil); err != nil {
			return err
		}
		msgs := make([]Message, n)
		for i := range msgs {
			msgs[i] = Message{MailboxID: mailboxID, UID: first + uint32(i), ModSeq: h.modseq,
				InternalDate: time.Unix(int64(i), 0), Size: int64(len(body.data)), BodyID: bodyID}
		}
		if err := t.insertMessages(msgs); err != nil {
			return err
		}
		t.changes = nil // nobody listens
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkDeliverQuota: a durable delivery to a user with a quota and
// 20,000 messages, its quota checked by summing the messages (as before
// schema 7) and by reading the usage counter, alternately in the same
// run; reports both and their ratio.
func BenchmarkDeliverQuota(b *testing.B) {
	s, u := benchStore(b)
	ctx := context.Background()
	if err := s.SetQuota(ctx, u.Address, 1<<40); err != nil {
		b.Fatal(err)
	}
	mb, err := s.MailboxByName(ctx, u.ID, "INBOX")
	if err != nil {
		b.Fatal(err)
	}
	fillMailbox(b, s, mb.ID, 20000)
	rcpt := []string{u.Address}
	var sum, counter time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k, bySum := range []bool{true, false} {
			s.w.usageBySum = bySum // read by the writer after the request is sent
			t0 := time.Now()
			if _, err := s.Deliver(ctx, "a@remote.test", rcpt, benchMessage(int64(2*i+k))); err != nil {
				b.Fatal(err)
			}
			if bySum {
				sum += time.Since(t0)
			} else {
				counter += time.Since(t0)
			}
		}
	}
	b.StopTimer()
	s.w.usageBySum = false
	b.ReportMetric(float64(sum.Microseconds())/float64(b.N)/1000, "sum-ms/op")
	b.ReportMetric(float64(counter.Microseconds())/float64(b.N)/1000, "counter-ms/op")
	b.ReportMetric(float64(sum)/float64(counter), "sum/counter")
}

// BenchmarkFrontendsDeliver: 32 concurrent deliveries of 4 KiB messages
// to one mailbox spread over 1, 2 and 3 Stores on one PostgreSQL
// database (frontends in one process: each has its own writer
// connection, group commit and change feed listener, as separate
// processes would). In the SQLite pass it runs the single-node case.
func BenchmarkFrontendsDeliver(b *testing.B) {
	counts := []int{1}
	if onPostgres() {
		counts = []int{1, 2, 3}
	}
	for _, n := range counts {
		b.Run(fmt.Sprintf("frontends=%d", n), func(b *testing.B) {
			db := newTestDB(b)
			var fe []*Store
			for range n {
				s := db.open(b, Options{PasswordCost: FastPasswordHash})
				b.Cleanup(func() { s.Close() })
				fe = append(fe, s)
			}
			ctx := context.Background()
			if err := fe[0].AddDomain(ctx, "example.test"); err != nil {
				b.Fatal(err)
			}
			if _, err := fe[0].AddUser(ctx, "u@example.test", "pw"); err != nil {
				b.Fatal(err)
			}
			const producers = 32
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for p := 0; p < producers; p++ {
				wg.Add(1)
				go func(s *Store) {
					defer wg.Done()
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						if _, err := s.Deliver(ctx, "a@remote.test", []string{"u@example.test"}, benchMessage(i)); err != nil {
							b.Error(err)
							return
						}
					}
				}(fe[p%n])
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "deliveries/s")
		})
	}
}

// BenchmarkSelectFetch10k: what IMAP SELECT and FETCH 1:* (UID FLAGS)
// read from the store on a 10,000-message mailbox: the mailbox with its
// status, then every message's UID and flags.
func BenchmarkSelectFetch10k(b *testing.B) {
	s, u := benchStore(b)
	ctx := context.Background()
	mb, err := s.MailboxByName(ctx, u.ID, "INBOX")
	if err != nil {
		b.Fatal(err)
	}
	fillMailbox(b, s, mb.ID, 10000)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.MailboxByID(ctx, mb.ID); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Status(ctx, mb.ID); err != nil {
			b.Fatal(err)
		}
		msgs, err := s.Messages(ctx, mb.ID, nil)
		if err != nil || len(msgs) != 10000 {
			b.Fatalf("%d messages, %v", len(msgs), err)
		}
	}
}

// indexCorpus makes n distinct messages of about 4.5 KB like real mail
// for the full-text indexer: words drawn (Zipf-like, so some are common
// and most are rare) from a vocabulary of a few thousand made of
// syllables, a few of them not ASCII, with unique Message-IDs, dates and numbers in the header
// and the text, so that each body adds trigrams of its own.
func indexCorpus(n int) [][]byte {
	rng := rand.New(rand.NewPCG(17, 5))
	// Words of one to four syllables, as in natural language, where
	// trigrams repeat far more than in random letters; a few are
	// German or French.
	syllables := strings.Fields("a an ar as at be ca ce co de di en er es for ge in is it ka la le li lo ma me mi mo na ne no on or ou pa pe per pro ra re ri ro sa se si so ta te ter ti to tion tra tu un ur ve vi ä ö ü é ß")
	vocab := make([]string, 4000)
	for i := range vocab {
		var w strings.Builder
		for range 1 + rng.IntN(4) {
			w.WriteString(syllables[rng.IntN(len(syllables))])
		}
		vocab[i] = w.String()
	}
	zipf := rand.NewZipf(rng, 1.1, 8, uint64(len(vocab)-1))
	out := make([][]byte, n)
	for i := range out {
		var b bytes.Buffer
		fmt.Fprintf(&b, "From: %s <%s@remote%d.test>\r\nTo: u@example.test\r\nSubject: %s %s %d\r\nDate: Mon, 2 Jan 2006 15:%02d:05 -0700\r\nMessage-ID: <%x.%d@remote.test>\r\n\r\n",
			vocab[zipf.Uint64()], vocab[zipf.Uint64()], i%97, vocab[zipf.Uint64()], vocab[zipf.Uint64()], i, i%60, rng.Uint64(), i)
		line := 0
		for b.Len() < 4500 {
			if rng.IntN(50) == 0 {
				fmt.Fprintf(&b, "%d", rng.IntN(1000000))
			} else {
				b.WriteString(vocab[zipf.Uint64()])
			}
			line++
			if line%12 == 0 {
				b.WriteString(".\r\n")
			} else {
				b.WriteByte(' ')
			}
		}
		b.WriteString("\r\n")
		out[i] = b.Bytes()
	}
	return out
}

// storeCorpus stores the messages in the mailbox, 500 to a transaction,
// leaving their bodies to the full-text indexer.
func storeCorpus(b *testing.B, s *Store, mailboxID int64, corpus [][]byte) {
	b.Helper()
	ctx := context.Background()
	mb := Mailbox{ID: mailboxID}
	for start := 0; start < len(corpus); start += 500 {
		batch := corpus[start:min(start+500, len(corpus))]
		err := s.w.do(ctx, func(t *wtx) error {
			h, err := t.head(mb.ID)
			if err != nil {
				return err
			}
			first := h.uidnext
			if err := t.bump(mb.ID, &h, uint32(len(batch)), nil); err != nil {
				return err
			}
			msgs := make([]Message, len(batch))
			for i, m := range batch {
				body := prepareBody(m)
				id, err := t.storeBody(body)
				if err != nil {
					return err
				}
				msgs[i] = Message{MailboxID: mb.ID, UID: first + uint32(i), ModSeq: h.modseq,
					InternalDate: time.Unix(int64(start+i), 0), Size: int64(len(body.data)), BodyID: id}
			}
			if err := t.insertMessages(msgs); err != nil {
				return err
			}
			t.changes = nil
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSearchBacklog: what the indexer's backlog costs a search,
// which reads every unindexed body of the mailbox: a text search in a
// mailbox of indexDeferBacklog realistic bodies (indexCorpus) none of
// which is indexed, the most a search waits for under load (see
// indexDeferBacklog). Reports milliseconds per search, with the
// confirmation IMAP SEARCH makes of each candidate (imapd textMatch).
func BenchmarkSearchBacklog(b *testing.B) {
	s := openTestWith(b, Options{PasswordCost: FastPasswordHash, noIndexer: true})
	ctx := context.Background()
	mb := inbox(b, s, addUser(b, s, "u@example.test"))
	storeCorpus(b, s, mb.ID, indexCorpus(indexDeferBacklog))
	if n, err := s.IndexBacklog(ctx); err != nil || n != indexDeferBacklog {
		b.Fatalf("backlog %d (%v), want %d", n, err, indexDeferBacklog)
	}
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		msgs, err := s.Search(ctx, mb.ID, &SearchCriteria{MayContain: []string{"quetzalcoatl"}})
		if err != nil {
			b.Fatal(err)
		}
		if len(msgs) != indexDeferBacklog {
			b.Fatalf("%d candidates, want every unindexed body", len(msgs))
		}
		// The confirmation IMAP SEARCH TEXT makes of each candidate:
		// the body's decoded text, lower-cased, searched.
		for _, m := range msgs {
			body, err := s.OpenBody(ctx, m.BodyID)
			if err != nil {
				b.Fatal(err)
			}
			err = mime.MessageText(body, true, func(t string) bool {
				return !strings.Contains(strings.ToLower(t), "quetzalcoatl")
			})
			body.Close()
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "ms/search")
}

// BenchmarkIndexBodies: the full-text indexer taking b.N distinct
// realistic bodies (indexCorpus) stored before it runs, as after a burst
// or a reindex. Reports microseconds per body (extraction, FTS insert and
// the indexer's commits), those of the extraction alone, the index's
// size per body, and for two searches in the indexed mailbox (a needle
// from the start of one message's text and a short one from its middle)
// the candidates the index gives, the messages that match, and the
// milliseconds of the search with its confirmation.
func BenchmarkIndexBodies(b *testing.B) {
	s := openTestWith(b, Options{PasswordCost: FastPasswordHash, noIndexer: true})
	ctx := context.Background()
	mb := inbox(b, s, addUser(b, s, "u@example.test"))
	corpus := indexCorpus(b.N)
	storeCorpus(b, s, mb.ID, corpus)
	b.ResetTimer()
	start := time.Now()
	for {
		n, err := s.indexPending(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	var size int64
	q := "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name LIKE 'body_text%'"
	if onPostgres() {
		q = "SELECT pg_total_relation_size('body_text')"
	}
	if err := s.readRow(ctx, q).Scan(&size); err != nil {
		b.Fatal(err)
	}
	// Searches with the index, for words of one message's text: the
	// first 14 characters, and 6 from its middle. For each, the
	// candidates the index gives and the messages that hold the needle,
	// and the milliseconds of the search with the confirmation a caller
	// makes (reading each candidate's body and looking in its text).
	mid := string(corpus[len(corpus)/2])
	mid = mid[strings.Index(mid, "\r\n\r\n")+4:]
	for k, needle := range []string{mid[:min(len(mid), 14)], mid[len(mid)/2 : len(mid)/2+6]} {
		lower := strings.ToLower(needle)
		var searchTime time.Duration
		var candidates, matches int
		const searches = 3
		for range searches {
			t0 := time.Now()
			msgs, err := s.Search(ctx, mb.ID, &SearchCriteria{MayContain: []string{needle}})
			if err != nil {
				b.Fatal(err)
			}
			candidates, matches = len(msgs), 0
			for _, m := range msgs {
				data, err := s.ReadBody(ctx, m.BodyID)
				if err != nil {
					b.Fatal(err)
				}
				if text, _, _ := bodyText(data); strings.Contains(text, lower) {
					matches++
				}
			}
			searchTime += time.Since(t0)
		}
		name := fmt.Sprintf("needle%d-", k+1)
		b.ReportMetric(float64(searchTime.Microseconds())/1000/searches, name+"ms")
		b.ReportMetric(float64(candidates), name+"candidates")
		b.ReportMetric(float64(matches), name+"matches")
	}
	// The text extraction alone, the part the index's layout does not
	// change.
	t0 := time.Now()
	for _, m := range corpus {
		if _, _, ok := bodyText(prepareBody(m).data); !ok {
			b.Fatal("no text extracted")
		}
	}
	extract := time.Since(t0)
	b.ReportMetric(float64(elapsed.Microseconds())/float64(b.N), "us/body")
	b.ReportMetric(float64(extract.Microseconds())/float64(b.N), "extract-us/body")
	b.ReportMetric(float64(size)/float64(b.N), "index-B/body")
}
