package console

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
)

const testPassword = "correct horse battery"

// webEnv is a console on 127.0.0.1 over a real store, with alice (admin)
// and bob in example.test.
type webEnv struct {
	base   string
	srv    *Server
	store  *mailstore.Store
	hub    *Hub
	log    *slog.Logger
	logins *limits.Logins
}

func startWeb(t testing.TB, mod func(*Config)) *webEnv {
	t.Helper()
	st, err := mailstore.Open(filepath.Join(t.TempDir(), "postern.db"), mailstore.Options{PasswordCost: mailstore.FastPasswordHash})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	if err := st.AddDomain(ctx, "example.test"); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"alice@example.test", "bob@example.test"} {
		if _, err := st.AddUser(ctx, a, testPassword); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.SetAdmin(ctx, "alice@example.test", true); err != nil {
		t.Fatal(err)
	}
	hub := NewHub(slog.DiscardHandler, slog.LevelInfo, 0)
	log := slog.New(hub.Handler())
	logins := limits.NewLogins(limits.LoginPolicy{FailureDelay: -1, MaxFailures: 3})
	cfg := Config{Logger: log, WebConfig: WebConfig{Store: st, Hub: hub, Logins: logins}}
	if mod != nil {
		mod(&cfg)
	}
	cfg.Hostname = "mail.example.test"
	srv := New(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	base := "http://" + ln.Addr().String()
	return &webEnv{base: base, srv: srv, store: st, hub: hub, log: log, logins: logins}
}

// browser is a logged-in HTTP client with its cookie and CSRF token.
type browser struct {
	t    testing.TB
	env  *webEnv
	c    *http.Client
	csrf string
}

func (e *webEnv) browser(t testing.TB) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, env: e, c: &http.Client{Jar: jar, Timeout: 20 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (b *browser) do(method, path string, form url.Values, hdr map[string]string) (int, http.Header, string) {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.env.base+path, body)
	if err != nil {
		b.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if m := csrfRE.FindSubmatch(data); m != nil {
		b.csrf = string(m[1])
	}
	return resp.StatusCode, resp.Header, string(data)
}

func (b *browser) login(address, password string) int {
	b.t.Helper()
	code, _, _ := b.do("POST", "/login", url.Values{"address": {address}, "password": {password}}, nil)
	if code == http.StatusSeeOther {
		b.do("GET", "/mail", nil, nil) // picks up the CSRF token
	}
	return code
}

func (b *browser) post(path string, form url.Values) (int, http.Header, string) {
	b.t.Helper()
	form.Set("csrf", b.csrf)
	return b.do("POST", path, form, nil)
}

func TestConsoleLoginLogout(t *testing.T) {
	e := startWeb(t, nil)
	b := e.browser(t)
	if code, hdr, _ := b.do("GET", "/mail", nil, nil); code != http.StatusSeeOther || !strings.HasPrefix(hdr.Get("Location"), "/login") {
		t.Fatalf("GET /mail logged out: %d to %q, want a redirect to /login", code, hdr.Get("Location"))
	}
	code, hdr, body := b.do("GET", "/login", nil, nil)
	if code != 200 || !strings.Contains(body, `name="password"`) {
		t.Fatalf("login page: %d", code)
	}
	for k, want := range map[string]string{"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
		"Content-Security-Policy": "script-src 'self'", "Referrer-Policy": "same-origin"} {
		if !strings.Contains(hdr.Get(k), want) {
			t.Errorf("header %s = %q, want %q in it", k, hdr.Get(k), want)
		}
	}
	if strings.Contains(hdr.Get("Content-Security-Policy"), "unsafe-inline") {
		t.Errorf("page CSP allows inline: %q", hdr.Get("Content-Security-Policy"))
	}
	if code := b.login("bob@example.test", "wrong"); code != http.StatusUnauthorized {
		t.Fatalf("wrong password: %d, want 401", code)
	}
	req, _ := http.NewRequest("POST", e.base+"/login", strings.NewReader(url.Values{"address": {"bob@example.test"}, "password": {testPassword}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := b.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var ck *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == sessionCookie {
			ck = c
		}
	}
	if resp.StatusCode != http.StatusSeeOther || ck == nil {
		t.Fatalf("login: %d, cookie %v", resp.StatusCode, ck)
	}
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Secure {
		t.Errorf("cookie %+v: want HttpOnly, SameSite=Strict, not Secure over plain HTTP", ck)
	}
	if code, _, body := b.do("GET", "/mail", nil, nil); code != 200 || !strings.Contains(body, "INBOX") {
		t.Fatalf("GET /mail logged in: %d", code)
	}
	if e.srv.Sessions() != 1 {
		t.Errorf("sessions = %d, want 1", e.srv.Sessions())
	}
	if code, _, _ := b.post("/logout", url.Values{}); code != http.StatusSeeOther {
		t.Fatalf("logout: %d", code)
	}
	if e.srv.Sessions() != 0 {
		t.Errorf("sessions after logout = %d, want 0", e.srv.Sessions())
	}
	// The old cookie is worth nothing now.
	b.c.Jar.SetCookies(mustURL(e.base), []*http.Cookie{{Name: sessionCookie, Value: ck.Value}})
	if code, _, _ := b.do("GET", "/mail", nil, nil); code != http.StatusSeeOther {
		t.Fatalf("GET /mail with the old cookie: %d, want a redirect", code)
	}
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// The console's failed logins count in the shared record: enough of them
// block the address for the mail protocols too, and the right password
// is refused then.
func TestConsoleLoginSharesBlock(t *testing.T) {
	e := startWeb(t, nil)
	b := e.browser(t)
	for range 3 {
		b.login("bob@example.test", "wrong")
	}
	if code := b.login("bob@example.test", testPassword); code != http.StatusTooManyRequests {
		t.Fatalf("login after 3 failures: %d, want 429", code)
	}
	if !e.logins.Blocked(mustAddr("127.0.0.1")) {
		t.Fatal("address not blocked in the shared record")
	}
}

func TestConsoleCSRFRefused(t *testing.T) {
	e := startWeb(t, nil)
	b := e.browser(t)
	if b.login("alice@example.test", testPassword) != http.StatusSeeOther {
		t.Fatal("login failed")
	}
	form := url.Values{"op": {"add"}, "domain": {"evil.test"}}
	if code, _, _ := b.do("POST", "/admin/domains", form, nil); code != http.StatusForbidden {
		t.Fatalf("POST without CSRF token: %d, want 403", code)
	}
	form.Set("csrf", "not-the-token")
	if code, _, _ := b.do("POST", "/admin/domains", form, nil); code != http.StatusForbidden {
		t.Fatalf("POST with a wrong token: %d, want 403", code)
	}
	form.Set("csrf", b.csrf)
	if code, _, _ := b.do("POST", "/admin/domains", form, map[string]string{"Origin": "http://evil.example"}); code != http.StatusForbidden {
		t.Fatalf("POST from another origin: %d, want 403", code)
	}
	if ok, _ := e.store.IsLocalDomain(context.Background(), "evil.test"); ok {
		t.Fatal("a refused request changed the domains")
	}
	if code, _, _ := b.post("/admin/domains", url.Values{"op": {"add"}, "domain": {"good.test"}}); code != http.StatusSeeOther {
		t.Fatalf("POST with the token: %d, want 303", code)
	}
	if ok, _ := e.store.IsLocalDomain(context.Background(), "good.test"); !ok {
		t.Fatal("domain not added")
	}
}

func TestConsoleNonAdminRefused(t *testing.T) {
	e := startWeb(t, nil)
	b := e.browser(t)
	if b.login("bob@example.test", testPassword) != http.StatusSeeOther {
		t.Fatal("login failed")
	}
	for _, p := range []string{"/admin", "/admin/dns?domain=example.test"} {
		if code, _, _ := b.do("GET", p, nil, nil); code != http.StatusForbidden {
			t.Errorf("bob GET %s: %d, want 403", p, code)
		}
	}
	if code, _, _ := b.post("/admin/users", url.Values{"op": {"admin"}, "address": {"bob@example.test"}}); code != http.StatusForbidden {
		t.Errorf("bob POST /admin/users: %d, want 403", code)
	}
	if u, _ := e.store.UserByAddress(context.Background(), "bob@example.test"); u.Admin {
		t.Fatal("bob made himself admin")
	}
	// Logged out, the stream answers 401, not a page.
	anon := e.browser(t)
	if code, _, _ := anon.do("GET", "/api/events", nil, nil); code != http.StatusUnauthorized {
		t.Errorf("anonymous GET /api/events: %d, want 401", code)
	}
}

func TestConsoleEventStream(t *testing.T) {
	e := startWeb(t, nil)
	b := e.browser(t)
	if b.login("alice@example.test", testPassword) != http.StatusSeeOther {
		t.Fatal("login failed")
	}
	e.log.Info("session start", "session", "S1", "proto", "smtp", "remote", "192.0.2.1:5000")
	req, _ := http.NewRequest("GET", e.base+"/api/events?since=0", nil)
	resp, err := b.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("GET /api/events: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	events := make(chan flowEvent, 100)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var fe flowEvent
				if json.Unmarshal([]byte(d), &fe) == nil {
					events <- fe
				}
			}
		}
		close(events)
	}()
	next := func() flowEvent {
		t.Helper()
		select {
		case fe, ok := <-events:
			if !ok {
				t.Fatal("stream ended")
			}
			return fe
		case <-time.After(10 * time.Second):
			t.Fatal("no event within 10s")
		}
		return flowEvent{}
	}
	// Replayed from the ring (the console's own login line may come
	// first).
	var fe flowEvent
	for fe = next(); fe.Msg != "session start"; fe = next() {
	}
	if fe.Flow.Kind != "open" || fe.Flow.Session != "S1" || fe.Flow.Proto != "smtp" {
		t.Fatalf("replayed event's flow = %+v", fe.Flow)
	}
	e.log.Info("trace", "session", "S1", "part", "smtp", "dir", "C", "line", "EHLO x")
	e.log.Info("message accepted", "session", "S1", "part", "smtp", "id", "S1-1")
	e.log.Info("session end", "session", "S1", "proto", "smtp")
	want := []FlowItem{
		{Session: "S1", Kind: "line", Proto: "smtp", Dir: "C", Line: "EHLO x"},
		{Session: "S1", Kind: "event", Proto: "smtp", Message: "S1-1"},
		{Session: "S1", Kind: "close", Proto: "smtp"},
	}
	for i, w := range want {
		got := next()
		if got.Flow != w {
			t.Fatalf("live event %d: flow %+v, want %+v", i, got.Flow, w)
		}
		if got.Seq <= fe.Seq {
			t.Fatalf("event %d out of order: seq %d after %d", i, got.Seq, fe.Seq)
		}
		fe = got
	}
}

func TestTraceFilter(t *testing.T) {
	var mu sync.Mutex
	var b strings.Builder
	out := slog.NewTextHandler(lockedWriter{&mu, &b}, nil)
	hub := NewHub(TraceFilter(out, false), slog.LevelInfo, 0)
	log := slog.New(hub.Handler()).With("session", "X")
	log.Info("trace", "dir", "C", "line", "NOOP")
	log.Info("connect")
	mu.Lock()
	got := b.String()
	mu.Unlock()
	if strings.Contains(got, "NOOP") || !strings.Contains(got, "connect") {
		t.Fatalf("log output %q: want the trace line dropped and the rest kept", got)
	}
	if r := hub.Recent(); len(r) != 2 || r[0].Msg != "trace" {
		t.Fatalf("hub holds %v, want the trace line too", r)
	}
	if TraceFilter(out, true) != out {
		t.Fatal("with log.trace on the filter must be the output itself")
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// Off loopback, a password is taken only over TLS unless AllowInsecure
// (auth.allow_insecure); the cookie is Secure under TLS.
func TestConsoleLoginNeedsTLSOffLoopback(t *testing.T) {
	for _, tc := range []struct {
		name          string
		allowInsecure bool
		tls           bool
		want          int
	}{
		{"plain", false, false, http.StatusForbidden},
		{"plain allowed", true, false, http.StatusSeeOther},
		{"TLS", false, true, http.StatusSeeOther},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startWeb(t, func(c *Config) { c.AllowInsecure = tc.allowInsecure })
			form := url.Values{"address": {"bob@example.test"}, "password": {testPassword}}
			req := httptest.NewRequest("POST", "http://mail.example.test/login", strings.NewReader(form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.RemoteAddr = "192.0.2.7:40000"
			if tc.tls {
				req.TLS = &tls.ConnectionState{}
			}
			rec := httptest.NewRecorder()
			e.srv.Handler().ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Fatalf("login: %d, want %d", rec.Code, tc.want)
			}
			if tc.tls {
				c := rec.Result().Cookies()
				if len(c) != 1 || !c[0].Secure {
					t.Fatalf("cookie under TLS: %+v, want Secure", c)
				}
			}
		})
	}
}

// A user who is not an admin gets only the events of their own sessions
// (from their login on) and those naming their address.
func TestConsoleEventsOwnOnly(t *testing.T) {
	e := startWeb(t, nil)
	b := e.browser(t)
	if b.login("bob@example.test", testPassword) != http.StatusSeeOther {
		t.Fatal("login failed")
	}
	l := e.log
	l.Info("session start", "session", "A", "proto", "imap")
	l.Info("trace", "session", "A", "proto", "imap", "dir", "C", "line", "a1 LOGIN alice@example.test [redacted]")
	l.Info("auth", "session", "A", "proto", "imap", "result", "ok", "user", "alice@example.test")
	l.Info("trace", "session", "A", "proto", "imap", "dir", "C", "line", "a2 SELECT INBOX")
	// Someone else trying bob's address: not bob's session.
	l.Info("auth", "session", "E", "proto", "imap", "result", "fail", "user", "bob@example.test")
	l.Info("trace", "session", "E", "proto", "imap", "dir", "C", "line", "e2 LOGIN mallory@example.test [redacted]")
	// The fail2ban line names the address tried, without a result.
	l.Warn("login failed", "session", "F", "protocol", "pop3", "remote", "192.0.2.66", "user", "bob@example.test", "reason", "wrong credentials")
	l.Info("trace", "session", "F", "proto", "pop3", "dir", "C", "line", "USER mallory@example.test")
	// A sender on port 25 may claim any address: bob does not learn
	// the recipients of a message claiming to be from him.
	l.Info("message accepted", "session", "G", "proto", "smtp", "id", "G-1", "from", "bob@example.test", "to", "alice@example.test,carol@example.test")
	l.Info("session start", "session", "B", "proto", "pop3")
	l.Info("auth", "session", "B", "proto", "pop3", "result", "ok", "user", "bob@example.test")
	l.Info("trace", "session", "B", "proto", "pop3", "dir", "C", "line", "RETR 1")
	l.Info("session end", "session", "B", "proto", "pop3")
	l.Info("trace", "session", "C", "proto", "smtp", "dir", "C", "line", "RCPT TO:<bob@example.test>")
	l.Info("message accepted", "session", "C", "proto", "smtp", "id", "C-1", "from", "carol@remote.test", "to", "alice@example.test,bob@example.test")
	l.Info("message accepted", "session", "D", "proto", "smtp", "id", "D-1", "from", "carol@remote.test", "to", "alice@example.test")
	// The session that delivered to bob closes on his page too, without
	// its lines or its attributes; the one that did not, not.
	l.Info("trace", "session", "C", "proto", "smtp", "dir", "C", "line", "QUIT")
	l.Info("session end", "session", "C", "proto", "smtp", "remote", "192.0.2.9:25")
	l.Info("session end", "session", "D", "proto", "smtp")
	l.Info("end of test")

	req, _ := http.NewRequest("GET", e.base+"/api/events?since=0", nil)
	resp, err := b.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("bob GET /api/events: %d", resp.StatusCode)
	}
	var got []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var fe flowEvent
			json.Unmarshal([]byte(d), &fe)
			got = append(got, fe.Flow.Session+" "+fe.Msg+" "+fe.Flow.Line+fe.Get("to")+fe.Get("remote"))
		}
		if sc.Text() == ": stream" {
			break // the replay is over
		}
	}
	// The message to alice and bob shows bob alone: alice may have been
	// a Bcc recipient.
	want := []string{"E auth ", "F login failed 192.0.2.66", "G message accepted ", "B auth ", "B trace RETR 1", "B session end ", "C message accepted bob@example.test", "C session end "}
	var own []string
	for _, g := range got {
		if !strings.Contains(g, "console login") {
			own = append(own, g)
		}
	}
	if strings.Join(own, "|") != strings.Join(want, "|") {
		t.Fatalf("bob sees\n%q\nwant\n%q", own, want)
	}
}
