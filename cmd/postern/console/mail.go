package console

// Mail for users: mailboxes, message lists, reading, moving, deleting,
// flagging and searching, all through the mailstore API, so that IMAP
// sessions hear of every change through the store's change feed. A user
// reaches only mailboxes looked up under their own user ID.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	stdmime "mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"
	"github.com/microcosm-cc/bluemonday"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mime"
)

const (
	// pageSize is the number of messages on one page of a list.
	pageSize = 50
	// maxSearchConfirm bounds the messages a search reads to confirm the
	// index's candidates.
	maxSearchConfirm = 2000
	// maxViewBytes bounds a message the view parses (the raw source is
	// still offered whole).
	maxViewBytes = 8 << 20
	// maxParts bounds the MIME parts listed.
	maxParts = 200
	// maxPartText bounds the decoded text of one part shown.
	maxPartText = 1 << 20
)

func (s *Server) mailRoutes(h func(string, http.HandlerFunc)) {
	h("GET /mail", s.authed(s.mailList))
	h("GET /mail/msg", s.authed(s.mailView))
	h("GET /mail/raw", s.authed(s.mailRaw))
	h("GET /mail/part", s.authed(s.mailPart))
	h("POST /mail/act", s.authed(s.mailAct))
	s.mux.Handle("GET /mail/html", htmlFrame(s.authed(s.mailHTML)))
	h("GET /compose", s.authed(s.composePage))
	h("POST /compose", s.authed(s.compose))
}

// mailboxOf finds the user's own mailbox by name: users reach nothing else.
func (s *Server) mailboxOf(ctx context.Context, u *user, name string) (mailstore.Mailbox, error) {
	if name == "" {
		name = "INBOX"
	}
	return s.cfg.Store.MailboxByName(ctx, u.ID, name)
}

type boxRow struct {
	Name, SpecialUse string
	Messages, Unseen uint32
	Current          bool
}

type msgRow struct {
	UID                   uint32
	From, Subject, Date   string
	Size                  int64
	Seen, Flagged, Answer bool
}

type listData struct {
	Boxes            []boxRow
	Box, Query       string
	Rows             []msgRow
	Page, Pages      int
	Total            int
	Prev, Next       string
	Error            string
	MoveTargets      []string
	SearchWasLimited bool
}

func (s *Server) mailList(w http.ResponseWriter, r *http.Request, u *user) {
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	st := s.cfg.Store
	q := r.URL.Query()
	d := listData{Box: q.Get("box"), Query: strings.TrimSpace(q.Get("q"))}
	if d.Box == "" {
		d.Box = "INBOX"
	}
	boxes, err := st.Mailboxes(ctx, u.ID)
	if err != nil {
		s.fail(w, "list mailboxes", err)
		return
	}
	for _, b := range boxes {
		if b.NoSelect {
			continue
		}
		stat, err := st.Status(ctx, b.ID)
		if err != nil {
			s.fail(w, "mailbox status", err)
			return
		}
		d.Boxes = append(d.Boxes, boxRow{Name: b.Name, SpecialUse: b.SpecialUse, Messages: stat.Messages,
			Unseen: stat.Unseen, Current: b.Name == d.Box})
		if b.Name != d.Box {
			d.MoveTargets = append(d.MoveTargets, b.Name)
		}
	}
	mb, err := s.mailboxOf(ctx, u, d.Box)
	if err != nil {
		s.notFound(w, "no such mailbox", err)
		return
	}
	d.Page, _ = strconv.Atoi(q.Get("page"))
	var msgs []mailstore.Message // the page's, newest first
	if d.Query != "" {
		var found []mailstore.Message
		found, d.SearchWasLimited, err = s.search(ctx, mb.ID, d.Query)
		if err != nil {
			s.fail(w, "search messages", err)
			return
		}
		slices.Reverse(found) // newest first
		d.Total = len(found)
		d.Pages = max(1, (d.Total+pageSize-1)/pageSize)
		d.Page = min(max(d.Page, 0), d.Pages-1)
		msgs = found[min(d.Page*pageSize, d.Total):min((d.Page+1)*pageSize, d.Total)]
	} else {
		d.Total, d.Pages, d.Page, msgs, err = s.listPage(ctx, mb.ID, d.Page)
		if err != nil {
			s.fail(w, "list messages", err)
			return
		}
	}
	for _, m := range msgs {
		row := msgRow{UID: m.UID, Size: m.Size, Seen: m.HasFlag(mailstore.FlagSeen),
			Flagged: m.HasFlag(mailstore.FlagFlagged), Answer: m.HasFlag(mailstore.FlagAnswered),
			Date: m.InternalDate.Local().Format("2006-01-02 15:04")}
		if h, err := s.header(ctx, m.BodyID); err == nil {
			row.From = mime.HeaderText(h.Get("From"))
			row.Subject = mime.HeaderText(h.Get("Subject"))
		}
		if row.Subject == "" {
			row.Subject = "(no subject)"
		}
		d.Rows = append(d.Rows, row)
	}
	link := func(p int) string {
		return "/mail?box=" + url.QueryEscape(d.Box) + "&q=" + url.QueryEscape(d.Query) + "&page=" + strconv.Itoa(p)
	}
	if d.Page > 0 {
		d.Prev = link(d.Page - 1)
	}
	if d.Page < d.Pages-1 {
		d.Next = link(d.Page + 1)
	}
	s.render(w, http.StatusOK, "mail", u, d)
}

