package console

// Compose, reply and forward. The message goes out through Config.Submit,
// the submission pipeline of port 587 (From policy, DKIM signing, limits,
// local delivery or queue), and a copy is kept in the user's Sent mailbox.

import (
	"bytes"
	"context"
	"errors"
	"io"
	stdmime "mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mime"
)

const (
	maxAttachments = 20
	maxRecipients  = 100
	// maxFieldBytes bounds each one-line field of the compose form (to,
	// cc, subject, the thread fields); the body and the attachments are
	// bounded by maxComposeBytes.
	maxFieldBytes = 8 << 10
	// maxFilename bounds an attachment's file name, in bytes.
	maxFilename = 200
)

type composeData struct {
	From, To, Cc, Subject, Body string
	InReplyTo, References       string
	ReplyBox, ReplyUID          string // the message answered: flagged \Answered
	FwdBox, FwdUID              string // the message forwarded: attached
	Error, Sent                 string
}

func (s *Server) composePage(w http.ResponseWriter, r *http.Request, u *user) {
	q := r.URL.Query()
	d := composeData{From: u.Address, To: q.Get("to")}
	if q.Get("sent") == "1" {
		d.Sent = "Message sent."
	}
	mode := q.Get("mode") // "reply", "replyall", "forward"
	if mode != "" {
		ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
		defer cancel()
		mb, m, raw, ok := s.messageBody(ctx, w, u, q)
		if !ok {
			return
		}
		parts, h, _ := parseParts(raw[:min(len(raw), maxViewBytes)])
		fillReply(&d, mode, mail.Header{Header: message.Header{Header: h}}, parts, u.Address)
		if mode == "forward" {
			d.FwdBox, d.FwdUID = mb.Name, strconv.FormatUint(uint64(m.UID), 10)
		} else {
			d.ReplyBox, d.ReplyUID = mb.Name, strconv.FormatUint(uint64(m.UID), 10)
		}
	}
	s.render(w, http.StatusOK, "compose", u, d)
}

// fillReply prepares a reply or a forward of the message with header h:
// RFC 5322 3.6.4: In-Reply-To is the parent's Message-ID, References the
// parent's References (or In-Reply-To) followed by its Message-ID.
func fillReply(d *composeData, mode string, h mail.Header, parts []Part, self string) {
	subject := mime.HeaderText(h.Get("Subject"))
	var quoted string
	for _, p := range parts {
		if p.ContentType == "text/plain" && p.Text != "" {
			quoted = p.Text
			break
		}
	}
	if mode == "forward" {
		if !strings.HasPrefix(strings.ToLower(subject), "fwd:") {
			subject = "Fwd: " + subject
		}
		d.Subject = subject
		d.Body = "\n\n---------- Forwarded message ----------\nFrom: " + mime.HeaderText(h.Get("From")) +
			"\nDate: " + h.Get("Date") + "\nSubject: " + mime.HeaderText(h.Get("Subject")) + "\n\n" + quoted
		return
	}
	if !strings.HasPrefix(strings.ToLower(subject), "re:") {
		subject = "Re: " + subject
	}
	d.Subject = subject
	to := h.Get("Reply-To")
	if to == "" {
		to = h.Get("From")
	}
	d.To = addressesOf(to, "")
	if mode == "replyall" {
		d.Cc = addressesOf(h.Get("To")+","+h.Get("Cc"), self)
	}
	if id, err := h.MessageID(); err == nil && id != "" {
		d.InReplyTo = "<" + id + ">"
		refs, _ := h.MsgIDList("References")
		if len(refs) == 0 {
			refs, _ = h.MsgIDList("In-Reply-To")
		}
		var b []string
		for _, r := range refs[:min(len(refs), 50)] {
			b = append(b, "<"+r+">")
		}
		d.References = strings.Join(append(b, d.InReplyTo), " ")
	}
	var qb strings.Builder
	qb.WriteString("\n\nOn " + h.Get("Date") + ", " + mime.HeaderText(h.Get("From")) + " wrote:\n")
	for _, line := range strings.Split(strings.TrimRight(quoted, "\r\n"), "\n") {
		qb.WriteString("> " + strings.TrimRight(line, "\r") + "\n")
	}
	d.Body = qb.String()
}

