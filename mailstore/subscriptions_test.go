package mailstore

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func subscriptions(t *testing.T, s *Store, userID int64) []string {
	t.Helper()
	subs, err := s.Subscriptions(context.Background(), userID)
	if err != nil {
		t.Fatal(err)
	}
	return subs
}

func subscribed(t *testing.T, s *Store, userID int64, name string) bool {
	t.Helper()
	mb, err := s.MailboxByName(context.Background(), userID, name)
	if err != nil {
		t.Fatal(err)
	}
	return mb.Subscribed
}

// Subscriptions are names (RFC 3501 6.3.6): a name without a mailbox can
// be subscribed, and DELETE and RENAME leave subscriptions as they are.
func TestSubscriptionsAreNames(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	v := addUser(t, s, "v@example.test")
	defaults := []string{"Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"}
	if got := subscriptions(t, s, u.ID); !slices.Equal(got, defaults) {
		t.Fatalf("a new user's subscriptions: %q, want %q", got, defaults)
	}

	for _, n := range []string{"Later/Folder", "inbox/Lists", "Later/Folder"} {
		if err := s.SetSubscribed(ctx, u.ID, n, true); err != nil {
			t.Fatalf("subscribe %q with no mailbox: %v", n, err)
		}
	}
	for _, n := range []string{"", "a//b", "a/", "x%", "tab\there"} {
		if err := s.SetSubscribed(ctx, u.ID, n, true); !errors.Is(err, ErrInvalidName) {
			t.Errorf("subscribe %q: %v, want ErrInvalidName", n, err)
		}
	}
	want := []string{"Archive", "Drafts", "INBOX", "INBOX/Lists", "Junk", "Later/Folder", "Sent", "Trash"}
	if got := subscriptions(t, s, u.ID); !slices.Equal(got, want) {
		t.Fatalf("subscriptions %q, want %q", got, want)
	}
	if got := subscriptions(t, s, v.ID); !slices.Equal(got, defaults) {
		t.Fatalf("another user's subscriptions changed: %q", got)
	}

	// A mailbox created under a subscribed name is subscribed.
	if _, err := s.CreateMailbox(ctx, u.ID, "Later/Folder", ""); err != nil {
		t.Fatal(err)
	}
	if !subscribed(t, s, u.ID, "Later/Folder") || subscribed(t, s, u.ID, "Later") {
		t.Error("Later/Folder should be subscribed, its new parent Later not")
	}

	// DELETE keeps the subscription (RFC 3501 6.3.6), also of a name kept
	// as \Noselect for its children.
	if err := s.DeleteMailbox(ctx, u.ID, "Later/Folder"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateMailbox(ctx, u.ID, "Work/Child", ""); err != nil {
		t.Fatal(err)
	}
	if err := s.SetSubscribed(ctx, u.ID, "Work", true); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMailbox(ctx, u.ID, "Work"); err != nil {
		t.Fatal(err)
	}
	if !subscribed(t, s, u.ID, "Work") {
		t.Error("the \\Noselect Work lost its subscription")
	}

	// RENAME does not carry the subscription to the new name (RFC 3501
	// 6.3.5), for INBOX neither.
	if err := s.RenameMailbox(ctx, u.ID, "Sent", "Sent Items"); err != nil {
		t.Fatal(err)
	}
	if err := s.RenameMailbox(ctx, u.ID, "INBOX", "Old"); err != nil {
		t.Fatal(err)
	}
	if subscribed(t, s, u.ID, "Sent Items") || subscribed(t, s, u.ID, "Old") || !subscribed(t, s, u.ID, "INBOX") {
		t.Error("RENAME moved or dropped a subscription")
	}
	want = []string{"Archive", "Drafts", "INBOX", "INBOX/Lists", "Junk", "Later/Folder", "Sent", "Trash", "Work"}
	if got := subscriptions(t, s, u.ID); !slices.Equal(got, want) {
		t.Fatalf("after DELETE and RENAME: %q, want %q", got, want)
	}

	// UNSUBSCRIBE: a subscribed name, mailbox or not; an unsubscribed
	// mailbox is no error; a name that is neither is not found.
	for _, n := range []string{"Later/Folder", "Sent", "Sent Items"} {
		if err := s.SetSubscribed(ctx, u.ID, n, false); err != nil {
			t.Errorf("unsubscribe %q: %v", n, err)
		}
	}
	if err := s.SetSubscribed(ctx, u.ID, "Never/There", false); !errors.Is(err, ErrNotFound) {
		t.Errorf("unsubscribe a name neither subscribed nor a mailbox: %v, want ErrNotFound", err)
	}
	want = []string{"Archive", "Drafts", "INBOX", "INBOX/Lists", "Junk", "Trash", "Work"}
	if got := subscriptions(t, s, u.ID); !slices.Equal(got, want) {
		t.Fatalf("after UNSUBSCRIBE: %q, want %q", got, want)
	}

	// The subscriptions go with the user.
	if err := s.DeleteUser(ctx, u.Address); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := s.readRow(ctx, "SELECT count(*) FROM subscriptions WHERE user_id = ?", u.ID).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d subscriptions left of a deleted user (%v)", n, err)
	}
}