// listPage reads one page of a mailbox, newest first, without reading
// the records of the other pages: the mailbox's UIDs (one column) give the
// page's UID range, and the store reads the records of that range only.
func (s *Server) listPage(ctx context.Context, mailboxID int64, page int) (total, pages, cur int, msgs []mailstore.Message, err error) {
	uids, _, err := s.cfg.Store.MailboxUIDs(ctx, mailboxID)
	if err != nil {
		return 0, 1, 0, nil, err
	}
	total = len(uids)
	pages = max(1, (total+pageSize-1)/pageSize)
	cur = min(max(page, 0), pages-1)
	if total == 0 {
		return total, pages, cur, nil, nil
	}
	// Page 0 is the newest: the last pageSize UIDs.
	hi := total - 1 - cur*pageSize
	lo := max(0, hi-pageSize+1)
	msgs, err = s.cfg.Store.Messages(ctx, mailboxID, mailstore.UIDSet{{Start: uids[lo], Stop: uids[hi]}})
	if err != nil {
		return 0, 1, 0, nil, err
	}
	slices.Reverse(msgs)
	return total, pages, cur, msgs, nil
}

// search finds the messages whose text contains query, case-insensitive,
// as IMAP SEARCH TEXT does: the store's full-text index (the same Search
// IMAP uses) proposes candidates and each is confirmed by its text.
func (s *Server) search(ctx context.Context, mailboxID int64, query string) ([]mailstore.Message, bool, error) {
	cands, err := s.cfg.Store.Search(ctx, mailboxID, &mailstore.SearchCriteria{MayContain: []string{query}})
	if err != nil {
		return nil, false, fmt.Errorf("search mailbox %d for %q: %w", mailboxID, query, err)
	}
	limited := false
	if len(cands) > maxSearchConfirm {
		cands, limited = cands[len(cands)-maxSearchConfirm:], true
	}
	needle := strings.ToLower(query)
	var out []mailstore.Message
	for _, m := range cands {
		b, err := s.cfg.Store.OpenBody(ctx, m.BodyID)
		if err != nil {
			continue // expunged meanwhile
		}
		found := false
		mime.MessageText(bufio.NewReader(b), true, func(t string) bool {
			found = strings.Contains(strings.ToLower(t), needle)
			return !found
		})
		if found {
			out = append(out, m)
		}
	}
	return out, limited, nil
}

// header reads a stored message's header.
func (s *Server) header(ctx context.Context, bodyID int64) (textproto.Header, error) {
	b, err := s.cfg.Store.OpenBody(ctx, bodyID)
	if err != nil {
		return textproto.Header{}, err
	}
	h, _, err := mime.ReadHeaderLoose(bufio.NewReader(io.LimitReader(b, 256<<10)))
	return h, err
}

