package imapd

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/storetest"
)

// wantOK runs commands that must each end in a tagged OK.
func wantOK(t *testing.T, rc *rawConn, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		if r := rc.cmd("c", c); !strings.HasPrefix(r[len(r)-1], "c OK") {
			t.Fatalf("%s: %q", c, r)
		}
	}
}

// Subscriptions are names (RFC 3501 6.3.6): a name without a mailbox can
// be subscribed; DELETE and RENAME leave subscriptions alone; LSUB gives
// such names as \Noselect (RFC 3501 6.3.9) and LIST (SUBSCRIBED) as
// \NonExistent (RFC 5258 3.1, RFC 9051 6.3.9).
func TestSubscriptionsWithoutMailbox(t *testing.T) {
	env := newEnv(t)
	rc := rawLogin(t, env)
	wantOK(t, rc, "SUBSCRIBE Later/Folder", "CREATE Work", "SUBSCRIBE Work", "DELETE Work", `RENAME Sent "Sent Items"`)

	r := rc.cmd("l", `LSUB "" *`)
	wantLine(t, "LSUB *", r, `* LSUB (\Noselect) "/" "Later/Folder"`)
	wantLine(t, "LSUB *", r, `* LSUB (\Noselect) "/" "Work"`)
	wantLine(t, "LSUB *", r, `* LSUB (\Noselect) "/" "Sent"`)
	wantLine(t, "LSUB *", r, `\Subscribed`, `"Drafts"`)
	noLine(t, "LSUB *", r, `"Sent Items"`)
	noLine(t, "LSUB *", r, `"Later"`)

	// The parent of a subscribed name that % does not reach.
	r = rc.cmd("l", `LSUB "" %`)
	wantLine(t, "LSUB %", r, `* LSUB (\Noselect) "/" "Later"`)
	noLine(t, "LSUB %", r, `"Later/Folder"`)

	r = rc.cmd("l", `LIST (SUBSCRIBED) "" *`)
	for _, n := range []string{"Later/Folder", "Work", "Sent"} {
		wantLine(t, "LIST (SUBSCRIBED)", r, `* LIST (\NonExistent \Subscribed) "/" "`+n+`"`)
	}
	wantLine(t, "LIST (SUBSCRIBED)", r, `* LIST (\HasNoChildren \Subscribed \Drafts) "/" "Drafts"`)
	noLine(t, "LIST (SUBSCRIBED)", r, `"Sent Items"`)
	noLine(t, "LIST (SUBSCRIBED)", r, `"Later"`)

	// RFC 5258 3.5: with RECURSIVEMATCH, a parent of a subscribed name,
	// with CHILDINFO, though it is no mailbox.
	r = rc.cmd("l", `LIST (SUBSCRIBED RECURSIVEMATCH) "" %`)
	wantLine(t, "LIST (SUBSCRIBED RECURSIVEMATCH)", r, `* LIST (\NonExistent) "/" "Later"`, `CHILDINFO`, `"SUBSCRIBED"`)
	wantLine(t, "LIST (SUBSCRIBED RECURSIVEMATCH)", r, `* LIST (\NonExistent \Subscribed) "/" "Work"`)
	noLine(t, "LIST (SUBSCRIBED RECURSIVEMATCH)", r, `"Later/Folder"`)

	// Plain LIST, and RETURN (SUBSCRIBED), list only what exists.
	for _, cmd := range []string{`LIST "" *`, `LIST "" * RETURN (SUBSCRIBED)`} {
		r = rc.cmd("l", cmd)
		noLine(t, cmd, r, `"Later/Folder"`)
		noLine(t, cmd, r, `"Work"`)
		noLine(t, cmd, r, `\NonExistent`)
		noLine(t, cmd, r, `\Subscribed`, `"Sent Items"`)
	}
	wantLine(t, `LIST RETURN (SUBSCRIBED)`, r, `\Subscribed`, `"Drafts"`)

	// A mailbox made again under a subscribed name is subscribed.
	wantOK(t, rc, "CREATE Work")
	r = rc.cmd("l", `LIST (SUBSCRIBED) "" Work`)
	wantLine(t, "LIST (SUBSCRIBED) Work", r, `* LIST (\HasNoChildren \Subscribed) "/" "Work"`)

	// UNSUBSCRIBE takes a name without a mailbox; one that is neither
	// subscribed nor a mailbox is refused.
	wantOK(t, rc, "UNSUBSCRIBE Later/Folder", `UNSUBSCRIBE "Sent Items"`)
	if r := rc.cmd("u", "UNSUBSCRIBE Later/Folder"); !strings.HasPrefix(r[len(r)-1], "u NO [NONEXISTENT]") {
		t.Errorf("UNSUBSCRIBE of a name neither subscribed nor a mailbox: %q", r)
	}
	r = rc.cmd("l", `LSUB "" *`)
	noLine(t, "LSUB * after UNSUBSCRIBE", r, `"Later/Folder"`)
	if r := rc.cmd("s", `SUBSCRIBE "a//b"`); !strings.HasPrefix(r[len(r)-1], "s NO") {
		t.Errorf("SUBSCRIBE of an invalid name: %q", r)
	}

	// The go-imap client sees the same.
	c := env.dial(t, nil)
	sub := listNames(t, c, "", "*", &imap.ListOptions{SelectSubscribed: true})
	if !slices.Contains(sub, `Sent \NonExistent \Subscribed`) {
		t.Errorf("LIST (SUBSCRIBED) through imapclient: %q", sub)
	}
}

