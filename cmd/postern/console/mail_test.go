package console

import (
	"context"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
)

const hostileHTML = `<p onclick="steal()">Hello <b>there</b></p>` +
	`<script>alert(1)</script>` +
	`<img src="https://tracker.example/pixel.gif" onerror="alert(2)">` +
	`<img src="data:image/png;base64,iVBORw0KGgo=">` +
	`<a href="javascript:alert(3)">click</a>` +
	`<div style="background: expression(alert(4))">styled</div>`

func hostileMessage() []byte {
	return []byte("From: Mallory <mallory@elsewhere.test>\r\nTo: bob@example.test\r\nSubject: Hostile\r\n" +
		"Message-ID: <hostile.1@elsewhere.test>\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/alternative; boundary=B\r\n\r\n" +
		"--B\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nPlain caf=C3=A9 text\r\n" +
		"--B\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + hostileHTML + "\r\n--B--\r\n")
}

func deliver(t *testing.T, st *mailstore.Store, to string, msg []byte) {
	t.Helper()
	if _, err := st.Deliver(context.Background(), "mallory@elsewhere.test", []string{to}, msg); err != nil {
		t.Fatal(err)
	}
}

func TestSanitizeHTML(t *testing.T) {
	out := SanitizeHTML(hostileHTML, false)
	for _, bad := range []string{"<script", "alert(1)", "onerror", "onclick", "javascript:", "expression(", "tracker.example"} {
		if strings.Contains(out, bad) {
			t.Errorf("sanitised HTML keeps %q: %s", bad, out)
		}
	}
	for _, good := range []string{"<b>there</b>", "data:image/png"} {
		if !strings.Contains(out, good) {
			t.Errorf("sanitised HTML lost %q: %s", good, out)
		}
	}
	if out := SanitizeHTML(hostileHTML, true); !strings.Contains(out, "https://tracker.example/pixel.gif") || strings.Contains(out, "onerror") {
		t.Errorf("with images asked: %s", out)
	}
}

func TestConsoleMailReadSetsSeen(t *testing.T) {
	e := startWeb(t, nil)
	ctx := context.Background()
	deliver(t, e.store, "bob@example.test", hostileMessage())
	b := e.browser(t)
	if b.login("bob@example.test", testPassword) != http.StatusSeeOther {
		t.Fatal("login failed")
	}
	code, _, body := b.do("GET", "/mail?box=INBOX", nil, nil)
	if code != 200 || !strings.Contains(body, "Hostile") || !strings.Contains(body, `class="unread"`) {
		t.Fatalf("list: %d, want the message marked unread:\n%s", code, body)
	}
	code, _, body = b.do("GET", "/mail/msg?box=INBOX&uid=1", nil, nil)
	if code != 200 {
		t.Fatalf("view: %d", code)
	}
	for _, want := range []string{"Plain café text", "multipart/alternative", "text/html", "quoted-printable", `sandbox title=`} {
		if !strings.Contains(body, want) {
			t.Errorf("view lacks %q", want)
		}
	}
	if strings.Contains(body, "<script>alert") {
		t.Error("the view page carries the message's script")
	}
	inbox, _ := e.store.MailboxByName(ctx, mustUser(t, e, "bob@example.test").ID, "INBOX")
	msgs, _ := e.store.Messages(ctx, inbox.ID, nil)
	if len(msgs) != 1 || !msgs[0].HasFlag(mailstore.FlagSeen) {
		t.Fatalf("after reading, flags %v, want \\Seen", msgs[0].Flags)
	}
	// The HTML part: sanitised, in its own policy, remote images blocked.
	code, hdr, body := b.do("GET", "/mail/html?box=INBOX&uid=1&part=2", nil, nil)
	if code != 200 || strings.Contains(body, "<script") || strings.Contains(body, "onerror") || strings.Contains(body, "tracker.example") {
		t.Fatalf("html part: %d %s", code, body)
	}
	if csp := hdr.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "img-src data:;") {
		t.Errorf("html part CSP %q", csp)
	}
	if _, hdr, _ := b.do("GET", "/mail/html?box=INBOX&uid=1&part=2&images=1", nil, nil); !strings.Contains(hdr.Get("Content-Security-Policy"), "img-src data: https:") {
		t.Errorf("html part with images: CSP %q", hdr.Get("Content-Security-Policy"))
	}
	// Raw source.
	if code, _, body := b.do("GET", "/mail/raw?box=INBOX&uid=1", nil, nil); code != 200 || !strings.Contains(body, "Message-ID: <hostile.1@elsewhere.test>") {
		t.Fatalf("raw: %d", code)
	}
	// Flag, then delete: to Trash.
	if code, _, _ := b.post("/mail/act", url.Values{"box": {"INBOX"}, "uid": {"1"}, "op": {"flag"}}); code != http.StatusSeeOther {
		t.Fatalf("flag: %d", code)
	}
	msgs, _ = e.store.Messages(ctx, inbox.ID, nil)
	if !msgs[0].HasFlag(mailstore.FlagFlagged) {
		t.Fatalf("not flagged: %v", msgs[0].Flags)
	}
	if code, _, _ := b.post("/mail/act", url.Values{"box": {"INBOX"}, "uid": {"1"}, "op": {"delete"}}); code != http.StatusSeeOther {
		t.Fatalf("delete: %d", code)
	}
	trash, _ := e.store.MailboxByName(ctx, mustUser(t, e, "bob@example.test").ID, "Trash")
	if msgs, _ := e.store.Messages(ctx, inbox.ID, nil); len(msgs) != 0 {
		t.Fatalf("INBOX still has %d", len(msgs))
	}
	if msgs, _ := e.store.Messages(ctx, trash.ID, nil); len(msgs) != 1 {
		t.Fatalf("Trash has %d, want 1", len(msgs))
	}
}

