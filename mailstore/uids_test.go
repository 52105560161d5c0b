package mailstore

import (
	"context"
	"slices"
	"testing"
	"time"
)

func TestMailboxUIDs(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	in := inbox(t, s, u)
	uids, unseen, err := s.MailboxUIDs(ctx, in.ID)
	if err != nil || len(uids) != 0 || unseen != 0 {
		t.Fatalf("empty mailbox: %v %d %v", uids, unseen, err)
	}
	for i := 0; i < 6; i++ {
		var flags []string
		if i < 2 {
			flags = []string{FlagSeen}
		}
		if _, err := s.Append(ctx, in.ID, flags, time.Time{}, testMessage(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.StoreFlags(ctx, in.ID, UIDs(2, 4), FlagsAdd, []string{FlagDeleted}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Expunge(ctx, in.ID, nil); err != nil {
		t.Fatal(err)
	}
	uids, unseen, err = s.MailboxUIDs(ctx, in.ID)
	if err != nil || !slices.Equal(uids, []uint32{1, 3, 5, 6}) || unseen != 3 {
		t.Fatalf("MailboxUIDs = %v, first unseen %d, %v; want [1 3 5 6], 3", uids, unseen, err)
	}
	msgs, err := s.Messages(ctx, in.ID, nil)
	if err != nil || len(msgs) != len(uids) {
		t.Fatalf("Messages: %d, %v", len(msgs), err)
	}
	for i, m := range msgs {
		if m.UID != uids[i] {
			t.Fatalf("Messages UID %d at %d, MailboxUIDs %d", m.UID, i, uids[i])
		}
	}
	if f, err := s.FirstUnseen(ctx, in.ID); err != nil || f != 3 {
		t.Fatalf("FirstUnseen = %d, %v; want 3", f, err)
	}
	if _, err := s.StoreFlags(ctx, in.ID, nil, FlagsAdd, []string{FlagSeen}); err != nil {
		t.Fatal(err)
	}
	if f, err := s.FirstUnseen(ctx, in.ID); err != nil || f != 0 {
		t.Fatalf("FirstUnseen with all seen = %d, %v; want 0", f, err)
	}
}
