package imapd

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/postern/postern/mailstore/storetest"
)

const multipartMessage = "From: \"Ann Example\" <ann@remote.test>\r\n" +
	"To: undisclosed-recipients:;\r\n" +
	"Cc: bob@remote.test, broken@, \"Carl\" <carl@remote.test>\r\n" +
	"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n" +
	"Date: Tue, 3 Jan 2006 10:00:00 +0100\r\n" +
	"Message-ID: <mp1@remote.test>\r\n" +
	"X-Tag: alpha\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: multipart/mixed; boundary=\"outer\"\r\n" +
	"\r\n" +
	"preamble\r\n" +
	"--outer\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"Content-Transfer-Encoding: quoted-printable\r\n" +
	"\r\n" +
	"Caf=C3=A9 au lait, searchable.\r\n" +
	"--outer\r\n" +
	"Content-Type: application/octet-stream; name=\"data.bin\"\r\n" +
	"Content-Transfer-Encoding: base64\r\n" +
	"Content-Disposition: attachment; filename=\"data.bin\"\r\n" +
	"\r\n" +
	"AAECAwQ=\r\n" +
	"--outer--\r\n"

// fetchOne fetches one message and returns its buffer.
func fetchOne(t *testing.T, c *imapclient.Client, set imap.NumSet, opts *imap.FetchOptions) *imapclient.FetchMessageBuffer {
	t.Helper()
	msgs, err := c.Fetch(set, opts).Collect()
	if err != nil {
		t.Fatalf("FETCH: %v", err)
	}
	if len(msgs) != 1 {
		t.Fatalf("FETCH returned %d messages", len(msgs))
	}
	return msgs[0]
}