// message finds the user's message by the box and uid of the query.
func (s *Server) message(ctx context.Context, u *user, q url.Values) (mailstore.Mailbox, mailstore.Message, error) {
	mb, err := s.mailboxOf(ctx, u, q.Get("box"))
	if err != nil {
		return mb, mailstore.Message{}, err
	}
	uid, err := strconv.ParseUint(q.Get("uid"), 10, 32)
	if err != nil || uid == 0 {
		return mb, mailstore.Message{}, fmt.Errorf("uid %q: %w", q.Get("uid"), mailstore.ErrNotFound)
	}
	msgs, err := s.cfg.Store.Messages(ctx, mb.ID, mailstore.UIDs(uint32(uid)))
	if err != nil {
		return mb, mailstore.Message{}, err
	}
	if len(msgs) == 0 {
		return mb, mailstore.Message{}, fmt.Errorf("message %d of %s: %w", uid, mb.Name, mailstore.ErrNotFound)
	}
	return mb, msgs[0], nil
}

// messageBody is message with the message's bytes; when either fails it
// answers the request (404 or 500) and reports false.
func (s *Server) messageBody(ctx context.Context, w http.ResponseWriter, u *user, q url.Values) (mailstore.Mailbox, mailstore.Message, []byte, bool) {
	mb, m, err := s.message(ctx, u, q)
	if err != nil {
		s.notFound(w, "no such message", err)
		return mb, m, nil, false
	}
	raw, err := s.cfg.Store.ReadBody(ctx, m.BodyID)
	if err != nil {
		s.fail(w, "read message", err)
		return mb, m, nil, false
	}
	return mb, m, raw, true
}

// Part is one MIME part of a message in the view.
type Part struct {
	Path        string // "1", "1.2": as IMAP numbers parts
	Depth       int
	ContentType string
	Charset     string
	Encoding    string
	Filename    string
	Size        int64 // decoded octets
	Text        string
	HTML        bool
	Truncated   bool
	// Leaf: a part with a body of its own (not multipart), which
	// /mail/part downloads.
	Leaf bool
}

type viewData struct {
	Box                         string
	UID                         uint32
	From, To, Cc, Subject, Date string
	Parts                       []Part
	Added                       []string // trace fields added on the way
	Flagged                     bool
	Images                      bool
	MoveTargets                 []string
	Error                       string
}

func (s *Server) mailView(w http.ResponseWriter, r *http.Request, u *user) {
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	mb, m, raw, ok := s.messageBody(ctx, w, u, r.URL.Query())
	if !ok {
		return
	}
	if !m.HasFlag(mailstore.FlagSeen) {
		// Reading marks the message \Seen, as IMAP FETCH BODY[] does.
		if _, err := s.cfg.Store.StoreFlags(ctx, mb.ID, mailstore.UIDs(m.UID), mailstore.FlagsAdd, []string{mailstore.FlagSeen}); err != nil {
			s.fail(w, "mark seen", err)
			return
		}
	}
	d := viewData{Box: mb.Name, UID: m.UID, Flagged: m.HasFlag(mailstore.FlagFlagged), Images: r.URL.Query().Get("images") == "1"}
	if boxes, err := s.cfg.Store.Mailboxes(ctx, u.ID); err == nil {
		for _, b := range boxes {
			if !b.NoSelect && b.Name != mb.Name {
				d.MoveTargets = append(d.MoveTargets, b.Name)
			}
		}
	}
	if len(raw) > maxViewBytes {
		raw = raw[:maxViewBytes]
		d.Error = "The message is large; only its beginning is shown. The raw source has it all."
	}
	parts, h, err := parseParts(raw)
	if err != nil && d.Error == "" {
		d.Error = "The message's MIME structure could not be read: " + err.Error()
	}
	d.Parts = parts
	d.From, d.To, d.Cc = mime.HeaderText(h.Get("From")), mime.HeaderText(h.Get("To")), mime.HeaderText(h.Get("Cc"))
	d.Subject, d.Date = mime.HeaderText(h.Get("Subject")), h.Get("Date")
	d.Added = addedFields(h)
	s.render(w, http.StatusOK, "message", u, d)
}

