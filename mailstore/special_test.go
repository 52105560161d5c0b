package mailstore

import (
	"context"
	"errors"
	"testing"
)

// deliverJunk delivers a message to the users' \Junk mailboxes.
func deliverJunk(t *testing.T, s *Store, n int, to ...string) *Delivery {
	t.Helper()
	env := Envelope{Sender: "a@remote.test", SpecialUse: `\Junk`}
	for _, a := range to {
		env.Recipients = append(env.Recipients, Recipient{Address: a})
	}
	d, err := s.DeliverEnvelope(context.Background(), env, testMessage(n))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func mailboxCount(t *testing.T, s *Store, mailboxID int64) uint32 {
	t.Helper()
	st, err := s.Status(context.Background(), mailboxID)
	if err != nil {
		t.Fatal(err)
	}
	return st.Messages
}

// Delivery by special use finds the mailbox with the attribute whatever
// its name, else the one of the usual name, else creates it (with the
// attribute, subscribed) in the delivery's transaction.
func TestDeliverBySpecialUse(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()

	t.Run("default mailbox", func(t *testing.T) {
		u := addUser(t, s, "u1@example.test")
		d := deliverJunk(t, s, 1, u.Address)
		junk, err := s.MailboxByName(ctx, u.ID, "Junk")
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Stored) != 1 || d.Stored[0].MailboxID != junk.ID || d.Stored[0].Mailbox != "Junk" || d.Stored[0].UID != 1 {
			t.Fatalf("stored %+v, Junk is %d", d.Stored, junk.ID)
		}
		if n := mailboxCount(t, s, junk.ID); n != 1 {
			t.Errorf("Junk has %d messages", n)
		}
		if n := mailboxCount(t, s, inbox(t, s, u).ID); n != 0 {
			t.Errorf("INBOX has %d messages", n)
		}
	})
	t.Run("created when missing", func(t *testing.T) {
		u := addUser(t, s, "u2@example.test")
		if err := s.DeleteMailbox(ctx, u.ID, "Junk"); err != nil {
			t.Fatal(err)
		}
		if err := s.SetSubscribed(ctx, u.ID, "Junk", false); err != nil {
			t.Fatal(err)
		}
		d := deliverJunk(t, s, 2, u.Address)
		junk, err := s.MailboxByName(ctx, u.ID, "Junk")
		if err != nil {
			t.Fatal(err)
		}
		if junk.SpecialUse != `\Junk` || !junk.Subscribed || junk.NoSelect || len(d.Stored) != 1 || d.Stored[0].MailboxID != junk.ID {
			t.Fatalf("mailbox %+v, stored %+v", junk, d.Stored)
		}
		deliverJunk(t, s, 3, u.Address)
		if n := mailboxCount(t, s, junk.ID); n != 2 {
			t.Errorf("Junk has %d messages, want 2 (one mailbox)", n)
		}
	})
	t.Run("attribute on another name", func(t *testing.T) {
		u := addUser(t, s, "u3@example.test")
		if err := s.DeleteMailbox(ctx, u.ID, "Junk"); err != nil {
			t.Fatal(err)
		}
		spam, err := s.CreateMailbox(ctx, u.ID, "Spam", `\Junk`)
		if err != nil {
			t.Fatal(err)
		}
		d := deliverJunk(t, s, 4, u.Address)
		if len(d.Stored) != 1 || d.Stored[0].MailboxID != spam.ID || d.Stored[0].Mailbox != "Spam" {
			t.Fatalf("stored %+v, Spam is %d", d.Stored, spam.ID)
		}
		if _, err := s.MailboxByName(ctx, u.ID, "Junk"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Junk created beside Spam: %v", err)
		}
	})
	t.Run("usual name without attribute", func(t *testing.T) {
		u := addUser(t, s, "u4@example.test")
		if err := s.DeleteMailbox(ctx, u.ID, "Junk"); err != nil {
			t.Fatal(err)
		}
		own, err := s.CreateMailbox(ctx, u.ID, "Junk", "")
		if err != nil {
			t.Fatal(err)
		}
		d := deliverJunk(t, s, 5, u.Address)
		if len(d.Stored) != 1 || d.Stored[0].MailboxID != own.ID {
			t.Fatalf("stored %+v, Junk is %d", d.Stored, own.ID)
		}
	})
	t.Run("noselect placeholder", func(t *testing.T) {
		u := addUser(t, s, "u5@example.test")
		if _, err := s.CreateMailbox(ctx, u.ID, "Junk/old", ""); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteMailbox(ctx, u.ID, "Junk"); err != nil {
			t.Fatal(err) // keeps the name as \Noselect
		}
		d := deliverJunk(t, s, 6, u.Address)
		junk, err := s.MailboxByName(ctx, u.ID, "Junk")
		if err != nil {
			t.Fatal(err)
		}
		if junk.NoSelect || junk.SpecialUse != `\Junk` || len(d.Stored) != 1 || d.Stored[0].MailboxID != junk.ID {
			t.Fatalf("mailbox %+v, stored %+v", junk, d.Stored)
		}
	})
	t.Run("quota", func(t *testing.T) {
		u := addUser(t, s, "u6@example.test")
		if err := s.SetQuota(ctx, u.Address, int64(len(testMessage(7)))); err != nil {
			t.Fatal(err)
		}
		deliverJunk(t, s, 7, u.Address)
		env := Envelope{Recipients: []Recipient{{Address: u.Address}}, SpecialUse: `\Junk`}
		if _, err := s.DeliverEnvelope(ctx, env, testMessage(8)); !errors.Is(err, ErrOverQuota) {
			t.Errorf("over quota into Junk: %v", err)
		}
	})
	t.Run("refused uses", func(t *testing.T) {
		u := addUser(t, s, "u7@example.test")
		for _, use := range []string{`\All`, `\Flagged`, `\Bogus`, "Junk"} {
			env := Envelope{Recipients: []Recipient{{Address: u.Address}}, SpecialUse: use}
			if _, err := s.DeliverEnvelope(ctx, env, testMessage(9)); !errors.Is(err, ErrInvalidName) {
				t.Errorf("special use %q: %v", use, err)
			}
		}
	})
}
