package console

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
)

// attachmentMessage is a message to bob with an HTML attachment and a
// file name that tries to escape its parameter.
func attachmentMessage() []byte {
	return []byte("From: mallory@elsewhere.test\r\nTo: bob@example.test\r\nSubject: Files\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=X\r\n\r\n" +
		"--X\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n" +
		"--X\r\nContent-Type: text/html\r\nContent-Disposition: attachment; filename*=utf-8''evil%0D%0ASet-Cookie%3A%20x%3D1.html\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\nPHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==\r\n--X--\r\n")
}

// TestConsoleAttackOtherUsersMail: alice, though an administrator, reaches
// none of bob's messages by guessing ids: not the view, the raw source,
// the HTML frame, an attachment, a reply or forward (page or form), nor
// the message actions; bob reaches his own.
func TestConsoleAttackOtherUsersMail(t *testing.T) {
	e := startWeb(t, withSubmit(t))
	deliver(t, e.store, "bob@example.test", attachmentMessage())
	if _, err := e.store.CreateMailbox(context.Background(), mustUser(t, e, "bob@example.test").ID, "Private", ""); err != nil {
		t.Fatal(err)
	}
	a := e.browser(t)
	if a.login("alice@example.test", testPassword) != http.StatusSeeOther {
		t.Fatal("login failed")
	}
	for _, p := range []string{"/mail/part?box=INBOX&uid=1&part=2", "/mail/part?box=INBOX&uid=1&part=1",
		"/compose?mode=reply&box=INBOX&uid=1", "/compose?mode=forward&box=INBOX&uid=1",
		"/mail?box=Private", "/mail/msg?box=Private&uid=1"} {
		if code, _, body := a.do("GET", p, nil, nil); code != http.StatusNotFound || strings.Contains(body, "alert(1)") {
			t.Errorf("alice GET %s: %d, want 404", p, code)
		}
	}
	// A forward form naming bob's message sends nothing of it.
	code, body := a.postMultipart("/compose", url.Values{"to": {"alice@example.test"}, "subject": {"fw"}, "body": {"x"},
		"fwd_box": {"INBOX"}, "fwd_uid": {"1"}}, "", "")
	if code != http.StatusSeeOther {
		t.Fatalf("alice's forward: %d\n%s", code, body)
	}
	for _, m := range inboxOf(t, e, "alice@example.test", "INBOX") {
		if bytes.Contains(m, []byte("PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg")) || bytes.Contains(m, []byte("see attached")) {
			t.Fatalf("bob's message reached alice through a forward form:\n%s", m)
		}
	}
	// Moving "uid 1 of INBOX" moves alice's own, never bob's.
	a.post("/mail/act", url.Values{"box": {"INBOX"}, "uid": {"1"}, "op": {"move"}, "to": {"Private"}})
	if got := inboxOf(t, e, "bob@example.test", "INBOX"); len(got) != 1 {
		t.Fatalf("bob's INBOX has %d messages after alice's move, want 1", len(got))
	}

	// Bob downloads his attachment: octet-stream, attachment, the file
	// name without its line break, the decoded bytes.
	b := e.browser(t)
	b.login("bob@example.test", testPassword)
	code, hdr, body := b.do("GET", "/mail/part?box=INBOX&uid=1&part=2", nil, nil)
	if code != http.StatusOK || body != "<script>alert(1)</script>" {
		t.Fatalf("bob's attachment: %d %q", code, body)
	}
	if ct := hdr.Get("Content-Type"); ct != "application/octet-stream" {
		t.Errorf("attachment Content-Type %q", ct)
	}
	cd := hdr.Get("Content-Disposition")
	if !strings.HasPrefix(cd, "attachment;") || strings.ContainsAny(cd, "\r\n") || !strings.Contains(cd, "Set-Cookie") {
		t.Errorf("attachment Content-Disposition %q", cd)
	}
	if hdr.Get("Set-Cookie") != "" || hdr.Get("Content-Security-Policy") == "" || hdr.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("attachment headers %v", hdr)
	}
	for _, p := range []string{"0", "1.1", "3", "1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18.19.20.21", "x", ""} {
		if code, _, _ := b.do("GET", "/mail/part?box=INBOX&uid=1&part="+p, nil, nil); code != http.StatusNotFound {
			t.Errorf("part %q: %d, want 404", p, code)
		}
	}
	// The message view links the attachment.
	if _, _, page := b.do("GET", "/mail/msg?box=INBOX&uid=1", nil, nil); !strings.Contains(page, `/mail/part?box=INBOX&amp;uid=1&amp;part=2`) {
		t.Errorf("message view does not link the attachment:\n%s", page)
	}
}

