package mailstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Store.Search: dates at and beyond what is stored, flags that no message
// can carry, and the bounds on one search.
func TestSearchEdges(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	in := inbox(t, s, u)
	midnight := time.Date(2020, 6, 15, 0, 0, 0, 0, time.UTC)
	for i, d := range []time.Time{midnight.Add(-1), midnight, midnight.Add(24*time.Hour - 1)} {
		if _, err := s.Append(ctx, in.ID, []string{"Foo"}, d, testMessage(i)); err != nil {
			t.Fatal(err)
		}
	}
	uids := func(c SearchCriteria) []uint32 {
		t.Helper()
		msgs, err := s.Search(ctx, in.ID, &c)
		if err != nil {
			t.Fatal(err)
		}
		var out []uint32
		for _, m := range msgs {
			out = append(out, m.UID)
		}
		return out
	}
	east := time.FixedZone("east", 14*3600)
	for _, tc := range []struct {
		name string
		c    SearchCriteria
		want int
	}{
		{"all", SearchCriteria{}, 3},
		{"since the day", SearchCriteria{Since: midnight}, 2},
		{"since the day, given in another zone", SearchCriteria{Since: time.Date(2020, 6, 15, 20, 0, 0, 0, east)}, 2},
		{"before the day", SearchCriteria{Before: midnight}, 1},
		{"since year 1", SearchCriteria{Since: time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)}, 3},
		{"before year 2", SearchCriteria{Before: time.Date(2, 1, 1, 0, 0, 0, 0, time.UTC)}, 0},
		{"since year 9999", SearchCriteria{Since: time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)}, 0},
		{"before year 9999", SearchCriteria{Before: time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)}, 3},
		{"keyword any case", SearchCriteria{Flag: []string{"fOO"}}, 3},
		{"keyword prefix", SearchCriteria{Flag: []string{"Fo"}}, 0},
		{"two keywords as one", SearchCriteria{NotFlag: []string{"Foo Bar"}}, 3},
		{"unknown system flag", SearchCriteria{Flag: []string{`\Bogus`}}, 0},
		{"empty UID set", SearchCriteria{UID: []UIDSet{{}}}, 0},
		{"open UID range", SearchCriteria{UID: []UIDSet{{{Start: 2}}}}, 2},
		{"not or", SearchCriteria{Not: []SearchCriteria{{Or: [][2]SearchCriteria{{{UID: []UIDSet{UIDs(1)}}, {Flag: []string{`\Seen`}}}}}}}, 2},
	} {
		if got := uids(tc.c); len(got) != tc.want {
			t.Errorf("%s: %v, want %d messages", tc.name, got, tc.want)
		}
	}
	deep := SearchCriteria{}
	for i := 0; i < maxSearchDepth+1; i++ {
		deep = SearchCriteria{Not: []SearchCriteria{deep}}
	}
	if _, err := s.Search(ctx, in.ID, &deep); !errors.Is(err, ErrLimit) {
		t.Errorf("too deep: %v", err)
	}
	wide := SearchCriteria{UID: []UIDSet{make(UIDSet, maxSearchParams)}}
	if _, err := s.Search(ctx, in.ID, &wide); !errors.Is(err, ErrLimit) {
		t.Errorf("too many values: %v", err)
	}
}