// A user has at most MaxSubscriptions names; beyond, SetSubscribed fails
// with ErrLimit, and the names already there can still be subscribed
// again and unsubscribed.
func TestSubscriptionLimit(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	have := len(subscriptions(t, s, u.ID))
	// Filled in one statement: one SUBSCRIBE at a time would take long.
	err := s.w.do(ctx, func(t *wtx) error {
		if t.w.d.pg {
			_, err := t.exec(`INSERT INTO subscriptions (user_id, name)
				SELECT ?, 'f/' || lpad(i::text, 5, '0') FROM generate_series(?::bigint, ?::bigint - 1) AS i`, u.ID, have, MaxSubscriptions)
			return err
		}
		_, err := t.exec(`WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?)
			INSERT INTO subscriptions (user_id, name) SELECT ?, printf('f/%05d', i) FROM n`, have, MaxSubscriptions, u.ID)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetSubscribed(ctx, u.ID, "one/more", true); !errors.Is(err, ErrLimit) {
		t.Fatalf("subscription %d: %v, want ErrLimit", MaxSubscriptions+1, err)
	}
	if err := s.SetSubscribed(ctx, u.ID, fmt.Sprintf("f/%05d", have), true); err != nil {
		t.Fatalf("subscribe an existing subscription again at the limit: %v", err)
	}
	if got := len(subscriptions(t, s, u.ID)); got != MaxSubscriptions {
		t.Fatalf("%d subscriptions, want %d", got, MaxSubscriptions)
	}
	if err := s.SetSubscribed(ctx, u.ID, fmt.Sprintf("f/%05d", have), false); err != nil {
		t.Fatal(err)
	}
	if err := s.SetSubscribed(ctx, u.ID, "one/more", true); err != nil {
		t.Fatalf("subscribe below the limit again: %v", err)
	}
}

// A version-4 store is migrated to subscriptions as rows: the subscribed
// flags become names, and the names outlive their mailboxes.
func TestMigratesFromVersion4(t *testing.T) {
	sqliteOnly(t)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "postern.db")
	db := oldSchemaDB(t, path, 4,
		"INSERT INTO domains (name) VALUES ('example.test')",
		"INSERT INTO users (address, password_hash, created) VALUES ('u@example.test', 'x', 0)",
		"INSERT INTO users (address, password_hash, created) VALUES ('v@example.test', 'x', 0)",
		"INSERT INTO mailboxes (user_id, name, uidvalidity, subscribed) VALUES (1, 'INBOX', 7, 1)",
		"INSERT INTO mailboxes (user_id, name, uidvalidity, subscribed) VALUES (1, 'Lists', 8, 0)",
		"INSERT INTO mailboxes (user_id, name, uidvalidity, subscribed, noselect) VALUES (1, 'Work', 9, 1, 1)",
		"INSERT INTO mailboxes (user_id, name, uidvalidity, subscribed) VALUES (1, 'Work/2024', 10, 1)",
		"INSERT INTO mailboxes (user_id, name, uidvalidity, subscribed) VALUES (2, 'INBOX', 11, 0)",
		"INSERT INTO mailboxes (user_id, name, uidvalidity, subscribed) VALUES (2, 'Sent', 12, 1)",
	)
	db.Close()

	s := openMigrated(t, path)
	if got, want := subscriptions(t, s, 1), []string{"INBOX", "Work", "Work/2024"}; !slices.Equal(got, want) {
		t.Errorf("user 1 subscriptions after migration: %q, want %q", got, want)
	}
	if got, want := subscriptions(t, s, 2), []string{"Sent"}; !slices.Equal(got, want) {
		t.Errorf("user 2 subscriptions after migration: %q, want %q", got, want)
	}
	boxes, err := s.Mailboxes(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	var flags []string
	for _, mb := range boxes {
		flags = append(flags, fmt.Sprintf("%s:%v", mb.Name, mb.Subscribed))
	}
	if want := []string{"INBOX:true", "Lists:false", "Work:true", "Work/2024:true"}; !slices.Equal(flags, want) {
		t.Errorf("mailboxes after migration: %q, want %q", flags, want)
	}
	if err := s.DeleteMailbox(ctx, 1, "Work/2024"); err != nil {
		t.Fatal(err)
	}
	if got, want := subscriptions(t, s, 1), []string{"INBOX", "Work", "Work/2024"}; !slices.Equal(got, want) {
		t.Errorf("after DELETE: %q, want %q", got, want)
	}
	// New mailboxes work on the migrated schema.
	if _, err := s.CreateMailbox(ctx, 1, "New", ""); err != nil {
		t.Fatal(err)
	}
}

// MOVE into the mailbox the messages are in (RFC 6851 3.3): one
// transaction, new UIDs with flags and dates kept, the originals
// expunged, and never refused for quota, since the user's usage does not
// grow. The change feed says added, then expunged.
func TestMoveWithinMailbox(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	in := inbox(t, s, u)
	date := time.Date(2021, 5, 6, 7, 8, 9, 0, time.UTC)
	var size int64
	var bodies []int64
	for i := 1; i <= 3; i++ {
		m, err := s.Append(ctx, in.ID, []string{FlagSeen, fmt.Sprintf("kw%d", i)}, date, testMessage(i))
		if err != nil {
			t.Fatal(err)
		}
		size += m.Size
		bodies = append(bodies, m.BodyID)
	}
	if err := s.SetQuota(ctx, u.Address, size); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Copy(ctx, in.ID, UIDs(1), in.ID); !errors.Is(err, ErrOverQuota) {
		t.Fatalf("COPY within at quota: %v, want ErrOverQuota", err)
	}
	before, err := s.MailboxByID(ctx, in.ID)
	if err != nil {
		t.Fatal(err)
	}
	sub := s.Subscribe(in.ID)
	defer sub.Close()

	pairs, err := s.Move(ctx, in.ID, UIDSet{{1, 1}, {3, 3}}, in.ID)
	if err != nil {
		t.Fatalf("MOVE within at quota: %v", err)
	}
	if fmt.Sprint(pairs) != "[{1 4} {3 5}]" {
		t.Fatalf("move pairs %v, want [{1 4} {3 5}]", pairs)
	}
	msgs, err := s.Messages(ctx, in.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range msgs {
		got = append(got, fmt.Sprintf("%d %v %d", m.UID, m.Flags, m.BodyID))
		if !m.InternalDate.Equal(date) {
			t.Errorf("uid %d date %v, want %v", m.UID, m.InternalDate, date)
		}
	}
	want := []string{
		fmt.Sprintf("2 [\\Seen kw2] %d", bodies[1]),
		fmt.Sprintf("4 [\\Seen kw1] %d", bodies[0]),
		fmt.Sprintf("5 [\\Seen kw3] %d", bodies[2]),
	}
	if !slices.Equal(got, want) {
		t.Fatalf("after MOVE within: %q, want %q", got, want)
	}
	after, err := s.MailboxByID(ctx, in.ID)
	if err != nil {
		t.Fatal(err)
	}
	if after.UIDNext != 6 || after.HighestModSeq <= before.HighestModSeq {
		t.Errorf("mailbox after MOVE within: UIDNEXT %d, HIGHESTMODSEQ %d (was %d)", after.UIDNext, after.HighestModSeq, before.HighestModSeq)
	}
	if used, _, err := s.Usage(ctx, u.ID); err != nil || used != size {
		t.Errorf("usage %d (%v), want %d", used, err, size)
	}

	select {
	case <-sub.Pending:
	case <-time.After(5 * time.Second):
		t.Fatal("no change feed wake-up")
	}
	_, changes := sub.Get()
	var feed []string
	for _, c := range changes {
		feed = append(feed, fmt.Sprintf("%d:%d", c.Kind, c.UID))
	}
	wantFeed := []string{
		fmt.Sprintf("%d:4", ChangeAdded), fmt.Sprintf("%d:5", ChangeAdded),
		fmt.Sprintf("%d:1", ChangeExpunged), fmt.Sprintf("%d:3", ChangeExpunged),
	}
	if !slices.Equal(feed, wantFeed) {
		t.Errorf("change feed %q, want %q", feed, wantFeed)
	}
	// QRESYNC sees the originals as expunged.
	var expunged int
	if err := s.readRow(ctx, "SELECT count(*) FROM expunged WHERE mailbox_id = ? AND uid IN (1, 3)", in.ID).Scan(&expunged); err != nil || expunged != 2 {
		t.Errorf("%d expunged rows for the originals (%v), want 2", expunged, err)
	}
	s.sweepNow(t)
	for _, id := range bodies {
		if _, err := s.ReadBody(ctx, id); err != nil {
			t.Errorf("body %d after MOVE within: %v", id, err)
		}
	}
	if n := unreferenced(t, s); n != 0 {
		t.Errorf("%d unreferenced rows", n)
	}
}