func TestAppendAndFetch(t *testing.T) {
	env := newEnv(t)
	c := env.dial(t, nil)
	date := time.Date(2020, 5, 6, 7, 8, 9, 0, time.FixedZone("", 2*3600))
	cmd := c.Append("INBOX", int64(len(multipartMessage)), &imap.AppendOptions{Flags: []imap.Flag{imap.FlagFlagged, "$Work"}, Time: date})
	cmd.Write([]byte(multipartMessage))
	cmd.Close()
	ad, err := cmd.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if ad.UID != 1 || ad.UIDValidity == 0 {
		t.Errorf("APPENDUID = %+v", ad)
	}
	if err := appendMsg(c, "Nope", "x"); !hasCode(err, imap.ResponseCodeTryCreate) {
		t.Errorf("APPEND to missing mailbox = %v, want [TRYCREATE]", err)
	}

	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 1 || sel.UIDNext != 2 || !slices.Contains(sel.Flags, "$Work") || !slices.Contains(sel.PermanentFlags, imap.FlagWildcard) {
		t.Errorf("SELECT = %+v", sel)
	}

	m := fetchOne(t, c, imap.SeqSetNum(1), &imap.FetchOptions{UID: true, Flags: true, InternalDate: true, RFC822Size: true,
		Envelope: true, BodyStructure: &imap.FetchItemBodyStructure{Extended: true}})
	if m.UID != 1 || !slices.Equal(m.Flags, []imap.Flag{imap.FlagFlagged, "$Work", "\\Recent"}) || !m.InternalDate.Equal(date) || m.RFC822Size != int64(len(multipartMessage)) {
		t.Errorf("FETCH = uid %d flags %v date %v size %d", m.UID, m.Flags, m.InternalDate, m.RFC822Size)
	}
	env1 := m.Envelope
	if env1.Subject != "Grüße" || env1.MessageID != "mp1@remote.test" || len(env1.From) != 1 || env1.From[0].Name != "Ann Example" {
		t.Errorf("ENVELOPE = %+v", env1)
	}
	// The group survives as markers; the broken address costs only itself.
	if len(env1.To) != 2 || !env1.To[0].IsGroupStart() || env1.To[0].Mailbox != "undisclosed-recipients" || !env1.To[1].IsGroupEnd() {
		t.Errorf("ENVELOPE To = %+v", env1.To)
	}
	if len(env1.Cc) != 3 || env1.Cc[0].Addr() != "bob@remote.test" || env1.Cc[2].Addr() != "carl@remote.test" {
		t.Errorf("ENVELOPE Cc = %+v", env1.Cc)
	}
	mp, ok := m.BodyStructure.(*imap.BodyStructureMultiPart)
	if !ok || mp.Subtype != "mixed" || len(mp.Children) != 2 {
		t.Fatalf("BODYSTRUCTURE = %#v", m.BodyStructure)
	}
	if p := mp.Children[1].(*imap.BodyStructureSinglePart); p.Encoding != "base64" || p.Params["name"] != "data.bin" || p.Extended.Disposition.Value != "attachment" {
		t.Errorf("part 2 = %+v", p)
	}

	// Sections: whole, header, text, fields, parts, MIME, partial, BINARY.
	hdrEnd := strings.Index(multipartMessage, "\r\n\r\n") + 4
	sections := []struct {
		item *imap.FetchItemBodySection
		want string
	}{
		{&imap.FetchItemBodySection{Peek: true}, multipartMessage},
		{&imap.FetchItemBodySection{Peek: true, Specifier: imap.PartSpecifierHeader}, multipartMessage[:hdrEnd]},
		{&imap.FetchItemBodySection{Peek: true, Specifier: imap.PartSpecifierText}, multipartMessage[hdrEnd:]},
		{&imap.FetchItemBodySection{Peek: true, Partial: &imap.SectionPartial{Offset: 6, Size: 5}}, multipartMessage[6:11]},
		{&imap.FetchItemBodySection{Peek: true, Partial: &imap.SectionPartial{Offset: 100000, Size: 5}}, ""},
		{&imap.FetchItemBodySection{Peek: true, Specifier: imap.PartSpecifierHeader, HeaderFields: []string{"x-tag", "Subject"}},
			"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nX-Tag: alpha\r\n\r\n"},
		{&imap.FetchItemBodySection{Peek: true, Part: []int{1}}, "Caf=C3=A9 au lait, searchable."},
		{&imap.FetchItemBodySection{Peek: true, Part: []int{2}, Specifier: imap.PartSpecifierMIME},
			"Content-Type: application/octet-stream; name=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"data.bin\"\r\n\r\n"},
		{&imap.FetchItemBodySection{Peek: true, Part: []int{3}}, ""},
	}
	for _, sc := range sections {
		got := fetchOne(t, c, imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{sc.item}}).FindBodySection(sc.item)
		if !strings.Contains(sc.want, "Subject") && string(got) != sc.want || strings.Contains(sc.want, "Subject") && !sameLines(string(got), sc.want) {
			t.Errorf("BODY.PEEK[%v %v %v]<%v> = %q, want %q", sc.item.Part, sc.item.Specifier, sc.item.HeaderFields, sc.item.Partial, got, sc.want)
		}
	}
	bin := &imap.FetchItemBinarySection{Part: []int{2}, Peek: true}
	m = fetchOne(t, c, imap.SeqSetNum(1), &imap.FetchOptions{BinarySection: []*imap.FetchItemBinarySection{bin},
		BinarySectionSize: []*imap.FetchItemBinarySectionSize{{Part: []int{2}}}})
	if got := m.FindBinarySection(bin); !bytes.Equal(got, []byte{0, 1, 2, 3, 4}) {
		t.Errorf("BINARY[2] = %v", got)
	}
	if len(m.BinarySectionSize) != 1 || m.BinarySectionSize[0].Size != 5 {
		t.Errorf("BINARY.SIZE[2] = %+v", m.BinarySectionSize)
	}

	// PEEK left \Seen alone; BODY[] sets it and says so.
	m = fetchOne(t, c, imap.SeqSetNum(1), &imap.FetchOptions{Flags: true})
	if slices.Contains(m.Flags, imap.FlagSeen) {
		t.Fatal("BODY.PEEK set \\Seen")
	}
	m = fetchOne(t, c, imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{Specifier: imap.PartSpecifierText}}})
	if !slices.Contains(m.Flags, imap.FlagSeen) {
		t.Errorf("BODY[TEXT] did not report \\Seen: %v", m.Flags)
	}
}

func appendMsg(c *imapclient.Client, mailbox, msg string) error {
	cmd := c.Append(mailbox, int64(len(msg)), nil)
	cmd.Write([]byte(msg))
	cmd.Close()
	_, err := cmd.Wait()
	return err
}

// sameLines compares header blocks whatever the order of their fields.
func sameLines(a, b string) bool {
	la, lb := strings.Split(a, "\r\n"), strings.Split(b, "\r\n")
	slices.Sort(la)
	slices.Sort(lb)
	return slices.Equal(la, lb)
}