// TestConsoleCSRFEveryPost: every state-changing route refuses a request
// without the session's token, and one with the token from another
// origin, and changes nothing.
func TestConsoleCSRFEveryPost(t *testing.T) {
	e := startWeb(t, withSubmit(t))
	deliver(t, e.store, "alice@example.test", hostileMessage())
	b := e.browser(t)
	if b.login("alice@example.test", testPassword) != http.StatusSeeOther {
		t.Fatal("login failed")
	}
	posts := map[string]url.Values{
		"/logout":        {},
		"/mail/act":      {"box": {"INBOX"}, "uid": {"1"}, "op": {"delete"}},
		"/compose":       {"to": {"bob@example.test"}, "subject": {"csrf"}, "body": {"x"}},
		"/admin/users":   {"op": {"add"}, "address": {"eve@example.test"}, "password": {"password123"}},
		"/admin/domains": {"op": {"add"}, "domain": {"evil.test"}},
		"/admin/aliases": {"op": {"add"}, "alias": {"all@example.test"}, "targets": {"eve@elsewhere.test"}},
		"/admin/queue":   {"op": {"delete"}, "id": {"1"}},
		"/admin/unblock": {"address": {"192.0.2.7"}},
	}
	for path, form := range posts {
		if code, _, _ := b.do("POST", path, form, nil); code != http.StatusForbidden {
			t.Errorf("POST %s without token: %d, want 403", path, code)
		}
		f := url.Values{}
		for k, v := range form {
			f[k] = v
		}
		f.Set("csrf", b.csrf)
		if code, _, _ := b.do("POST", path, f, map[string]string{"Origin": "http://evil.example"}); code != http.StatusForbidden {
			t.Errorf("POST %s from another origin: %d, want 403", path, code)
		}
	}
	// Nothing changed, and the session is still alive.
	if code, _, _ := b.do("GET", "/mail", nil, nil); code != http.StatusOK {
		t.Fatalf("session ended by a refused logout: %d", code)
	}
	if got := inboxOf(t, e, "alice@example.test", "INBOX"); len(got) != 1 {
		t.Errorf("alice's INBOX has %d, want 1", len(got))
	}
	if got := inboxOf(t, e, "bob@example.test", "INBOX"); len(got) != 1-1 {
		t.Errorf("bob got %d messages from refused composes", len(got))
	}
	if _, err := e.store.UserByAddress(context.Background(), "eve@example.test"); err == nil {
		t.Error("a refused request added a user")
	}
	// A form posted from another site to /login is refused too (login
	// CSRF: the victim would end up in the attacker's account).
	anon := e.browser(t)
	code, _, _ := anon.do("POST", "/login", url.Values{"address": {"bob@example.test"}, "password": {testPassword}},
		map[string]string{"Origin": "http://evil.example"})
	if code != http.StatusBadRequest {
		t.Errorf("cross-site login: %d, want 400", code)
	}
}

// TestSafeNext: the login's ?next= only ever leads to a path here.
func TestSafeNext(t *testing.T) {
	for in, want := range map[string]string{
		"/mail?box=INBOX":               "/mail?box=INBOX",
		"/flow":                         "/flow",
		"":                              "",
		"//evil.example/":               "",
		"/\\evil.example":               "",
		"\\\\evil.example":              "",
		"/\t/evil.example":              "",
		"/\r\n/evil.example":            "",
		"https://evil.example/":         "",
		"javascript:alert(1)":           "",
		"evil.example":                  "",
		"/%2F%2Fevil.example":           "/%2F%2Fevil.example", // a path on this site
		"/" + strings.Repeat("a", 3000): "",
	} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
	// And through the login: a hostile next ends at /mail.
	e := startWeb(t, nil)
	b := e.browser(t)
	code, hdr, _ := b.do("POST", "/login", url.Values{"address": {"bob@example.test"}, "password": {testPassword},
		"next": {"/\t/evil.example"}}, nil)
	if code != http.StatusSeeOther || hdr.Get("Location") != "/mail" {
		t.Fatalf("login with a hostile next: %d to %q", code, hdr.Get("Location"))
	}
	if _, _, page := b.do("GET", "/login?next=%2F%2Fevil.example", nil, nil); strings.Contains(page, "evil.example") {
		t.Fatal("the login page carries a hostile next")
	}
}