// addedFields names the header fields servers add on the way (trace and
// authentication fields), in the order they appear: newest first.
func addedFields(h textproto.Header) []string {
	var out []string
	for f := h.Fields(); f.Next() && len(out) < 100; {
		switch strings.ToLower(f.Key()) {
		case "received", "return-path", "dkim-signature", "authentication-results", "arc-seal",
			"arc-message-signature", "arc-authentication-results", "received-spf", "delivered-to":
			v := mime.HeaderText(f.Value())
			if len(v) > 300 {
				v = v[:300] + "..."
			}
			out = append(out, f.Key()+": "+v)
		}
	}
	return out
}

// parseParts walks the MIME tree of raw, decoding text parts.
func parseParts(raw []byte) ([]Part, textproto.Header, error) {
	e, err := message.Read(bytes.NewReader(raw))
	if e == nil {
		h, _, _ := mime.ReadHeaderLoose(bufio.NewReader(bytes.NewReader(raw)))
		return nil, h, err
	}
	var parts []Part
	err = walk(e, "", 0, &parts)
	return parts, e.Header.Header, err
}

func walk(e *message.Entity, path string, depth int, out *[]Part) error {
	if len(*out) >= maxParts || depth > 20 {
		return nil
	}
	ct, params, _ := e.Header.ContentType()
	if ct == "" {
		ct = "text/plain"
	}
	p := Part{Path: path, Depth: depth, ContentType: ct, Charset: params["charset"],
		Encoding: e.Header.Get("Content-Transfer-Encoding")}
	if _, dp, err := e.Header.ContentDisposition(); err == nil {
		p.Filename = dp["filename"]
	}
	if p.Filename == "" {
		p.Filename = params["name"]
	}
	if p.Path == "" {
		p.Path = "0" // the whole message
	}
	idx := len(*out)
	mr := e.MultipartReader()
	p.Leaf = mr == nil
	*out = append(*out, p)
	if mr != nil {
		for i := 1; ; i++ {
			child, err := mr.NextPart()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			cp := strconv.Itoa(i)
			if path != "" {
				cp = path + "." + cp
			}
			if err := walk(child, cp, depth+1, out); err != nil {
				return err
			}
		}
	}
	// Decoded (transfer encoding, and charset for text) by go-message.
	body, err := io.ReadAll(io.LimitReader(e.Body, maxViewBytes))
	(*out)[idx].Size = int64(len(body))
	if strings.HasPrefix(ct, "text/") && (*out)[idx].Filename == "" {
		if len(body) > maxPartText {
			body, (*out)[idx].Truncated = body[:maxPartText], true
		}
		(*out)[idx].Text = strings.ToValidUTF8(string(body), "\uFFFD")
		(*out)[idx].HTML = ct == "text/html"
	}
	if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
		return err
	}
	return nil
}

