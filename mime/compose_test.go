package mime

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message/mail"
)

func TestComposeRoundTrip(t *testing.T) {
	pdf := append([]byte("%PDF-1.4\n"), bytes.Repeat([]byte{0, 1, 2, 0xff}, 5000)...)
	d := Draft{
		From:    "Zoë Example <zoe@alpha.test>",
		To:      []string{"bob@beta.test", "Ana <ana@beta.test>"},
		Cc:      []string{"carol@gamma.test"},
		Subject: "Grüße aus Köln — ünïcödé subject",
		Text:    "Hello,\nthis line has an ümlaut.\n.\nA dot line above.\n",
		Attachments: []Attachment{
			{Filename: "/tmp/report.pdf", Data: pdf},
			{Filename: "notes", Data: []byte("plain notes\n")},
		},
		Date:     time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC),
		Hostname: "mail.alpha.test",
	}
	raw, err := Compose(d)
	if err != nil {
		t.Fatal(err)
	}
	head := string(raw[:bytes.Index(raw, []byte("\r\n\r\n"))])
	for _, line := range strings.Split(head, "\r\n") {
		for _, c := range line {
			if c > 127 {
				t.Fatalf("header line not ASCII (RFC 2047 needed): %q", line)
			}
		}
	}
	if bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\n")) {
		t.Fatal("bare LF in composed message")
	}
	r, err := mail.CreateReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	subj, err := r.Header.Subject()
	if err != nil || subj != d.Subject {
		t.Errorf("subject %q (%v), want %q", subj, err, d.Subject)
	}
	from, _ := r.Header.AddressList("From")
	if len(from) != 1 || from[0].Name != "Zoë Example" || from[0].Address != "zoe@alpha.test" {
		t.Errorf("From %v", from)
	}
	to, _ := r.Header.AddressList("To")
	if len(to) != 2 {
		t.Errorf("To %v", to)
	}
	if date, err := r.Header.Date(); err != nil || !date.Equal(d.Date) {
		t.Errorf("Date %v %v", date, err)
	}
	if id, err := r.Header.MessageID(); err != nil || !strings.HasSuffix(id, "@mail.alpha.test") {
		t.Errorf("Message-ID %q %v", id, err)
	}
	var parts []string
	for {
		p, err := r.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(p.Body)
		switch h := p.Header.(type) {
		case *mail.InlineHeader:
			if string(body) != strings.ReplaceAll(d.Text, "\n", "\r\n") {
				t.Errorf("text %q", body)
			}
			parts = append(parts, "text")
		case *mail.AttachmentHeader:
			name, _ := h.Filename()
			ct, _, _ := h.ContentType()
			parts = append(parts, name+" "+ct)
			if name == "report.pdf" && !bytes.Equal(body, pdf) {
				t.Error("PDF attachment changed")
			}
			if enc := h.Get("Content-Transfer-Encoding"); enc != "base64" {
				t.Errorf("%s encoded as %q", name, enc)
			}
		}
	}
	if got := strings.Join(parts, ", "); got != "text, report.pdf application/pdf, notes text/plain" {
		t.Errorf("parts: %s", got)
	}
}

func TestComposeTextOnly(t *testing.T) {
	raw, err := Compose(Draft{From: "a@alpha.test", To: []string{"b@beta.test"}, Subject: "plain", Text: "hi\n"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := mail.CreateReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if ct, _, _ := r.Header.ContentType(); ct != "text/plain" {
		t.Errorf("content type %q", ct)
	}
	if _, err := Compose(Draft{From: "a@alpha.test", Subject: "x"}); err == nil {
		t.Error("composed a message without recipients")
	}
	if _, err := Compose(Draft{From: "not an address", To: []string{"b@beta.test"}}); err == nil {
		t.Error("composed with a bad From")
	}
}

// A long non-ASCII subject folds into lines of at most 76 characters, and
// reads back the same (RFC 2047 2, 6.2).
func TestComposeLongSubjectFolds(t *testing.T) {
	for _, subj := range []string{
		"Grüße aus Köln, a rather long subject line with umlauts äöü to trigger folding",
		strings.Repeat("héllo ", 60),
		"日本語のとても長い件名です。日本語のとても長い件名です。日本語のとても長い件名です。",
		"plain ASCII subject that is long enough to need folding somewhere along the way, surely",
	} {
		raw, err := Compose(Draft{From: "a@alpha.test", To: []string{"b@beta.test"}, Subject: subj, Text: "x"})
		if err != nil {
			t.Fatal(err)
		}
		head := string(raw[:bytes.Index(raw, []byte("\r\n\r\n"))])
		for _, line := range strings.Split(head, "\r\n") {
			if len(line) > 76 {
				t.Errorf("header line of %d characters: %q", len(line), line)
			}
		}
		r, err := mail.CreateReader(bytes.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := r.Header.Subject(); err != nil || got != subj {
			t.Errorf("subject read back as %q (%v), want %q", got, err, subj)
		}
	}
	if _, err := Compose(Draft{From: "a@alpha.test", To: []string{"b@beta.test"}, Subject: "two\r\nlines"}); err == nil {
		t.Error("a subject with a line break was accepted")
	}
}
