package imapd

import (
	"context"
	"errors"
	"io"
	"sort"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
)

// Authenticated state: the commands on mailboxes (RFC 3501 6.3).

const sep = mailstore.Separator

// maxListPatterns bounds the patterns of one LIST-EXTENDED command.
const maxListPatterns = 32

// mailboxName cleans a name from the client: a trailing separator only
// says the name will have children (RFC 3501 6.3.3).
func mailboxName(name string) string {
	return strings.TrimSuffix(name, sep)
}

// Create makes a mailbox and any missing parents (RFC 3501 6.3.3), with a
// special use if asked (RFC 6154 3).
func (s *session) Create(name string, options *imap.CreateOptions) error {
	defer s.enter()()
	use := ""
	if options != nil {
		switch len(options.SpecialUse) {
		case 0:
		case 1:
			use = string(options.SpecialUse[0])
		default:
			return errBadSpecialUse
		}
		switch imap.MailboxAttr(use) {
		case "", imap.MailboxAttrAll, imap.MailboxAttrArchive, imap.MailboxAttrDrafts, imap.MailboxAttrFlagged,
			imap.MailboxAttrJunk, imap.MailboxAttrSent, imap.MailboxAttrTrash:
		default:
			return errBadSpecialUse
		}
	}
	ctx, cancel := s.ctx()
	defer cancel()
	name = mailboxName(name)
	if _, err := s.cc.srv.store.CreateMailbox(ctx, s.userID, name, use); err != nil {
		if e := storeError(err); e != nil {
			return e
		}
		return s.internal("create mailbox", err)
	}
	s.info("mailbox created", "mailbox", name)
	return nil
}

// Delete removes a mailbox (RFC 3501 6.3.4).
func (s *session) Delete(name string) error {
	defer s.enter()()
	ctx, cancel := s.ctx()
	defer cancel()
	name = mailboxName(name)
	if n, err := mailstore.NormalizeMailboxName(name); err == nil && n == "INBOX" {
		return errInboxDelete
	}
	if err := s.cc.srv.store.DeleteMailbox(ctx, s.userID, name); err != nil {
		if e := storeError(err); e != nil {
			return e
		}
		return s.internal("delete mailbox", err)
	}
	s.info("mailbox deleted", "mailbox", name)
	return nil
}

// Rename renames a mailbox and its children; renaming INBOX moves its
// messages to the new mailbox (RFC 3501 6.3.5).
func (s *session) Rename(oldName, newName string, _ *imap.RenameOptions) error {
	defer s.enter()()
	ctx, cancel := s.ctx()
	defer cancel()
	oldName, newName = mailboxName(oldName), mailboxName(newName)
	if err := s.cc.srv.store.RenameMailbox(ctx, s.userID, oldName, newName); err != nil {
		if e := storeError(err); e != nil {
			return e
		}
		return s.internal("rename mailbox", err)
	}
	s.info("mailbox renamed", "from", oldName, "to", newName)
	return nil
}

// Subscribe adds a name to the subscriptions, whether or not a mailbox
// has it (RFC 3501 6.3.6).
func (s *session) Subscribe(name string) error { return s.subscribe(name, true) }

// Unsubscribe removes a name from the subscriptions (RFC 3501 6.3.7).
func (s *session) Unsubscribe(name string) error { return s.subscribe(name, false) }

func (s *session) subscribe(name string, on bool) error {
	defer s.enter()()
	ctx, cancel := s.ctx()
	defer cancel()
	if err := s.cc.srv.store.SetSubscribed(ctx, s.userID, mailboxName(name), on); err != nil {
		if errors.Is(err, mailstore.ErrLimit) {
			return errTooManySubs
		}
		if e := storeError(err); e != nil {
			return e
		}
		return s.internal("subscribe", err)
	}
	return nil
}

