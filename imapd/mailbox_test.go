package imapd

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// listNames runs LIST and returns "name attrs..." lines, sorted.
func listNames(t *testing.T, c *imapclient.Client, ref, pattern string, opts *imap.ListOptions) []string {
	t.Helper()
	data, err := c.List(ref, pattern, opts).Collect()
	if err != nil {
		t.Fatalf("LIST %q %q: %v", ref, pattern, err)
	}
	var out []string
	for _, d := range data {
		attrs := make([]string, len(d.Attrs))
		for i, a := range d.Attrs {
			attrs[i] = string(a)
		}
		sort.Strings(attrs)
		out = append(out, strings.TrimSpace(d.Mailbox+" "+strings.Join(attrs, " ")))
	}
	sort.Strings(out)
	return out
}

func TestMailboxCommands(t *testing.T) {
	env := newEnv(t)
	c := env.dial(t, nil)

	got := listNames(t, c, "", "*", nil)
	want := []string{`Archive \Archive \HasNoChildren`, `Drafts \Drafts \HasNoChildren`, `INBOX \HasNoChildren`,
		`Junk \HasNoChildren \Junk`, `Sent \HasNoChildren \Sent`, `Trash \HasNoChildren \Trash`}
	if !slices.Equal(got, want) {
		t.Errorf("LIST * =\n%q\nwant\n%q", got, want)
	}

	// CREATE with parents, and with a special use (RFC 6154).
	if err := c.Create("Work/2024/Q1", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Create("Everything", &imap.CreateOptions{SpecialUse: []imap.MailboxAttr{imap.MailboxAttrAll}}).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Create("Work", nil).Wait(); !hasCode(err, imap.ResponseCodeAlreadyExists) {
		t.Errorf("CREATE existing = %v, want [ALREADYEXISTS]", err)
	}
	if err := c.Create("inbox", nil).Wait(); !hasCode(err, imap.ResponseCodeAlreadyExists) {
		t.Errorf("CREATE inbox = %v, want [ALREADYEXISTS]", err)
	}
	if err := c.Create("Bad", &imap.CreateOptions{SpecialUse: []imap.MailboxAttr{"\\Bogus"}}).Wait(); !hasCode(err, "USEATTR") {
		t.Errorf("CREATE with unknown use = %v, want [USEATTR]", err)
	}

	// % stops at the separator, * does not; the reference is a prefix.
	if got := listNames(t, c, "", "Work/%", nil); !slices.Equal(got, []string{`Work/2024 \HasChildren`}) {
		t.Errorf("LIST Work/%% = %q", got)
	}
	if got := listNames(t, c, "Work", "*", nil); !slices.Equal(got, []string{`Work/2024 \HasChildren`, `Work/2024/Q1 \HasNoChildren`}) {
		t.Errorf("LIST Work * = %q", got)
	}
	if got := listNames(t, c, "", "inBOX", nil); !slices.Equal(got, []string{`INBOX \HasNoChildren`}) {
		t.Errorf("LIST inBOX = %q", got)
	}
	if got := listNames(t, c, "", "*", &imap.ListOptions{SelectSpecialUse: true}); len(got) != 6 {
		t.Errorf("LIST (SPECIAL-USE) * = %q", got)
	}
	// The empty pattern asks for the delimiter.
	data, err := c.List("", "", nil).Collect()
	if err != nil || len(data) != 1 || data[0].Delim != '/' || data[0].Mailbox != "" {
		t.Errorf(`LIST "" "" = %+v, %v`, data, err)
	}
	// A pathological pattern costs no more than a plain one.
	if got := listNames(t, c, "", strings.Repeat("*%", 2000)+"x", nil); len(got) != 0 {
		t.Errorf("LIST with many wildcards = %q", got)
	}

	// SUBSCRIBE, LSUB and LIST (SUBSCRIBED).
	if err := c.Subscribe("Work/2024/Q1").Wait(); err != nil {
		t.Fatal(err)
	}
	sub := listNames(t, c, "", "*", &imap.ListOptions{SelectSubscribed: true})
	if !slices.Contains(sub, `Work/2024/Q1 \HasNoChildren \Subscribed`) || slices.Contains(sub, `Work \HasChildren \Subscribed`) {
		t.Errorf("LIST (SUBSCRIBED) = %q", sub)
	}
	if err := c.Unsubscribe("Work/2024/Q1").Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Unsubscribe("Nope").Wait(); !hasCode(err, imap.ResponseCodeNonExistent) {
		t.Errorf("UNSUBSCRIBE missing = %v", err)
	}

	// STATUS, with SIZE and APPENDLIMIT.
	env.deliver(t, testMessage(1, "one"))
	env.deliver(t, testMessage(2, "two"))
	st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true, NumUnseen: true, UIDNext: true, UIDValidity: true,
		Size: true, NumDeleted: true, AppendLimit: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if *st.NumMessages != 2 || *st.NumUnseen != 2 || st.UIDNext != 3 || st.UIDValidity == 0 || *st.Size == 0 || *st.NumDeleted != 0 || *st.AppendLimit != defaultMaxMessageBytes {
		t.Errorf("STATUS = %+v", st)
	}
	if _, err := c.Status("Nope", &imap.StatusOptions{NumMessages: true}).Wait(); !hasCode(err, imap.ResponseCodeNonExistent) {
		t.Errorf("STATUS missing = %v", err)
	}

	// LIST-STATUS (RFC 5819).
	ld, err := c.List("", "INBOX", &imap.ListOptions{ReturnStatus: &imap.StatusOptions{NumMessages: true}}).Collect()
	if err != nil || len(ld) != 1 || ld[0].Status == nil || *ld[0].Status.NumMessages != 2 {
		t.Errorf("LIST RETURN (STATUS) = %+v, %v", ld, err)
	}

	// RENAME moves children; RENAME INBOX moves its messages (RFC 3501 6.3.5).
	if err := c.Rename("Work", "Job", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if got := listNames(t, c, "", "Job*", nil); !slices.Equal(got, []string{`Job \HasChildren`, `Job/2024 \HasChildren`, `Job/2024/Q1 \HasNoChildren`}) {
		t.Errorf("after RENAME: %q", got)
	}
	if err := c.Rename("Nope", "Other", nil).Wait(); !hasCode(err, imap.ResponseCodeNonExistent) {
		t.Errorf("RENAME missing = %v", err)
	}
	if err := c.Rename("Job", "Sent", nil).Wait(); !hasCode(err, imap.ResponseCodeAlreadyExists) {
		t.Errorf("RENAME onto existing = %v", err)
	}
	if err := c.Rename("INBOX", "Old Inbox", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	st, err = c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil || *st.NumMessages != 0 {
		t.Errorf("INBOX after RENAME: %+v %v", st, err)
	}
	st, err = c.Status("Old Inbox", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil || *st.NumMessages != 2 {
		t.Errorf("renamed INBOX: %+v %v", st, err)
	}

	// DELETE: INBOX cannot go; a parent keeps its name as \Noselect.
	if err := c.Delete("INBOX").Wait(); !hasCode(err, imap.ResponseCodeCannot) {
		t.Errorf("DELETE INBOX = %v", err)
	}
	if err := c.Delete("Job/2024").Wait(); err != nil {
		t.Fatal(err)
	}
	if got := listNames(t, c, "", "Job/*", nil); !slices.Equal(got, []string{`Job/2024 \HasChildren \Noselect`, `Job/2024/Q1 \HasNoChildren`}) {
		t.Errorf("after DELETE of a parent: %q", got)
	}
	if _, err := c.Select("Job/2024", nil).Wait(); !hasCode(err, imap.ResponseCodeCannot) {
		t.Errorf("SELECT \\Noselect = %v", err)
	}
	if err := c.Delete("Nope").Wait(); !hasCode(err, imap.ResponseCodeNonExistent) {
		t.Errorf("DELETE missing = %v", err)
	}

	// NAMESPACE (RFC 2342).
	ns, err := c.Namespace().Wait()
	if err != nil || len(ns.Personal) != 1 || ns.Personal[0].Delim != '/' || ns.Other != nil || ns.Shared != nil {
		t.Errorf("NAMESPACE = %+v, %v", ns, err)
	}
}

func TestListMatcher(t *testing.T) {
	for _, tc := range []struct {
		ref, pattern, name string
		want               bool
	}{
		{"", "*", "a/b/c", true},
		{"", "%", "a/b", false},
		{"", "%", "a", true},
		{"", "a/%", "a/b", true},
		{"", "a/%", "a/b/c", false},
		{"", "a/*", "a/b/c", true},
		{"a", "%", "a/b", true},
		{"a/", "%", "a/b", true},
		{"a", "/b", "b", true},
		{"", "inbox", "INBOX", true},
		{"", "Inbox/%", "INBOX/x", true},
		{"", "*c", "a/b/c", true},
		{"", "%c", "a/b/c", false},
		{"", "a%b", "axxb", true},
		{"", "a%b", "ax/b", false},
		{"", "**%%*", "anything/at/all", true},
		{"", "", "a", false},
	} {
		if got := newListMatcher(tc.ref, tc.pattern).match(tc.name); got != tc.want {
			t.Errorf("match(%q, %q, %q) = %v, want %v", tc.ref, tc.pattern, tc.name, got, tc.want)
		}
	}
}

// hasCode reports whether err is an IMAP error with the response code.
func hasCode(err error, code imap.ResponseCode) bool {
	var e *imap.Error
	if err == nil {
		return false
	}
	if ok := asIMAPError(err, &e); !ok {
		return false
	}
	return e.Code == code
}

func TestRawDialogue(t *testing.T) {
	env := newEnv(t)
	env.deliver(t, "Subject: odd\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n")
	rc := dialRaw(t, env.addr)
	steps := []struct{ cmd, want string }{
		{`LOGIN u@example.test "secret pw"`, "OK"},
		{"ENABLE IMAP4rev2", "* ENABLED IMAP4rev2"},
		{"SUBSCRIBE Sent", "OK"},
		{`LSUB "" "S*"`, `* LSUB (\HasNoChildren \Subscribed \Sent) "/" "Sent"`},
		{`LIST "" "INBOX" RETURN (CHILDREN SPECIAL-USE)`, `* LIST (\HasNoChildren) "/" INBOX`},
		{"SELECT inbox", `* LIST () "/" INBOX`},
		{"FETCH 1 (BINARY.PEEK[1])", "NO [UNKNOWN-CTE]"},
		{"FETCH 1 (BODY.PEEK[1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18.19.20.21.22.23.24.25.26.27.28.29.30.31.32.33.34.35.36.37.38.39.40.41.42])", "OK"},
		{"FETCH 1 (UID RFC822.SIZE)", "* 1 FETCH (UID 1 RFC822.SIZE 94)"},
		{"FETCH 2 (UID)", "OK"}, // no such message: nothing, and OK
		{"NOOP", "OK"},
		{"LOGOUT", "* BYE"},
	}
	for i, s := range steps {
		tag := fmt.Sprintf("t%d", i)
		got := rc.cmd(tag, s.cmd)
		if !strings.Contains(strings.Join(got, "\n"), s.want) {
			t.Errorf("%s: got %q, want %q", s.cmd, got, s.want)
		}
	}
}

// RFC 3501 6.3.9: LSUB with "%" gives an unsubscribed parent of a
// subscribed mailbox as \Noselect; a subscribed name kept only for its
// children is \Noselect in LSUB and LIST (SUBSCRIBED) (RFC 5258 3.1).
func TestLsubNoselect(t *testing.T) {
	env := newEnv(t)
	rc := rawLogin(t, env)
	for _, c := range []string{"CREATE news/comp/mail", "SUBSCRIBE news/comp/mail", "CREATE gone/child", "SUBSCRIBE gone", "DELETE gone"} {
		if r := rc.cmd("c", c); !strings.HasPrefix(r[len(r)-1], "c OK") {
			t.Fatalf("%s: %q", c, r)
		}
	}
	r := rc.cmd("l", `LSUB "" %`)
	wantLine(t, "LSUB %", r, `* LSUB (\Noselect) "/" "news"`)
	wantLine(t, "LSUB %", r, `* LSUB (\Noselect`, `"gone"`)
	r = rc.cmd("l", `LSUB "" news/%`)
	wantLine(t, "LSUB news/%", r, `* LSUB (\Noselect) "/" "news/comp"`)
	r = rc.cmd("l", `LSUB "" *`)
	noLine(t, "LSUB *", r, `"news"`)
	noLine(t, "LSUB *", r, `"news/comp"`)
	wantLine(t, "LSUB *", r, `"news/comp/mail"`)
	r = rc.cmd("l", `LIST (SUBSCRIBED) "" *`)
	noLine(t, "LIST (SUBSCRIBED)", r, `"news"`)
	wantLine(t, "LIST (SUBSCRIBED)", r, `\Noselect`, `\Subscribed`, `"gone"`)
	wantLine(t, "LIST (SUBSCRIBED)", r, `\Subscribed`, `"news/comp/mail"`)
}

// A delivery into \Junk (a DMARC quarantine) that finds no such mailbox
// creates Junk; an IMAP session already logged in sees it in LIST with
// the attribute and subscribed, and can SELECT the message.
func TestJunkCreatedByDeliveryListed(t *testing.T) {
	env := newEnv(t)
	c := env.dial(t, nil)
	if err := c.Delete("Junk").Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Unsubscribe("Junk").Wait(); err != nil {
		t.Fatal(err)
	}
	env.deliverJunk(t, testMessage(1, "quarantined"))
	got := listNames(t, c, "", "Junk", &imap.ListOptions{ReturnSubscribed: true})
	if want := []string{`Junk \HasNoChildren \Junk \Subscribed`}; !slices.Equal(got, want) {
		t.Errorf("LIST Junk =\n%q\nwant\n%q", got, want)
	}
	if got := listNames(t, c, "", "*", &imap.ListOptions{SelectSpecialUse: true}); !slices.Contains(got, `Junk \HasNoChildren \Junk`) {
		t.Errorf("LIST (SPECIAL-USE) * = %q", got)
	}
	sel, err := c.Select("Junk", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 1 {
		t.Errorf("Junk has %d messages", sel.NumMessages)
	}
}
