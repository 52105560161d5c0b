package pop3d

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
)

// TestSession goes through every command with the test client on a
// maildrop with byte-stuffed lines and a 5 MB message, and checks the
// replies against the store.
func TestSession(t *testing.T) {
	st := openStore(t)
	big := makeMessage(0, 5<<20)
	appendMessages(t, st, alice, [][]byte{makeMessage(1, 2000), makeMessage(2, 100), big, makeMessage(4, 10000)})
	// A message whose body is nothing but dot lines.
	appendMessages(t, st, alice, [][]byte{[]byte("Subject: dots\r\n\r\n.\r\n..\r\n...\r\n. \r\n.x\r\n")})
	msgs, bodies := storedMessages(t, st, alice)
	mb := inbox(t, st, alice)
	ts := startServer(t, st, nil)

	c := dial(t, ts.addr)
	c.send("CAPA")
	if st := c.status(); !strings.HasPrefix(st, "+OK") {
		t.Fatalf("CAPA: %s", st)
	}
	caps := c.lines()
	for _, want := range []string{"TOP", "UIDL", "USER", "SASL PLAIN", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "IMPLEMENTATION Postern"} {
		if !slices.Contains(caps, want) {
			t.Errorf("CAPA lacks %q: %q", want, caps)
		}
	}
	if slices.Contains(caps, "STLS") {
		t.Errorf("CAPA offers STLS without a TLS config: %q", caps)
	}
	greeting := c.login(alice, alicePass)
	var total int64
	for _, m := range msgs {
		total += m.Size
	}
	if want := fmt.Sprintf("+OK maildrop locked and ready, %d messages (%d octets)", len(msgs), total); greeting != want {
		t.Errorf("login: %q, want %q", greeting, want)
	}

	// STAT, LIST and LIST n give the stored sizes.
	if got, want := c.ok("STAT"), fmt.Sprintf("+OK %d %d", len(msgs), total); got != want {
		t.Errorf("STAT: %q, want %q", got, want)
	}
	c.send("LIST")
	c.status()
	list := c.lines()
	if len(list) != len(msgs) {
		t.Fatalf("LIST: %d lines, want %d", len(list), len(msgs))
	}
	for i, m := range msgs {
		if want := fmt.Sprintf("%d %d", i+1, m.Size); list[i] != want {
			t.Errorf("LIST line %d: %q, want %q", i+1, list[i], want)
		}
		if got, want := c.ok(fmt.Sprintf("LIST %d", i+1)), fmt.Sprintf("+OK %d %d", i+1, m.Size); got != want {
			t.Errorf("LIST %d: %q, want %q", i+1, got, want)
		}
	}

	// UIDL: UIDVALIDITY.UID, for all and for one.
	c.send("UIDL")
	c.status()
	uidl := c.lines()
	for i, m := range msgs {
		want := fmt.Sprintf("%d %d.%d", i+1, mb.UIDValidity, m.UID)
		if uidl[i] != want {
			t.Errorf("UIDL line %d: %q, want %q", i+1, uidl[i], want)
		}
		if got := c.ok(fmt.Sprintf("UIDL %d", i+1)); got != "+OK "+want {
			t.Errorf("UIDL %d: %q, want %q", i+1, got, "+OK "+want)
		}
	}

	// RETR sends exactly the stored octets, byte-stuffed on the wire.
	for i, m := range msgs {
		st := c.cmd(fmt.Sprintf("RETR %d", i+1))
		if want := fmt.Sprintf("+OK %d octets", m.Size); st != want {
			t.Errorf("RETR %d: %q, want %q", i+1, st, want)
		}
		got := c.body()
		if !bytes.Equal(got, bodies[i]) {
			t.Errorf("RETR %d: got %d octets, want the %d stored", i+1, len(got), len(bodies[i]))
		}
		if int64(len(got)) != m.Size {
			t.Errorf("RETR %d: %d octets, LIST said %d", i+1, len(got), m.Size)
		}
	}

	// TOP: the header, the blank line, then n lines of the body.
	for i, body := range bodies {
		head, rest, _ := bytes.Cut(body, []byte("\r\n\r\n"))
		for _, n := range []int{0, 1, 3, 100000} {
			want := append(append([]byte(nil), head...), "\r\n\r\n"...)
			lines := strings.SplitAfter(string(rest), "\r\n")
			for j := 0; j < n && j < len(lines); j++ {
				want = append(want, lines[j]...)
			}
			if got := c.multi(fmt.Sprintf("TOP %d %d", i+1, n)); !bytes.Equal(got, want) {
				t.Errorf("TOP %d %d: got %q, want %q", i+1, n, trim(got), trim(want))
			}
		}
	}

	// DELE marks; the message can no longer be read or listed.
	c.ok("DELE 1")
	for _, cmd := range []string{"RETR 1", "LIST 1", "UIDL 1", "TOP 1 0", "DELE 1"} {
		if got := c.cmd(cmd); !strings.HasPrefix(got, "-ERR") {
			t.Errorf("%s after DELE 1: %q", cmd, got)
		}
	}
	c.send("LIST")
	c.status()
	if got := c.lines(); len(got) != len(msgs)-1 || strings.HasPrefix(got[0], "1 ") {
		t.Errorf("LIST after DELE 1: %q", got)
	}
	c.send("UIDL")
	c.status()
	if got := c.lines(); len(got) != len(msgs)-1 || strings.HasPrefix(got[0], "1 ") {
		t.Errorf("UIDL after DELE 1: %q", got)
	}
	if got, want := c.ok("STAT"), fmt.Sprintf("+OK %d %d", len(msgs)-1, total-msgs[0].Size); got != want {
		t.Errorf("STAT after DELE 1: %q, want %q", got, want)
	}
	// RSET unmarks; NOOP does nothing.
	c.ok("RSET")
	c.ok("RETR 1")
	c.body()
	c.ok("NOOP")
	// Mark 1 and 3 (the 5 MB one), then QUIT: UPDATE removes both.
	c.ok("DELE 1")
	c.ok("DELE 3")
	if got := c.ok("QUIT"); !strings.Contains(got, "(2 messages deleted)") {
		t.Errorf("QUIT: %q", got)
	}
	if !c.closed() {
		t.Error("connection open after QUIT")
	}
	left, _ := storedMessages(t, st, alice)
	var uids []uint32
	for _, m := range left {
		uids = append(uids, m.UID)
	}
	if want := []uint32{msgs[1].UID, msgs[3].UID, msgs[4].UID}; !slices.Equal(uids, want) {
		t.Errorf("after QUIT the INBOX has UIDs %v, want %v", uids, want)
	}
}