func TestStoreCopyMoveExpunge(t *testing.T) {
	env := newEnv(t)
	for i := 1; i <= 5; i++ {
		env.deliver(t, testMessage(i, fmt.Sprintf("msg %d", i)))
	}
	u := storetest.NewIMAPUpdates()
	c := env.dial(t, u)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}

	// STORE answers with FETCH FLAGS; a new keyword first gets FLAGS.
	msgs, err := c.Store(imap.SeqSetNum(1, 2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted, "NewKeyword"}}, nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 || !slices.Contains(msgs[0].Flags, imap.FlagDeleted) || !slices.Contains(msgs[1].Flags, "NewKeyword") {
		t.Errorf("STORE +FLAGS = %+v", msgs)
	}
	u.WaitFor(t, "FLAGS with the new keyword", waitTimeout, func(u *storetest.IMAPUpdates) bool {
		return len(u.MailboxFlags) > 0 && slices.Contains(u.MailboxFlags[0], "NewKeyword")
	})
	// .SILENT sends nothing back.
	msgs, err = c.Store(imap.SeqSetNum(3), &imap.StoreFlags{Op: imap.StoreFlagsSet, Silent: true, Flags: []imap.Flag{imap.FlagAnswered}}, nil).Collect()
	if err != nil || len(msgs) != 0 {
		t.Errorf("STORE.SILENT = %+v, %v", msgs, err)
	}

	// COPY with COPYUID; to a missing mailbox it is [TRYCREATE].
	cd, err := c.Copy(imap.SeqSetNum(3, 4), "Archive").Wait()
	if err != nil {
		t.Fatal(err)
	}
	if cd.SourceUIDs.String() != "3:4" || cd.DestUIDs.String() != "1:2" {
		t.Errorf("COPYUID = %v -> %v", cd.SourceUIDs, cd.DestUIDs)
	}
	if _, err := c.Copy(imap.SeqSetNum(1), "Nope").Wait(); !hasCode(err, imap.ResponseCodeTryCreate) {
		t.Errorf("COPY to missing = %v", err)
	}

	// UID EXPUNGE removes only \Deleted messages in its set.
	if seqs, err := c.UIDExpunge(imap.UIDSetNum(2)).Collect(); err != nil || !slices.Equal(seqs, []uint32{2}) {
		t.Fatalf("UID EXPUNGE 2 = %v, %v", seqs, err)
	}

	// MOVE: COPYUID and EXPUNGE (RFC 6851).
	md, err := c.Move(imap.SeqSetNum(2), "Trash").Wait()
	if err != nil {
		t.Fatal(err)
	}
	if md.SourceUIDs.String() != "3" || md.DestUIDs.String() != "1" {
		t.Errorf("MOVE COPYUID = %v -> %v", md.SourceUIDs, md.DestUIDs)
	}
	u.WaitFor(t, "EXPUNGE after MOVE", waitTimeout, func(u *storetest.IMAPUpdates) bool { return slices.Equal(u.Expunges, []uint32{2}) })

	// EXPUNGE removes the rest of \Deleted.
	if seqs, err := c.Expunge().Collect(); err != nil || !slices.Equal(seqs, []uint32{1}) {
		t.Fatalf("EXPUNGE = %v, %v", seqs, err)
	}
	st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil || *st.NumMessages != 2 {
		t.Errorf("INBOX left with %v messages (%v), want 2", st.NumMessages, err)
	}
	uids, err := c.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
	if err != nil || !slices.Equal(uids.AllUIDs(), []imap.UID{4, 5}) {
		t.Errorf("UIDs left = %v, %v", uids.AllUIDs(), err)
	}

	// UID FETCH n:* with n past the last UID gives the last message
	// (RFC 3501 6.4.8).
	// (imapclient drops that answer as unasked for: talk raw.)
	rc := dialRaw(t, env.addr)
	rc.cmd("a", `LOGIN u@example.test "secret pw"`)
	rc.cmd("b", "EXAMINE INBOX")
	if got := rc.cmd("c", "UID FETCH 100:* (FLAGS)"); len(got) != 2 || !strings.HasPrefix(got[0], "* 2 FETCH (UID 5 FLAGS") {
		t.Errorf("UID FETCH 100:* = %q", got)
	}

	// CLOSE expunges silently.
	if err := c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	before := len(u.Expunges)
	if err := c.UnselectAndExpunge().Wait(); err != nil { // CLOSE
		t.Fatal(err)
	}
	if len(u.Expunges) != before {
		t.Error("CLOSE sent EXPUNGE responses")
	}
	st, _ = c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
	if *st.NumMessages != 1 {
		t.Errorf("after CLOSE, INBOX has %d messages", *st.NumMessages)
	}
}

