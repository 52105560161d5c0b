package mailstore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/postern/postern/mime"
)

// The full-text index is filled behind delivery, not in its transaction:
// indexing a message costs several times what storing it does, and a
// delivery must not wait for it. Until its body is indexed a message is a
// candidate for every text search, so results never depend on how far
// the indexer has got, and a crash only leaves it more to do at the next
// start.
const (
	// indexBatchBytes bounds the bodies one indexing transaction reads
	// (at least one is read, however large).
	indexBatchBytes = 4 << 20
	// indexBatchBodies bounds the bodies of one indexing transaction, so
	// that deliveries sharing its commit wait little (some 30 ms for 64
	// bodies of mail-like text); fewer, larger batches leave the index
	// fewer segments to merge.
	indexBatchBodies = 64
	// indexIdle is how long the indexer waits for a pause in the writes
	// before it adds its work anyway, and how often it looks for work
	// nobody told it of.
	indexIdle = 200 * time.Millisecond
	// writePause is the gap between writes that counts as a pause: the
	// group commit's requests come in waves, and an empty queue between
	// two of them is no pause.
	writePause = 20 * time.Millisecond
	// indexYieldLoad is the share of the writer's time taken by other
	// writes above which the indexer gives way to them; below it, it
	// indexes at full speed.
	indexYieldLoad = 0.5
	// indexYieldCPU is the share of the process's cores in use above
	// which the indexer gives way to other writes coming in.
	indexYieldCPU = 0.8
	// loadWindow is the shortest time over which the writer's load is
	// judged.
	loadWindow = 20 * time.Millisecond
	// indexDeferBacklog is the backlog below which the indexer does not
	// index at all under load, but waits for the load to end: each
	// batch's FTS5 flush and merges would otherwise land in a group
	// commit that deliveries wait for. Unindexed bodies cost searches
	// instead: every unindexed body of the mailbox is a candidate that
	// IMAP SEARCH TEXT reads and decodes, some 30-35 us for a 4.5 KiB
	// message on 2 shared cores (BenchmarkSearchBacklog: ~41 ms for
	// 1,200, ~60 ms for 2,000), so 1,200 of them add at most ~40 ms to
	// a search, under half the 100 ms a SEARCH BODY of a large mailbox
	// may take (issue 17). A burst above it is indexed as before,
	// sharing the writer with the burst.
	indexDeferBacklog = 1200
	// indexDeferMax bounds how long the indexer defers: the backlog
	// counts bodies, not bytes, and a load that lasts (or a client that
	// keeps the server busy) must not keep large bodies out of the
	// index. Past it the indexer takes its share as above the bound,
	// until the load ends.
	indexDeferMax = 2 * time.Second
)

// runIndexer indexes new bodies until the store closes. While other
// writes keep the writer more than indexYieldLoad busy, or come in while
// the process uses more than indexYieldCPU of its cores (a burst of
// mail), it gives way: it waits up to indexIdle for a pause in them, takes one
// batch and rests three times as long as the batch took, so that the
// burst is taken at full speed and indexed after it, and a load that
// never pauses still leaves it a share. Below that load it indexes at
// full speed. Under that load, while fewer than indexDeferBacklog bodies
// wait, it does not index at all until the load ends, or for
// indexDeferMax at most. Its backlog is searched by reading the bodies.
func (s *Store) runIndexer() {
	defer close(s.indexDone)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-s.closed
		cancel()
	}()
	tick := time.NewTicker(indexIdle)
	defer tick.Stop()
	sleep := func(d time.Duration) bool {
		select {
		case <-s.closed:
			return false
		case <-time.After(d):
			return true
		}
	}
	lastAt, lastCPU := time.Now(), ProcessCPU()
	lastFore, lastBack := s.w.load()
	saturated := false
	var deferSince time.Time // when the current deferral began; zero: none
	for {
		select {
		case <-s.closed:
			return
		case <-s.w.index:
		case <-tick.C:
		}
		for {
			// How busy other writes kept the writer since the last
			// look, out of the time the indexer's own batches left
			// them (indexing at full speed must not hide a burst),
			// over at least loadWindow, so that one group commit
			// does not decide.
			// (A test's own measure is taken at every look.)
			if now := time.Now(); now.Sub(lastAt) >= loadWindow || s.indexLoad != nil {
				fore, back := s.w.load()
				cpu := ProcessCPU()
				saturated = writerSaturated(now.Sub(lastAt), fore-lastFore, back-lastBack) ||
					fore > lastFore && cpuSaturated(now.Sub(lastAt), cpu-lastCPU, runtime.GOMAXPROCS(0))
				if s.indexLoad != nil {
					saturated = s.indexLoad()
				}
				lastAt, lastCPU, lastFore, lastBack = now, cpu, fore, back
			}
			if !saturated {
				deferSince = time.Time{}
			}
			if saturated {
				backlog, err := s.backlogUpTo(ctx, s.deferBacklog)
				if err != nil {
					if ctx.Err() == nil && !errors.Is(err, ErrClosed) {
						s.log.Warn("full-text indexing failed", "err", err)
					}
					break
				}
				if backlog == 0 {
					// Nothing waits: wait for the next delivery's kick.
					deferSince = time.Time{}
					break
				}
				if deferSince.IsZero() {
					deferSince = time.Now()
				}
				if indexDefers(saturated, backlog, s.deferBacklog, time.Since(deferSince)) {
					// Look at the load again once the next window is
					// over.
					s.indexDeferred.Add(1)
					if !sleep(loadWindow) {
						return
					}
					continue
				}
				for waited := time.Duration(0); s.w.busy(writePause) && waited < indexIdle; waited += 5 * time.Millisecond {
					if !sleep(5 * time.Millisecond) {
						return
					}
				}
			}
			start := time.Now()
			n, err := s.indexPending(ctx)
			if saturated && !sleep(3*time.Since(start)) {
				return
			}
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, ErrClosed) {
					s.log.Warn("full-text indexing failed", "err", err)
				}
				break
			}
			if n == 0 {
				break
			}
		}
	}
}