func trim(b []byte) []byte {
	if len(b) > 200 {
		return b[:200]
	}
	return b
}

// TestDroppedConnection: a connection that ends in TRANSACTION after DELE
// removes nothing (RFC 1939 section 6), and frees the maildrop.
func TestDroppedConnection(t *testing.T) {
	st := openStore(t)
	appendMessages(t, st, alice, [][]byte{makeMessage(1, 500), makeMessage(2, 500)})
	ts := startServer(t, st, nil)

	c := dial(t, ts.addr)
	c.login(alice, alicePass)
	c.ok("DELE 1")
	c.ok("DELE 2")
	c.conn.Close()

	// Logging in again waits for the first session to notice the drop.
	c2 := dialRetryInUse(t, ts.addr, alice, alicePass)
	if got := c2.ok("STAT"); !strings.HasPrefix(got, "+OK 2 ") {
		t.Errorf("STAT after a dropped session: %q", got)
	}
	if msgs, _ := storedMessages(t, st, alice); len(msgs) != 2 {
		t.Errorf("%d messages left, want 2", len(msgs))
	}
	if !strings.Contains(ts.logs.String(), "session ended without QUIT, nothing removed") {
		t.Errorf("log lacks the dropped session:\n%s", ts.logs.String())
	}
}

// dialRetryInUse logs in, retrying while the maildrop is still held by a
// session that is ending.
func dialRetryInUse(t *testing.T, addr, user, pass string) *client {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c := dial(t, addr)
		c.ok("USER " + user)
		got := c.cmd("PASS " + pass)
		if strings.HasPrefix(got, "+OK") {
			return c
		}
		if !strings.HasPrefix(got, "-ERR [IN-USE]") || time.Now().After(deadline) {
			t.Fatalf("PASS: %q", got)
		}
		c.conn.Close()
		time.Sleep(10 * time.Millisecond)
	}
}