func TestExamineIsReadOnly(t *testing.T) {
	env := newEnv(t)
	env.deliver(t, testMessage(1, "one"))
	c := env.dial(t, nil)
	if err := c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err == nil {
		t.Fatal("STORE in authenticated state worked")
	}
	// Mark it deleted in a read-write session, then EXAMINE.
	c2 := env.dial(t, nil)
	c2.Select("INBOX", nil).Wait()
	c2.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close()
	c2.Unselect().Wait()

	sel, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if len(sel.PermanentFlags) != 0 {
		t.Errorf("EXAMINE PERMANENTFLAGS = %v, want none", sel.PermanentFlags)
	}
	if err := c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged}}, nil).Close(); !hasCode(err, "READ-ONLY") {
		t.Errorf("STORE after EXAMINE = %v", err)
	}
	if err := c.Expunge().Close(); !hasCode(err, "READ-ONLY") {
		t.Errorf("EXPUNGE after EXAMINE = %v", err)
	}
	// BODY[] does not set \Seen either.
	fetchOne(t, c, imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{}}})
	if err := c.UnselectAndExpunge().Wait(); err != nil {
		t.Fatalf("CLOSE after EXAMINE: %v", err)
	}
	st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true, NumUnseen: true}).Wait()
	if err != nil || *st.NumMessages != 1 || *st.NumUnseen != 1 {
		t.Errorf("after EXAMINE, STORE, EXPUNGE, FETCH and CLOSE: %+v, %v", st, err)
	}
	if _, err := c.Move(imap.SeqSetNum(1), "Trash").Wait(); err == nil {
		t.Error("MOVE without a selected mailbox worked")
	}
}

