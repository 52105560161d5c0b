package console

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
)

// fillMailbox appends n small messages ("Message 1" .. "Message n") to
// a user's INBOX, several at a time so that they share commits.
func fillMailbox(tb testing.TB, st *mailstore.Store, userID int64, n int) {
	tb.Helper()
	ctx := context.Background()
	mb, err := st.MailboxByName(ctx, userID, "INBOX")
	if err != nil {
		tb.Fatal(err)
	}
	// Concurrent appends share commits; their UIDs need not follow the
	// numbers within a batch.
	const workers = 8
	for start := 1; start <= n; start += workers {
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for i := start; i < start+workers && i <= n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				msg := fmt.Sprintf("From: a@elsewhere.test\r\nSubject: Message %d\r\n\r\nbody %d\r\n", i, i)
				if _, err := st.Append(ctx, mb.ID, nil, time.Unix(int64(1e9+i), 0), []byte(msg)); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			tb.Fatal(err)
		}
	}
}

var subjectRE = regexp.MustCompile(`>Message (\d+)</a>`)

// listed returns the message numbers a list page shows, in order.
func listed(page string) []int {
	var out []int
	for _, m := range subjectRE.FindAllStringSubmatch(page, -1) {
		n, _ := strconv.Atoi(m[1])
		out = append(out, n)
	}
	return out
}

// TestConsoleMailListPaging: pages of pageSize, newest first, UIDs in
// order across pages, out-of-range pages clamped, and the counts right.
func TestConsoleMailListPaging(t *testing.T) {
	e := startWeb(t, nil)
	const n = 2*pageSize + 20
	fillMailbox(t, e.store, mustUser(t, e, "bob@example.test").ID, n)
	b := e.browser(t)
	b.login("bob@example.test", testPassword)
	ctx := context.Background()
	mb, _ := e.store.MailboxByName(ctx, mustUser(t, e, "bob@example.test").ID, "INBOX")
	uids, _, _ := e.store.MailboxUIDs(ctx, mb.ID)
	msgs, _ := e.store.Messages(ctx, mb.ID, nil)
	// The expected order is by UID, newest (highest) first.
	byUID := map[uint32]int{}
	for _, m := range msgs {
		raw, _ := e.store.ReadBody(ctx, m.BodyID)
		var k int
		fmt.Sscanf(regexp.MustCompile(`Subject: Message (\d+)`).FindStringSubmatch(string(raw))[1], "%d", &k)
		byUID[m.UID] = k
	}
	var want []int
	for i := len(uids) - 1; i >= 0; i-- {
		want = append(want, byUID[uids[i]])
	}
	var all []int
	for p := range 3 {
		code, _, page := b.do("GET", "/mail?box=INBOX&page="+strconv.Itoa(p), nil, nil)
		if code != http.StatusOK {
			t.Fatalf("page %d: %d", p, code)
		}
		got := listed(page)
		if wantLen := min(pageSize, n-p*pageSize); len(got) != wantLen {
			t.Fatalf("page %d lists %d, want %d", p, len(got), wantLen)
		}
		all = append(all, got...)
		if wantPage := fmt.Sprintf("Page %d of 3", p+1); !regexp.MustCompile(regexp.QuoteMeta(wantPage)).MatchString(page) {
			t.Errorf("page %d does not say %q", p, wantPage)
		}
	}
	if fmt.Sprint(all) != fmt.Sprint(want) {
		t.Fatalf("pages list\n%v\nwant\n%v", all, want)
	}
	for q, first := range map[string]int{"99": want[2*pageSize], "-3": want[0], "x": want[0]} {
		_, _, page := b.do("GET", "/mail?box=INBOX&page="+q, nil, nil)
		if got := listed(page); len(got) == 0 || got[0] != first {
			t.Errorf("page=%s starts with %v, want %d", q, got, first)
		}
	}
	// An empty mailbox has one empty page.
	if _, _, page := b.do("GET", "/mail?box=Sent", nil, nil); !regexp.MustCompile(`No messages\.`).MatchString(page) {
		t.Error("empty mailbox page")
	}
}

// BenchmarkConsoleMailList is one list page of a large mailbox (10,000
// messages; POSTERN_BENCH_MESSAGES sets another size, such as 100000).
// The page reads the mailbox's UID list and the records of its own
// range only, so its cost grows little with the mailbox.
func BenchmarkConsoleMailList(b *testing.B) {
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("POSTERN_BENCH_MESSAGES")); err == nil && v > 0 {
		n = v
	}
	e := startWeb(b, nil)
	u, err := e.store.UserByAddress(context.Background(), "bob@example.test")
	if err != nil {
		b.Fatal(err)
	}
	fillMailbox(b, e.store, u.ID, n)
	br := e.browser(b)
	if br.login("bob@example.test", testPassword) != http.StatusSeeOther {
		b.Fatal("login failed")
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		code, _, _ := br.do("GET", "/mail?box=INBOX&page="+strconv.Itoa(i%(n/pageSize)), nil, nil)
		if code != http.StatusOK {
			b.Fatalf("list: %d", code)
		}
	}
}