func (s *Server) mailRaw(w http.ResponseWriter, r *http.Request, u *user) {
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	_, m, err := s.message(ctx, u, r.URL.Query())
	if err != nil {
		s.notFound(w, "no such message", err)
		return
	}
	b, err := s.cfg.Store.OpenBody(ctx, m.BodyID)
	if err != nil {
		s.fail(w, "open message", err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Content-Disposition", "inline")
	io.Copy(w, b)
}

// mailPart downloads one part of a message, decoded (transfer encoding
// only), by its path as the MIME structure numbers it. It is always sent
// as application/octet-stream with Content-Disposition attachment and the
// page's CSP, whatever type the message claims: a part is never rendered
// by the browser in the console's origin.
func (s *Server) mailPart(w http.ResponseWriter, r *http.Request, u *user) {
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	q := r.URL.Query()
	_, _, raw, ok := s.messageBody(ctx, w, u, q)
	if !ok {
		return
	}
	e, name, err := findPart(raw, q.Get("part"))
	if err != nil {
		s.notFound(w, "no such part", err)
		return
	}
	if name == "" {
		name = "part-" + q.Get("part")
	}
	hd := w.Header()
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("Content-Disposition", stdmime.FormatMediaType("attachment", map[string]string{"filename": safeFilename(name)}))
	// Decoding never makes a part larger than the message it is in.
	io.Copy(w, io.LimitReader(e.Body, int64(len(raw))))
}

// maxPartDepth bounds the nesting a part path may name.
const maxPartDepth = 20

// findPart finds the leaf part of raw at path ("0" for a single-part
// message, "1.2" for the second part of the first), with its file name.
func findPart(raw []byte, path string) (*message.Entity, string, error) {
	e, err := message.Read(bytes.NewReader(raw))
	if e == nil {
		return nil, "", fmt.Errorf("read message: %w", err)
	}
	if path != "0" {
		steps := strings.Split(path, ".")
		if len(steps) > maxPartDepth {
			return nil, "", fmt.Errorf("part %q: %w", path, mailstore.ErrNotFound)
		}
		for _, st := range steps {
			n, err := strconv.Atoi(st)
			if err != nil || n < 1 || n > maxParts {
				return nil, "", fmt.Errorf("part %q: %w", path, mailstore.ErrNotFound)
			}
			mr := e.MultipartReader()
			if mr == nil {
				return nil, "", fmt.Errorf("part %q: %w", path, mailstore.ErrNotFound)
			}
			for i := 0; i < n; i++ {
				if e, err = mr.NextPart(); err != nil {
					return nil, "", fmt.Errorf("part %q: %w", path, mailstore.ErrNotFound)
				}
			}
		}
	}
	if e.MultipartReader() != nil {
		return nil, "", fmt.Errorf("part %q is multipart: %w", path, mailstore.ErrNotFound)
	}
	name := ""
	if _, dp, err := e.Header.ContentDisposition(); err == nil {
		name = dp["filename"]
	}
	if name == "" {
		if _, cp, err := e.Header.ContentType(); err == nil {
			name = cp["name"]
		}
	}
	return e, name, nil
}

// htmlFrame sets the headers of the sanitised HTML of a message, shown in
// a sandboxed iframe of the console's own page: its own policy allows no
// script at all and images only when asked; only the console may frame it.
func htmlFrame(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		img := "data:"
		if r.URL.Query().Get("images") == "1" {
			img = "data: https: http:"
		}
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; img-src "+img+"; style-src 'unsafe-inline'; "+
			"form-action 'none'; base-uri 'none'; frame-ancestors 'self'; sandbox allow-popups allow-popups-to-escape-sandbox")
		hd.Set("X-Frame-Options", "SAMEORIGIN")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cache-Control", "no-store")
		next(w, r)
	})
}

func (s *Server) mailHTML(w http.ResponseWriter, r *http.Request, u *user) {
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	q := r.URL.Query()
	_, _, raw, ok := s.messageBody(ctx, w, u, q)
	if !ok {
		return
	}
	parts, _, _ := parseParts(raw[:min(len(raw), maxViewBytes)])
	for _, p := range parts {
		if p.Path == q.Get("part") && p.HTML {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			io.WriteString(w, `<!DOCTYPE html><meta charset="utf-8">`)
			io.WriteString(w, SanitizeHTML(p.Text, q.Get("images") == "1"))
			return
		}
	}
	s.notFound(w, "no such HTML part", errors.New(q.Get("part")))
}

// SanitizeHTML makes a message's HTML safe to show: bluemonday's policy
// for user content (no script, no event handler attributes, no
// javascript: URLs, no style attributes), links opened apart without a
// referrer; images from other sites are removed unless remoteImages
// (images inside the message, data: URLs, stay).
func SanitizeHTML(html string, remoteImages bool) string {
	p := bluemonday.UGCPolicy()
	p.AllowURLSchemes("http", "https", "mailto", "data", "cid")
	p.RequireNoReferrerOnLinks(true)
	p.AddTargetBlankToFullyQualifiedLinks(true)
	if !remoteImages {
		p.RewriteSrc(func(u *url.URL) {
			if u.Scheme != "data" && u.Scheme != "cid" {
				*u = url.URL{}
			}
		})
	}
	return p.Sanitize(html)
}