// TestConsoleComposeInjection: line breaks in the one-line fields are
// refused (no header field of the sender's choosing), oversize fields
// too, and an attachment's file name and type are made harmless.
func TestConsoleComposeInjection(t *testing.T) {
	e := startWeb(t, withSubmit(t))
	b := e.browser(t)
	if b.login("bob@example.test", testPassword) != http.StatusSeeOther {
		t.Fatal("login failed")
	}
	for _, f := range []url.Values{
		{"to": {"alice@example.test"}, "subject": {"hi\r\nBcc: eve@elsewhere.test"}},
		{"to": {"alice@example.test"}, "subject": {"hi\nBcc: eve@elsewhere.test"}},
		{"to": {"alice@example.test\r\nBcc: eve@elsewhere.test"}, "subject": {"hi"}},
		{"to": {"alice@example.test"}, "cc": {"x@example.test\nBcc: eve@elsewhere.test"}, "subject": {"hi"}},
		{"to": {"alice@example.test"}, "subject": {"hi"}, "in_reply_to": {"<a@b>\r\nBcc: eve@elsewhere.test"}},
		{"to": {"alice@example.test"}, "subject": {"hi"}, "references": {"<a@b>\r\nBcc: eve@elsewhere.test"}},
		{"to": {"alice@example.test"}, "subject": {strings.Repeat("long ", 4000)}},
	} {
		f.Set("body", "x")
		code, body := b.postMultipart("/compose", f, "", "")
		if code != http.StatusBadRequest && code != http.StatusRequestEntityTooLarge {
			t.Errorf("compose %q: %d, want 400 or 413\n%s", f, code, body)
		}
	}
	if got := inboxOf(t, e, "alice@example.test", "INBOX"); len(got) != 0 {
		t.Fatalf("refused composes delivered %d messages:\n%s", len(got), got[0])
	}
	// An attachment whose name carries a line break, a path and a
	// multipart type.
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for k, v := range map[string]string{"csrf": b.csrf, "to": "alice@example.test", "subject": "file", "body": "see file"} {
		mw.WriteField(k, v)
	}
	h := textproto.MIMEHeader{}
	h.Set("Content-Disposition", `form-data; name="attachment"; filename*=utf-8''..%2F..%2Fetc%2Fevil%0D%0ABcc%3A%20eve%40elsewhere.test.txt`)
	h.Set("Content-Type", "multipart/mixed; boundary=ZZ")
	pw, _ := mw.CreatePart(h)
	pw.Write([]byte("--ZZ\r\nContent-Type: text/html\r\n\r\n<script>x</script>\r\n--ZZ--\r\n"))
	mw.Close()
	req, _ := http.NewRequest("POST", e.base+"/compose", &buf)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := b.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("compose with the attachment: %d", resp.StatusCode)
	}
	got := inboxOf(t, e, "alice@example.test", "INBOX")
	if len(got) != 1 {
		t.Fatalf("alice has %d messages, want 1", len(got))
	}
	m := string(got[0])
	if regexp.MustCompile(`(?mi)^Bcc:`).MatchString(m) || strings.Contains(m, "boundary=ZZ") || strings.Contains(m, "etc/evil") {
		t.Fatalf("the attachment's name or type leaked into the header:\n%s", m)
	}
	if !strings.Contains(m, "evilBcc") {
		t.Errorf("the attachment's name is gone:\n%s", m)
	}
	if len(safeFilename(strings.Repeat("é", 300))) > maxFilename || safeFilename("..") != "attachment" {
		t.Error("safeFilename bounds")
	}
}

// TestConsoleFormBounds: a form beyond its bound is refused before it is
// read whole, for plain forms and for multipart ones.
func TestConsoleFormBounds(t *testing.T) {
	e := startWeb(t, withSubmit(t))
	b := e.browser(t)
	if b.login("bob@example.test", testPassword) != http.StatusSeeOther {
		t.Fatal("login failed")
	}
	big := url.Values{"box": {"INBOX"}, "op": {"seen"}, "pad": {strings.Repeat("x", maxFormBytes)}}
	if code, _, _ := b.post("/mail/act", big); code != http.StatusForbidden && code != http.StatusRequestEntityTooLarge {
		t.Errorf("oversize form: %d", code)
	}
	if code, _, _ := b.do("POST", "/login", url.Values{"address": {strings.Repeat("a", maxFormBytes)}}, nil); code != http.StatusBadRequest {
		t.Errorf("oversize login form: %d", code)
	}
	// A multipart body larger than maxComposeBytes, streamed.
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		mw.WriteField("csrf", b.csrf)
		mw.WriteField("to", "alice@example.test")
		fw, _ := mw.CreateFormFile("attachment", "big.bin")
		chunk := make([]byte, 64<<10)
		for n := 0; n <= maxComposeBytes; n += len(chunk) {
			if _, err := fw.Write(chunk); err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		mw.Close()
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", e.base+"/compose", pr)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := b.c.Do(req)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden && resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("oversize multipart: %d", resp.StatusCode)
		}
	}
	pr.Close()
	if got := inboxOf(t, e, "alice@example.test", "INBOX"); len(got) != 0 {
		t.Fatal("an oversize compose was sent")
	}
}