// TestInUse: one POP3 session per maildrop; a second login gets
// -ERR [IN-USE] and may try again once the first has ended.
func TestInUse(t *testing.T) {
	st := openStore(t)
	ts := startServer(t, st, nil)

	c1 := dial(t, ts.addr)
	c1.login(alice, alicePass)

	c2 := dial(t, ts.addr)
	c2.ok("USER " + alice)
	if got := c2.cmd("PASS " + alicePass); !strings.HasPrefix(got, "-ERR [IN-USE]") {
		t.Fatalf("second login: %q", got)
	}
	if got := c2.cmd("AUTH PLAIN " + plainIR("", alice, alicePass)); !strings.HasPrefix(got, "-ERR [IN-USE]") {
		t.Fatalf("second login with AUTH: %q", got)
	}
	// Still in AUTHORIZATION: another user's maildrop is free.
	c2.login(bob, bobPass)
	c2.ok("QUIT")

	c1.ok("QUIT")
	c3 := dial(t, ts.addr)
	c3.login(alice, alicePass)
	c3.ok("QUIT")
}

// TestSnapshot: the maildrop is the INBOX at login. Mail that arrives later
// waits for the next session; a message removed meanwhile by another
// session (IMAP) is refused, and QUIT does not fail because of it.
func TestSnapshot(t *testing.T) {
	st := openStore(t)
	appendMessages(t, st, alice, [][]byte{makeMessage(1, 500), makeMessage(2, 500)})
	msgs, _ := storedMessages(t, st, alice)
	mb := inbox(t, st, alice)
	ts := startServer(t, st, nil)

	c := dial(t, ts.addr)
	c.login(alice, alicePass)
	ctx := context.Background()
	if _, err := st.Deliver(ctx, bob, []string{alice}, makeMessage(3, 500)); err != nil {
		t.Fatal(err)
	}
	if got := c.ok("STAT"); !strings.HasPrefix(got, "+OK 2 ") {
		t.Errorf("STAT after a delivery: %q", got)
	}
	if got := c.cmd("RETR 3"); !strings.HasPrefix(got, "-ERR") {
		t.Errorf("RETR 3: %q", got)
	}
	// Another session removes message 1; its content is gone from the store.
	if _, err := st.DeleteMessages(ctx, mb.ID, []uint32{msgs[0].UID}); err != nil {
		t.Fatal(err)
	}
	if got := c.cmd("RETR 1"); strings.HasPrefix(got, "+OK") {
		// The body may outlive the message (shared bodies); then it is
		// still the right content.
		c.body()
	}
	c.ok("DELE 1")
	c.ok("DELE 2")
	if got := c.ok("QUIT"); !strings.Contains(got, "(1 messages deleted)") {
		t.Errorf("QUIT: %q", got)
	}
	left, _ := storedMessages(t, st, alice)
	if len(left) != 1 || !strings.Contains(string(mustBody(t, st, left[0])), "message 3") {
		t.Errorf("left: %v", left)
	}
}