func TestTwoSessions(t *testing.T) {
	env := newEnv(t)
	for i := 1; i <= 3; i++ {
		env.deliver(t, testMessage(i, "hi"))
	}
	ua, ub := storetest.NewIMAPUpdates(), storetest.NewIMAPUpdates()
	a, b := env.dial(t, ua), env.dial(t, ub)
	for _, c := range []*imapclient.Client{a, b} {
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
	}
	// B flags message 2 with a new keyword: A hears FLAGS, then FETCH.
	if err := b.Store(imap.SeqSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{"Urgent", imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	ua.WaitFor(t, "FLAGS then FETCH", waitTimeout, func(u *storetest.IMAPUpdates) bool {
		return len(u.MailboxFlags) == 1 && slices.Contains(u.MailboxFlags[0], "Urgent") && len(u.Flags) == 1 && strings.HasPrefix(u.Flags[0], "2 2 ")
	})
	// B expunges it and gets a new message; A's numbers stay its own
	// until its next NOOP.
	if err := b.Expunge().Close(); err != nil {
		t.Fatal(err)
	}
	env.deliver(t, testMessage(4, "new"))
	m := fetchOne(t, a, imap.SeqSetNum(3), &imap.FetchOptions{UID: true})
	if m.UID != 3 {
		t.Errorf("A's message 3 has UID %d before its NOOP, want 3", m.UID)
	}
	if err := a.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	ua.WaitFor(t, "EXPUNGE 2 and EXISTS 3", waitTimeout, func(u *storetest.IMAPUpdates) bool {
		return slices.Equal(u.Expunges, []uint32{2}) && len(u.Exists) > 0 && u.Exists[len(u.Exists)-1] == 3
	})
	m = fetchOne(t, a, imap.SeqSetNum(3), &imap.FetchOptions{UID: true})
	if m.UID != 4 {
		t.Errorf("A's message 3 has UID %d after its NOOP, want 4", m.UID)
	}
	// FETCH does not get EXPUNGE responses (RFC 3501 7.4.1).
	if err := b.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Expunge().Close(); err != nil {
		t.Fatal(err)
	}
	n := len(ua.Expunges)
	if _, err := a.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{UID: true}).Collect(); err != nil {
		t.Fatal(err)
	}
	ua.Mu.Lock()
	if len(ua.Expunges) != n {
		t.Error("EXPUNGE sent during FETCH")
	}
	ua.Mu.Unlock()
	a.Noop().Wait()
	ua.WaitFor(t, "EXPUNGE 1", waitTimeout, func(u *storetest.IMAPUpdates) bool { return len(u.Expunges) == n+1 })
}

func TestIdleSeesDelivery(t *testing.T) {
	env := newEnv(t)
	u := storetest.NewIMAPUpdates()
	c := env.dial(t, u)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	env.deliver(t, testMessage(1, "while idling"))
	u.WaitFor(t, "EXISTS 1 in IDLE", waitTimeout, func(u *storetest.IMAPUpdates) bool { return slices.Contains(u.Exists, 1) })
	// A second session's change reaches the idler too.
	other := env.dial(t, nil)
	other.Select("INBOX", nil).Wait()
	if err := other.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	u.WaitFor(t, "FETCH FLAGS in IDLE", waitTimeout, func(u *storetest.IMAPUpdates) bool {
		return len(u.Flags) == 1 && strings.Contains(u.Flags[0], `\Flagged`)
	})
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestSearch(t *testing.T) {
	env := newEnv(t)
	env.deliver(t, testMessage(1, "apple pie"))
	env.deliver(t, multipartMessage)
	env.deliver(t, "From: zed@remote.test\r\nSubject: third\r\nDate: Fri, 1 Mar 2024 12:00:00 +0000\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: base64\r\n\r\n"+
		"Q2Fm6SBub2ly\r\n") // "Café noir" in Latin-1
	c := env.dial(t, nil)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged, "Todo"}}, nil).Close()
	c.Store(imap.SeqSetNum(3), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagSeen}}, nil).Close()
	day := func(s string) time.Time { d, _ := time.Parse("2006-01-02", s); return d }
	for _, tc := range []struct {
		name string
		crit imap.SearchCriteria
		want []uint32
	}{
		{"ALL", imap.SearchCriteria{}, []uint32{1, 2, 3}},
		{"FLAGGED", imap.SearchCriteria{Flag: []imap.Flag{imap.FlagFlagged}}, []uint32{1}},
		{"UNSEEN", imap.SearchCriteria{NotFlag: []imap.Flag{imap.FlagSeen}}, []uint32{1, 2}},
		{"KEYWORD todo", imap.SearchCriteria{Flag: []imap.Flag{"todo"}}, []uint32{1}},
		// This session selected first: every message is recent to it.
		{"NEW", imap.SearchCriteria{Flag: []imap.Flag{"\\Recent"}, NotFlag: []imap.Flag{imap.FlagSeen}}, []uint32{1, 2}},
		{"OLD", imap.SearchCriteria{NotFlag: []imap.Flag{"\\Recent"}}, nil},
		{"SUBJECT apple", imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Subject", Value: "APPLE"}}}, []uint32{1}},
		{"SUBJECT decoded", imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Subject", Value: "grüße"}}}, []uint32{2}},
		{"FROM", imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "From", Value: "ann example"}}}, []uint32{2}},
		{"HEADER present", imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "X-Tag", Value: ""}}}, []uint32{2}},
		{"BODY quoted-printable utf-8", imap.SearchCriteria{Body: []string{"café au"}}, []uint32{2}},
		{"BODY base64 latin-1", imap.SearchCriteria{Body: []string{"CAFÉ NOIR"}}, []uint32{3}},
		{"BODY not in header", imap.SearchCriteria{Body: []string{"apple pie"}}, nil},
		{"TEXT header", imap.SearchCriteria{Text: []string{"apple pie"}}, []uint32{1}},
		{"LARGER", imap.SearchCriteria{Larger: 600}, []uint32{2}},
		{"SMALLER", imap.SearchCriteria{Smaller: 600}, []uint32{1, 3}},
		{"SENTBEFORE", imap.SearchCriteria{SentBefore: day("2006-01-03")}, []uint32{1}},
		{"SENTON", imap.SearchCriteria{SentSince: day("2024-03-01"), SentBefore: day("2024-03-02")}, []uint32{3}},
		{"SINCE today", imap.SearchCriteria{Since: time.Now().UTC().Add(-24 * time.Hour)}, []uint32{1, 2, 3}},
		{"BEFORE 2000", imap.SearchCriteria{Before: day("2000-01-01")}, nil},
		{"NOT", imap.SearchCriteria{Not: []imap.SearchCriteria{{Flag: []imap.Flag{imap.FlagFlagged}}}}, []uint32{2, 3}},
		{"OR", imap.SearchCriteria{Or: [][2]imap.SearchCriteria{{{Flag: []imap.Flag{imap.FlagSeen}}, {Body: []string{"searchable"}}}}}, []uint32{2, 3}},
		{"seq 2:*", imap.SearchCriteria{SeqNum: []imap.SeqSet{{{Start: 2, Stop: 0}}}}, []uint32{2, 3}},
		{"UID *", imap.SearchCriteria{UID: []imap.UIDSet{{{Start: 0, Stop: 0}}}}, []uint32{3}},
		{"nested", imap.SearchCriteria{Not: []imap.SearchCriteria{{Or: [][2]imap.SearchCriteria{{{Flag: []imap.Flag{imap.FlagFlagged}}, {Header: []imap.SearchCriteriaHeaderField{{Key: "Subject", Value: "third"}}}}}}}}, []uint32{2}},
	} {
		data, err := c.Search(&tc.crit, nil).Wait()
		if err != nil {
			t.Errorf("SEARCH %s: %v", tc.name, err)
			continue
		}
		if got := data.AllSeqNums(); !slices.Equal(got, tc.want) {
			t.Errorf("SEARCH %s = %v, want %v", tc.name, got, tc.want)
		}
	}
	// ESEARCH with MIN, MAX, COUNT; SEARCHRES: save, then use "$".
	data, err := c.UIDSearch(&imap.SearchCriteria{NotFlag: []imap.Flag{imap.FlagSeen}}, &imap.SearchOptions{ReturnMin: true, ReturnMax: true, ReturnCount: true, ReturnSave: true}).Wait()
	if err != nil || data.Min != 1 || data.Max != 2 || data.Count != 2 {
		t.Errorf("ESEARCH = %+v, %v", data, err)
	}
	// imapclient does not send SAVE: talk raw.
	rc := dialRaw(t, env.addr)
	rc.cmd("a", `LOGIN u@example.test "secret pw"`)
	rc.cmd("b", "SELECT INBOX")
	if got := rc.cmd("c", "SEARCH RETURN (SAVE) UNSEEN"); !strings.HasPrefix(got[len(got)-1], "c OK") {
		t.Errorf("SEARCH RETURN (SAVE) = %q", got)
	}
	got := rc.cmd("d", "UID FETCH $ (UID)")
	if len(got) != 3 || got[0] != "* 1 FETCH (UID 1)" || got[1] != "* 2 FETCH (UID 2)" {
		t.Errorf("UID FETCH $ = %q", got)
	}
	got = rc.cmd("e", "SEARCH UID $ FLAGGED")
	if len(got) != 2 || got[0] != "* SEARCH 1" {
		t.Errorf("SEARCH UID $ FLAGGED = %q", got)
	}
	// An invalid keyword is refused.
	if got := rc.cmd("f", "STORE 1 +FLAGS (bad\\kw)"); !strings.HasPrefix(got[len(got)-1], "f BAD") {
		t.Errorf("STORE with an invalid keyword = %q", got)
	}
}