// List answers LIST, LIST-EXTENDED (RFC 5258) with LIST-STATUS (RFC 5819)
// and SPECIAL-USE (RFC 6154), and LSUB (imapserver calls List with
// SelectSubscribed for it).
func (s *session) List(w *imapserver.ListWriter, ref string, patterns []string, options *imap.ListOptions) error {
	defer s.enter()()
	if options == nil {
		options = &imap.ListOptions{}
	}
	if len(patterns) == 0 {
		// RFC 3501 6.3.8: an empty pattern asks for the delimiter and the
		// root of the reference's hierarchy.
		root := ""
		if i := strings.Index(ref, sep); i >= 0 {
			root = ref[:i+1]
		}
		return w.WriteList(&imap.ListData{Attrs: []imap.MailboxAttr{imap.MailboxAttrNoSelect}, Delim: rune(sep[0]), Mailbox: root})
	}
	if len(patterns) > maxListPatterns {
		patterns = patterns[:maxListPatterns]
	}
	ctx, cancel := s.ctx()
	defer cancel()
	boxes, err := s.cc.srv.store.Mailboxes(ctx, s.userID)
	if err != nil {
		return s.internal("list mailboxes", err)
	}
	// Subscriptions are names, with or without a mailbox (RFC 3501
	// 6.3.6); read only when the command asks about them.
	wantSubs := options.SelectSubscribed || options.ReturnSubscribed
	subscribed := make(map[string]bool)
	var subs []string
	if wantSubs {
		if subs, err = s.cc.srv.store.Subscriptions(ctx, s.userID); err != nil {
			return s.internal("list subscriptions", err)
		}
		for _, n := range subs {
			subscribed[n] = true
		}
	}
	byName := make(map[string]*mailstore.Mailbox, len(boxes))
	children := make(map[string]bool) // names with a mailbox below them
	for i := range boxes {
		mb := &boxes[i]
		byName[mb.Name] = mb
		forEachParent(mb.Name, func(parent string) bool {
			children[parent] = true
			return true
		})
	}
	subscribedChild := make(map[string]bool) // names with a subscribed name below them
	for _, n := range subs {
		forEachParent(n, func(parent string) bool {
			if subscribedChild[parent] {
				return false // and its parents were marked with it
			}
			subscribedChild[parent] = true
			return true
		})
	}
	matchers := make([]*listMatcher, len(patterns))
	for i, p := range patterns {
		matchers[i] = newListMatcher(ref, p)
	}
	matches := func(name string) bool {
		for _, m := range matchers {
			if m.match(name) {
				return true
			}
		}
		return false
	}
	lsub := options.SelectSubscribed && s.cc.command() == "LSUB"
	// RFC 3501 6.3.9: LSUB with "%" returns a name that is not
	// subscribed, as \Noselect, when a subscribed name below it does not
	// match the pattern itself.
	hiddenSubscribed := make(map[string]bool)
	if lsub {
		for _, n := range subs {
			if matches(n) {
				continue
			}
			forEachParent(n, func(parent string) bool {
				hiddenSubscribed[parent] = true
				return true
			})
		}
	}
	// The names to consider: every mailbox, and when the command selects
	// subscriptions, every subscribed name and its parents, mailbox or
	// not (RFC 5258 3.1, 3.5).
	names := make([]string, 0, len(boxes)+len(subscribedChild)+len(subs))
	for _, mb := range boxes {
		names = append(names, mb.Name)
	}
	if options.SelectSubscribed {
		for _, n := range subs {
			if byName[n] == nil {
				names = append(names, n)
			}
		}
		for n := range subscribedChild {
			if byName[n] == nil && !subscribed[n] {
				names = append(names, n)
			}
		}
		sort.Strings(names)
	}
	for i, name := range names {
		if i%1024 == 1023 && ctx.Err() != nil {
			return s.internal("list mailboxes", ctx.Err())
		}
		if !matches(name) {
			continue
		}
		mb := byName[name]
		if mb == nil {
			if err := s.listMissing(w, name, subscribed[name], subscribedChild[name], lsub, hiddenSubscribed[name], options); err != nil {
				return err
			}
			continue
		}
		sub := subscribed[name]
		data := &imap.ListData{Delim: rune(sep[0]), Mailbox: name}
		if lsub && !sub && hiddenSubscribed[name] {
			data.Attrs = []imap.MailboxAttr{imap.MailboxAttrNoSelect}
			if err := w.WriteList(data); err != nil {
				return err
			}
			continue
		}
		if options.SelectSubscribed && !sub {
			// RFC 5258 3.5: a parent of subscribed mailboxes, with
			// CHILDINFO, when RECURSIVEMATCH asks for it.
			if !options.SelectRecursiveMatch || !subscribedChild[name] {
				continue
			}
			data.ChildInfo = &imap.ListDataChildInfo{Subscribed: true}
		}
		if options.SelectSpecialUse && mb.SpecialUse == "" {
			continue
		}
		if mb.NoSelect {
			data.Attrs = append(data.Attrs, imap.MailboxAttrNoSelect)
		}
		if children[name] {
			data.Attrs = append(data.Attrs, imap.MailboxAttrHasChildren)
		} else {
			data.Attrs = append(data.Attrs, imap.MailboxAttrHasNoChildren)
		}
		if sub {
			data.Attrs = append(data.Attrs, imap.MailboxAttrSubscribed)
		}
		if mb.SpecialUse != "" {
			data.Attrs = append(data.Attrs, imap.MailboxAttr(mb.SpecialUse))
		}
		if options.ReturnStatus != nil && !mb.NoSelect {
			st, err := s.status(ctx, *mb, options.ReturnStatus)
			if err != nil {
				return err
			}
			data.Status = st
		}
		if err := w.WriteList(data); err != nil {
			return err
		}
	}
	return nil
}

