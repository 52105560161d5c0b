package imapd

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/storetest"
)

// kinds summarises a queue for comparison.
func kinds(q []update) []string {
	var out []string
	for _, u := range q {
		switch u.kind {
		case updExists:
			out = append(out, "EXISTS "+itoa(u.num))
		case updExpunge:
			out = append(out, "EXPUNGE "+itoa(u.num))
		case updFlags:
			out = append(out, "FETCH "+itoa(u.num))
		case updMailboxFlags:
			out = append(out, "FLAGS")
		}
	}
	return out
}

func itoa(n uint32) string { return string(rune('0'+n/10)) + string(rune('0'+n%10)) }

func TestViewNumbering(t *testing.T) {
	env := newEnv(t)
	ctx := context.Background()
	for i := 1; i <= 5; i++ {
		env.deliver(t, testMessage(i, "x"))
	}
	mb, err := env.store.MailboxByName(ctx, env.user.ID, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	a, _, err := env.srv.boxes.open(ctx, mb, false)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	b, _, err := env.srv.boxes.open(ctx, mb, false)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	if a.st != b.st {
		t.Fatal("two views of one mailbox do not share its state")
	}

	// Expunge UIDs 2 and 4, flag 5 with a new keyword, deliver 6 and 7.
	if _, err := env.store.StoreFlags(ctx, mb.ID, mailstore.UIDs(2, 4), mailstore.FlagsAdd, []string{mailstore.FlagDeleted}); err != nil {
		t.Fatal(err)
	}
	a.take(ctx, true) // A has seen the \Deleted flags
	if _, err := env.store.Expunge(ctx, mb.ID, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := env.store.StoreFlags(ctx, mb.ID, mailstore.UIDs(5), mailstore.FlagsAdd, []string{"Fresh"}); err != nil {
		t.Fatal(err)
	}
	env.deliver(t, testMessage(6, "x"))
	env.deliver(t, testMessage(7, "x"))
	a.changed(ctx)

	a.st.mu.Lock()
	if got := kinds(a.queue); !slices.Equal(got, []string{"EXPUNGE 02", "EXPUNGE 03", "FLAGS", "FETCH 03", "EXISTS 05"}) {
		t.Errorf("A's queue = %v", got)
	}
	// A still numbers 1..5 as before; 2 and 4 are gone.
	for seq, want := range map[uint32]uint32{1: 1, 2: 0, 3: 3, 4: 0, 5: 5, 6: 0} {
		s, ok := a.toServer(seq)
		uid := uint32(0)
		if ok {
			uid = a.st.uids[s-1]
		}
		if uid != want {
			t.Errorf("A's message %d is UID %d, want %d", seq, uid, want)
		}
	}
	// UIDs 6 and 7 are not A's yet; UID 5 is A's 5.
	for uid, want := range map[uint32]uint32{5: 5, 6: 0, 7: 0, 3: 3} {
		s, _ := a.st.seqOf(uid)
		got, ok := a.toClient(s)
		if !ok {
			got = 0
		}
		if got != want {
			t.Errorf("UID %d is A's %d, want %d", uid, got, want)
		}
	}
	a.st.mu.Unlock()

	// A FETCH (no expunges allowed) takes nothing past the first EXPUNGE,
	// but FLAGS goes out at once.
	if got := kinds(a.take(ctx, false)); !slices.Equal(got, []string{"FLAGS"}) {
		t.Errorf("take without expunges = %v", got)
	}
	if got := kinds(a.take(ctx, true)); !slices.Equal(got, []string{"EXPUNGE 02", "EXPUNGE 03", "FETCH 03", "EXISTS 05"}) {
		t.Errorf("take = %v", got)
	}
	if a.countNow() != 5 {
		t.Errorf("A knows %d messages, want 5", a.countNow())
	}
	targets := a.resolve(ctx, imap.SeqSet{{Start: 0, Stop: 0}})
	if len(targets) != 1 || targets[0] != (target{seq: 5, uid: 7}) {
		t.Errorf("* = %+v", targets)
	}

	// B's view, on the same changes, comes out the same.
	b.take(ctx, true)
	if b.countNow() != 5 {
		t.Errorf("B knows %d messages, want 5", b.countNow())
	}
}

func TestViewResyncAfterOverflow(t *testing.T) {
	env := newEnv(t)
	ctx := context.Background()
	for i := 1; i <= 4; i++ {
		env.deliver(t, testMessage(i, "x"))
	}
	mb, _ := env.store.MailboxByName(ctx, env.user.ID, "INBOX")
	v, _, err := env.srv.boxes.open(ctx, mb, false)
	if err != nil {
		t.Fatal(err)
	}
	defer v.close()
	if _, err := env.store.DeleteMessages(ctx, mb.ID, []uint32{1, 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.store.StoreFlags(ctx, mb.ID, mailstore.UIDs(4), mailstore.FlagsAdd, []string{mailstore.FlagFlagged}); err != nil {
		t.Fatal(err)
	}
	env.deliver(t, testMessage(5, "x"))
	// Pretend the feed overflowed: drop what it has and resync.
	v.st.mu.Lock()
	<-v.st.sub.Pending
	v.st.sub.Get()
	v.st.resync(ctx)
	got := kinds(v.queue)
	uids := slices.Clone(v.st.uids)
	v.st.mu.Unlock()
	if !slices.Equal(uids, []uint32{2, 4, 5}) {
		t.Errorf("UIDs after resync = %v", uids)
	}
	if !slices.Equal(got, []string{"EXPUNGE 03", "EXPUNGE 01", "FETCH 01", "FETCH 02", "EXISTS 03"}) {
		t.Errorf("queue after resync = %v", got)
	}
}

func TestIdleWakesEverySession(t *testing.T) {
	env := newEnv(t)
	var us []*storetest.IMAPUpdates
	for i := 0; i < 5; i++ {
		u := storetest.NewIMAPUpdates()
		c := env.dial(t, u)
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Idle(); err != nil {
			t.Fatal(err)
		}
		us = append(us, u)
	}
	env.deliver(t, testMessage(1, "x"))
	for _, u := range us {
		u.WaitFor(t, "EXISTS 1", waitTimeout, func(u *storetest.IMAPUpdates) bool { return slices.Contains(u.Exists, 1) })
	}
}

// TestSyncAppliesChangesWhoseSignalAnIdlerTook: an idling session takes
// the feed's signal outside the mailbox lock and applies the changes a
// moment later; a command's sync in that gap must still apply every
// change committed before it.
func TestSyncAppliesChangesWhoseSignalAnIdlerTook(t *testing.T) {
	env := newEnv(t)
	ctx := context.Background()
	mb, err := env.store.MailboxByName(ctx, env.user.ID, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	idler, _, err := env.srv.boxes.open(ctx, mb, false)
	if err != nil {
		t.Fatal(err)
	}
	defer idler.close()
	cmd, _, err := env.srv.boxes.open(ctx, mb, false)
	if err != nil {
		t.Fatal(err)
	}
	defer cmd.close()

	wake, pending, owed := idler.idleWait()
	if owed {
		t.Fatal("idler owes updates before any change")
	}
	env.deliver(t, testMessage(1, "x"))
	<-pending // the idler's select takes the signal, then is descheduled

	if got := kinds(cmd.take(ctx, true)); !slices.Equal(got, []string{"EXISTS 01"}) {
		t.Fatalf("command's poll while the idler holds the signal = %v, want EXISTS 01", got)
	}
	select {
	case <-wake:
	default:
		t.Error("applying the changes did not wake the idlers")
	}
	idler.feedSignalled(ctx) // the idler goes on: nothing left to apply
	if got := kinds(idler.take(ctx, true)); !slices.Equal(got, []string{"EXISTS 01"}) {
		t.Errorf("idler's poll = %v, want EXISTS 01", got)
	}
}

// TestNoopAfterAppendWithIdlers: with other sessions idling on the
// mailbox, APPEND into the selected mailbox then NOOP reports the new
// message every time, and UID FETCH finds the UID APPEND returned.
func TestNoopAfterAppendWithIdlers(t *testing.T) {
	env := newEnv(t)
	const idlers, rounds = 8, 200
	for i := 0; i < idlers; i++ {
		rc := dialRaw(t, env.addr)
		rc.login()
		rc.cmd("s", "SELECT INBOX")
		rc.send("i IDLE\r\n")
		rc.until("+")
		// Read what the idler is sent, so that writing to it never blocks.
		go io.Copy(io.Discard, rc.c)
	}
	rc := dialRaw(t, env.addr)
	rc.login()
	rc.cmd("s", "SELECT INBOX")
	appendUID := regexp.MustCompile(`^a\d+ OK \[APPENDUID \d+ (\d+)\]`)
	missed := 0
	for i := 1; i <= rounds; i++ {
		msg := testMessage(i, "x")
		rc.send(fmt.Sprintf("a%d APPEND INBOX {%d+}\r\n%s\r\n", i, len(msg), msg))
		out := rc.until(fmt.Sprintf("a%d ", i))
		m := appendUID.FindStringSubmatch(last(out))
		if m == nil {
			t.Fatalf("round %d: APPEND = %q", i, out)
		}
		// The APPEND's own poll may have sent the EXISTS already.
		out = append(out, rc.cmd(fmt.Sprintf("n%d", i), "NOOP")...)
		fetched := rc.cmd(fmt.Sprintf("f%d", i), "UID FETCH "+m[1]+" (FLAGS)")
		if slices.Contains(out, fmt.Sprintf("* %d EXISTS", i)) && len(fetched) == 2 {
			continue
		}
		missed++
		if missed <= 3 {
			t.Errorf("round %d: APPEND and NOOP = %q; UID FETCH %s = %q", i, out, m[1], fetched)
		}
		// Catch up, so that the next round starts from a known count.
		for j := 0; j < 100 && !slices.Contains(rc.cmd("c", "NOOP"), fmt.Sprintf("* %d EXISTS", i)); j++ {
			time.Sleep(time.Millisecond)
		}
	}
	if missed > 0 {
		t.Errorf("the new message was missed in %d of %d rounds", missed, rounds)
	}
}

// TestIdleSeesEveryDeliveryAmongFlagChanges: sessions idling on INBOX
// while messages arrive and another session stores flags each see every
// new count.
func TestIdleSeesEveryDeliveryAmongFlagChanges(t *testing.T) {
	env := newEnv(t)
	const idlers, rounds = 10, 30
	var us []*storetest.IMAPUpdates
	for i := 0; i < idlers; i++ {
		u := storetest.NewIMAPUpdates()
		c := env.dial(t, u)
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Idle(); err != nil {
			t.Fatal(err)
		}
		us = append(us, u)
	}
	worker := dialRaw(t, env.addr)
	worker.login()
	worker.cmd("s", "SELECT INBOX")
	for r := 1; r <= rounds; r++ {
		env.deliver(t, testMessage(r, fmt.Sprintf("m%d", r)))
		if r%3 == 0 {
			worker.cmd("n", "NOOP")
			worker.cmd("f", fmt.Sprintf(`STORE %d +FLAGS (\Flagged)`, r))
		}
		for i, u := range us {
			u.WaitFor(t, fmt.Sprintf("idler %d: EXISTS %d", i, r), waitTimeout, func(u *storetest.IMAPUpdates) bool {
				return slices.Contains(u.Exists, uint32(r))
			})
		}
	}
}