// TestConsoleHTMLFrame: the sanitised HTML is served with a policy that
// allows no script and sandboxes it, the frame is sandboxed with nothing
// allowed, and remote images only come with images=1.
func TestConsoleHTMLFrame(t *testing.T) {
	e := startWeb(t, nil)
	deliver(t, e.store, "bob@example.test", hostileMessage())
	b := e.browser(t)
	b.login("bob@example.test", testPassword)
	_, _, page := b.do("GET", "/mail/msg?box=INBOX&uid=1", nil, nil)
	frame := regexp.MustCompile(`<iframe[^>]*>`).FindString(page)
	if !regexp.MustCompile(`\ssandbox[\s>]`).MatchString(frame) || strings.Contains(frame, "allow-") {
		t.Fatalf("iframe not sandboxed with nothing allowed: %s", frame)
	}
	code, hdr, body := b.do("GET", "/mail/html?box=INBOX&uid=1&part=2", nil, nil)
	if code != http.StatusOK {
		t.Fatalf("html part: %d", code)
	}
	csp := hdr.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "sandbox", "img-src data:;", "frame-ancestors 'self'", "form-action 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("frame CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "script-src") || strings.Contains(csp, "allow-scripts") || strings.Contains(csp, "allow-same-origin") {
		t.Errorf("frame CSP allows scripts: %q", csp)
	}
	if strings.Contains(body, "tracker.example") || strings.Contains(body, "<script") || strings.Contains(body, "onclick") {
		t.Errorf("frame body not sanitised: %s", body)
	}
	_, hdr, body = b.do("GET", "/mail/html?box=INBOX&uid=1&part=2&images=1", nil, nil)
	if !strings.Contains(body, "tracker.example") || !strings.Contains(hdr.Get("Content-Security-Policy"), "img-src data: https: http:") {
		t.Errorf("images=1 does not show remote images: %s", body)
	}
	// Every page has the phone viewport, a language and a main landmark.
	for _, p := range []string{"/mail", "/mail/msg?box=INBOX&uid=1", "/compose", "/flow"} {
		_, _, page := b.do("GET", p, nil, nil)
		for _, want := range []string{`<meta name="viewport" content="width=device-width, initial-scale=1">`, `<html lang="en">`, "<main", "<h1", `href="#main"`} {
			if !strings.Contains(page, want) {
				t.Errorf("%s lacks %s", p, want)
			}
		}
		// Every visible input has a label (for=) or an aria-label.
		for _, in := range regexp.MustCompile(`<(input|select|textarea)[^>]*>`).FindAllString(page, -1) {
			if strings.Contains(in, `type="hidden"`) || strings.Contains(in, "aria-label") {
				continue
			}
			id := regexp.MustCompile(`id="([^"]+)"`).FindStringSubmatch(in)
			if id == nil || !strings.Contains(page, `for="`+id[1]+`"`) {
				t.Errorf("%s: control without a label: %s", p, in)
			}
		}
	}
}

