package imapd

import (
	"context"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
)

// searchCorpus fills the test user's INBOX with n messages of varied
// flags, keywords, sizes, internal dates (some near midnight in far time
// zones, some at the edges of what is stored) and MODSEQs, with gaps in
// the UIDs; half of them are already claimed as \Recent by another
// session.
func searchCorpus(t *testing.T, env *testEnv, rng *rand.Rand, n int) (sizes []int64) {
	t.Helper()
	ctx := context.Background()
	mb, err := env.store.MailboxByName(ctx, env.user.ID, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	words := []string{"alpha", "Beta", "gamma", "café", "DELTA"}
	flags := []string{`\Seen`, `\Answered`, `\Flagged`, `\Deleted`, `\Draft`, "foo", "Bar", "$Junk"}
	zones := []*time.Location{time.UTC, time.FixedZone("east", 14*3600), time.FixedZone("west", -12*3600)}
	for i := 0; i < n; i++ {
		var fl []string
		for _, f := range flags {
			if rng.Intn(3) == 0 {
				fl = append(fl, f)
			}
		}
		date := time.Date(1995+rng.Intn(40), time.Month(1+rng.Intn(12)), 1+rng.Intn(28), rng.Intn(24), rng.Intn(60), 0, 0, zones[rng.Intn(len(zones))])
		switch rng.Intn(10) {
		case 0:
			date = time.Date(2020, 6, 15, 23, 59, 59, 0, zones[rng.Intn(len(zones))])
		case 1:
			// The first and last instants of days the keys name, in UTC.
			date = time.Date(2020, 6, 15+rng.Intn(2), 0, 0, 0, 0, time.UTC).Add(-time.Duration(rng.Intn(2)))
		}
		msg := fmt.Sprintf("From: %s <s%d@remote.test>\r\nSubject: %s %d\r\nDate: %s\r\n\r\n%s%s\r\n",
			words[rng.Intn(len(words))], i, words[rng.Intn(len(words))], i,
			date.Format(time.RFC1123Z), words[rng.Intn(len(words))], strings.Repeat(" padding", rng.Intn(200)))
		if rng.Intn(3) == 0 {
			msg = charsetMessages[rng.Intn(len(charsetMessages))] + strings.Repeat("\r\n", rng.Intn(50))
		}
		m, err := env.store.Append(ctx, mb.ID, fl, date, []byte(msg))
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, m.Size)
		if i == n/2 {
			rc := rawLogin(t, env)
			rc.cmd("s", "SELECT INBOX") // claims \Recent so far
			rc.cmd("l", "LOGOUT")
		}
	}
	for i := 0; i < n/3; i++ {
		uid := uint32(1 + rng.Intn(n))
		if _, err := env.store.StoreFlags(ctx, mb.ID, mailstore.UIDs(uid), mailstore.FlagsAdd, []string{flags[rng.Intn(len(flags))]}); err != nil {
			t.Fatal(err)
		}
	}
	var gone []uint32
	for i := 0; i < n/10; i++ {
		gone = append(gone, uint32(1+rng.Intn(n)))
	}
	if _, err := env.store.DeleteMessages(ctx, mb.ID, gone); err != nil {
		t.Fatal(err)
	}
	return sizes
}

// charsetMessages carry their text in charsets, transfer encodings,
// encoded words and attached messages, for BODY, TEXT and header keys.
var charsetMessages = []string{
	binaryMessage,
	"From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <jm@example.de>\r\nTo: \"Doe, John\" <John.Doe@Example.ORG>\r\n" +
		"Subject: =?iso-8859-1?q?Caf=E9_noir?=\r\nContent-Type: text/plain; charset=iso-8859-1\r\n" +
		"Content-Transfer-Encoding: quoted-printable\r\n\r\nUn caf=E9 au lait, M=FCller.\r\n",
	"From: \"=?utf-8?b?QW5kcsOp?=\" <andre@example.fr>\r\nCc: Team: ann@example.org;\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= delta\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\nR3LDvMOfZSBhdXMgS8O2bG4sIGdhbW1hIQ==\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>Alpha &amp; beta</p>\r\n--b--\r\n",
	"From: plain@remote.test\r\nSubject: inner forwarded\r\nContent-Type: message/rfc822\r\n\r\n" +
		"From: Zoë <zoe@example.net>\r\nSubject: =?utf-8?q?na=C3=AFve?=\r\n\r\nThe quoted text about epsilon.\r\n",
}