func mustBody(t *testing.T, st *mailstore.Store, m mailstore.Message) []byte {
	t.Helper()
	b, err := st.ReadBody(context.Background(), m.BodyID)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestUpdateReachesChangeFeed: the removals at QUIT are one transaction
// that open IMAP sessions hear about through the change feed.
func TestUpdateReachesChangeFeed(t *testing.T) {
	st := openStore(t)
	appendMessages(t, st, alice, [][]byte{makeMessage(1, 500), makeMessage(2, 500), makeMessage(3, 500)})
	msgs, _ := storedMessages(t, st, alice)
	mb := inbox(t, st, alice)
	sub := st.Subscribe(mb.ID)
	defer sub.Close()
	sub.Get()
	ts := startServer(t, st, nil)

	c := dial(t, ts.addr)
	c.login(alice, alicePass)
	c.ok("DELE 1")
	c.ok("DELE 3")
	select {
	case <-sub.Pending:
		t.Fatal("change published before QUIT")
	default:
	}
	c.ok("QUIT")
	select {
	case <-sub.Pending:
	case <-time.After(5 * time.Second):
		t.Fatal("no change published after QUIT")
	}
	_, changes := sub.Get()
	var gone []uint32
	modseqs := map[uint64]bool{}
	for _, ch := range changes {
		if ch.Kind == mailstore.ChangeExpunged {
			gone = append(gone, ch.UID)
			modseqs[ch.ModSeq] = true
		}
	}
	if want := []uint32{msgs[0].UID, msgs[2].UID}; !slices.Equal(gone, want) {
		t.Errorf("expunged %v, want %v", gone, want)
	}
	if len(modseqs) != 1 {
		t.Errorf("removals in %d transactions (MODSEQs %v), want 1", len(modseqs), modseqs)
	}
}

// TestUIDLStable: UIDL values stay the same across sessions and a restart
// of the store and server, and are never reused for new messages.
func TestUIDLStable(t *testing.T) {
	path := t.TempDir() + "/postern.db"
	st := openStoreAt(t, path, true)
	appendMessages(t, st, alice, [][]byte{makeMessage(1, 300), makeMessage(2, 300), makeMessage(3, 300)})

	uidls := func(st *mailstore.Store, quitDeleting string) []string {
		ts := startServer(t, st, nil)
		c := dial(t, ts.addr)
		c.login(alice, alicePass)
		c.send("UIDL")
		c.status()
		var ids []string
		for _, l := range c.lines() {
			_, id, _ := strings.Cut(l, " ")
			ids = append(ids, id)
		}
		if quitDeleting != "" {
			c.ok("DELE " + quitDeleting)
		}
		c.ok("QUIT")
		return ids
	}
	first := uidls(st, "")
	if second := uidls(st, "2"); !slices.Equal(first, second) {
		t.Errorf("UIDL changed between sessions: %q then %q", first, second)
	}
	st.Close()
	st = openStoreAt(t, path, false)
	appendMessages(t, st, alice, [][]byte{makeMessage(4, 300)})
	after := uidls(st, "")
	if want := []string{first[0], first[2]}; !slices.Equal(after[:2], want) {
		t.Errorf("UIDL after restart: %q, want %q first", after, want)
	}
	if len(after) != 3 || slices.Contains(first, after[2]) {
		t.Errorf("new message got UIDL %q, already used in %q", after[2], first)
	}
	for _, id := range after {
		if len(id) > 70 || strings.ContainsFunc(id, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
			t.Errorf("UIDL %q is not 1-70 characters from 0x21-0x7E (RFC 1939 section 7)", id)
		}
	}
}

// TestNoFinalCRLF: a message stored without a line end after its last line
// still ends its multi-line response correctly: RETR and TOP add the CRLF
// that the terminator needs.
func TestNoFinalCRLF(t *testing.T) {
	st := openStore(t)
	appendMessages(t, st, alice, [][]byte{[]byte("Subject: x\r\n\r\nno line end")})
	msgs, bodies := storedMessages(t, st, alice)
	ts := startServer(t, st, nil)
	c := dial(t, ts.addr)
	c.login(alice, alicePass)
	want := "Subject: x\r\n\r\nno line end\r\n"
	if got := c.multi("RETR 1"); string(got) != want {
		t.Errorf("RETR: %q, want %q", got, want)
	}
	if got := c.multi("TOP 1 5"); string(got) != want {
		t.Errorf("TOP: %q, want %q", got, want)
	}
	list := c.ok("LIST 1")
	size, _ := strconv.Atoi(strings.Fields(list)[2])
	c.ok("QUIT")
	if !bytes.HasSuffix(bodies[0], []byte("\r\n")) || msgs[0].Size != int64(len(want)) {
		t.Errorf("the mailstore kept the body without its final CRLF (%d octets)", msgs[0].Size)
	}
	if size != len(want) {
		t.Errorf("LIST says %d octets, RETR sent %d", size, len(want))
	}
}

// TestPipelining: commands sent together (RFC 2449 section 6.6) are
// answered in order.
func TestPipelining(t *testing.T) {
	st := openStore(t)
	appendMessages(t, st, alice, [][]byte{makeMessage(1, 900), makeMessage(2, 900)})
	_, bodies := storedMessages(t, st, alice)
	ts := startServer(t, st, nil)
	c := dial(t, ts.addr)
	c.send("USER " + alice + "\r\nPASS " + alicePass + "\r\nSTAT\r\nRETR 1\r\nXYZZY\r\nLIST 2\r\nRETR 2\r\nDELE 1\r\nQUIT")
	for i, want := range []string{"+OK send PASS", "+OK maildrop", "+OK 2 ", "+OK", "-ERR", "+OK 2 ", "+OK", "+OK message 1 deleted", "+OK"} {
		got := c.status()
		if !strings.HasPrefix(got, want) {
			t.Fatalf("reply %d: %q, want %q", i+1, got, want)
		}
		if i == 3 || i == 6 {
			if body := c.body(); !bytes.Equal(body, bodies[i/6]) {
				t.Errorf("reply %d: body differs", i+1)
			}
		}
	}
	if !c.closed() {
		t.Error("connection open after QUIT")
	}
	if left, _ := storedMessages(t, st, alice); len(left) != 1 {
		t.Errorf("%d messages left, want 1", len(left))
	}
}

// TestReadAhead: RETR in any order gives the right message, whether or
// not its body was read ahead.
func TestReadAhead(t *testing.T) {
	st := openStore(t)
	var in [][]byte
	for i := range 8 {
		in = append(in, makeMessage(i, 300+i*500))
	}
	in = append(in, makeMessage(99, readAheadMax+1000))
	appendMessages(t, st, alice, in)
	_, bodies := storedMessages(t, st, alice)
	ts := startServer(t, st, nil)
	c := dial(t, ts.addr)
	c.login(alice, alicePass)
	c.ok("DELE 4")
	for _, n := range []int{1, 2, 3, 5, 7, 6, 8, 9, 9, 2, 1, 1} {
		got := c.multi(fmt.Sprintf("RETR %d", n))
		if !bytes.Equal(got, bodies[n-1]) {
			t.Fatalf("RETR %d: wrong content %q", n, trim(got))
		}
		if n == 6 {
			c.multi("TOP 7 1")
		}
	}
	if got := c.cmd("RETR 4"); !strings.HasPrefix(got, "-ERR") {
		t.Errorf("RETR of a deleted message: %q", got)
	}
	c.ok("RETR 3")
	// Drop the connection with a read-ahead in flight.
	c.conn.Close()
	c2 := dialRetryInUse(t, ts.addr, alice, alicePass)
	c2.ok("QUIT")
}

// TestStoreFailure: when the mailstore fails, logins and QUIT answer
// [SYS/TEMP], and the maildrop is unlocked.
func TestStoreFailure(t *testing.T) {
	st := openStore(t)
	appendMessages(t, st, alice, [][]byte{makeMessage(1, 300)})
	ts := startServer(t, st, nil)
	c := dial(t, ts.addr)
	c.login(alice, alicePass)
	c.ok("DELE 1")
	c2 := dial(t, ts.addr)
	st.Close()
	if got := c.cmd("QUIT"); got != "-ERR [SYS/TEMP] some deleted messages not removed" {
		t.Errorf("QUIT with the store closed: %q", got)
	}
	c2.ok("USER " + alice)
	if got := c2.cmd("PASS " + alicePass); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
		t.Errorf("PASS with the store closed: %q", got)
	}
	// Not the client's fault: these do not end the session.
	for range DefaultLimits.MaxErrors {
		c2.ok("USER " + alice)
		c2.cmd("PASS " + alicePass)
	}
	c2.ok("QUIT")
}