// listMissing writes the LIST or LSUB line, if any, for a name that is
// subscribed, or has subscribed names below it, but has no mailbox. LSUB
// gives it as \Noselect (RFC 3501 6.3.9); LIST (SUBSCRIBED) as
// \NonExistent, which implies \Noselect (RFC 5258 3.1, RFC 9051 7.3.1),
// and a parent only with RECURSIVEMATCH, with CHILDINFO (RFC 5258 3.5).
func (s *session) listMissing(w *imapserver.ListWriter, name string, sub, subChild, lsub, hidden bool, options *imap.ListOptions) error {
	data := &imap.ListData{Delim: rune(sep[0]), Mailbox: name}
	switch {
	case lsub:
		if !sub && !hidden {
			return nil
		}
		data.Attrs = []imap.MailboxAttr{imap.MailboxAttrNoSelect}
		return w.WriteList(data)
	case options.SelectSpecialUse:
		return nil // no mailbox, no special use
	case sub:
		data.Attrs = []imap.MailboxAttr{imap.MailboxAttrNonExistent, imap.MailboxAttrSubscribed}
	case options.SelectRecursiveMatch && subChild:
		data.Attrs = []imap.MailboxAttr{imap.MailboxAttrNonExistent}
	default:
		return nil
	}
	if options.SelectRecursiveMatch && subChild {
		data.ChildInfo = &imap.ListDataChildInfo{Subscribed: true}
	}
	return w.WriteList(data)
}

// forEachParent calls f with each parent of a hierarchical name, the
// nearest first, until f returns false. The parents share the name's
// memory.
func forEachParent(name string, f func(parent string) bool) {
	for i := strings.LastIndex(name, sep); i > 0; i = strings.LastIndex(name[:i], sep) {
		if !f(name[:i]) {
			return
		}
	}
}