// textKeys are the SEARCH keys on header and text, in charsets and
// encoded words, that the full-text index narrows.
var textKeys = []string{"SUBJECT beta", `SUBJECT "CAFÉ"`, "FROM gamma", "BODY delta", "TEXT alpha", "HEADER Date 2020",
	`BODY "café"`, `TEXT "MÜLLER"`, `SUBJECT "café noir"`, `FROM "jürgen müller"`, `FROM "doe, john"`, `TO "john.doe@example"`,
	`CC "team"`, `BODY "grüße aus"`, `TEXT "köln"`, `SUBJECT "grüße"`, `BODY "alpha &amp;"`, `TEXT "zoë"`, `BODY "epsilon"`,
	`SUBJECT "naïve"`, `TEXT "subject: inner"`, `BODY "abc=def"`, `BODY "ca"`, `TEXT ""`, `BODY "noir, caf"`, `FROM "andré"`,
	`SUBJECT "=?iso-8859-1?q?caf"`, `TEXT "padding padding"`, `BODY "\"x"`, `HEADER Content-Type "multipart"`,
	`TO "doe, john <john.doe@example.org>"`, `FROM "andré <andre@"`, `CC "team"`}

// randomKey writes one random SEARCH key, nesting NOT, OR and lists up
// to depth.
func randomKey(rng *rand.Rand, n int, sizes []int64, depth int) string {
	dates := []string{"1-Jan-1995", "15-Jun-2020", "16-Jun-2020", "14-Jun-2020", "1-Jan-2010", "31-Dec-2034", "1-Jan-0001", "31-Dec-9999", "1-Jan-1600", "1-Jan-2300"}
	num := func() int { return 1 + rng.Intn(n+3) }
	set := func() string {
		var parts []string
		for k := rng.Intn(3); k >= 0; k-- {
			switch rng.Intn(5) {
			case 0:
				parts = append(parts, "*")
			case 1:
				parts = append(parts, fmt.Sprintf("%d:*", num()))
			case 2:
				parts = append(parts, fmt.Sprintf("%d", num()))
			default:
				parts = append(parts, fmt.Sprintf("%d:%d", num(), num()))
			}
		}
		return strings.Join(parts, ",")
	}
	simple := []func() string{
		func() string { return "ALL" },
		set,
		func() string { return "UID " + set() },
		func() string { return "UID $" },
		func() string { return "SEEN" }, func() string { return "UNSEEN" },
		func() string { return "FLAGGED" }, func() string { return "UNFLAGGED" },
		func() string { return "ANSWERED" }, func() string { return "UNANSWERED" },
		func() string { return "DELETED" }, func() string { return "UNDELETED" },
		func() string { return "DRAFT" }, func() string { return "UNDRAFT" },
		func() string { return "RECENT" }, func() string { return "NEW" }, func() string { return "OLD" },
		func() string {
			return []string{"KEYWORD foo", "KEYWORD FOO", "KEYWORD bar", "UNKEYWORD $junk", "KEYWORD $Junk", "UNKEYWORD foo", "KEYWORD nothing", "KEYWORD fo"}[rng.Intn(8)]
		},
		func() string { return fmt.Sprintf("LARGER %d", sizes[rng.Intn(len(sizes))]+int64(rng.Intn(3))-1) },
		func() string { return fmt.Sprintf("SMALLER %d", sizes[rng.Intn(len(sizes))]+int64(rng.Intn(3))-1) },
		func() string { return "SINCE " + dates[rng.Intn(len(dates))] },
		func() string { return "BEFORE " + dates[rng.Intn(len(dates))] },
		func() string { return "ON " + dates[rng.Intn(len(dates))] },
		func() string { return "SENTSINCE " + dates[rng.Intn(len(dates))] },
		func() string { return "SENTBEFORE " + dates[rng.Intn(len(dates))] },
		func() string {
			return textKeys[rng.Intn(len(textKeys))]
		},
	}
	if depth > 0 {
		switch rng.Intn(6) {
		case 0:
			return "NOT " + randomKey(rng, n, sizes, depth-1)
		case 1:
			return "OR " + randomKey(rng, n, sizes, depth-1) + " " + randomKey(rng, n, sizes, depth-1)
		case 2:
			return "(" + randomKey(rng, n, sizes, depth-1) + " " + randomKey(rng, n, sizes, depth-1) + ")"
		}
	}
	return simple[rng.Intn(len(simple))]()
}

