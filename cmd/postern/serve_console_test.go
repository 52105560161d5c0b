package main

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
)

// consoleEvent is what /api/events sends, as far as this test reads it.
type consoleEvent struct {
	Seq   uint64 `json:"seq"`
	Msg   string `json:"msg"`
	Attrs []struct {
		K string `json:"k"`
		V string `json:"v"`
	} `json:"attrs"`
	Flow struct {
		Session, Kind, Line string
	} `json:"flow"`
}

// serve with an HTTP listener runs the web console: an admin reads the
// event stream with a plain HTTP client during an SMTP delivery and gets
// the session's events complete and in order (protocol lines included,
// although log.trace is off and the log output has none), and a message
// composed in the console goes through the submission pipeline.
func TestServeConsole(t *testing.T) {
	r := startServe(t, httpListeners)
	r.addUser(t, "alice@example.test", "alice's password")
	r.addUser(t, "bob@example.test", "bob's password")
	if code, out, errOut := runIn(t, "", "user", "admin", "-config", r.config, "alice@example.test", "on"); code != exitOK {
		t.Fatalf("user admin: %d %s %s", code, out, errOut)
	}
	base := "http://" + r.addrs["http"]
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	resp, err := c.PostForm(base+"/login", url.Values{"address": {"alice@example.test"}, "password": {"alice's password"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Request.URL.Path != "/mail" {
		t.Fatalf("login: %d at %s", resp.StatusCode, resp.Request.URL)
	}

	req, _ := http.NewRequest("GET", base+"/api/events", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := c.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	if stream.StatusCode != 200 {
		t.Fatalf("/api/events: %d", stream.StatusCode)
	}
	events := make(chan consoleEvent, 1000)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(stream.Body)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var e consoleEvent
				if json.Unmarshal([]byte(d), &e) == nil {
					events <- e
				}
			}
		}
	}()
	msg := "From: carol@remote.test\r\nTo: bob@example.test\r\nSubject: watched\r\n\r\nhello bob\r\n"
	if err := sendPlain(r.addrs["smtp"], "carol@remote.test", "bob@example.test", msg); err != nil {
		t.Fatalf("MX delivery: %v", err)
	}
	// The MX session's events, from connect to disconnect.
	var session string
	var got []string
	var last uint64
	timeout := time.After(15 * time.Second)
	for done := false; !done; {
		select {
		case e, ok := <-events:
			if !ok {
				t.Fatal("stream ended")
			}
			if e.Seq <= last {
				t.Fatalf("event %d after %d", e.Seq, last)
			}
			last = e.Seq
			if session == "" && e.Msg == "session start" {
				session = e.Flow.Session
			}
			if session == "" || e.Flow.Session != session {
				continue
			}
			if e.Flow.Kind == "line" {
				got = append(got, e.Flow.Line)
			} else {
				got = append(got, "# "+e.Msg)
			}
			done = e.Flow.Kind == "close"
		case <-timeout:
			t.Fatalf("no complete session within 15s; got %q", got)
		}
	}
	all := strings.Join(got, "\n")
	for _, re := range []string{`(?s)^# session start\n220 .*EHLO mx.remote.test.*MAIL FROM:<carol@remote.test>.*RCPT TO:<bob@example.test>.*DATA\n354 .*` +
		`# message accepted.*250 .*QUIT\n221 .*# session end$`} {
		if !regexp.MustCompile(re).MatchString(all) {
			t.Fatalf("session events out of order or missing:\n%s", all)
		}
	}
	if strings.Contains(r.stderr.String(), "msg=trace") {
		t.Errorf("trace lines in the log output with log.trace off:\n%s", r.stderr.String())
	}

	// Compose: through Submit to bob's INBOX, signed.
	_, page := httpGet(t, c, base+"/compose")
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token on the compose page:\n%s", page)
	}
	resp, err = c.PostForm(base+"/compose", url.Values{"csrf": {m[1]}, "to": {"bob@example.test"}, "subject": {"from the console"}, "body": {"hi"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Request.URL.RawQuery != "sent=1" {
		t.Fatalf("compose: %d at %s", resp.StatusCode, resp.Request.URL)
	}
	st, err := mailstore.Open(filepath.Join(r.dataDir, storeFile), mailstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	bctx := context.Background()
	bob, _ := st.UserByAddress(bctx, "bob@example.test")
	in, _ := st.MailboxByName(bctx, bob.ID, "INBOX")
	msgs, _ := st.Messages(bctx, in.ID, nil)
	if len(msgs) != 2 {
		t.Fatalf("bob has %d messages, want 2", len(msgs))
	}
	body, _ := st.ReadBody(bctx, msgs[1].BodyID)
	if !strings.Contains(string(body), "DKIM-Signature:") || !strings.Contains(string(body), "Subject: from the console") {
		t.Fatalf("console message:\n%s", body)
	}
}