// Status answers STATUS (RFC 3501 6.3.10, RFC 8438 SIZE, RFC 7889
// APPENDLIMIT).
func (s *session) Status(name string, options *imap.StatusOptions) (*imap.StatusData, error) {
	defer s.enter()()
	ctx, cancel := s.ctx()
	defer cancel()
	mb, err := s.cc.srv.store.MailboxByName(ctx, s.userID, mailboxName(name))
	if err != nil {
		if e := storeError(err); e != nil {
			return nil, e
		}
		return nil, s.internal("status", err)
	}
	if mb.NoSelect {
		return nil, errNoSelect
	}
	return s.status(ctx, mb, options)
}

func (s *session) status(ctx context.Context, mb mailstore.Mailbox, options *imap.StatusOptions) (*imap.StatusData, error) {
	st, err := s.cc.srv.store.Status(ctx, mb.ID)
	if err != nil {
		if e := storeError(err); e != nil {
			return nil, e
		}
		return nil, s.internal("status", err)
	}
	data := &imap.StatusData{Mailbox: mb.Name, UIDNext: imap.UID(st.UIDNext), UIDValidity: st.UIDValidity}
	if options.NumMessages {
		data.NumMessages = &st.Messages
	}
	if options.NumUnseen {
		data.NumUnseen = &st.Unseen
	}
	if options.NumDeleted {
		data.NumDeleted = &st.Deleted
	}
	if options.Size {
		data.Size = &st.Size
	}
	if options.NumRecent {
		// imapserver accepts RECENT whenever the server speaks IMAP4rev1,
		// and writes the number it is given: a session that enabled
		// IMAP4rev2, which has no \Recent, is told 0.
		var n uint32
		if !s.conn.EnabledCaps().Has(imap.CapIMAP4rev2) {
			if n, err = s.unclaimedRecent(ctx, mb.ID); err != nil {
				if e := storeError(err); e != nil {
					return nil, e
				}
				return nil, s.internal("status", err)
			}
			if v := s.view; v != nil && !v.readOnly && v.st.id == mb.ID {
				// The messages recent to this session have the flag too.
				v.st.mu.Lock()
				n += v.recentCount()
				v.st.mu.Unlock()
			}
		}
		data.NumRecent = &n
	}
	if options.AppendLimit {
		limit := uint32(s.cc.srv.maxMessage)
		data.AppendLimit = &limit
	}
	if options.DeletedStorage {
		var zero int64
		data.DeletedStorage = &zero
	}
	if options.HighestModSeq {
		data.HighestModSeq = st.HighestModSeq
	}
	return data, nil
}