// indexDefers reports whether the indexer leaves its backlog (counted up
// to bound) alone for now: under load (saturated), while fewer than bound
// bodies wait, for at most indexDeferMax since it began to (deferred).
func indexDefers(saturated bool, backlog int64, bound int, deferred time.Duration) bool {
	return saturated && backlog < int64(bound) && deferred < indexDeferMax
}

// backlogUpTo counts the bodies not indexed yet, up to limit: reading at
// most limit entries of the partial index bodies_unindexed, it costs
// little however large the backlog.
func (s *Store) backlogUpTo(ctx context.Context, limit int) (int64, error) {
	var n int64
	if err := s.readRow(ctx, "SELECT count(*) FROM (SELECT 1 FROM bodies WHERE indexed = 0 LIMIT ?) AS waiting", limit).Scan(&n); err != nil {
		return 0, fmt.Errorf("count bodies to index (up to %d): %w", limit, err)
	}
	return n, nil
}

// cpuSaturated reports whether the process used more than indexYieldCPU
// of the cores it may use over elapsed: then deliveries (sessions, checks,
// the writer) need the CPU the indexer's extraction and tokenizing would
// take. It decides only while other writes come in, so that an indexer
// alone on one core catches up at full speed.
func cpuSaturated(elapsed, cpu time.Duration, cores int) bool {
	return elapsed > 0 && float64(cpu) > indexYieldCPU*float64(elapsed)*float64(cores)
}

// writerSaturated reports whether, over elapsed, other writes kept the
// writer busy (fore) for more than indexYieldLoad of the time the
// indexer's own batches (back) left them.
func writerSaturated(elapsed, fore, back time.Duration) bool {
	left := elapsed - back
	return left > 0 && float64(fore) > indexYieldLoad*float64(left)
}