// SUBSCRIBE beyond mailstore.MaxSubscriptions is NO [LIMIT]; a name
// already there can still be subscribed, and unsubscribing makes room.
func TestSubscriptionLimit(t *testing.T) {
	env := newEnv(t)
	ctx := context.Background()
	have, err := env.store.Subscriptions(ctx, env.user.ID)
	if err != nil {
		t.Fatal(err)
	}
	// Filled in one statement on the database file: ten thousand
	// SUBSCRIBE commands, each a durable transaction, would take long.
	db, err := sql.Open("sqlite", "file:"+env.db+"?_pragma=busy_timeout(20000)")
	if err != nil {
		t.Fatal(err)
	}
	_, err = db.Exec(`WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?)
		INSERT INTO subscriptions (user_id, name) SELECT ?, printf('f/%05d', i) FROM n`, len(have), mailstore.MaxSubscriptions, env.user.ID)
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	rc := rawLogin(t, env)
	if r := rc.cmd("s", "SUBSCRIBE one/more"); !strings.HasPrefix(r[len(r)-1], "s NO [LIMIT]") {
		t.Fatalf("SUBSCRIBE beyond the limit: %q", r)
	}
	first := fmt.Sprintf("f/%05d", len(have))
	wantOK(t, rc, "SUBSCRIBE "+first, "UNSUBSCRIBE "+first, "SUBSCRIBE one/more")
	r := rc.cmd("l", `LSUB "" *`)
	if n := len(r) - 1; n != mailstore.MaxSubscriptions {
		t.Errorf("LSUB gave %d names, want %d", n, mailstore.MaxSubscriptions)
	}
}

// MOVE into the selected mailbox itself works at quota (it adds nothing
// to the user's usage; COPY does, and is refused), in one step: COPYUID
// with new UIDs, and both sessions on the mailbox see EXISTS and EXPUNGE
// (RFC 6851 3.3).
func TestMoveWithinMailboxAtQuota(t *testing.T) {
	env := newEnv(t)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		env.deliver(t, testMessage(i, fmt.Sprintf("msg %d", i)))
	}
	used, _, err := env.store.Usage(ctx, env.user.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.store.SetQuota(ctx, testUser, used); err != nil {
		t.Fatal(err)
	}
	u := storetest.NewIMAPUpdates()
	c := env.dial(t, u)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	ou := storetest.NewIMAPUpdates()
	other := env.dial(t, ou)
	if _, err := other.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Copy(imap.SeqSetNum(1), "INBOX").Wait(); !hasCode(err, imap.ResponseCodeOverQuota) {
		t.Fatalf("COPY within INBOX at quota: %v, want NO [OVERQUOTA]", err)
	}

	md, err := c.Move(imap.SeqSetNum(1, 3), "INBOX").Wait()
	if err != nil {
		t.Fatalf("MOVE within INBOX at quota: %v", err)
	}
	if md.SourceUIDs.String() != "1,3" || md.DestUIDs.String() != "4:5" {
		t.Errorf("MOVE COPYUID = %v -> %v, want 1,3 -> 4:5", md.SourceUIDs, md.DestUIDs)
	}
	// Sequence numbers: 3 then 1 or 1 then 2, as the server reports
	// them; either way two expunges.
	u.WaitFor(t, "EXISTS 5 and two EXPUNGEs after MOVE", waitTimeout, func(u *storetest.IMAPUpdates) bool {
		return slices.Contains(u.Exists, 5) && len(u.Expunges) == 2
	})
	if err := other.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	ou.WaitFor(t, "the other session told of EXISTS and two EXPUNGEs", waitTimeout, func(u *storetest.IMAPUpdates) bool {
		return slices.Contains(u.Exists, 5) && len(u.Expunges) == 2
	})
	for _, cl := range []*imapclient.Client{c, other} {
		msgs, err := cl.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, Envelope: true}).Collect()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range msgs {
			got = append(got, fmt.Sprintf("%d:%d %s", m.SeqNum, m.UID, m.Envelope.Subject))
		}
		want := []string{"1:2 msg 2", "2:4 msg 1", "3:5 msg 3"}
		if !slices.Equal(got, want) {
			t.Errorf("after MOVE within INBOX: %q, want %q", got, want)
		}
	}
	if now, _, err := env.store.Usage(ctx, env.user.ID); err != nil || now != used {
		t.Errorf("usage after MOVE within %d (%v), want %d", now, err, used)
	}
}
