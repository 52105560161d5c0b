package console

import (
	"bytes"
	"context"
	"net"
	"net/smtp"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/postern/postern/imapd"
	"github.com/postern/postern/smtpd"
)

// serveMailFor starts, next to the console of c, an SMTP MX and an IMAP
// server over the same store and logger (so the Hub sees their sessions)
// on loopback, and returns their addresses.
func serveMailFor(t *testing.T, c *Config) (mx, imapAddr string) {
	t.Helper()
	mxSrv := smtpd.New(smtpd.Config{Hostname: "mail.example.test", Logger: c.Logger, Trace: true}, c.Store)
	imapSrv := imapd.New(imapd.Config{Hostname: "mail.example.test", Logger: c.Logger, Trace: true}, c.Store)
	l1, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go mxSrv.ServeMX(l1)
	go imapSrv.Serve(l2)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		mxSrv.Shutdown(ctx)
		imapSrv.Shutdown(ctx)
	})
	return l1.Addr().String(), l2.Addr().String()
}

// TestConsoleInBrowserFlowReply is the console's end-to-end test in
// chromium: bob logs in and opens /flow; a message delivered over SMTP by
// the test shows as a session and a message within 2 s; bob opens it and
// its MIME tree is shown; he replies from the browser, and the reply
// arrives in alice's INBOX, read over IMAP with its thread fields. Each
// page is saved as a PNG screenshot.
func TestConsoleInBrowserFlowReply(t *testing.T) {
	exe := browserPath(t)
	var mxAddr, imapAddr string
	e := startWeb(t, func(c *Config) {
		withSubmit(t)(c)
		mxAddr, imapAddr = serveMailFor(t, c)
	})
	ctx, dir, saveShot := startBrowser(t, exe, e.base+"/login", 90*time.Second)
	var shots []string
	shot := func(name string) {
		t.Helper()
		saveShot(name)
		shots = append(shots, name)
	}
	step := func(name string, timeout time.Duration, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, timeout)
		defer scancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			where, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText`))
			t.Fatalf("%s: %v; page %s", name, err, where)
		}
	}
	step("log in as bob", 15*time.Second,
		chromedp.WaitVisible(chromedp.ID("address")),
		chromedp.SendKeys(chromedp.ID("address"), "bob@example.test"),
		chromedp.SendKeys(chromedp.ID("password"), testPassword),
		chromedp.Submit(chromedp.ID("password")),
		chromedp.WaitVisible(chromedp.CSS("table.messages")))
	shot("login-mail")
	step("open /flow", 15*time.Second,
		chromedp.Navigate(e.base+"/flow"),
		chromedp.WaitVisible(chromedp.ID("sessions")),
		chromedp.Poll[chromedp.Void](`document.getElementById('status').textContent.startsWith('Live')`))

	// Delivered over SMTP to the MX, as another server would.
	msg := "From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: Watched in the browser\r\n" +
		"Message-ID: <watched.1@example.test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=M\r\n\r\n" +
		"--M\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe agenda is attached.\r\n" +
		"--M\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=agenda.pdf\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--M--\r\n"
	if err := smtp.SendMail(mxAddr, nil, "alice@example.test", []string{"bob@example.test"}, []byte(msg)); err != nil {
		t.Fatalf("SMTP delivery: %v", err)
	}
	// Bob sees the delivery's session open and close and the message's
	// timeline; not its protocol lines, which name every recipient.
	step("the delivery shows within 2 s", 2*time.Second,
		chromedp.Poll[chromedp.Void](`document.querySelectorAll('#sessions li.closed').length > 0 && [...document.querySelectorAll('#messages li')].some(li => li.textContent.includes('to=bob@example.test'))`))
	shot("flow")
	timeline, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("messages")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(timeline, "message accepted") || !strings.Contains(timeline, "from=alice@example.test") {
		t.Fatalf("message timeline:\n%s", timeline)
	}

	step("open the message", 15*time.Second,
		chromedp.Navigate(e.base+"/mail"),
		chromedp.WaitVisible(chromedp.CSS("table.messages")),
		chromedp.Click(chromedp.CSS(`table.messages a[href*="uid=1"]`)),
		chromedp.WaitReady(chromedp.CSS("table.mime")),
		chromedp.Click(chromedp.CSS("details summary")),
		chromedp.WaitVisible(chromedp.CSS("table.mime")))
	tree, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS("table.mime")))
	if err != nil {
		t.Fatal(err)
	}
	shot("message")
	for _, want := range []string{"multipart/mixed", "text/plain", "application/pdf", "agenda.pdf", "base64"} {
		if !strings.Contains(tree, want) {
			t.Errorf("MIME tree lacks %q:\n%s", want, tree)
		}
	}

	step("reply", 15*time.Second,
		chromedp.Click(chromedp.CSS(`a[href*="mode=reply&"]`)),
		chromedp.WaitVisible(chromedp.ID("cbody")),
		chromedp.SendKeys(chromedp.ID("cbody"), "Thanks, I will be there.\n"))
	shot("compose")
	step("send", 20*time.Second,
		chromedp.Click(chromedp.CSS(`form[action="/compose"] button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("p.notice")))
	if notice, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("p.notice"))); err != nil || notice != "Message sent." {
		t.Fatalf("after send: %q %v", notice, err)
	}
	shot("sent")

	// The reply in alice's INBOX, over IMAP.
	conn, err := net.DialTimeout("tcp", imapAddr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(time.Minute))
	c := imapclient.New(conn, nil)
	defer c.Close()
	if err := c.Login("alice@example.test", testPassword).Wait(); err != nil {
		t.Fatalf("IMAP LOGIN: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("IMAP SELECT: %v", err)
	}
	body := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{Envelope: true, BodySection: []*imap.FetchItemBodySection{body}}).Collect()
	if err != nil || len(msgs) != 1 || msgs[0].Envelope == nil {
		t.Fatalf("IMAP FETCH: %d messages, %v", len(msgs), err)
	}
	env := msgs[0].Envelope
	if env.Subject != "Re: Watched in the browser" || len(env.InReplyTo) != 1 || env.InReplyTo[0] != "watched.1@example.test" ||
		len(env.From) != 1 || env.From[0].Addr() != "bob@example.test" {
		t.Errorf("reply's envelope: %+v", env)
	}
	raw := msgs[0].FindBodySection(body)
	if !bytes.Contains(raw, []byte("Thanks, I will be there.")) || !bytes.Contains(raw, []byte("> The agenda is attached.")) {
		t.Errorf("reply's text:\n%s", raw)
	}
	c.Logout().Wait()

	for _, name := range shots {
		b, err := os.ReadFile(filepath.Join(dir, name+".png"))
		if err != nil || len(b) < 100 || !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
			t.Errorf("screenshot %s: not a PNG (%v)", name, err)
		}
	}
	if len(shots) != 5 {
		t.Errorf("%d screenshots, want 5", len(shots))
	}
}
