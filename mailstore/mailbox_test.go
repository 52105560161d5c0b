package mailstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

func mailboxNames(t *testing.T, s *Store, u User) string {
	t.Helper()
	boxes, err := s.Mailboxes(context.Background(), u.ID)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mb := range boxes {
		n := mb.Name
		if mb.NoSelect {
			n += "(noselect)"
		}
		names = append(names, n)
	}
	return strings.Join(names, " ")
}

func TestMailboxHierarchy(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	if _, err := s.CreateMailbox(ctx, u.ID, "Work/2026/Q4", ""); err != nil {
		t.Fatal(err)
	}
	if got, want := mailboxNames(t, s, u), "Archive Drafts INBOX Junk Sent Trash Work Work/2026 Work/2026/Q4"; got != want {
		t.Fatalf("after create: %s, want %s", got, want)
	}
	for _, bad := range []string{"", "a//b", "/a", "a/", "a*", "a%b", "a\x01"} {
		if _, err := s.CreateMailbox(ctx, u.ID, bad, ""); !errors.Is(err, ErrInvalidName) {
			t.Errorf("create %q: %v, want ErrInvalidName", bad, err)
		}
	}
	if _, err := s.CreateMailbox(ctx, u.ID, "inbox", ""); !errors.Is(err, ErrExists) {
		t.Errorf("create inbox: %v, want ErrExists", err)
	}
	wq, err := s.MailboxByName(ctx, u.ID, "Work/2026/Q4")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, wq.ID, []string{FlagSeen}, time.Time{}, testMessage(1)); err != nil {
		t.Fatal(err)
	}
	// Rename moves children along and keeps messages and UIDVALIDITY.
	if err := s.RenameMailbox(ctx, u.ID, "Work", "Projects/Old"); err != nil {
		t.Fatal(err)
	}
	if got, want := mailboxNames(t, s, u), "Archive Drafts INBOX Junk Projects Projects/Old Projects/Old/2026 Projects/Old/2026/Q4 Sent Trash"; got != want {
		t.Fatalf("after rename: %s, want %s", got, want)
	}
	moved, err := s.MailboxByName(ctx, u.ID, "Projects/Old/2026/Q4")
	if err != nil {
		t.Fatal(err)
	}
	if moved.ID != wq.ID || moved.UIDValidity != wq.UIDValidity {
		t.Errorf("renamed mailbox %+v, was %+v", moved, wq)
	}
	if err := s.RenameMailbox(ctx, u.ID, "Projects", "Projects/Sub"); !errors.Is(err, ErrInvalidName) {
		t.Errorf("rename into own child: %v", err)
	}
	if err := s.RenameMailbox(ctx, u.ID, "Sent", "Trash"); !errors.Is(err, ErrExists) {
		t.Errorf("rename onto existing: %v", err)
	}
	if err := s.RenameMailbox(ctx, u.ID, "Nope", "Other"); !errors.Is(err, ErrNotFound) {
		t.Errorf("rename missing: %v", err)
	}
	// Delete with children keeps the name as \Noselect, without messages.
	if err := s.DeleteMailbox(ctx, u.ID, "Projects/Old/2026"); err != nil {
		t.Fatal(err)
	}
	if got := mailboxNames(t, s, u); !strings.Contains(got, "Projects/Old/2026(noselect) Projects/Old/2026/Q4") {
		t.Fatalf("after delete of parent: %s", got)
	}
	if err := s.DeleteMailbox(ctx, u.ID, "Projects/Old/2026"); !errors.Is(err, ErrHasChildren) {
		t.Errorf("delete noselect with children: %v", err)
	}
	if err := s.DeleteMailbox(ctx, u.ID, "Projects/Old/2026/Q4"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMailbox(ctx, u.ID, "INBOX"); err == nil {
		t.Error("INBOX deleted")
	}
	// Re-creating a deleted name gives a new UIDVALIDITY.
	again, err := s.CreateMailbox(ctx, u.ID, "Projects/Old/2026/Q4", "")
	if err != nil {
		t.Fatal(err)
	}
	if again.UIDValidity == wq.UIDValidity {
		t.Errorf("re-created mailbox reuses UIDVALIDITY %d", again.UIDValidity)
	}
	// Creating a \Noselect name makes it a real mailbox.
	parent, err := s.CreateMailbox(ctx, u.ID, "Projects/Old/2026", "")
	if err != nil || parent.NoSelect {
		t.Fatalf("create over noselect: %+v %v", parent, err)
	}
}