// SEARCH with the store selecting by flags, dates, sizes, MODSEQ and
// UIDs answers exactly as the matcher alone does, over random criteria
// on a random corpus.
func TestSearchStoreMatchesMatcher(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	env := newEnv(t)
	const n = 80
	sizes := searchCorpus(t, env, rng, n)
	rc := rawLogin(t, env)
	rc.cmd("s", "SELECT INBOX")
	t.Cleanup(func() { searchInGo.Store(false) })
	run := func(cmd string, inGo bool) string {
		searchInGo.Store(inGo)
		r := rc.cmd("x", cmd)
		return strings.Join(r, "\n")
	}
	// $ (SEARCHRES, RFC 5182) names a saved result of many ranges.
	if r := run("SEARCH RETURN (SAVE) UNSEEN", false); !strings.Contains(r, "x OK") {
		t.Fatalf("save: %q", r)
	}
	nonEmpty := 0
	for i := 0; i < 250; i++ {
		key := randomKey(rng, n, sizes, 3)
		if rng.Intn(3) == 0 {
			key += " " + randomKey(rng, n, sizes, 2)
		}
		for _, cmd := range []string{"SEARCH CHARSET UTF-8 " + key, "UID SEARCH CHARSET UTF-8 " + key} {
			want := run(cmd, true)
			got := run(cmd, false)
			if strings.Contains(want, "x BAD") || strings.Contains(want, "x NO") {
				t.Logf("%s: %s", cmd, want)
			}
			if got != want {
				t.Fatalf("%s:\nstore+matcher %q\nmatcher alone %q", cmd, got, want)
			}
			if strings.Contains(want, "* SEARCH ") {
				nonEmpty++
			}
		}
	}
	// Every text key, alone, under NOT and in OR, whatever the random
	// draw gave.
	for _, key := range textKeys {
		for _, k := range []string{key, "NOT " + key, "OR SEEN " + key, "UNSEEN " + key} {
			cmd := "SEARCH CHARSET UTF-8 " + k
			if got, want := run(cmd, false), run(cmd, true); got != want {
				t.Errorf("%s:\nstore+matcher %q\nmatcher alone %q", cmd, got, want)
			}
		}
	}
	if nonEmpty < 100 {
		t.Errorf("only %d searches found anything: the corpus or the keys do not exercise the search", nonEmpty)
	}
}

// A set of more ranges than the store is given becomes the range that
// spans it, marked inexact, so that the matcher decides.
func TestBoundRanges(t *testing.T) {
	var set mailstore.UIDSet
	for i := uint32(0); i < maxStoreRanges+1; i++ {
		set = append(set, mailstore.UIDRange{Start: 10 + 2*i, Stop: 10 + 2*i})
	}
	if got, ok := boundRanges(set[:maxStoreRanges]); !ok || len(got) != maxStoreRanges {
		t.Errorf("%d ranges: %d, %v", maxStoreRanges, len(got), ok)
	}
	got, ok := boundRanges(set)
	if ok || len(got) != 1 || got[0].Start != 10 || got[0].Stop != 10+2*maxStoreRanges {
		t.Errorf("%d ranges: %v, %v", len(set), got, ok)
	}
	if got, ok := boundRanges(nil); !ok || got == nil || len(got) != 0 {
		t.Errorf("no ranges: %#v, %v (want an empty set that names nothing)", got, ok)
	}
}
