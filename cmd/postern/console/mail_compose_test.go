package console

import (
	"bytes"
	"context"
	"html"
	"mime/multipart"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/smtpd"
	"github.com/postern/postern/smtpd/msgauth"
)

// withSubmit gives the console the submission pipeline of a real smtpd
// server that signs with example.test's keys.
func withSubmit(t *testing.T) func(*Config) {
	return func(c *Config) {
		if _, err := msgauth.AddGeneratedKeys(context.Background(), c.Store, "example.test", time.Now()); err != nil {
			t.Fatal(err)
		}
		srv := smtpd.New(smtpd.Config{Hostname: "mail.example.test", Logger: c.Logger, Trace: true,
			Signer: &msgauth.Signer{Keys: msgauth.StoreKeys{Store: c.Store}}}, c.Store)
		t.Cleanup(func() { srv.Shutdown(context.Background()) })
		c.Submit = srv.Submit
	}
}

var hiddenRE = regexp.MustCompile(`name="([a-z_]+)" value="([^"]*)"`)

// formFields are the hidden and text inputs of a page.
func formFields(page string) url.Values {
	v := url.Values{}
	for _, m := range hiddenRE.FindAllStringSubmatch(page, -1) {
		v.Set(m[1], html.UnescapeString(m[2]))
	}
	return v
}

func (b *browser) postMultipart(path string, v url.Values, file, content string) (int, string) {
	b.t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	v.Set("csrf", b.csrf)
	for k, vs := range v {
		for _, x := range vs {
			mw.WriteField(k, x)
		}
	}
	if file != "" {
		fw, _ := mw.CreateFormFile("attachment", file)
		fw.Write([]byte(content))
	}
	mw.Close()
	req, _ := http.NewRequest("POST", b.env.base+path, &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out bytes.Buffer
	out.ReadFrom(resp.Body)
	return resp.StatusCode, out.String()
}

func inboxOf(t *testing.T, e *webEnv, addr, box string) [][]byte {
	t.Helper()
	ctx := context.Background()
	mb, err := e.store.MailboxByName(ctx, mustUser(t, e, addr).ID, box)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := e.store.Messages(ctx, mb.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, m := range msgs {
		b, err := e.store.ReadBody(ctx, m.BodyID)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// TestConsoleReplyThroughSubmit: bob replies to alice from the console;
// the reply goes through the submission pipeline (signed, trace fields),
// reaches alice's INBOX with In-Reply-To and References, the original is
// marked \Answered and a copy is in bob's Sent.
func TestConsoleReplyThroughSubmit(t *testing.T) {
	e := startWeb(t, withSubmit(t))
	ctx := context.Background()
	orig := "From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: Plans\r\n" +
		"Message-ID: <plans.2@example.test>\r\nReferences: <plans.1@example.test>\r\n\r\nLunch at noon?\r\n"
	if _, err := e.store.Deliver(ctx, "alice@example.test", []string{"bob@example.test"}, []byte(orig)); err != nil {
		t.Fatal(err)
	}
	b := e.browser(t)
	if b.login("bob@example.test", testPassword) != http.StatusSeeOther {
		t.Fatal("login failed")
	}
	code, _, page := b.do("GET", "/compose?mode=reply&box=INBOX&uid=1", nil, nil)
	if code != 200 {
		t.Fatalf("reply page: %d", code)
	}
	f := formFields(page)
	if f.Get("in_reply_to") != "<plans.2@example.test>" || f.Get("references") != "<plans.1@example.test> <plans.2@example.test>" {
		t.Fatalf("reply fields: %v", f)
	}
	f.Set("to", "alice@example.test")
	f.Set("subject", "Re: Plans")
	f.Set("body", "Yes.\n\n> Lunch at noon?\n")
	code, body := b.postMultipart("/compose", f, "menu.txt", "soup\n")
	if code != http.StatusSeeOther {
		t.Fatalf("send: %d\n%s", code, body)
	}
	got := inboxOf(t, e, "alice@example.test", "INBOX")
	if len(got) != 1 {
		t.Fatalf("alice has %d messages, want 1", len(got))
	}
	m := string(got[0])
	for _, want := range []string{"DKIM-Signature:", "(Authenticated sender: bob@example.test)", "In-Reply-To: <plans.2@example.test>",
		"References:\r\n <plans.1@example.test>\r\n <plans.2@example.test>", "From: <bob@example.test>", "menu.txt", "Subject: Re: Plans"} {
		if !strings.Contains(m, want) {
			t.Errorf("reply lacks %q:\n%s", want, m)
		}
	}
	inbox, _ := e.store.MailboxByName(ctx, mustUser(t, e, "bob@example.test").ID, "INBOX")
	msgs, _ := e.store.Messages(ctx, inbox.ID, nil)
	if !msgs[0].HasFlag(mailstore.FlagAnswered) {
		t.Errorf("original flags %v, want \\Answered", msgs[0].Flags)
	}
	if sent := inboxOf(t, e, "bob@example.test", "Sent"); len(sent) != 1 {
		t.Errorf("bob's Sent has %d, want 1", len(sent))
	}
	// A refusal of the pipeline is shown with its reply code.
	code, body = b.postMultipart("/compose", url.Values{"to": {"nobody@example.test"}, "subject": {"x"}, "body": {"x"}}, "", "")
	if code != http.StatusBadRequest || !strings.Contains(body, "Refused: 550") {
		t.Fatalf("send to an unknown local user: %d\n%s", code, body)
	}
}
