package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore/storetest"
)

// TestDemoWeb: `postern demo -web` prints each domain's console with its
// login; bob logs in on beta's, /flow answers, /api/events replays the
// demo's sessions, a message alice submits shows up in bob's list, and
// the demo stops cleanly.
func TestDemoWeb(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr storetest.SyncBuffer
	exited := make(chan int, 1)
	go func() {
		exited <- runContext(ctx, []string{"demo", "-web"}, strings.NewReader(""), &stdout, &stderr)
	}()
	consoleRE := regexp.MustCompile(`beta\.test: (http://\S+/)  log in as bob@beta\.test  password (\S+)`)
	deadline := time.Now().Add(time.Minute)
	for consoleRE.FindStringSubmatch(stdout.String()) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("demo -web never printed beta's console:\n%s\n%s", stdout.String(), stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	out := stdout.String()
	wantInOrder(t, out, []string{"keep running", "Web consoles",
		"alpha.test: http://127.0.0.2:", "log in as alice@alpha.test  password alice-demo-password",
		"beta.test: http://127.0.0.3:", "log in as bob@beta.test  password bob-demo-password"})
	m := consoleRE.FindStringSubmatch(out)
	base, password := strings.TrimSuffix(m[1], "/"), m[2]
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 20 * time.Second}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := c.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/login"); code != http.StatusOK || !strings.Contains(body, `name="password"`) {
		t.Fatalf("GET /login: %d\n%s", code, body)
	}
	resp, err := c.PostForm(base+"/login", url.Values{"address": {"bob@beta.test"}, "password": {password}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/mail" {
		t.Fatalf("login as bob: %d at %s", resp.StatusCode, resp.Request.URL)
	}
	if code, body := get("/flow"); code != http.StatusOK || !strings.Contains(body, `id="sessions"`) {
		t.Fatalf("GET /flow: %d\n%s", code, body)
	}
	// The ring holds the demo's sessions on beta: the MX session that
	// received alice's message, with the server's protocol lines.
	sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
	defer scancel()
	req, _ := http.NewRequestWithContext(sctx, "GET", base+"/api/events?since=0", nil)
	ev, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(ev.Body)
	sawStart, sawData := false, false
	for sc.Scan() && !(sawStart && sawData) {
		line := sc.Text()
		sawStart = sawStart || strings.Contains(line, `"msg":"session start"`)
		sawData = sawData || strings.Contains(line, `"line":"DATA"`)
	}
	ev.Body.Close()
	if !sawStart || !sawData {
		t.Fatalf("beta's event stream lacks the demo's MX session (start %v, DATA %v)", sawStart, sawData)
	}
	// Mail alice submits by hand arrives in bob's list on the console.
	sub := regexp.MustCompile(`alice's login \(submission at (\S+), STARTTLS\)`).FindStringSubmatch(out)
	if sub == nil {
		t.Fatalf("no submission address:\n%s", out)
	}
	if _, err := submit(sctx, submission{
		addr: sub[1], mode: tlsStartTLS, tls: &tls.Config{InsecureSkipVerify: true}, helo: "web-test",
		user: "alice@alpha.test", password: "alice-demo-password", from: "alice@alpha.test",
		to: []string{"bob@beta.test"}, msg: []byte("Subject: seen in the browser\r\n\r\nHello Bob\r\n"),
	}); err != nil {
		t.Fatalf("submission: %v", err)
	}
	for i := 0; ; i++ {
		_, body := get("/mail")
		if strings.Contains(body, "seen in the browser") {
			break
		}
		if i == 300 {
			t.Fatalf("the message never showed in bob's console:\n%s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	select {
	case code := <-exited:
		if code != exitOK {
			t.Errorf("demo -web exit %d\n%s", code, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("demo -web did not stop")
	}
}
