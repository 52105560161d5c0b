package main

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/smtpd/msgauth"
	"github.com/postern/postern/smtpd/msgauth/msgauthtest"
)

// serve signs at submission with the keys it made at start for the
// configured domain, checks on the MX through [dns] server, refuses a
// forgery of a domain with DMARC p=reject and one of our own domain
// (550 5.7.1), and accepts a remote sender whose SPF passes.
func TestServeSignsAndChecks(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	d.Add(t,
		`bank.test. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`_dmarc.bank.test. 300 IN TXT "v=DMARC1; p=reject"`,
		`friend.test. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"`,
	)
	r := startServeDNS(t, d.Addr, "")
	r.addUser(t, "alice@example.test", "alice's password")
	r.addUser(t, "bob@example.test", "bob's password")

	// Submission: alice to bob, delivered locally, signed.
	var out, errOut bytes.Buffer
	code := run([]string{"send", "-server", r.addrs["submission"], "-cafile", filepath.Join(r.dataDir, selfSignedCert),
		"-helo", "client.example.test", "-user", "alice@example.test", "-to", "bob@example.test", "-subject", "signed"},
		strings.NewReader("alice's password\nhi bob\n"), &out, &errOut)
	if code != exitOK {
		t.Fatalf("send: %d %s %s", code, out.String(), errOut.String())
	}
	// The forgery of bank.test from 127.0.0.1, not in its SPF: DMARC
	// p=reject refuses it.
	forged := "From: Bank <info@bank.test>\r\nTo: bob@example.test\r\nSubject: verify your account\r\n\r\nclick\r\n"
	err := sendPlain(r.addrs["smtp"], "info@bank.test", "bob@example.test", forged)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
		t.Errorf("forgery of bank.test: %v, want 550 5.7.1", err)
	}
	// Our own domain, unauthenticated, on the MX: refused.
	own := "From: alice@example.test\r\nTo: bob@example.test\r\nSubject: me\r\n\r\nhi\r\n"
	err = sendPlain(r.addrs["smtp"], "alice@example.test", "bob@example.test", own)
	if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
		t.Errorf("forgery of our own domain: %v, want 550 5.7.1", err)
	}
	// A remote sender whose SPF allows 127.0.0.1.
	ok := "From: pal@friend.test\r\nTo: bob@example.test\r\nSubject: hello\r\n\r\nhi\r\n"
	if err := sendPlain(r.addrs["smtp"], "pal@friend.test", "bob@example.test", ok); err != nil {
		t.Fatalf("friend.test: %v", err)
	}
	if code := r.stop(); code != exitOK {
		t.Fatalf("serve exited with %d\n%s", code, r.stderr.String())
	}

	st, err := mailstore.Open(filepath.Join(r.dataDir, storeFile), mailstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	keys, err := st.DKIMKeys(ctx, "example.test", true)
	if err != nil || len(keys) != 2 {
		t.Fatalf("serve made %d keys for example.test (%v), want 2", len(keys), err)
	}
	records := map[string]string{}
	for _, k := range keys {
		key, err := msgauth.ParsePrivateKey(k.Domain, k.Selector, k.Created, k.PrivatePEM)
		if err != nil {
			t.Fatal(err)
		}
		records[key.DNSName()] = key.DNSRecord()
	}
	msgs := inboxMessages(t, st, "bob@example.test")
	if len(msgs) != 2 {
		t.Fatalf("bob's INBOX: %d messages, want 2 (the signed one and friend.test's)", len(msgs))
	}
	var signed, checked []byte
	for _, m := range msgs {
		body, err := st.ReadBody(ctx, m.BodyID)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(body, []byte("Subject: signed")) {
			signed = body
		} else {
			checked = body
		}
	}
	// Both signatures verify against the keys' records.
	verifs, err := dkim.VerifyWithOptions(bytes.NewReader(signed), &dkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			if v, ok := records[strings.TrimSuffix(name, ".")]; ok {
				return []string{v}, nil
			}
			return nil, errors.New("no such record: " + name)
		},
	})
	if err != nil || len(verifs) != 2 {
		t.Fatalf("DKIM signatures of the submitted message: %d (%v), want 2\n%s", len(verifs), err, signed)
	}
	for _, v := range verifs {
		if v.Err != nil || v.Domain != "example.test" {
			t.Errorf("signature %s: %v", v.Domain, v.Err)
		}
	}
	if !strings.Contains(string(checked), "Authentication-Results: mail.example.test;") || !strings.Contains(string(checked), "spf=pass smtp.mailfrom=friend.test") {
		t.Errorf("friend.test's message:\n%s", checked)
	}
}

// A message failing DMARC for a domain with p=quarantine is accepted by
// serve's MX and lands in the recipient's Junk mailbox, which IMAP lists
// with \Junk; INBOX stays empty.
func TestServeQuarantineToJunk(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	d.Add(t,
		`shop.test. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`_dmarc.shop.test. 300 IN TXT "v=DMARC1; p=quarantine"`,
	)
	r := startServeDNS(t, d.Addr, "")
	r.addUser(t, "bob@example.test", "bob's password")
	forged := "From: Shop <news@shop.test>\r\nTo: bob@example.test\r\nSubject: a great offer\r\n\r\nbuy\r\n"
	if err := sendPlain(r.addrs["smtp"], "news@shop.test", "bob@example.test", forged); err != nil {
		t.Fatalf("quarantined message refused: %v", err)
	}
	c := imapLogin(t, r.addrs["imap"], "bob@example.test", "bob's password", nil)
	defer c.Close()
	boxes, err := c.List("", "*", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	junk := ""
	for _, b := range boxes {
		for _, a := range b.Attrs {
			if a == imap.MailboxAttrJunk {
				junk = b.Mailbox
			}
		}
	}
	if junk == "" {
		t.Fatalf("no mailbox with \\Junk in %+v", boxes)
	}
	sel, err := c.Select(junk, nil).Wait()
	if err != nil || sel.NumMessages != 1 {
		t.Fatalf("SELECT %s: %+v %v, want 1 message", junk, sel, err)
	}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{Specifier: imap.PartSpecifierHeader, Peek: true}}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("FETCH: %v", err)
	}
	var header []byte
	for _, b := range msgs[0].BodySection {
		header = b.Bytes
	}
	if !bytes.Contains(header, []byte("dmarc=fail")) {
		t.Errorf("the quarantined copy's header lacks dmarc=fail:\n%s", header)
	}
	if sel, err := c.Select("INBOX", nil).Wait(); err != nil || sel.NumMessages != 0 {
		t.Fatalf("INBOX: %+v %v, want empty", sel, err)
	}
	c.Logout().Wait()
}