func TestSelectedMailboxDeleted(t *testing.T) {
	env := newEnv(t)
	u := storetest.NewIMAPUpdates()
	a, b := env.dial(t, u), env.dial(t, nil)
	if err := b.Create("Tmp", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := appendMsg(b, "Tmp", testMessage(i, "tmp")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Select("Tmp", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete("Tmp").Wait(); err != nil {
		t.Fatal(err)
	}
	a.Noop().Wait()
	u.WaitFor(t, "three EXPUNGEs", waitTimeout, func(u *storetest.IMAPUpdates) bool { return len(u.Expunges) == 3 })
	if _, err := a.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{UID: true}).Collect(); err != nil {
		t.Errorf("FETCH in a deleted mailbox: %v", err)
	}
	if err := a.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagSeen}}, nil).Close(); err != nil {
		t.Errorf("STORE in a deleted mailbox: %v", err)
	}
	// The name can be used again, and selected, even while A keeps the
	// old one open.
	if err := b.Create("Tmp", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := appendMsg(b, "Tmp", testMessage(9, "again")); err != nil {
		t.Fatal(err)
	}
	sel, err := b.Select("Tmp", nil).Wait()
	if err != nil || sel.NumMessages != 1 {
		t.Errorf("SELECT of the new Tmp = %+v, %v", sel, err)
	}
	sel, err = a.Select("Tmp", nil).Wait()
	if err != nil || sel.NumMessages != 1 {
		t.Errorf("SELECT of the new Tmp from A = %+v, %v", sel, err)
	}
}

