package imapd

import (
	"slices"
	"strconv"
	"strings"
	"testing"
)

// lineWith returns the first line that has every one of parts, or "".
func lineWith(lines []string, parts ...string) string {
	for _, l := range lines {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(l, p)
		}
		if ok {
			return l
		}
	}
	return ""
}

func wantLine(t *testing.T, what string, lines []string, parts ...string) {
	t.Helper()
	if lineWith(lines, parts...) == "" {
		t.Errorf("%s: no line with %q in %q", what, parts, lines)
	}
}

func noLine(t *testing.T, what string, lines []string, parts ...string) {
	t.Helper()
	if l := lineWith(lines, parts...); l != "" {
		t.Errorf("%s: unexpected %q", what, l)
	}
}

func rawLogin(t *testing.T, env *testEnv) *rawConn {
	t.Helper()
	rc := dialRaw(t, env.addr)
	if r := rc.cmd("l", "LOGIN "+testUser+` "`+testPass+`"`); !strings.HasPrefix(r[len(r)-1], "l OK") {
		t.Fatalf("login: %q", r)
	}
	return rc
}

// RFC 3501 2.3.2: the first session to select a mailbox gets \Recent for
// what is new; EXAMINE and STATUS only look; a message delivered while two
// sessions have the mailbox selected is recent in exactly one of them.
func TestRecent(t *testing.T) {
	env := newEnv(t)
	for i := range 2 {
		env.deliver(t, testMessage(i, "old"))
	}
	look := rawLogin(t, env)
	wantLine(t, "STATUS before any SELECT", look.cmd("s1", "STATUS INBOX (MESSAGES RECENT)"), "* STATUS INBOX (MESSAGES 2 RECENT 2)")
	r := look.cmd("e1", "EXAMINE INBOX")
	wantLine(t, "EXAMINE", r, "* 2 RECENT")
	wantLine(t, "EXAMINE FETCH", look.cmd("f1", "FETCH 1:* FLAGS"), "* 1 FETCH (FLAGS (\\Recent))")
	look.cmd("c1", "CLOSE")

	a := rawLogin(t, env)
	wantLine(t, "SELECT after EXAMINE", a.cmd("a1", "SELECT INBOX"), "* 2 RECENT")
	wantLine(t, "FETCH in A", a.cmd("a2", "FETCH 2 FLAGS"), "* 2 FETCH (FLAGS (\\Recent))")
	wantLine(t, "SEARCH RECENT in A", a.cmd("a3", "SEARCH RECENT"), "* SEARCH 1 2")
	a.cmd("a4", "STORE 1 +FLAGS.SILENT (\\Seen)")
	wantLine(t, "SEARCH NEW in A", a.cmd("a5", "SEARCH NEW"), "* SEARCH 2")
	wantLine(t, "SEARCH RECENT SEEN in A", a.cmd("a6", "SEARCH RECENT SEEN"), "* SEARCH 1")
	r = a.cmd("a7", "SEARCH OLD")
	if !slices.Contains(r, "* SEARCH") {
		t.Errorf("SEARCH OLD in A = %q, want none", r)
	}

	b := rawLogin(t, env)
	r = b.cmd("b1", "SELECT INBOX")
	wantLine(t, "SELECT in B", r, "* 0 RECENT")
	wantLine(t, "FETCH in B", b.cmd("b2", "FETCH 1:* FLAGS"), "* 2 FETCH (FLAGS ())")
	wantLine(t, "SEARCH OLD in B", b.cmd("b3", "SEARCH OLD"), "* SEARCH 1 2")
	wantLine(t, "SEARCH NEW in B", b.cmd("b4", "SEARCH NEW"), "* SEARCH")
	wantLine(t, "STATUS in B", b.cmd("b5", "STATUS INBOX (RECENT)"), "RECENT 0")
	wantLine(t, "STATUS in A counts its own", a.cmd("a8", "STATUS INBOX (RECENT)"), "RECENT 2")

	// Delivered while both have INBOX selected: whoever hears first gets
	// it, the other sees it without \Recent.
	recentA, recentB := 2, 0
	for round := range 4 {
		env.deliver(t, testMessage(10+round, "new"))
		seq := strconv.Itoa(3 + round)
		// The session that polls first is told first.
		first, second := a, b
		if round%2 == 1 {
			first, second = b, a
		}
		r1 := first.cmd("n", "NOOP")
		r2 := second.cmd("n", "NOOP")
		ra, rb := r1, r2
		if round%2 == 1 {
			ra, rb = r2, r1
			recentB++
		} else {
			recentA++
		}
		wantLine(t, "EXISTS in A", ra, "* "+seq+" EXISTS")
		wantLine(t, "EXISTS in B", rb, "* "+seq+" EXISTS")
		// RFC 3501 7.3.2: RECENT with the EXISTS, counting what is
		// recent to each.
		wantLine(t, "RECENT in A", ra, "* "+strconv.Itoa(recentA)+" RECENT")
		wantLine(t, "RECENT in B", rb, "* "+strconv.Itoa(recentB)+" RECENT")
		fa := a.cmd("f", "FETCH "+seq+" FLAGS")
		fb := b.cmd("f", "FETCH "+seq+" FLAGS")
		inA := lineWith(fa, "\\Recent") != ""
		inB := lineWith(fb, "\\Recent") != ""
		if inA == inB || inA != (round%2 == 0) {
			t.Errorf("round %d: message %s recent in A %v, in B %v; want it in the first to poll only\nA: %q\nB: %q", round, seq, inA, inB, fa, fb)
		}
	}

	// A session's own APPEND and COPY into its mailbox are recent to it.
	r = a.cmd("a9", "COPY 1 INBOX")
	r = append(r, a.cmd("a10", "FETCH 7 FLAGS")...)
	wantLine(t, "COPY into INBOX in A", r, "* 7 EXISTS")
	wantLine(t, "COPY into INBOX in A", r, "* 5 RECENT")
	wantLine(t, "COPY into INBOX in A", r, "* 7 FETCH (FLAGS (\\Seen \\Recent))")
}