// TestRetrAfterExpungeElsewhere: a message another session removes while
// a POP3 session has it listed is still retrieved whole (the maildrop is a
// snapshot); once the POP3 session ends, the store frees its body.
func TestRetrAfterExpungeElsewhere(t *testing.T) {
	st := openStore(t)
	msgs := [][]byte{makeMessage(1, 300_000), makeMessage(2, 2000)}
	appendMessages(t, st, alice, msgs)
	stored, bodies := storedMessages(t, st, alice)
	ts := startServer(t, st, nil)
	c := dial(t, ts.addr)
	c.login(alice, alicePass)

	ctx := context.Background()
	mb := inbox(t, st, alice)
	if _, err := st.DeleteMessages(ctx, mb.ID, []uint32{stored[0].UID, stored[1].UID}); err != nil {
		t.Fatal(err)
	}
	// Other writes and time give the store every chance to sweep.
	appendMessages(t, st, bob, [][]byte{makeMessage(3, 100)})
	time.Sleep(300 * time.Millisecond)
	appendMessages(t, st, bob, [][]byte{makeMessage(4, 100)})

	for i := range stored {
		got := c.multi(fmt.Sprintf("RETR %d", i+1))
		if !bytes.Equal(got, bodies[i]) {
			t.Fatalf("RETR %d after the message was removed elsewhere: %d octets, want %d", i+1, len(got), len(bodies[i]))
		}
	}
	c.ok("QUIT")

	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := st.ReadBody(ctx, stored[0].BodyID)
		if errors.Is(err, mailstore.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("body still there 10s after the session ended: %v", err)
		}
		appendMessages(t, st, bob, [][]byte{makeMessage(5, 100)})
		time.Sleep(50 * time.Millisecond)
	}
}