// addressesOf lists the addresses of a header value, without skip.
func addressesOf(v, skip string) string {
	list, _ := mail.ParseAddressList(strings.Trim(unfoldValue(v), ", "))
	var out []string
	for _, a := range list {
		if !strings.EqualFold(a.Address, skip) && len(out) < maxRecipients {
			out = append(out, a.Address)
		}
	}
	return strings.Join(out, ", ")
}

func unfoldValue(v string) string { return strings.NewReplacer("\r\n", "", "\n", "").Replace(v) }

// splitAddresses parses a comma-separated list of addresses as typed.
func splitAddresses(v string) ([]string, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return nil, nil
	}
	list, err := mail.ParseAddressList(v)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(list))
	for i, a := range list {
		out[i] = a.String()
	}
	return out, nil
}

func (s *Server) compose(w http.ResponseWriter, r *http.Request, u *user) {
	d := composeData{From: u.Address, To: r.PostFormValue("to"), Cc: r.PostFormValue("cc"),
		Subject: r.PostFormValue("subject"), Body: r.PostFormValue("body"),
		InReplyTo: r.PostFormValue("in_reply_to"), References: r.PostFormValue("references"),
		ReplyBox: r.PostFormValue("reply_box"), ReplyUID: r.PostFormValue("reply_uid"),
		FwdBox: r.PostFormValue("fwd_box"), FwdUID: r.PostFormValue("fwd_uid")}
	bad := func(code int, msg string) {
		d.Error = msg
		s.render(w, code, "compose", u, d)
	}
	if s.cfg.Submit == nil {
		bad(http.StatusServiceUnavailable, "Sending is not available on this server.")
		return
	}
	for _, f := range []struct{ name, v string }{{"To", d.To}, {"Cc", d.Cc}, {"Subject", d.Subject},
		{"In-Reply-To", d.InReplyTo}, {"References", d.References}} {
		if len(f.v) > maxFieldBytes {
			bad(http.StatusRequestEntityTooLarge, f.name+" is too long.")
			return
		}
		// A line break would start a header field of the sender's
		// choosing (RFC 5322 2.2: fields end at CRLF).
		if strings.ContainsAny(f.v, "\r\n\x00") {
			bad(http.StatusBadRequest, f.name+" may not contain a line break.")
			return
		}
	}
	to, err := splitAddresses(d.To)
	if err != nil {
		bad(http.StatusBadRequest, "To: "+err.Error())
		return
	}
	cc, err := splitAddresses(d.Cc)
	if err != nil {
		bad(http.StatusBadRequest, "Cc: "+err.Error())
		return
	}
	if len(to)+len(cc) == 0 || len(to)+len(cc) > maxRecipients {
		bad(http.StatusBadRequest, "Give between 1 and "+strconv.Itoa(maxRecipients)+" recipients.")
		return
	}
	draft := mime.Draft{From: u.Address, To: to, Cc: cc, Subject: d.Subject,
		Text: strings.ReplaceAll(d.Body, "\r\n", "\n"), Date: time.Now()}
	if r.MultipartForm != nil {
		for _, fh := range r.MultipartForm.File["attachment"] {
			if len(draft.Attachments) >= maxAttachments {
				bad(http.StatusBadRequest, "Too many attachments.")
				return
			}
			f, err := fh.Open()
			if err != nil {
				bad(http.StatusBadRequest, "Attachment: "+err.Error())
				return
			}
			data, err := io.ReadAll(io.LimitReader(f, maxComposeBytes))
			f.Close()
			if err != nil {
				bad(http.StatusBadRequest, "Attachment: "+err.Error())
				return
			}
			draft.Attachments = append(draft.Attachments, mime.Attachment{Filename: safeFilename(fh.Filename),
				ContentType: attachmentType(fh.Header.Get("Content-Type")), Data: data})
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*storeTimeout)
	defer cancel()
	if d.FwdUID != "" {
		_, m, err := s.message(ctx, u, url.Values{"box": {d.FwdBox}, "uid": {d.FwdUID}})
		if err == nil {
			raw, err := s.cfg.Store.ReadBody(ctx, m.BodyID)
			if err == nil {
				draft.Attachments = append(draft.Attachments, mime.Attachment{Filename: "forwarded.eml",
					ContentType: "message/rfc822", Data: raw})
			}
		}
	}
	msg, err := mime.Compose(draft)
	if err != nil {
		bad(http.StatusBadRequest, err.Error())
		return
	}
	msg = threadFields(d.InReplyTo, d.References, msg)
	if err := s.cfg.Submit(ctx, u.Address, u.Address, append(addrOnly(to), addrOnly(cc)...), bytes.NewReader(msg)); err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			bad(http.StatusBadRequest, "Refused: "+strconv.Itoa(se.Code)+" "+se.Message)
			return
		}
		s.log.Error("console: submit failed", "user", u.Address, "err", err)
		bad(http.StatusInternalServerError, "The message could not be sent: "+err.Error())
		return
	}
	s.afterSend(ctx, u, d, msg)
	http.Redirect(w, r, "/compose?sent=1", http.StatusSeeOther)
}

