package mime

import (
	"bytes"
	"errors"
	"fmt"
	stdmime "mime"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/emersion/go-message/mail"
)

// Attachment is a file to attach to a composed message.
type Attachment struct {
	Filename    string
	ContentType string // empty: from the file name's extension, else sniffed from the data
	Data        []byte
}

// Draft is a message to compose: addresses may carry display names
// ("Alice <alice@example.com>") and the subject and names may be any UTF-8.
type Draft struct {
	From        string
	To, Cc      []string
	Subject     string
	Text        string // the body, sent as text/plain; charset=utf-8
	Attachments []Attachment
	Date        time.Time // zero: now
	Hostname    string    // the right-hand side of the generated Message-ID
}

// Compose builds an RFC 5322 message with MIME (RFC 2045-2049): header
// fields encoded per RFC 2047 where they are not ASCII, the text as
// quoted-printable, attachments as base64 in a multipart/mixed, and a
// Date and Message-ID. Line ends are CRLF.
func Compose(d Draft) ([]byte, error) {
	var h mail.Header
	from, err := mail.ParseAddress(d.From)
	if err != nil {
		return nil, fmt.Errorf("compose: From %q: %w", d.From, err)
	}
	h.SetAddressList("From", []*mail.Address{from})
	for _, field := range []struct {
		name  string
		addrs []string
	}{{"To", d.To}, {"Cc", d.Cc}} {
		if len(field.addrs) == 0 {
			continue
		}
		list := make([]*mail.Address, len(field.addrs))
		for i, a := range field.addrs {
			if list[i], err = mail.ParseAddress(a); err != nil {
				return nil, fmt.Errorf("compose: %s %q: %w", field.name, a, err)
			}
		}
		h.SetAddressList(field.name, list)
	}
	if len(d.To) == 0 && len(d.Cc) == 0 {
		return nil, errors.New("compose: no To or Cc recipient")
	}
	if strings.ContainsAny(d.Subject, "\r\n") {
		return nil, fmt.Errorf("compose: subject %q has a line break", d.Subject)
	}
	h.Set("Subject", encodeWords(d.Subject))
	date := d.Date
	if date.IsZero() {
		date = time.Now()
	}
	h.SetDate(date)
	hostname := d.Hostname
	if hostname == "" {
		hostname = "localhost"
	}
	if err := h.GenerateMessageIDWithHostname(hostname); err != nil {
		return nil, fmt.Errorf("compose: Message-ID: %w", err)
	}
	h.Set("MIME-Version", "1.0")

	text := toCRLFString(d.Text)
	var buf bytes.Buffer
	if len(d.Attachments) == 0 {
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Content-Transfer-Encoding", "quoted-printable")
		w, err := mail.CreateSingleInlineWriter(&buf, h)
		if err != nil {
			return nil, fmt.Errorf("compose: %w", err)
		}
		if _, err := w.Write([]byte(text)); err != nil {
			return nil, fmt.Errorf("compose: %w", err)
		}
		if err := w.Close(); err != nil {
			return nil, fmt.Errorf("compose: %w", err)
		}
		return buf.Bytes(), nil
	}
	mw, err := mail.CreateWriter(&buf, h)
	if err != nil {
		return nil, fmt.Errorf("compose: %w", err)
	}
	var th mail.InlineHeader
	th.Set("Content-Type", "text/plain; charset=utf-8")
	tw, err := mw.CreateSingleInline(th)
	if err != nil {
		return nil, fmt.Errorf("compose: %w", err)
	}
	if _, err := tw.Write([]byte(text)); err != nil {
		return nil, fmt.Errorf("compose: %w", err)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("compose: %w", err)
	}
	for _, a := range d.Attachments {
		var ah mail.AttachmentHeader
		ah.Set("Content-Type", attachmentType(a))
		ah.SetFilename(filepath.Base(a.Filename))
		aw, err := mw.CreateAttachment(ah)
		if err != nil {
			return nil, fmt.Errorf("compose: attachment %s: %w", a.Filename, err)
		}
		if _, err := aw.Write(a.Data); err != nil {
			return nil, fmt.Errorf("compose: attachment %s: %w", a.Filename, err)
		}
		if err := aw.Close(); err != nil {
			return nil, fmt.Errorf("compose: attachment %s: %w", a.Filename, err)
		}
	}
	if err := mw.Close(); err != nil {
		return nil, fmt.Errorf("compose: %w", err)
	}
	return buf.Bytes(), nil
}

// attachmentType picks an attachment's media type: the one given, the
// registered type of its extension, or what its first bytes look like.
func attachmentType(a Attachment) string {
	if a.ContentType != "" {
		return a.ContentType
	}
	if t := stdmime.TypeByExtension(strings.ToLower(filepath.Ext(a.Filename))); t != "" {
		return t
	}
	return http.DetectContentType(a.Data)
}

// toCRLFString gives every line of s a CRLF end.
func toCRLFString(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	return strings.ReplaceAll(s, "\n", "\r\n")
}

// maxEncodedWord bounds the encoded-words encodeWords writes, so that
// even the first, after "Subject: ", fits a 76-character line (RFC 2047 2).
const maxEncodedWord = 60

// encodeWords writes a header field's text as RFC 2047 encoded-words when
// it is not plain ASCII: Q-encoded UTF-8, whole characters in each word,
// words short enough to fold between them. Spaces of the text are inside
// the words (as "_"), since the space between two encoded-words is not
// part of the text (RFC 2047 6.2).
func encodeWords(s string) string {
	plain := true
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			plain = false
			break
		}
	}
	if plain {
		return s
	}
	const prefix, suffix = "=?utf-8?q?", "?="
	var words []string
	var cur strings.Builder
	for _, r := range s {
		var enc strings.Builder
		for _, b := range []byte(string(r)) {
			switch {
			case b == ' ':
				enc.WriteByte('_')
			case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9', strings.IndexByte("!*+-/", b) >= 0:
				enc.WriteByte(b)
			default:
				fmt.Fprintf(&enc, "=%02X", b)
			}
		}
		if cur.Len() > 0 && len(prefix)+cur.Len()+enc.Len()+len(suffix) > maxEncodedWord {
			words = append(words, prefix+cur.String()+suffix)
			cur.Reset()
		}
		cur.WriteString(enc.String())
	}
	if cur.Len() > 0 {
		words = append(words, prefix+cur.String()+suffix)
	}
	return strings.Join(words, " ")
}