func TestAppendToSelectedAndCopyIntoIt(t *testing.T) {
	env := newEnv(t)
	env.deliver(t, testMessage(1, "one"))
	u := storetest.NewIMAPUpdates()
	c := env.dial(t, u)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := appendMsg(c, "INBOX", testMessage(2, "two")); err != nil {
		t.Fatal(err)
	}
	u.WaitFor(t, "EXISTS 2", waitTimeout, func(u *storetest.IMAPUpdates) bool { return slices.Contains(u.Exists, 2) })
	if _, err := c.Copy(imap.SeqSetNum(1, 2), "INBOX").Wait(); err != nil {
		t.Fatal(err)
	}
	u.WaitFor(t, "EXISTS 4", waitTimeout, func(u *storetest.IMAPUpdates) bool { return slices.Contains(u.Exists, 4) })
	msgs, err := c.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true}).Collect()
	if err != nil || len(msgs) != 4 || msgs[3].UID != 4 {
		t.Errorf("FETCH 1:* = %d messages, %v", len(msgs), err)
	}
}

// COPY and MOVE into the selected mailbox itself: new UIDs with COPYUID,
// EXISTS, and for MOVE the originals expunged (RFC 3501 6.4.7, RFC 6851
// 3.3), seen alike by another session on the mailbox.
func TestCopyMoveWithinMailbox(t *testing.T) {
	env := newEnv(t)
	for i := 1; i <= 3; i++ {
		env.deliver(t, testMessage(i, fmt.Sprintf("msg %d", i)))
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
	if err := c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagFlagged}}, nil).Close(); err != nil {
		t.Fatal(err)
	}

	cd, err := c.Copy(imap.SeqSetNum(1, 2), "INBOX").Wait()
	if err != nil {
		t.Fatalf("COPY into INBOX: %v", err)
	}
	if cd.SourceUIDs.String() != "1:2" || cd.DestUIDs.String() != "4:5" {
		t.Errorf("COPYUID = %v -> %v, want 1:2 -> 4:5", cd.SourceUIDs, cd.DestUIDs)
	}
	u.WaitFor(t, "EXISTS 5 after COPY", waitTimeout, func(u *storetest.IMAPUpdates) bool { return slices.Contains(u.Exists, 5) })

	md, err := c.Move(imap.SeqSetNum(1), "INBOX").Wait()
	if err != nil {
		t.Fatalf("MOVE into INBOX: %v", err)
	}
	if md.SourceUIDs.String() != "1" || md.DestUIDs.String() != "6" {
		t.Errorf("MOVE COPYUID = %v -> %v, want 1 -> 6", md.SourceUIDs, md.DestUIDs)
	}
	u.WaitFor(t, "EXISTS 6 and EXPUNGE 1 after MOVE", waitTimeout, func(u *storetest.IMAPUpdates) bool {
		return slices.Contains(u.Exists, 6) && slices.Equal(u.Expunges, []uint32{1})
	})

	for _, cl := range []*imapclient.Client{c, other} {
		if err := cl.Noop().Wait(); err != nil {
			t.Fatal(err)
		}
		msgs, err := cl.Fetch(imap.SeqSetNum(1, 2, 3, 4, 5), &imap.FetchOptions{UID: true, Flags: true, Envelope: true}).Collect()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range msgs {
			got = append(got, fmt.Sprintf("%d:%d %s %v", m.SeqNum, m.UID, m.Envelope.Subject, slices.Contains(m.Flags, imap.FlagFlagged)))
		}
		want := []string{"1:2 msg 2 false", "2:3 msg 3 false", "3:4 msg 1 true", "4:5 msg 2 false", "5:6 msg 1 true"}
		if !slices.Equal(got, want) {
			t.Errorf("after COPY and MOVE within INBOX: %q, want %q", got, want)
		}
	}
	ou.WaitFor(t, "the other session told of the EXPUNGE", waitTimeout, func(u *storetest.IMAPUpdates) bool { return slices.Equal(u.Expunges, []uint32{1}) })
}