// safeFilename makes the file name a browser sent fit for a MIME
// parameter: its last path element, no control characters (RFC 2183 2.3
// leaves them to the receiver; a line break would end the header field),
// at most maxFilename bytes of valid UTF-8.
func safeFilename(name string) string {
	if i := strings.LastIndexAny(name, "/\\"); i >= 0 {
		name = name[i+1:]
	}
	name = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || unicode.Is(unicode.Cc, r) {
			return -1
		}
		return r
	}, strings.ToValidUTF8(name, ""))
	for len(name) > maxFilename {
		_, n := utf8.DecodeLastRuneInString(name)
		name = name[:len(name)-n]
	}
	name = strings.TrimSpace(name)
	if name == "" || name == "." || name == ".." {
		name = "attachment"
	}
	return name
}

// attachmentType keeps the media type a browser sent for a file when it
// is a well-formed single-part type, without its parameters; otherwise
// "" lets mime.Compose pick one from the name or the content. A
// multipart or message type would make the file's bytes parse as MIME
// structure at the recipient (RFC 2046 5).
func attachmentType(ct string) string {
	mt, _, err := stdmime.ParseMediaType(ct)
	if err != nil || strings.HasPrefix(mt, "multipart/") || strings.HasPrefix(mt, "message/") {
		return ""
	}
	return mt
}

// threadFields puts In-Reply-To and References in front of a composed
// message, when they are well formed message identifiers.
func threadFields(inReplyTo, references string, msg []byte) []byte {
	var h mail.Header
	var add string
	h.Set("In-Reply-To", inReplyTo)
	h.Set("References", references)
	if ids, err := h.MsgIDList("In-Reply-To"); err == nil && len(ids) == 1 {
		add += "In-Reply-To: <" + ids[0] + ">\r\n"
		refs, _ := h.MsgIDList("References")
		if len(refs) > 0 {
			add += "References:"
			for _, r := range refs[:min(len(refs), 50)] {
				add += "\r\n <" + r + ">" // folded, one per line (RFC 5322 2.2.3)
			}
			add += "\r\n"
		}
	}
	return append([]byte(add), msg...)
}

func addrOnly(list []string) []string {
	out := make([]string, 0, len(list))
	for _, a := range list {
		if p, err := mail.ParseAddress(a); err == nil {
			out = append(out, p.Address)
		}
	}
	return out
}

// afterSend keeps a copy in Sent and marks the answered message.
func (s *Server) afterSend(ctx context.Context, u *user, d composeData, msg []byte) {
	st := s.cfg.Store
	if sent, err := s.specialUse(ctx, u, `\Sent`); err == nil {
		if _, err := st.Append(ctx, sent.ID, []string{mailstore.FlagSeen}, time.Now(), msg); err != nil {
			s.log.Warn("console: copy to Sent failed", "user", u.Address, "err", err)
		}
	}
	if d.ReplyUID != "" {
		if mb, m, err := s.message(ctx, u, url.Values{"box": {d.ReplyBox}, "uid": {d.ReplyUID}}); err == nil {
			st.StoreFlags(ctx, mb.ID, mailstore.UIDs(m.UID), mailstore.FlagsAdd, []string{mailstore.FlagAnswered})
		}
	}
}