// mailAct changes messages: move, delete (to Trash, or expunge when in
// Trash or without one), flag, unflag, mark read or unread.
func (s *Server) mailAct(w http.ResponseWriter, r *http.Request, u *user) {
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	st := s.cfg.Store
	box := r.PostFormValue("box")
	mb, err := s.mailboxOf(ctx, u, box)
	if err != nil {
		s.notFound(w, "no such mailbox", err)
		return
	}
	var uids []uint32
	for _, v := range r.PostForm["uid"] {
		if len(uids) >= 10000 {
			break
		}
		if n, err := strconv.ParseUint(v, 10, 32); err == nil && n > 0 {
			uids = append(uids, uint32(n))
		}
	}
	back := "/mail?box=" + url.QueryEscape(mb.Name)
	if len(uids) == 0 {
		http.Redirect(w, r, back, http.StatusSeeOther)
		return
	}
	set := mailstore.UIDs(uids...)
	flag := func(op mailstore.FlagOp, f string) error {
		_, err := st.StoreFlags(ctx, mb.ID, set, op, []string{f})
		return err
	}
	switch r.PostFormValue("op") {
	case "flag":
		err = flag(mailstore.FlagsAdd, mailstore.FlagFlagged)
	case "unflag":
		err = flag(mailstore.FlagsRemove, mailstore.FlagFlagged)
	case "seen":
		err = flag(mailstore.FlagsAdd, mailstore.FlagSeen)
	case "unseen":
		err = flag(mailstore.FlagsRemove, mailstore.FlagSeen)
	case "move":
		var dst mailstore.Mailbox
		if dst, err = s.mailboxOf(ctx, u, r.PostFormValue("to")); err == nil {
			_, err = st.Move(ctx, mb.ID, set, dst.ID)
		}
	case "delete":
		trash, terr := s.specialUse(ctx, u, `\Trash`)
		if terr == nil && trash.ID != mb.ID {
			_, err = st.Move(ctx, mb.ID, set, trash.ID)
		} else {
			// In Trash, or without one: gone for good, as IMAP
			// STORE \Deleted then UID EXPUNGE.
			if err = flag(mailstore.FlagsAdd, mailstore.FlagDeleted); err == nil {
				_, err = st.Expunge(ctx, mb.ID, set)
			}
		}
	default:
		text(w, http.StatusBadRequest, "unknown operation\n")
		return
	}
	if err != nil {
		s.fail(w, "change messages", err)
		return
	}
	if r.PostFormValue("back") == "msg" && len(uids) == 1 && r.PostFormValue("op") != "move" && r.PostFormValue("op") != "delete" {
		back = "/mail/msg?box=" + url.QueryEscape(mb.Name) + "&uid=" + strconv.FormatUint(uint64(uids[0]), 10)
	}
	http.Redirect(w, r, back, http.StatusSeeOther)
}

// specialUse finds the user's mailbox with a special use (RFC 6154).
func (s *Server) specialUse(ctx context.Context, u *user, use string) (mailstore.Mailbox, error) {
	boxes, err := s.cfg.Store.Mailboxes(ctx, u.ID)
	if err != nil {
		return mailstore.Mailbox{}, err
	}
	for _, b := range boxes {
		if strings.EqualFold(b.SpecialUse, use) {
			return b, nil
		}
	}
	return mailstore.Mailbox{}, fmt.Errorf("mailbox %s: %w", use, mailstore.ErrNotFound)
}

// fail answers 500 and logs why.
func (s *Server) fail(w http.ResponseWriter, what string, err error) {
	s.log.Error("console: "+what+" failed", "err", err)
	text(w, http.StatusInternalServerError, what+" failed\n")
}

// notFound answers 404: also for what exists but belongs to another user,
// so that nobody learns of it.
func (s *Server) notFound(w http.ResponseWriter, what string, err error) {
	if !errors.Is(err, mailstore.ErrNotFound) && !errors.Is(err, mailstore.ErrInvalidName) &&
		!errors.Is(err, mailstore.ErrNoSelect) {
		s.log.Debug("console: "+what, "err", err)
	}
	text(w, http.StatusNotFound, what+"\n")
}