// A user reaches only their own mail: alice cannot open bob's message by
// its mailbox and UID, nor change it.
func TestConsoleMailIsolation(t *testing.T) {
	e := startWeb(t, nil)
	ctx := context.Background()
	deliver(t, e.store, "bob@example.test", hostileMessage())
	a := e.browser(t)
	if a.login("alice@example.test", testPassword) != http.StatusSeeOther {
		t.Fatal("login failed")
	}
	for _, p := range []string{"/mail/msg?box=INBOX&uid=1", "/mail/raw?box=INBOX&uid=1", "/mail/html?box=INBOX&uid=1&part=2"} {
		if code, _, _ := a.do("GET", p, nil, nil); code != http.StatusNotFound {
			t.Errorf("alice GET %s: %d, want 404", p, code)
		}
	}
	a.post("/mail/act", url.Values{"box": {"INBOX"}, "uid": {"1"}, "op": {"delete"}})
	inbox, _ := e.store.MailboxByName(ctx, mustUser(t, e, "bob@example.test").ID, "INBOX")
	if msgs, _ := e.store.Messages(ctx, inbox.ID, nil); len(msgs) != 1 || slices.Contains(msgs[0].Flags, mailstore.FlagSeen) {
		t.Fatalf("bob's message changed by alice: %v", msgs)
	}
}

func TestConsoleMailSearch(t *testing.T) {
	e := startWeb(t, nil)
	deliver(t, e.store, "bob@example.test", hostileMessage())
	deliver(t, e.store, "bob@example.test", []byte("From: a@elsewhere.test\r\nSubject: Lunch\r\n\r\nSandwiches at noon\r\n"))
	b := e.browser(t)
	b.login("bob@example.test", testPassword)
	_, _, body := b.do("GET", "/mail?box=INBOX&q=sandwiches", nil, nil)
	if !strings.Contains(body, "Lunch") || strings.Contains(body, "Hostile") {
		t.Fatalf("search for sandwiches:\n%s", body)
	}
}

func mustUser(t testing.TB, e *webEnv, a string) mailstore.User {
	t.Helper()
	u, err := e.store.UserByAddress(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestConsoleMailboxNameInLinks: a mailbox whose name holds a space, +, =, ? and #
// is reached through the links the pages give (escaped once).
func TestConsoleMailboxNameInLinks(t *testing.T) {
	e := startWeb(t, nil)
	ctx := context.Background()
	const name = "Sent Items+a=b?c#d"
	mb, err := e.store.CreateMailbox(ctx, mustUser(t, e, "bob@example.test").ID, name, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Append(ctx, mb.ID, nil, time.Time{}, []byte("Subject: odd box\r\n\r\nhello\r\n")); err != nil {
		t.Fatal(err)
	}
	b := e.browser(t)
	if b.login("bob@example.test", testPassword) != http.StatusSeeOther {
		t.Fatal("login failed")
	}
	_, _, page := b.do("GET", "/mail?box=INBOX", nil, nil)
	m := regexp.MustCompile(`href="(/mail\?box=Sent(?:%20| )Items[^"]*)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no link to %q on the mailbox list:\n%s", name, page)
	}
	link := html.UnescapeString(m[1])
	code, _, list := b.do("GET", link, nil, nil)
	if code != 200 || !strings.Contains(list, "odd box") {
		t.Fatalf("GET %s: %d, want the mailbox's list", link, code)
	}
	m = regexp.MustCompile(`href="(/mail/msg\?[^"]*)"`).FindStringSubmatch(list)
	if m == nil {
		t.Fatal("no link to the message")
	}
	if code, _, view := b.do("GET", html.UnescapeString(m[1]), nil, nil); code != 200 || !strings.Contains(view, "hello") {
		t.Fatalf("GET %s: %d", m[1], code)
	}
}