// indexPending indexes a batch of the bodies not indexed yet and returns
// how many it took.
func (s *Store) indexPending(ctx context.Context) (int, error) {
	rows, err := s.read(ctx, "SELECT id, size FROM bodies WHERE indexed = 0 ORDER BY id LIMIT ?", indexBatchBodies)
	if err != nil {
		return 0, fmt.Errorf("find bodies to index: %w", err)
	}
	type item struct {
		id        int64
		text, hdr string
		ok        bool
	}
	var ids []int64
	var total int64
	large := map[int64]bool{}
	for rows.Next() {
		var id, size int64
		if err := rows.Scan(&id, &size); err != nil {
			rows.Close()
			return 0, fmt.Errorf("find bodies to index: %w", err)
		}
		if len(ids) > 0 && total+size > indexBatchBytes {
			break
		}
		if size > maxIndexedBody {
			large[id] = true
			size = 0
		}
		ids, total = append(ids, id), total+size
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("find bodies to index: %w", err)
	}
	var items []item
	for _, id := range ids {
		if large[id] {
			// Not read: its text could take several times its size in
			// memory, outside the servers' message budget. Marked as
			// not indexable, it stays a candidate for every text search.
			items = append(items, item{id: id})
			continue
		}
		data, err := s.ReadBody(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue // gone meanwhile
		}
		if err != nil {
			return 0, fmt.Errorf("index body %d: %w", id, err)
		}
		it := item{id: id}
		it.text, it.hdr, it.ok = bodyText(data)
		if s.d.pg && it.ok && !(pgText(it.text) && pgText(it.hdr)) {
			// PostgreSQL text holds neither NUL nor invalid UTF-8, and
			// cleaning them would hide matches: not indexed, such a
			// body stays a candidate for every search.
			it.ok = false
		}
		items = append(items, it)
	}
	if len(items) == 0 {
		return len(ids), nil
	}
	err = s.w.doBackground(ctx, func(t *wtx) error {
		for _, it := range items {
			mark := textIndexVersion
			if !it.ok {
				mark = -textIndexVersion
			}
			// Only a body still waiting: it may have gone, or been
			// indexed by another call, meanwhile.
			res, err := t.exec("UPDATE bodies SET indexed = ? WHERE id = ? AND indexed = 0", mark, it.id)
			if err != nil {
				return fmt.Errorf("index body %d: %w", it.id, err)
			}
			if n, _ := res.RowsAffected(); n == 0 || !it.ok {
				continue
			}
			if _, err := t.exec("INSERT INTO body_text ("+t.w.d.textKey()+", text, hdr) VALUES (?, ?, ?)", it.id, it.text, it.hdr); err != nil {
				return fmt.Errorf("index body %d: %w", it.id, err)
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return len(ids), nil
}

// Reindex drops the full-text index of the bodies of one user's messages
// (address) or of every body (address ""), for the indexer to build again
// (postern reindex), and returns how many bodies it will index. Searches
// stay right meanwhile, only slower.
func (s *Store) Reindex(ctx context.Context, address string) (int64, error) {
	var n int64
	err := s.w.do(ctx, func(t *wtx) error {
		sel := "SELECT id FROM bodies"
		var args []any
		if address != "" {
			a, err := NormalizeAddress(address)
			if err != nil {
				return err
			}
			var userID int64
			if err := t.queryRow("SELECT id FROM users WHERE address = ?", a).Scan(&userID); err != nil {
				if isNoRows(err) {
					return fmt.Errorf("reindex %s: %w", a, ErrNotFound)
				}
				return fmt.Errorf("reindex %s: %w", a, err)
			}
			sel = "SELECT m.body_id FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.user_id = ?"
			args = []any{userID}
		}
		if _, err := t.exec("DELETE FROM body_text WHERE "+t.w.d.textKey()+" IN ("+sel+")", args...); err != nil {
			return fmt.Errorf("reindex: %w", err)
		}
		res, err := t.exec("UPDATE bodies SET indexed = 0 WHERE id IN ("+sel+")", args...)
		if err != nil {
			return fmt.Errorf("reindex: %w", err)
		}
		n, _ = res.RowsAffected()
		t.afterCommit(t.w.indexKick)
		return nil
	})
	return n, err
}

// textIndexVersion names the way bodyText extracts text; a change to it
// (or to what mime returns) must raise it, so that bodies indexed before
// are searched as unindexed until indexed again.
const textIndexVersion = 1

// maxIndexedBody is the largest body the indexer reads; a larger one is
// searched by the matcher alone.
const maxIndexedBody = 4 << 20

// minIndexedNeedle is the shortest needle, in characters, the trigram
// index can look up.
const minIndexedNeedle = 3

// searchedHeaderFields are the fields whose text goes into the hdr column:
// those IMAP SEARCH has keys for (RFC 3501 6.4.4).
var searchedHeaderFields = []string{"From", "To", "Cc", "Bcc", "Subject"}

// bodyText is what the full-text index keeps of a message, lower-cased:
// every text IMAP SEARCH TEXT and BODY look in (mime.MessageText with the
// header), and for the fields in searchedHeaderFields their raw and
// decoded values and, for addresses, every form mime.AddressSearchTexts
// gives. A substring found by SEARCH in any one of these texts is found
// in the index's text, which is what makes the index a safe prefilter.
func bodyText(msg []byte) (text, hdr string, ok bool) {
	var tb strings.Builder
	err := mime.MessageText(bytes.NewReader(msg), true, func(t string) bool {
		tb.WriteString(strings.ToLower(t))
		tb.WriteByte('\n')
		return true
	})
	if err != nil {
		return "", "", false
	}
	h, _, err := mime.ReadHeaderLoose(bufio.NewReader(bytes.NewReader(msg)))
	if err != nil {
		return "", "", false
	}
	var hb strings.Builder
	add := func(s string) {
		hb.WriteString(strings.ToLower(s))
		hb.WriteByte('\n')
	}
	for _, key := range searchedHeaderFields {
		for f := h.FieldsByKey(key); f.Next(); {
			raw := f.Value()
			add(raw)
			add(mime.HeaderText(raw))
			if key != "Subject" {
				for _, a := range mime.AddressSearchTexts(raw) {
					add(a)
				}
			}
		}
	}
	return tb.String(), hb.String(), true
}

// ftsPhrase quotes a lower-cased needle as an FTS5 phrase (RFC-free: FTS5
// query syntax doubles a double quote inside a string), or reports that
// the index cannot look it up.
func ftsPhrase(needle string) (string, bool) {
	if len([]rune(needle)) < minIndexedNeedle || strings.ContainsRune(needle, 0) {
		return "", false
	}
	return `"` + strings.ReplaceAll(needle, `"`, `""`) + `"`, true
}

// pgText reports whether s can be stored as PostgreSQL text as it is.
func pgText(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

// IndexBacklog counts the bodies the full-text indexer has yet to take.
func (s *Store) IndexBacklog(ctx context.Context) (int64, error) {
	var n int64
	if err := s.readRow(ctx, "SELECT count(*) FROM bodies WHERE indexed = 0").Scan(&n); err != nil {
		return 0, fmt.Errorf("count bodies to index: %w", err)
	}
	return n, nil
}