// The full-text prefilter: it narrows to the messages whose text has the
// needle, lets through what it cannot answer for (short needles, bodies
// stored before the index), refuses to sit under NOT, and goes with the
// body.
func TestSearchFullText(t *testing.T) {
	ctx := context.Background()
	old := "Subject: before the index\r\n\r\nold words\r\n"
	sum := sha256.Sum256([]byte(old))
	var s *Store
	if onPostgres() {
		// A body the index has not taken, as one stored before it.
		s = newTestDB(t).open(t, Options{PasswordCost: FastPasswordHash, noIndexer: true})
		err := s.w.do(ctx, func(t *wtx) error {
			for _, q := range []string{"INSERT INTO domains (name) VALUES ('example.test')",
				"INSERT INTO users (address, password_hash, created) VALUES ('u@example.test', 'x', 0)",
				"INSERT INTO mailboxes (user_id, name, uidvalidity, uidnext) VALUES (1, 'INBOX', 7, 2)"} {
				if _, err := t.exec(q); err != nil {
					return err
				}
			}
			if _, err := t.exec("INSERT INTO bodies (sha256, size) VALUES (?, ?)", sum[:], len(old)); err != nil {
				return err
			}
			if _, err := t.exec("INSERT INTO body_chunks (body_id, seq, data) VALUES (1, 0, ?)", []byte(old)); err != nil {
				return err
			}
			_, err := t.exec("INSERT INTO messages (mailbox_id, uid, modseq, internal_date, size, body_id) VALUES (1, 1, 1, 0, ?, 1)", len(old))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	} else {
		s = openPreIndexSQLite(t, old, sum)
	}
	defer s.Close()
	testSearchFullText(t, s)
}

// openPreIndexSQLite makes a SQLite store at version 7 holding one
// message, old, and opens it (upgrading it).
func openPreIndexSQLite(t *testing.T, old string, sum [32]byte) *Store {
	path := filepath.Join(t.TempDir(), "postern.db")
	db := oldSchemaDB(t, path, 7,
		"INSERT INTO domains (name) VALUES ('example.test')",
		"INSERT INTO users (address, password_hash, created) VALUES ('u@example.test', 'x', 0)",
		"INSERT INTO mailboxes (user_id, name, uidvalidity, uidnext) VALUES (1, 'INBOX', 7, 2)")
	if _, err := db.Exec("INSERT INTO bodies (sha256, size) VALUES (?, ?)", sum[:], len(old)); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("INSERT INTO body_chunks (body_id, seq, data) VALUES (1, 0, ?)", old); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("INSERT INTO messages (mailbox_id, uid, modseq, internal_date, size, body_id) VALUES (1, 1, 1, 0, ?, 1)", len(old)); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err := Open(path, Options{PasswordCost: FastPasswordHash, noIndexer: true})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testSearchFullText(t *testing.T, s *Store) {
	ctx := context.Background()
	for i, m := range []string{
		"From: =?utf-8?q?J=C3=BCrgen?= <jm@example.de>\r\nSubject: =?iso-8859-1?q?Caf=E9_noir?=\r\n\r\nUn caf=E9\r\n",
		"From: b@example.test\r\nSubject: other\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nR3LDvMOfZSBhdXMgS8O2bG4=\r\n",
	} {
		if _, err := s.Append(ctx, 1, nil, time.Time{}, []byte(m)); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	uids := func(c SearchCriteria) string {
		t.Helper()
		msgs, err := s.Search(ctx, 1, &c)
		if err != nil {
			t.Fatal(err)
		}
		var out []uint32
		for _, m := range msgs {
			out = append(out, m.UID)
		}
		return fmt.Sprint(out)
	}
	indexAll := func() {
		t.Helper()
		for {
			n, err := s.indexPending(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				return
			}
		}
	}
	count := func() int {
		var n int
		if err := s.readRow(ctx, "SELECT count(*) FROM body_text").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// Nothing indexed yet (the body from before the index included):
	// every message is a candidate.
	if got := uids(SearchCriteria{MayContain: []string{"köln"}}); got != "[1 2 3]" {
		t.Errorf("before indexing: %s", got)
	}
	indexAll()
	if n := count(); n != 3 {
		t.Fatalf("%d indexed bodies, want 3", n)
	}
	for _, tc := range []struct {
		name string
		c    SearchCriteria
		want string
	}{
		{"decoded text", SearchCriteria{MayContain: []string{"GRÜSSE"}}, "[]"},
		{"base64 utf-8 text", SearchCriteria{MayContain: []string{"grüße aus köln"}}, "[3]"},
		{"the body from before", SearchCriteria{MayContain: []string{"old words"}}, "[1]"},
		{"decoded subject in text", SearchCriteria{MayContain: []string{"subject: café"}}, "[2]"},
		{"decoded subject", SearchCriteria{HeaderMayContain: []string{"Café Noir"}}, "[2]"},
		{"raw subject", SearchCriteria{HeaderMayContain: []string{"=?iso-8859-1?q?caf"}}, "[2]"},
		{"address form", SearchCriteria{HeaderMayContain: []string{"jürgen <jm@example.de>"}}, "[2]"},
		{"body text is not header", SearchCriteria{HeaderMayContain: []string{"un café"}}, "[]"},
		{"short needle", SearchCriteria{MayContain: []string{"zz"}}, "[1 2 3]"},
		{"quote in needle", SearchCriteria{MayContain: []string{`"quoted"`}}, "[]"},
		{"in OR", SearchCriteria{Or: [][2]SearchCriteria{{{MayContain: []string{"köln"}}, {UID: []UIDSet{UIDs(2)}}}}}, "[2 3]"},
	} {
		if got := uids(tc.c); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
	// Reindex drops a user's index; the messages are candidates again
	// until the indexer has been through them.
	if n, err := s.Reindex(ctx, "u@example.test"); err != nil || n != 3 {
		t.Fatalf("reindex: %d %v", n, err)
	}
	if n := count(); n != 0 {
		t.Errorf("%d indexed bodies after reindex", n)
	}
	if got := uids(SearchCriteria{MayContain: []string{"köln"}}); got != "[1 2 3]" {
		t.Errorf("after reindex: %s", got)
	}
	indexAll()
	if got := uids(SearchCriteria{MayContain: []string{"köln"}}); got != "[3]" {
		t.Errorf("indexed again: %s", got)
	}
	if _, err := s.Reindex(ctx, "nobody@example.test"); !errors.Is(err, ErrNotFound) {
		t.Errorf("reindex of an unknown user: %v", err)
	}
	if _, err := s.Search(ctx, 1, &SearchCriteria{Not: []SearchCriteria{{MayContain: []string{"köln"}}}}); !errors.Is(err, ErrInvalidName) {
		t.Errorf("prefilter under NOT: %v", err)
	}
	if _, err := s.DeleteMessages(ctx, 1, []uint32{2, 3}); err != nil {
		t.Fatal(err)
	}
	s.sweepNow(t)
	s.sweepNow(t)
	if n := count(); n != 1 {
		t.Errorf("%d indexed bodies after two of three messages went", n)
	}
}

// The indexer catches up by itself after deliveries.
func TestIndexerCatchesUp(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	for i := 0; i < 50; i++ {
		if _, err := s.Deliver(ctx, "a@remote.test", []string{u.Address}, testMessage(i)); err != nil {
			t.Fatal(err)
		}
	}
	waitIndexed(t, s)
	msgs, err := s.Search(ctx, inbox(t, s, u).ID, &SearchCriteria{MayContain: []string{"body 42"}})
	if err != nil || len(msgs) != 1 || msgs[0].UID != 43 {
		t.Fatalf("search: %+v %v", msgs, err)
	}
}

// Under load the indexer leaves a backlog below the bound alone, and
// indexes it once the load ends.
func TestIndexerDefersSmallBacklogUnderLoad(t *testing.T) {
	var load atomic.Bool
	load.Store(true)
	s := openTestWith(t, Options{PasswordCost: FastPasswordHash, indexLoad: load.Load, deferBacklog: 100})
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	for i := 0; i < 10; i++ {
		if _, err := s.Deliver(ctx, "a@remote.test", []string{u.Address}, testMessage(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Three looks at the load after the last delivery, each leaving
	// the backlog alone.
	seen := s.indexDeferred.Load()
	for deadline := time.Now().Add(30 * time.Second); s.indexDeferred.Load() < seen+3; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the indexer looked at the load %d times in 30 s", s.indexDeferred.Load()-seen)
		}
	}
	if n, err := s.IndexBacklog(ctx); err != nil || n != 10 {
		t.Fatalf("backlog under load: %d (%v), want all 10 bodies left alone", n, err)
	}
	load.Store(false)
	waitIndexed(t, s)
}

// Under load a backlog at or above the bound is still indexed.
func TestIndexerTakesLargeBacklogUnderLoad(t *testing.T) {
	const bound = 5
	s := openTestWith(t, Options{PasswordCost: FastPasswordHash, indexLoad: func() bool { return true }, deferBacklog: bound})
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	for i := 0; i < 3*bound; i++ {
		if _, err := s.Deliver(ctx, "a@remote.test", []string{u.Address}, testMessage(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Batches of up to indexBatchBodies: the one that brings the backlog
	// below the bound may take all of it, or leave some under it.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		n, err := s.IndexBacklog(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n < bound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d bodies still not indexed under load, bound %d", n, bound)
		}
	}
	// The bodies still waiting (fewer than the bound) are candidates
	// of every search, beside the one the index finds.
	msgs, err := s.Search(ctx, inbox(t, s, u).ID, &SearchCriteria{MayContain: []string{"body 12"}})
	if err != nil || len(msgs) > bound || !slices.ContainsFunc(msgs, func(m Message) bool { return m.UID == 13 }) {
		t.Fatalf("search: %+v %v; want UID 13 among at most %d candidates", msgs, err, bound)
	}
}

// A body over maxIndexedBody is not read by the indexer (its text would
// take memory outside the servers' budget) and stays a candidate for
// every text search.
func TestIndexerSkipsLargeBodies(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	big := []byte("Subject: big\r\n\r\n" + strings.Repeat("filler line of the big message\r\n", maxIndexedBody/32+1000) + "the word quetzalcoatl\r\n")
	if _, err := s.Deliver(ctx, "a@remote.test", []string{u.Address}, big); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Deliver(ctx, "a@remote.test", []string{u.Address}, testMessage(1)); err != nil {
		t.Fatal(err)
	}
	waitIndexed(t, s)
	var mark int
	if err := s.readRow(ctx, "SELECT indexed FROM bodies WHERE size > ?", maxIndexedBody).Scan(&mark); err != nil || mark != -textIndexVersion {
		t.Fatalf("large body marked %d (%v), want %d (not indexable)", mark, err, -textIndexVersion)
	}
	msgs, err := s.Search(ctx, inbox(t, s, u).ID, &SearchCriteria{MayContain: []string{"quetzalcoatl"}})
	if err != nil || len(msgs) != 1 || msgs[0].UID != 1 {
		t.Fatalf("search for a word in the large body: %+v %v, want UID 1 as the only candidate", msgs, err)
	}
}

// waitIndexed waits until the full-text indexer has taken every body.
func waitIndexed(t *testing.T, s *Store) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := s.IndexBacklog(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d bodies still not indexed", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
