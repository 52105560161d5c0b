package mailstore

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// summedUsage is what the usage counter must equal: the sizes of all the
// user's messages.
func summedUsage(t *testing.T, s *Store, userID int64) int64 {
	t.Helper()
	var used int64
	if err := s.readRow(context.Background(), `SELECT coalesce(sum(m.size), 0) FROM messages m
		JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.user_id = ?`, userID).Scan(&used); err != nil {
		t.Fatal(err)
	}
	return used
}

// checkUsage fails unless each user's counter equals the sum of its
// messages (and is not zero when want says so).
func checkUsage(t *testing.T, s *Store, step string, users ...User) {
	t.Helper()
	for _, u := range users {
		used, _, err := s.Usage(context.Background(), u.ID)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if sum := summedUsage(t, s, u.ID); used != sum {
			t.Errorf("%s: %s counter %d, messages sum to %d", step, u.Address, used, sum)
		}
	}
}

// The usage counter follows every way messages come and go.
func TestUsageCounter(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	v := addUser(t, s, "v@example.test")
	in := inbox(t, s, u)
	for i := 0; i < 5; i++ {
		if _, err := s.Deliver(ctx, "x@remote.test", []string{u.Address, v.Address}, testMessage(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.DeliverEnvelope(ctx, Envelope{Recipients: []Recipient{{Address: u.Address}}, SpecialUse: `\Junk`}, testMessage(9)); err != nil {
		t.Fatal(err)
	}
	checkUsage(t, s, "deliveries", u, v)
	if used, _, _ := s.Usage(ctx, u.ID); used == 0 {
		t.Fatal("nothing counted")
	}
	if _, err := s.Append(ctx, in.ID, []string{FlagSeen}, time.Time{}, []byte("Subject: appended\r\n\r\nlonger body than the others\r\n")); err != nil {
		t.Fatal(err)
	}
	checkUsage(t, s, "append", u)
	work, err := s.CreateMailbox(ctx, u.ID, "Work/Old", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Copy(ctx, in.ID, UIDs(1, 2, 6), work.ID); err != nil {
		t.Fatal(err)
	}
	checkUsage(t, s, "copy", u)
	vin := inbox(t, s, v)
	if _, err := s.Copy(ctx, in.ID, UIDs(3), vin.ID); err != nil {
		t.Fatal(err)
	}
	checkUsage(t, s, "copy to another user", u, v)
	if _, err := s.Move(ctx, in.ID, UIDs(3, 4), work.ID); err != nil {
		t.Fatal(err)
	}
	checkUsage(t, s, "move", u)
	if _, err := s.Move(ctx, vin.ID, UIDs(1), in.ID); err != nil {
		t.Fatal(err)
	}
	checkUsage(t, s, "move to another user", u, v)
	if _, err := s.StoreFlags(ctx, in.ID, UIDs(1, 5), FlagsAdd, []string{FlagDeleted}); err != nil {
		t.Fatal(err)
	}
	if gone, err := s.Expunge(ctx, in.ID, nil); err != nil || len(gone) != 2 {
		t.Fatalf("expunge: %v %v", gone, err)
	}
	checkUsage(t, s, "expunge", u)
	if _, err := s.DeleteMessages(ctx, in.ID, []uint32{2}); err != nil {
		t.Fatal(err)
	}
	checkUsage(t, s, "delete messages", u)
	if err := s.RenameMailbox(ctx, u.ID, "INBOX", "Saved"); err != nil {
		t.Fatal(err)
	}
	checkUsage(t, s, "rename INBOX", u)
	// A parent with children keeps its name; its messages go.
	if _, err := s.Copy(ctx, work.ID, UIDs(1), mustMailbox(t, s, u, "Work").ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMailbox(ctx, u.ID, "Work"); err != nil {
		t.Fatal(err)
	}
	checkUsage(t, s, "delete mailbox with children", u)
	if err := s.DeleteMailbox(ctx, u.ID, "Work/Old"); err != nil {
		t.Fatal(err)
	}
	checkUsage(t, s, "delete mailbox", u)
	if err := s.DeleteMailbox(ctx, u.ID, "Saved"); err != nil {
		t.Fatal(err)
	}
	checkUsage(t, s, "delete another mailbox", u)
	if used, _, _ := s.Usage(ctx, u.ID); used == 0 {
		t.Fatal("nothing left to count before deleting the user") // Junk still has one
	}
	if err := s.DeleteUser(ctx, u.Address); err != nil {
		t.Fatal(err)
	}
	checkUsage(t, s, "delete the other user", v)
	w := addUser(t, s, "w@example.test")
	if used, _, err := s.Usage(ctx, w.ID); err != nil || used != 0 {
		t.Errorf("new user: %d %v", used, err)
	}
	if err := s.IntegrityCheck(ctx); err != nil {
		t.Fatal(err)
	}
}

func mustMailbox(t *testing.T, s *Store, u User, name string) Mailbox {
	t.Helper()
	mb, err := s.MailboxByName(context.Background(), u.ID, name)
	if err != nil {
		t.Fatal(err)
	}
	return mb
}

// Migrating to schema 7 fills the counter from the messages there.
func TestUsageMigration(t *testing.T) {
	sqliteOnly(t)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "postern.db")
	db := oldSchemaDB(t, path, 6,
		"INSERT INTO domains (name) VALUES ('example.test')",
		"INSERT INTO users (address, password_hash, created) VALUES ('u@example.test', 'x', 0), ('v@example.test', 'x', 0), ('e@example.test', 'x', 0)",
		"INSERT INTO mailboxes (user_id, name, uidvalidity, uidnext) VALUES (1, 'INBOX', 7, 3), (1, 'Other', 8, 2), (2, 'INBOX', 9, 2), (3, 'INBOX', 10, 1)",
		"INSERT INTO bodies (sha256, size) VALUES (x'01', 100), (x'02', 1000)",
		"INSERT INTO messages (mailbox_id, uid, modseq, internal_date, size, body_id) VALUES (1, 1, 1, 0, 100, 1), (1, 2, 1, 0, 1000, 2), (2, 1, 1, 0, 1000, 2), (3, 1, 1, 0, 100, 1)",
	)
	db.Close()
	s := openMigrated(t, path)
	for id, want := range map[int64]int64{1: 2100, 2: 100, 3: 0} {
		if used, _, err := s.Usage(ctx, id); err != nil || used != want {
			t.Errorf("user %d: usage %d (%v), want %d", id, used, err, want)
		}
	}
	if _, err := s.DeleteMessages(ctx, 1, []uint32{2}); err != nil {
		t.Fatal(err)
	}
	if used, _, _ := s.Usage(ctx, 1); used != 1100 {
		t.Errorf("after a delete: %d, want 1100", used)
	}
}