// TestInUseAcrossFrontends: two POP3 servers on one store (frontends of a
// shared database) keep one session per maildrop between them through
// the store's lease; after the session ends, the other frontend may log in.
func TestInUseAcrossFrontends(t *testing.T) {
	st := openStore(t)
	appendMessages(t, st, alice, [][]byte{makeMessage(1, 300)})
	a := startServer(t, st, nil)
	b := startServer(t, st, func(cfg *Config) { cfg.MaildropLease = 2 * time.Second })
	c1 := dial(t, a.addr)
	c1.login(alice, alicePass)
	c2 := dial(t, b.addr)
	c2.ok("USER " + alice)
	if got := c2.cmd("PASS " + alicePass); !strings.HasPrefix(got, "-ERR [IN-USE]") {
		t.Fatalf("second frontend's PASS while the first holds the maildrop: %q", got)
	}
	c1.ok("QUIT")
	c3 := dialRetryInUse(t, b.addr, alice, alicePass)
	c3.ok("STAT")
	c4 := dial(t, a.addr)
	c4.ok("USER " + alice)
	if got := c4.cmd("PASS " + alicePass); !strings.HasPrefix(got, "-ERR [IN-USE]") {
		t.Fatalf("first frontend's PASS while the second holds the maildrop: %q", got)
	}
	c3.ok("QUIT")
	if !strings.Contains(b.logs.String(), "held_by=\"another frontend\"") && !strings.Contains(a.logs.String(), "held_by=\"another frontend\"") {
		t.Errorf("no frontend logged the other's lease:\n%s\n%s", a.logs.String(), b.logs.String())
	}
}