func TestRenameInbox(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	in := inbox(t, s, u)
	if _, err := s.CreateMailbox(ctx, u.ID, "INBOX/Child", ""); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := s.Append(ctx, in.ID, []string{"kw"}, time.Time{}, testMessage(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RenameMailbox(ctx, u.ID, "inbox", "Old Mail"); err != nil {
		t.Fatal(err)
	}
	st, err := s.Status(ctx, in.ID)
	if err != nil {
		t.Fatal(err)
	}
	if st.Messages != 0 || st.UIDNext != 4 {
		t.Errorf("INBOX after rename: %+v, want empty with UIDNEXT 4", st)
	}
	old, err := s.MailboxByName(ctx, u.ID, "Old Mail")
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := s.Messages(ctx, old.ID, nil)
	if err != nil || len(msgs) != 3 || !msgs[0].HasFlag("kw") {
		t.Fatalf("new mailbox holds %+v (%v)", msgs, err)
	}
	if _, err := s.MailboxByName(ctx, u.ID, "INBOX/Child"); err != nil {
		t.Errorf("INBOX's child moved: %v", err)
	}
}

func TestCopyMoveExpunge(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	in := inbox(t, s, u)
	arch, err := s.MailboxByName(ctx, u.ID, "Archive")
	if err != nil {
		t.Fatal(err)
	}
	date := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	for i := 0; i < 4; i++ {
		if _, err := s.Append(ctx, in.ID, []string{FlagFlagged, "tag"}, date, testMessage(i)); err != nil {
			t.Fatal(err)
		}
	}
	pairs, err := s.Copy(ctx, in.ID, UIDSet{{1, 2}}, arch.ID)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(pairs) != "[{1 1} {2 2}]" {
		t.Errorf("copy pairs %v", pairs)
	}
	pairs, err = s.Move(ctx, in.ID, UIDSet{{3, 0}}, arch.ID)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(pairs) != "[{3 3} {4 4}]" {
		t.Errorf("move pairs %v", pairs)
	}
	inMsgs, _ := s.Messages(ctx, in.ID, nil)
	archMsgs, _ := s.Messages(ctx, arch.ID, nil)
	if len(inMsgs) != 2 || len(archMsgs) != 4 {
		t.Fatalf("after copy+move: inbox %d, archive %d", len(inMsgs), len(archMsgs))
	}
	for _, m := range archMsgs {
		if !m.InternalDate.Equal(date) || !m.HasFlag(FlagFlagged) || !m.HasFlag("tag") {
			t.Errorf("copied message lost date or flags: %+v", m)
		}
	}
	// EXPUNGE removes only \Deleted messages; UID EXPUNGE only those in the set.
	if _, err := s.StoreFlags(ctx, arch.ID, UIDSet{{1, 3}}, FlagsAdd, []string{FlagDeleted}); err != nil {
		t.Fatal(err)
	}
	gone, err := s.Expunge(ctx, arch.ID, UIDs(2, 4))
	if err != nil || fmt.Sprint(gone) != "[2]" {
		t.Fatalf("uid expunge: %v %v", gone, err)
	}
	gone, err = s.Expunge(ctx, arch.ID, nil)
	if err != nil || fmt.Sprint(gone) != "[1 3]" {
		t.Fatalf("expunge: %v %v", gone, err)
	}
	st, _ := s.Status(ctx, arch.ID)
	if st.Messages != 1 || st.Unseen != 1 {
		t.Errorf("status %+v", st)
	}
}

func TestChangeFeed(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	in := inbox(t, s, u)
	sub := s.Subscribe(in.ID)
	defer sub.Close()
	if _, err := s.Deliver(ctx, "", []string{u.Address}, testMessage(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StoreFlags(ctx, in.ID, UIDs(1), FlagsAdd, []string{FlagSeen}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteMessages(ctx, in.ID, []uint32{1}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sub.Pending:
	case <-time.After(5 * time.Second):
		t.Fatal("no wake-up")
	}
	overflow, changes := sub.Get()
	var kinds []ChangeKind
	for _, c := range changes {
		kinds = append(kinds, c.Kind)
		if c.UID != 1 || c.MailboxID != in.ID {
			t.Errorf("change %+v", c)
		}
	}
	if overflow || fmt.Sprint(kinds) != fmt.Sprint([]ChangeKind{ChangeAdded, ChangeFlags, ChangeExpunged}) {
		t.Fatalf("changes %+v (overflow %v)", changes, overflow)
	}
	// A subscriber that never reads does not block writers, and learns it
	// missed changes.
	lazy := s.Subscribe(in.ID)
	defer lazy.Close()
	for i := 0; i < 3; i++ {
		if _, err := s.Deliver(ctx, "", []string{u.Address}, testMessage(i)); err != nil {
			t.Fatal(err)
		}
	}
	lazy.mu.Lock()
	lazy.changes = make([]Change, maxPendingChanges)
	lazy.mu.Unlock()
	if _, err := s.Deliver(ctx, "", []string{u.Address}, testMessage(9)); err != nil {
		t.Fatal(err)
	}
	if overflow, changes := lazy.Get(); !overflow || len(changes) != 0 {
		t.Errorf("full subscriber: overflow %v, %d changes", overflow, len(changes))
	}
}

func TestLargeBodyStreams(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	var msg bytes.Buffer
	msg.WriteString("Subject: big\r\n\r\n")
	for msg.Len() < 3*chunkSize+1234 {
		fmt.Fprintf(&msg, "line %d of a long message\r\n", msg.Len())
	}
	m, err := s.Append(ctx, inbox(t, s, u).ID, nil, time.Time{}, msg.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.OpenBody(ctx, m.BodyID)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Size() != int64(msg.Len()) || m.Size != int64(msg.Len()) {
		t.Fatalf("size %d/%d, want %d", b.Size(), m.Size, msg.Len())
	}
	got, err := io.ReadAll(b)
	if err != nil || !bytes.Equal(got, msg.Bytes()) {
		t.Fatalf("streamed body differs (%v)", err)
	}
	off := int64(chunkSize - 10)
	if _, err := b.Seek(off, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	part := make([]byte, 40)
	if _, err := io.ReadFull(b, part); err != nil || !bytes.Equal(part, msg.Bytes()[off:off+40]) {
		t.Fatalf("read across a chunk boundary: %q (%v)", part, err)
	}
}

func TestLineEndsBecomeCRLF(t *testing.T) {
	for in, want := range map[string]string{
		"a\r\nb\r\n":   "a\r\nb\r\n",
		"a\nb\n":       "a\r\nb\r\n",
		"a\rb\r\n\n":   "a\r\nb\r\n\r\n",
		"":             "",
		"\n":           "\r\n",
		"no newline":   "no newline\r\n",
		"a\r\nend":     "a\r\nend\r\n",
		"mixed\r\nx\n": "mixed\r\nx\r\n",
		"\r":           "\r\n",
		"a\r":          "a\r\n",
		"\r\r\n":       "\r\n\r\n",
		"\n\r":         "\r\n\r\n",
		"a\n\rb\r\n":   "a\r\n\r\nb\r\n",
	} {
		if got := string(toCRLF([]byte(in))); got != want {
			t.Errorf("toCRLF(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestAliasesAndQueue(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	a := addUser(t, s, "a@example.test")
	b := addUser(t, s, "b@example.test")
	if err := s.AddAlias(ctx, "team@example.test", "a@example.test", "b@example.test"); err != nil {
		t.Fatal(err)
	}
	if err := s.AddAlias(ctx, "all@example.test", "team@example.test", "far@remote.test", "a@example.test"); err != nil {
		t.Fatal(err)
	}
	if err := s.AddAlias(ctx, "x@example.test", "ghost@example.test"); !errors.Is(err, ErrNoSuchUser) {
		t.Errorf("alias to unknown local user: %v", err)
	}
	if err := s.AddAlias(ctx, "a@example.test", "b@example.test"); !errors.Is(err, ErrExists) {
		t.Errorf("alias shadowing a user: %v", err)
	}
	res, err := s.Resolve(ctx, "ALL@example.test")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Users) != 2 || fmt.Sprint(res.Remote) != "[far@remote.test]" {
		t.Fatalf("resolve all@: %+v", res)
	}
	d, err := s.DeliverEnvelope(ctx, Envelope{Sender: "s@example.test", EnvID: "env1", Ret: "HDRS",
		Recipients: []Recipient{{Address: "all@example.test", Notify: "FAILURE"}, {Address: "nobody@example.test"}, {Address: "out@other.test"}}},
		testMessage(1))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Stored) != 2 || len(d.Queued) != 2 || len(d.Failed) != 1 || !errors.Is(d.Failed[0].Err, ErrNoSuchUser) {
		t.Fatalf("delivery %+v", d)
	}
	for _, u := range []User{a, b} {
		if st, _ := s.Status(ctx, inbox(t, s, u).ID); st.Messages != 1 {
			t.Errorf("%s has %d messages, want 1 (alias targets reached twice must get one copy)", u.Address, st.Messages)
		}
	}
	q, err := s.Queue(ctx, time.Time{}, 0)
	if err != nil || len(q) != 2 {
		t.Fatalf("queue %+v %v", q, err)
	}
	if q[0].Recipient != "far@remote.test" || q[0].Notify != "FAILURE" || q[0].EnvID != "env1" || q[0].Ret != "HDRS" || q[0].Domain != "remote.test" {
		t.Errorf("queue entry %+v", q[0])
	}
	body, err := s.ReadBody(ctx, q[0].BodyID)
	if err != nil || !bytes.Equal(body, testMessage(1)) {
		t.Fatalf("queued body %q %v", body, err)
	}
	later := time.Now().Add(time.Hour)
	if err := s.QueueDefer(ctx, q[0].ID, later, "451 try later", true); err != nil {
		t.Fatal(err)
	}
	all, _ := s.Queue(ctx, time.Time{}, 0)
	for _, e := range all {
		if e.DelayWarned != (e.ID == q[0].ID) {
			t.Errorf("entry %d delay warned = %v", e.ID, e.DelayWarned)
		}
	}
	due, _ := s.Queue(ctx, time.Now(), 0)
	if len(due) != 1 || due[0].ID != q[1].ID {
		t.Fatalf("due after defer: %+v", due)
	}
	if err := s.QueueRetry(ctx, q[0].ID); err != nil {
		t.Fatal(err)
	}
	due, _ = s.Queue(ctx, time.Now().Add(time.Second), 0)
	if len(due) != 2 || due[0].Attempts+due[1].Attempts != 1 {
		t.Fatalf("due after retry: %+v", due)
	}
	// The body outlives the local copies while queue entries need it.
	for _, u := range []User{a, b} {
		if _, err := s.DeleteMessages(ctx, inbox(t, s, u).ID, []uint32{1}); err != nil {
			t.Fatal(err)
		}
	}
	if !s.bodyExists(ctx, q[0].BodyID) {
		t.Fatal("body freed while queued")
	}
	for _, e := range q {
		if err := s.QueueRemove(ctx, e.ID); err != nil {
			t.Fatal(err)
		}
	}
	if s.bodyExists(ctx, q[0].BodyID) {
		t.Fatal("body kept after its last reference")
	}
	// Unknown only: an error, nothing stored.
	if _, err := s.Deliver(ctx, "", []string{"nobody@example.test"}, testMessage(2)); !errors.Is(err, ErrNoSuchUser) {
		t.Errorf("deliver to unknown: %v", err)
	}
	s.sweepNow(t)
	var bodies int
	s.readRow(context.Background(), "SELECT count(*) FROM bodies").Scan(&bodies)
	if bodies != 0 {
		t.Errorf("%d orphan bodies", bodies)
	}
}

func TestQuota(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	v := addUser(t, s, "v@example.test")
	msg := testMessage(1)
	if err := s.SetQuota(ctx, u.Address, int64(len(msg))*2); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, err := s.Deliver(ctx, "", []string{u.Address}, testMessage(i)); err != nil {
			t.Fatal(err)
		}
	}
	d, err := s.Deliver(ctx, "", []string{u.Address, v.Address}, testMessage(3))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Stored) != 1 || d.Stored[0].User != v.Address || len(d.Failed) != 1 || !errors.Is(d.Failed[0].Err, ErrOverQuota) {
		t.Fatalf("delivery over quota: %+v", d)
	}
	used, quota, err := s.Usage(ctx, u.ID)
	if err != nil || used != 2*int64(len(msg)) || quota != 2*int64(len(msg)) {
		t.Errorf("usage %d/%d %v", used, quota, err)
	}
	if _, err := s.Append(ctx, inbox(t, s, u).ID, nil, time.Time{}, msg); !errors.Is(err, ErrOverQuota) {
		t.Errorf("append over quota: %v", err)
	}
}

// A delivery takes the INBOX's next UID and a new MODSEQ, also when
// several share a commit, and a user disabled after RCPT resolved the
// address gets nothing while the others get the message.
func TestDeliverTakesUIDsAndSkipsDisabled(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	v := addUser(t, s, "v@example.test")
	var wg sync.WaitGroup
	errs := make([]error, 10)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.Deliver(ctx, "", []string{v.Address}, testMessage(i))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("delivery %d: %v", i, err)
		}
	}
	in := inbox(t, s, v)
	before, err := s.Status(ctx, in.ID)
	if err != nil || before.Messages != 10 || before.UIDNext != 11 {
		t.Fatalf("after 10 deliveries: %+v %v", before, err)
	}
	msgs, err := s.Messages(ctx, in.ID, nil)
	if err != nil || len(msgs) != 10 {
		t.Fatalf("messages: %d %v", len(msgs), err)
	}
	modseqs := map[uint64]bool{}
	for i, m := range msgs {
		if m.UID != uint32(i+1) || m.ModSeq > before.HighestModSeq || modseqs[m.ModSeq] {
			t.Fatalf("message %d: UID %d MODSEQ %d (highest %d, seen %v)", i, m.UID, m.ModSeq, before.HighestModSeq, modseqs)
		}
		modseqs[m.ModSeq] = true
	}

	ru, err := s.Resolve(ctx, u.Address)
	if err != nil {
		t.Fatal(err)
	}
	rv, err := s.Resolve(ctx, v.Address)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetDisabled(ctx, u.Address, true); err != nil {
		t.Fatal(err)
	}
	env := Envelope{Recipients: []Recipient{{Address: u.Address, Resolved: &ru}, {Address: v.Address, Resolved: &rv}}}
	d, err := s.DeliverEnvelope(ctx, env, testMessage(99))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Stored) != 1 || d.Stored[0].User != v.Address || d.Stored[0].UID != 11 ||
		len(d.Failed) != 1 || !errors.Is(d.Failed[0].Err, ErrNoSuchUser) {
		t.Fatalf("delivery with a disabled user: %+v", d)
	}
	after, err := s.Status(ctx, in.ID)
	if err != nil || after.UIDNext != 12 || after.HighestModSeq <= before.HighestModSeq {
		t.Fatalf("after it: %+v %v (before %+v)", after, err, before)
	}
	if st, err := s.Status(ctx, inbox(t, s, u).ID); err != nil || st.Messages != 0 || st.UIDNext != 1 {
		t.Fatalf("disabled user's INBOX: %+v %v", st, err)
	}
	env.Recipients = env.Recipients[:1]
	if _, err := s.DeliverEnvelope(ctx, env, testMessage(100)); !errors.Is(err, ErrNoSuchUser) {
		t.Fatalf("delivery to the disabled user alone: %v", err)
	}
}

func TestRemoteLocalPartKeepsItsCase(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	addUser(t, s, "a@example.test")
	if err := s.AddAlias(ctx, "fwd@example.test", "Far.Person@Remote.TEST", "A@example.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Deliver(ctx, "", []string{"FWD@example.test", "Mixed.Case@Other.Test"}, testMessage(1)); err != nil {
		t.Fatal(err)
	}
	q, err := s.Queue(ctx, time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range q {
		got = append(got, e.Recipient+" "+e.Domain)
	}
	if fmt.Sprint(got) != "[Far.Person@remote.test remote.test Mixed.Case@other.test other.test]" {
		t.Errorf("queued recipients %v", got)
	}
	aliases, _ := s.Aliases(ctx)
	if len(aliases) != 1 || fmt.Sprint(aliases[0].Targets) != "[Far.Person@remote.test a@example.test]" {
		t.Errorf("alias targets %+v", aliases)
	}
	if err := s.DeleteAlias(ctx, "fwd@example.test", "far.person@remote.test"); err != nil {
		t.Errorf("delete remote target by another spelling: %v", err)
	}
}

// IDs of deleted users, mailboxes and bodies never name new ones: sessions
// and caches hold them, and a reused body ID would show one user another
// user's message.
func TestIDsAreNotReused(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	alice := addUser(t, s, "alice@example.test")
	bob := addUser(t, s, "bob@example.test")
	in := inbox(t, s, alice)
	m, err := s.Append(ctx, in.ID, nil, time.Time{}, []byte("Subject: for alice\r\n\r\nprivate\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteMessages(ctx, in.ID, []uint32{m.UID}); err != nil {
		t.Fatal(err)
	}
	d, err := s.Deliver(ctx, "", []string{bob.Address}, []byte("Subject: for bob\r\n\r\nsecret\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	msgs, _ := s.Messages(ctx, d.Stored[0].MailboxID, nil)
	if msgs[0].BodyID == m.BodyID {
		t.Fatalf("bob's new message reuses the body ID %d of alice's expunged one", m.BodyID)
	}
	if _, err := s.OpenBody(ctx, m.BodyID); !errors.Is(err, ErrNotFound) {
		t.Errorf("the expunged body still opens: %v", err)
	}

	tmp, err := s.CreateMailbox(ctx, alice.ID, "Tmp", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMailbox(ctx, alice.ID, "Tmp"); err != nil {
		t.Fatal(err)
	}
	work, err := s.CreateMailbox(ctx, bob.ID, "Work", "")
	if err != nil {
		t.Fatal(err)
	}
	if work.ID == tmp.ID {
		t.Fatalf("bob's new mailbox reuses the ID %d of alice's deleted one", tmp.ID)
	}

	if err := s.DeleteUser(ctx, bob.Address); err != nil {
		t.Fatal(err)
	}
	carol := addUser(t, s, "carol@example.test")
	if carol.ID == bob.ID {
		t.Fatalf("a new user reuses the ID %d of a deleted one", bob.ID)
	}
}

// A mailbox remembers a bounded number of keywords: clients cannot grow
// it without end by setting and clearing new ones.
func TestMailboxKeywordLimit(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	mb := inbox(t, s, u)
	m, err := s.Append(ctx, mb.ID, nil, time.Time{}, testMessage(1))
	if err != nil {
		t.Fatal(err)
	}
	for round := 0; ; round++ {
		var kws []string
		for i := 0; i < 32; i++ {
			kws = append(kws, fmt.Sprintf("k%d_%d", round, i))
		}
		_, err := s.StoreFlags(ctx, mb.ID, UIDs(m.UID), FlagsAdd, kws)
		if errors.Is(err, ErrLimit) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.StoreFlags(ctx, mb.ID, UIDs(m.UID), FlagsRemove, kws); err != nil {
			t.Fatal(err)
		}
		if round > maxMailboxKeywords {
			t.Fatal("no limit on a mailbox's keywords")
		}
	}
	now, _ := s.MailboxByID(ctx, mb.ID)
	if len(now.Keywords) > maxMailboxKeywords {
		t.Errorf("mailbox has %d keywords", len(now.Keywords))
	}
	msgs, _ := s.Messages(ctx, mb.ID, nil)
	if len(msgs[0].Flags) != 0 {
		t.Errorf("the refused STORE changed the message: %v", msgs[0].Flags)
	}
	// Keywords the mailbox knows still work.
	if _, err := s.StoreFlags(ctx, mb.ID, UIDs(m.UID), FlagsAdd, []string{"k0_1"}); err != nil {
		t.Errorf("known keyword refused: %v", err)
	}
}

// The sorted matcher agrees with UIDSet.Contains on random sets.
func TestUIDMatcherAgreesWithContains(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 2000; i++ {
		var set UIDSet
		if i%50 != 0 { // sometimes nil: everything
			set = UIDSet{}
			for j := rnd.IntN(6); j > 0; j-- {
				a, b := uint32(rnd.IntN(40)), uint32(rnd.IntN(40))
				if rnd.IntN(8) == 0 {
					b = 0 // "*"
				}
				if b != 0 && a > b {
					a, b = b, a
				}
				set = append(set, UIDRange{a, b})
			}
		}
		m := newUIDMatcher(set)
		for uid := uint32(0); uid < 45; uid++ {
			if m.contains(uid) != set.Contains(uid) {
				t.Fatalf("set %v uid %d: matcher %v, Contains %v", set, uid, m.contains(uid), set.Contains(uid))
			}
		}
	}
}

// A report of recipients that failed at commit is stored in the same
// commit as the delivery: to a local sender's INBOX (whatever its quota),
// or queued with the null sender for a remote one.
func TestDeliveryReportInSameCommit(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	alice := addUser(t, s, "alice@example.test")
	bob := addUser(t, s, "bob@example.test")
	carol := addUser(t, s, "carol@example.test")
	if err := s.SetQuota(ctx, carol.Address, 10); err != nil {
		t.Fatal(err)
	}
	if err := s.SetQuota(ctx, alice.Address, 10); err != nil { // full too: reports still arrive
		t.Fatal(err)
	}
	var seen []string
	report := func(failed []RecipientError) []byte {
		for _, f := range failed {
			seen = append(seen, f.Recipient)
		}
		return []byte("Subject: report\r\n\r\ncarol got nothing\r\n")
	}
	env := Envelope{Sender: alice.Address, Recipients: []Recipient{{Address: bob.Address}, {Address: carol.Address}}, Report: report}
	d, err := s.DeliverEnvelope(ctx, env, testMessage(1))
	if err != nil {
		t.Fatal(err)
	}
	if !d.Reported || d.ReportQueued || len(d.Stored) != 1 || fmt.Sprint(seen) != "[carol@example.test]" {
		t.Fatalf("delivery %+v, report saw %v", d, seen)
	}
	msgs, _ := s.Messages(ctx, inbox(t, s, alice).ID, nil)
	if len(msgs) != 1 {
		t.Fatalf("alice has %d messages, want the report", len(msgs))
	}
	if b, _ := s.ReadBody(ctx, msgs[0].BodyID); !strings.Contains(string(b), "carol got nothing") {
		t.Fatalf("alice's message %q", b)
	}
	// A remote sender's report is queued with the null sender.
	env.Sender = "Far.Away@remote.test"
	if d, err = s.DeliverEnvelope(ctx, env, testMessage(2)); err != nil || !d.ReportQueued {
		t.Fatalf("remote sender: %+v %v", d, err)
	}
	q, _ := s.Queue(ctx, time.Time{}, 0)
	if len(q) != 1 || q[0].Sender != "" || q[0].Recipient != "Far.Away@remote.test" {
		t.Fatalf("queue %+v", q)
	}
	// No failure, no report.
	seen = nil
	env.Recipients = env.Recipients[:1]
	if d, err = s.DeliverEnvelope(ctx, env, testMessage(3)); err != nil || d.Reported || seen != nil {
		t.Fatalf("report without failure: %+v %v %v", d, err, seen)
	}
}