// Append adds a message to a mailbox (RFC 3501 6.3.11, UIDPLUS APPENDUID).
func (s *session) Append(name string, r imap.LiteralReader, options *imap.AppendOptions) (*imap.AppendData, error) {
	defer s.enter()()
	lookup, cancelLookup := s.ctx()
	mb, err := s.cc.srv.store.MailboxByName(lookup, s.userID, mailboxName(name))
	cancelLookup()
	if err != nil {
		if errors.Is(err, mailstore.ErrNotFound) {
			return nil, errTryCreate // RFC 3501 6.3.11
		}
		if e := storeError(err); e != nil {
			return nil, e
		}
		return nil, s.internal("append", err)
	}
	if mb.NoSelect {
		return nil, errNoSelect
	}
	size := r.Size()
	if size == 0 {
		return nil, errEmptyMessage
	}
	// clientConn and imapserver have checked size against the limit. The
	// message goes to a spool, in memory while the process's budget
	// allows, else to a private file, so that a client that announces
	// much and sends little holds little; then it is loaded for the
	// store with room for its working copies, or refused for now.
	sp := s.cc.srv.shared.Memory.NewSpool(s.cc.srv.shared.SpoolDir, s.cc.srv.maxMessage)
	defer func() {
		if err := sp.Close(); err != nil {
			s.warn("remove APPEND spool", "err", err)
		}
	}()
	if _, err := io.CopyN(sp, r, size); err != nil {
		if errors.Is(err, limits.ErrTooLarge) {
			return nil, errTooBig
		}
		if errors.Is(err, limits.ErrSpoolFull) {
			s.info("APPEND refused for now", "size", size, "err", err)
			return nil, errNoMemory
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isNetError(err) {
			s.info("APPEND literal cut short", "err", err)
			return nil, errTemporary
		}
		return nil, s.internal("spool APPEND", err)
	}
	// The store's time starts once the message is here: reading it is
	// bounded per read (literalTimeout), however long a slow link takes.
	ctx, cancel := s.ctx()
	defer cancel()
	msg, err := sp.Load(ctx, 0, 3)
	if err != nil {
		if errors.Is(err, limits.ErrNoMemory) {
			s.info("APPEND refused for now", "size", size, "err", err)
			return nil, errNoMemory
		}
		return nil, s.internal("load APPEND spool", err)
	}
	var flags []string
	for _, f := range options.Flags {
		flags = append(flags, string(f))
	}
	m, err := s.cc.srv.store.Append(ctx, mb.ID, flags, options.Time, msg)
	if err != nil {
		if errors.Is(err, mailstore.ErrInvalidName) {
			return nil, errBadFlag
		}
		if e := storeError(err); e != nil {
			return nil, e
		}
		return nil, s.internal("append", err)
	}
	s.info("message appended", "mailbox", mb.Name, "uid", m.UID, "size", m.Size)
	return &imap.AppendData{UID: imap.UID(m.UID), UIDValidity: mb.UIDValidity}, nil
}

// listMatcher matches mailbox names against a LIST reference and pattern
// (RFC 3501 6.3.8): "*" matches anything, "%" anything but the separator.
// It runs in time proportional to pattern length times name length, never
// exponential, whatever wildcards the client sends.
type listMatcher struct {
	pattern string
	never   bool
}

func newListMatcher(ref, pattern string) *listMatcher {
	full := pattern
	if strings.HasPrefix(pattern, sep) {
		full = pattern[len(sep):] // an absolute pattern ignores the reference
	} else if ref != "" {
		if !strings.HasSuffix(ref, sep) {
			ref += sep
		}
		full = ref + pattern
	}
	// INBOX is case-insensitive (RFC 3501 5.1), also as a first level.
	first, rest, hasRest := strings.Cut(full, sep)
	if strings.EqualFold(first, "INBOX") {
		full = "INBOX"
		if hasRest {
			full += sep + rest
		}
	}
	var b strings.Builder
	literal := 0
	for i := 0; i < len(full); i++ {
		c := full[i]
		if c == '*' || c == '%' {
			if n := b.Len(); n > 0 {
				last := b.String()[n-1]
				if last == '*' {
					continue
				}
				if last == '%' {
					if c == '*' {
						s := b.String()[:n-1] + "*"
						b.Reset()
						b.WriteString(s)
					}
					continue
				}
			}
		} else {
			literal++
		}
		b.WriteByte(c)
	}
	// No name is longer than the store allows, so a pattern with more
	// literal characters matches nothing.
	return &listMatcher{pattern: b.String(), never: literal > 1000}
}

func (m *listMatcher) match(name string) bool {
	if m.never {
		return false
	}
	p := m.pattern
	prev := make([]bool, len(name)+1)
	cur := make([]bool, len(name)+1)
	prev[0] = true
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch c {
		case '*':
			cur[0] = prev[0]
			for j := 1; j <= len(name); j++ {
				cur[j] = prev[j] || cur[j-1]
			}
		case '%':
			cur[0] = prev[0]
			for j := 1; j <= len(name); j++ {
				cur[j] = prev[j] || (cur[j-1] && name[j-1] != sep[0])
			}
		default:
			cur[0] = false
			for j := 1; j <= len(name); j++ {
				cur[j] = prev[j-1] && name[j-1] == c
			}
		}
		prev, cur = cur, prev
	}
	return prev[len(name)]
}
