package console

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// browserPath finds Debian's chromium; the test skips without it unless
// POSTERN_REQUIRE_INTEROP=1.
func browserPath(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("POSTERN_REQUIRE_INTEROP") == "1" {
		t.Fatal("chromium not installed (apt-get install chromium) and POSTERN_REQUIRE_INTEROP=1")
	}
	t.Skip("chromium not installed")
	return ""
}

// startBrowser starts headless chromium (exe) on url. The context it
// returns bounds what follows by timeout; shot saves a full-page PNG
// screenshot as name.png in dir, a temporary directory unless
// POSTERN_SCREENSHOT_DIR names one to look at them.
func startBrowser(t *testing.T, exe, url string, timeout time.Duration) (ctx context.Context, dir string, shot func(name string)) {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.WindowSize(1200, 900))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	bctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	// The first call starts the browser and must not have a timeout.
	if err := chromedp.Do(bctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	ctx, cancel = context.WithTimeout(bctx, timeout)
	t.Cleanup(cancel)
	dir = t.TempDir()
	if d := os.Getenv("POSTERN_SCREENSHOT_DIR"); d != "" {
		dir = d
	}
	shot = func(name string) {
		t.Helper()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return ctx, dir, shot
}

// TestConsoleInBrowser logs in as alice in headless chromium, watches
// /flow while a message is submitted, and opens the message with its
// MIME tree. A screenshot of each page is checked to be a PNG.
func TestConsoleInBrowser(t *testing.T) {
	exe := browserPath(t)
	e := startWeb(t, withSubmit(t))
	ctx, dir, shot := startBrowser(t, exe, e.base+"/login", 60*time.Second)
	steps := []struct {
		name string
		a    chromedp.Action[chromedp.Void]
	}{
		{"login form", chromedp.WaitVisible(chromedp.ID("address"))},
		{"type address", chromedp.SendKeys(chromedp.ID("address"), "alice@example.test")},
		{"type password", chromedp.SendKeys(chromedp.ID("password"), testPassword)},
		{"submit", chromedp.Submit(chromedp.ID("password"))},
		{"mail page", chromedp.WaitVisible(chromedp.CSS("table.messages"))},
		{"open /flow", chromedp.Navigate(e.base + "/flow")},
		{"flow page", chromedp.WaitVisible(chromedp.ID("sessions"))},
		{"stream live", chromedp.Poll[chromedp.Void](`document.getElementById('status').textContent.startsWith('Live')`, chromedp.WithPollingTimeout(10*time.Second))},
	}
	for _, st := range steps {
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		err := chromedp.Do(sctx, st.a)
		scancel()
		if err != nil {
			where, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText`))
			t.Fatalf("%s: %v; page %s", st.name, err, where)
		}
	}
	// A message submitted now appears as a session within 2 s.
	msg := "From: alice@example.test\r\nTo: bob@example.test\r\nSubject: watched\r\n\r\nHello.\r\n"
	if err := e.srv.cfg.Submit(context.Background(), "alice@example.test", "alice@example.test", []string{"bob@example.test"}, strings.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
	err := chromedp.Do(ctx,
		chromedp.Poll[chromedp.Void](`document.querySelectorAll('#sessions li.closed').length > 0`, chromedp.WithPollingTimeout(2*time.Second)),
		chromedp.Click(chromedp.CSS("#sessions li button")),
	)
	if err != nil {
		t.Fatalf("flow did not show the session within 2s: %v", err)
	}
	rows, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("sessions")))
	if err != nil {
		t.Fatal(err)
	}
	shot("flow")
	if !strings.Contains(rows, "MAIL FROM:<alice@example.test>") || !strings.Contains(rows, "closed") {
		t.Fatalf("flow rows:\n%s", rows)
	}
	// The message view with its MIME tree.
	if _, err := e.store.Deliver(context.Background(), "bob@example.test", []string{"alice@example.test"}, hostileMessage()); err != nil {
		t.Fatal(err)
	}
	err = chromedp.Do(ctx,
		chromedp.Navigate(e.base+"/mail/msg?box=INBOX&uid=1"),
		chromedp.WaitReady(chromedp.CSS("table.mime")),
		chromedp.Click(chromedp.CSS("details summary")), // open the MIME structure
		chromedp.WaitVisible(chromedp.CSS("table.mime")),
	)
	if err != nil {
		t.Fatalf("message view: %v", err)
	}
	tree, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS("table.mime")))
	if err != nil {
		t.Fatal(err)
	}
	shot("message")
	if !strings.Contains(tree, "multipart/alternative") || !strings.Contains(tree, "text/html") {
		t.Fatalf("MIME tree:\n%s", tree)
	}
	for _, name := range []string{"flow", "message"} {
		b, err := os.ReadFile(filepath.Join(dir, name+".png"))
		if err != nil || len(b) < 100 || !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
			t.Errorf("screenshot %s: not a PNG (%v)", name, err)
		}
	}
}