// IMAP4rev2 has no \Recent (RFC 9051 appendix E): a session that enabled
// it is told nothing of it and takes it from no one.
func TestRecentIMAP4rev2(t *testing.T) {
	env := newEnv(t)
	env.deliver(t, testMessage(1, "one"))
	rc := rawLogin(t, env)
	rc.cmd("e", "ENABLE IMAP4rev2")
	r := rc.cmd("s", "SELECT INBOX")
	noLine(t, "SELECT rev2", r, "RECENT")
	noLine(t, "FETCH rev2", rc.cmd("f", "FETCH 1 FLAGS"), "\\Recent")
	env.deliver(t, testMessage(2, "two"))
	r = rc.cmd("n", "NOOP")
	wantLine(t, "NOOP rev2", r, "* 2 EXISTS")
	noLine(t, "NOOP rev2", r, "RECENT")
	wantLine(t, "STATUS rev2", rc.cmd("st", "STATUS INBOX (RECENT)"), "RECENT 0")

	rev1 := rawLogin(t, env)
	wantLine(t, "SELECT rev1 after rev2", rev1.cmd("s", "SELECT INBOX"), "* 2 RECENT")
}

// An idling session is told RECENT with the EXISTS of new mail.
func TestRecentIdle(t *testing.T) {
	env := newEnv(t)
	rc := rawLogin(t, env)
	wantLine(t, "SELECT", rc.cmd("s", "SELECT INBOX"), "* 0 RECENT")
	if _, err := rc.c.Write([]byte("i IDLE\r\n")); err != nil {
		t.Fatal(err)
	}
	if l := rc.readLine(); !strings.HasPrefix(l, "+") {
		t.Fatalf("IDLE: %q", l)
	}
	env.deliver(t, testMessage(1, "one"))
	if l := rc.readLine(); l != "* 1 EXISTS" {
		t.Fatalf("in IDLE: %q, want EXISTS", l)
	}
	if l := rc.readLine(); l != "* 1 RECENT" {
		t.Fatalf("in IDLE: %q, want RECENT", l)
	}
	rc.c.Write([]byte("DONE\r\n"))
	if l := rc.readLine(); !strings.HasPrefix(l, "i OK") {
		t.Fatalf("after DONE: %q", l)
	}
}