// TestConsoleSessionFixation: a session token planted in the browser
// before login is not the one the login gives, and does not work after.
func TestConsoleSessionFixation(t *testing.T) {
	e := startWeb(t, nil)
	// The attacker's own session, planted in the victim's browser.
	att := e.browser(t)
	att.login("alice@example.test", testPassword)
	var planted string
	for _, c := range att.c.Jar.Cookies(mustURL(e.base)) {
		if c.Name == sessionCookie {
			planted = c.Value
		}
	}
	if planted == "" {
		t.Fatal("no session cookie")
	}
	v := e.browser(t)
	v.c.Jar.SetCookies(mustURL(e.base), []*http.Cookie{{Name: sessionCookie, Value: planted, Path: "/"}})
	if v.login("bob@example.test", testPassword) != http.StatusSeeOther {
		t.Fatal("login failed")
	}
	var got string
	for _, c := range v.c.Jar.Cookies(mustURL(e.base)) {
		if c.Name == sessionCookie {
			got = c.Value
		}
	}
	if got == "" || got == planted {
		t.Fatalf("login kept the planted token")
	}
	// The planted token no longer logs anyone in.
	if code, _, _ := att.do("GET", "/mail", nil, nil); code != http.StatusSeeOther {
		t.Errorf("planted token still works: %d", code)
	}
	if _, _, page := v.do("GET", "/mail", nil, nil); !strings.Contains(page, "bob@example.test") {
		t.Error("the new session is not bob's")
	}
}

// TestConsoleLoginUnknownSameGate: an unknown address fails like a wrong
// password (same answer, same failure record, same block).
func TestConsoleLoginUnknownSameGate(t *testing.T) {
	e := startWeb(t, nil)
	b := e.browser(t)
	_, _, unknown := b.do("POST", "/login", url.Values{"address": {"nobody@example.test"}, "password": {"x"}}, nil)
	_, _, wrong := b.do("POST", "/login", url.Values{"address": {"bob@example.test"}, "password": {"x"}}, nil)
	strip := regexp.MustCompile(`value="[^"]*"`)
	if strip.ReplaceAllString(unknown, "") != strip.ReplaceAllString(wrong, "") {
		t.Errorf("unknown address and wrong password answer differently:\n%s\n---\n%s", unknown, wrong)
	}
	b.do("POST", "/login", url.Values{"address": {"nobody2@example.test"}, "password": {"x"}}, nil)
	if code := b.login("bob@example.test", testPassword); code != http.StatusTooManyRequests {
		t.Fatalf("after 3 failures (2 unknown): %d, want 429", code)
	}
}

// TestConsoleEventStreamsBounded: a user holds at most maxStreamsPerUser
// event streams; closing one makes room.
func TestConsoleEventStreamsBounded(t *testing.T) {
	e := startWeb(t, nil)
	b := e.browser(t)
	b.login("bob@example.test", testPassword)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func() *http.Response {
		req, _ := http.NewRequestWithContext(ctx, "GET", e.base+"/api/events", nil)
		resp, err := b.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	var streams []*http.Response
	for i := range maxStreamsPerUser {
		r := open()
		if r.StatusCode != http.StatusOK {
			t.Fatalf("stream %d: %d", i, r.StatusCode)
		}
		streams = append(streams, r)
	}
	over := open()
	over.Body.Close()
	if over.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("stream %d: %d, want 429", maxStreamsPerUser+1, over.StatusCode)
	}
	// Another user is not affected.
	a := e.browser(t)
	a.login("alice@example.test", testPassword)
	req, _ := http.NewRequestWithContext(ctx, "GET", e.base+"/api/events", nil)
	if r, err := a.c.Do(req); err != nil || r.StatusCode != http.StatusOK {
		t.Fatalf("alice's stream: %v %v", r, err)
	} else {
		r.Body.Close()
	}
	streams[0].Body.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := open()
		r.Body.Close()
		if r.StatusCode == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no room after closing a stream: %d", r.StatusCode)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, r := range streams[1:] {
		r.Body.Close()
	}
	_ = fmt.Sprint()
}

// TestConsoleSessionEndsWithItsUser: a user deleted and then added again
// under the same address is a new user: the old browser session is not
// theirs.
func TestConsoleSessionEndsWithItsUser(t *testing.T) {
	e := startWeb(t, nil)
	ctx := context.Background()
	b := e.browser(t)
	if b.login("bob@example.test", testPassword) != http.StatusSeeOther {
		t.Fatal("login failed")
	}
	if code, _, _ := b.do("GET", "/mail?box=INBOX", nil, nil); code != 200 {
		t.Fatalf("mail page while logged in: %d", code)
	}
	if err := e.store.DeleteUser(ctx, "bob@example.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.AddUser(ctx, "bob@example.test", "another password"); err != nil {
		t.Fatal(err)
	}
	if code, hdr, _ := b.do("GET", "/mail?box=INBOX", nil, nil); code != http.StatusSeeOther || !strings.HasPrefix(hdr.Get("Location"), "/login") {
		t.Fatalf("the old session after the address went to a new user: %d %s, want a redirect to /login", code, hdr.Get("Location"))
	}
}
