package imapd

import (
	"errors"
	"slices"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/postern/postern/mailstore"
)

// Selecting a mailbox, and the selected-state commands that change it
// (RFC 3501 6.3.1-2, 6.4).

// Select opens a mailbox, read-only for EXAMINE. imapserver has already
// unselected the previous one.
func (s *session) Select(name string, options *imap.SelectOptions) (data *imap.SelectData, err error) {
	defer s.enter()()
	if perr := s.offStack("select", func() { data, err = s.selectMailbox(name, options) }); perr != nil {
		return nil, perr
	}
	return data, err
}

func (s *session) selectMailbox(name string, options *imap.SelectOptions) (*imap.SelectData, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	mb, err := s.cc.srv.store.MailboxByName(ctx, s.userID, mailboxName(name))
	if err != nil {
		if e := storeError(err); e != nil {
			return nil, e
		}
		return nil, s.internal("select", err)
	}
	if mb.NoSelect {
		return nil, errNoSelect
	}
	readOnly := options != nil && options.ReadOnly
	v, unseenUID, err := s.cc.srv.boxes.open(ctx, mb, readOnly)
	if err != nil {
		return nil, s.internal("select", err)
	}
	if !s.conn.EnabledCaps().Has(imap.CapIMAP4rev2) {
		// IMAP4rev1: SELECT claims \Recent, EXAMINE only looks (RFC 3501
		// 6.3.1-2). ENABLE comes before SELECT (RFC 5161 3.1), so the
		// version cannot change while the mailbox is selected.
		v.recent, v.warn = &recentSet{}, s.warn
		if err := v.learnRecent(ctx); err != nil {
			v.close()
			if e := storeError(err); e != nil {
				return nil, e
			}
			return nil, s.internal("select", err)
		}
	}
	s.setView(v)
	s.boxID, s.boxName, s.searchRes = mb.ID, mb.Name, nil

	st := v.st
	st.mu.Lock()
	count := v.count
	// UNSEEN is a hint (RFC 3501 7.1; IMAP4rev2 dropped it): if that
	// message went away meanwhile, none is named.
	var firstUnseen uint32
	if seq, ok := st.seqOf(unseenUID); ok && unseenUID != 0 {
		firstUnseen = seq
	}
	uidNext := mb.UIDNext
	if n := len(st.uids); n > 0 && st.uids[n-1] >= uidNext {
		uidNext = st.uids[n-1] + 1
	}
	flags := mailboxFlags(st.keywords)
	recent := v.recentCount()
	st.mu.Unlock()

	data := &imap.SelectData{
		Flags:             flags,
		NumMessages:       count,
		NumRecent:         recent,
		FirstUnseenSeqNum: firstUnseen,
		UIDNext:           imap.UID(uidNext),
		UIDValidity:       mb.UIDValidity,
		PermanentFlags:    []imap.Flag{},
	}
	if !readOnly {
		// RFC 3501 7.1: \* says any keyword may be created.
		data.PermanentFlags = append(slices.Clone(flags), imap.FlagWildcard)
	}
	if s.conn.EnabledCaps().Has(imap.CapIMAP4rev2) {
		// RFC 9051 6.3.2: a LIST response with the mailbox's name.
		data.List = &imap.ListData{Delim: rune(sep[0]), Mailbox: mb.Name}
	}
	s.info("select", "mailbox", mb.Name, "messages", count, "recent", recent, "read_only", readOnly)
	return data, nil
}

// Unselect leaves the selected state (UNSELECT, CLOSE after its expunge,
// or before another SELECT).
func (s *session) Unselect() error {
	defer s.enter()()
	s.setView(nil)
	s.searchRes = nil
	return nil
}

// Poll runs after every command: it sends what changed in the selected
// mailbox. With nothing selected, or nothing new, it costs a channel
// check and an uncontended lock.
func (s *session) Poll(w *imapserver.UpdateWriter, allowExpunge bool) error {
	if s.view == nil {
		return nil
	}
	// No timeout context here: the store is read only after a feed
	// overflow, once.
	return s.view.poll(s.cc.srv.baseCtx, w, allowExpunge)
}

// Idle sends changes as they happen until the client says DONE (RFC
// 2177). It runs on imapserver's IDLE goroutine; a change committed by
// anyone (SMTP delivery, POP3, another session) wakes it through the
// change feed.
func (s *session) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	v := s.selected()
	if v == nil {
		// Shutdown ends an idling session with BYE, which ends the
		// connection and so the IDLE.
		<-stop
		return nil
	}
	// One select on three channels: each case holds a waiter record
	// while the session idles.
	signalled := false
	for {
		if err := s.idlePoll(v, w, signalled); err != nil {
			return err
		}
		wake, pending, owed := v.idleWait()
		signalled = false
		if owed {
			continue
		}
		select {
		case <-stop:
			return nil
		case <-pending:
			signalled = true
		case <-wake:
		}
	}
}

// idlePoll sends what is owed during IDLE, after applying the feed's
// changes when this session took its signal. It runs off the IDLE
// goroutine's stack, which stays small while it waits (see offStack).
func (s *session) idlePoll(v *view, w *imapserver.UpdateWriter, signalled bool) (err error) {
	if perr := s.offStack("idle", func() {
		if signalled {
			v.feedSignalled(s.cc.srv.baseCtx)
		}
		err = v.poll(s.cc.srv.baseCtx, w, true)
	}); perr != nil {
		return perr
	}
	return err
}

// isClose reports whether imapserver called Expunge for CLOSE, which must
// not send EXPUNGE responses: it passes an ExpungeWriter with no
// connection.
func isClose(w *imapserver.ExpungeWriter) bool {
	return w == nil || *w == (imapserver.ExpungeWriter{})
}

// Expunge removes the messages marked \Deleted (EXPUNGE, CLOSE), only
// those in uids for UID EXPUNGE (RFC 4315 2.1). The EXPUNGE responses go
// out with the poll that follows. In a mailbox opened with EXAMINE it
// changes nothing: EXPUNGE fails, CLOSE just closes (RFC 3501 6.4.2).
func (s *session) Expunge(w *imapserver.ExpungeWriter, uids *imap.UIDSet) error {
	defer s.enter()()
	if s.view.readOnly {
		if isClose(w) {
			return nil
		}
		return errReadOnly
	}
	ctx, cancel := s.ctx()
	defer cancel()
	var set mailstore.UIDSet
	if uids != nil {
		targets := s.view.resolve(ctx, s.uidSet(*uids))
		if len(targets) == 0 {
			return nil
		}
		set = uidSetOf(targets)
	}
	gone, err := s.cc.srv.store.Expunge(ctx, s.boxID, set)
	if err != nil {
		if errors.Is(err, mailstore.ErrNotFound) {
			return errMailboxGone
		}
		return s.internal("expunge", err)
	}
	if len(gone) > 0 {
		s.info("expunge", "mailbox", s.boxName, "messages", len(gone))
	}
	s.view.changed(ctx)
	return nil
}

// Store changes flags (RFC 3501 6.4.6). The FETCH responses, unless
// .SILENT, go out with the poll that follows, after a FLAGS response if a
// keyword is new to the mailbox (RFC 3501 7.2.6).
func (s *session) Store(w *imapserver.FetchWriter, numSet imap.NumSet, flags *imap.StoreFlags, options *imap.StoreOptions) error {
	defer s.enter()()
	if s.view.readOnly {
		return errReadOnly
	}
	ctx, cancel := s.ctx()
	defer cancel()
	targets := s.view.resolve(ctx, s.numSet(numSet))
	if len(targets) == 0 {
		return nil
	}
	var op mailstore.FlagOp
	switch flags.Op {
	case imap.StoreFlagsSet:
		op = mailstore.FlagsSet
	case imap.StoreFlagsAdd:
		op = mailstore.FlagsAdd
	case imap.StoreFlagsDel:
		op = mailstore.FlagsRemove
	}
	list := make([]string, 0, len(flags.Flags))
	for _, f := range flags.Flags {
		list = append(list, string(f))
	}
	msgs, err := s.cc.srv.store.StoreFlags(ctx, s.boxID, uidSetOf(targets), op, list)
	if err != nil {
		if errors.Is(err, mailstore.ErrInvalidName) {
			return errBadFlag
		}
		if errors.Is(err, mailstore.ErrLimit) {
			return errTooManyKeywords
		}
		if errors.Is(err, mailstore.ErrNotFound) || errors.Is(err, mailstore.ErrNoSelect) {
			return errMailboxGone
		}
		return s.internal("store", err)
	}
	s.view.flagsStored(ctx, msgs, flags.Silent)
	return nil
}

// Copy copies messages to another mailbox (RFC 3501 6.4.7) and answers
// COPYUID (RFC 4315).
func (s *session) Copy(numSet imap.NumSet, dest string) (*imap.CopyData, error) {
	defer s.enter()()
	ctx, cancel := s.ctx()
	defer cancel()
	dst, err := s.destination(dest)
	if err != nil {
		return nil, err
	}
	targets := s.view.resolve(ctx, s.numSet(numSet))
	if len(targets) == 0 {
		return nil, nil
	}
	pairs, err := s.cc.srv.store.Copy(ctx, s.boxID, uidSetOf(targets), dst.ID)
	if err != nil {
		if e := storeError(err); e != nil {
			if e == errNonExistent {
				return nil, errTryCreate
			}
			return nil, e
		}
		return nil, s.internal("copy", err)
	}
	if dst.ID == s.boxID {
		s.view.changed(ctx)
	}
	return copyData(dst, pairs), nil
}

// Move moves messages to another mailbox in one step (RFC 6851): COPYUID
// first, then the EXPUNGE responses with the poll that follows.
func (s *session) Move(w *imapserver.MoveWriter, numSet imap.NumSet, dest string) error {
	defer s.enter()()
	if s.view.readOnly {
		return errReadOnly
	}
	ctx, cancel := s.ctx()
	defer cancel()
	dst, err := s.destination(dest)
	if err != nil {
		return err
	}
	targets := s.view.resolve(ctx, s.numSet(numSet))
	if len(targets) == 0 {
		return nil
	}
	// The destination may be the selected mailbox itself (RFC 6851 3.3
	// does not forbid it): the store gives the messages new UIDs and
	// expunges the originals in one transaction.
	pairs, err := s.cc.srv.store.Move(ctx, s.boxID, uidSetOf(targets), dst.ID)
	if err != nil {
		if e := storeError(err); e != nil {
			if e == errNonExistent {
				return errTryCreate
			}
			return e
		}
		return s.internal("move", err)
	}
	s.view.changed(ctx)
	if data := copyData(dst, pairs); data != nil {
		return w.WriteCopyData(data)
	}
	return nil
}

// destination finds the target of COPY or MOVE; a missing one is
// [TRYCREATE] (RFC 3501 6.4.7).
func (s *session) destination(name string) (mailstore.Mailbox, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	dst, err := s.cc.srv.store.MailboxByName(ctx, s.userID, mailboxName(name))
	if err != nil {
		if errors.Is(err, mailstore.ErrNotFound) {
			return dst, errTryCreate
		}
		if e := storeError(err); e != nil {
			return dst, e
		}
		return dst, s.internal("find mailbox", err)
	}
	if dst.NoSelect {
		return dst, errNoSelect
	}
	return dst, nil
}

func copyData(dst mailstore.Mailbox, pairs []mailstore.UIDPair) *imap.CopyData {
	if len(pairs) == 0 {
		return nil
	}
	data := &imap.CopyData{UIDValidity: dst.UIDValidity}
	for _, p := range pairs {
		data.SourceUIDs.AddNum(imap.UID(p.Src))
		data.DestUIDs.AddNum(imap.UID(p.Dst))
	}
	return data
}

// numSet replaces the SEARCHRES marker "$" (RFC 5182) with the saved
// result.
func (s *session) numSet(set imap.NumSet) imap.NumSet {
	if u, ok := set.(imap.UIDSet); ok {
		return s.uidSet(u)
	}
	return set
}

func (s *session) uidSet(set imap.UIDSet) imap.UIDSet {
	if !imap.IsSearchRes(set) {
		return set
	}
	out := imap.UIDSet{}
	for _, u := range s.searchRes {
		out.AddNum(imap.UID(u))
	}
	return out
}

// uidSetOf is the mailstore set of the targets' UIDs.
func uidSetOf(targets []target) mailstore.UIDSet {
	set := make(mailstore.UIDSet, 0, len(targets))
	for _, t := range targets {
		if n := len(set); n > 0 && set[n-1].Stop+1 == t.uid {
			set[n-1].Stop = t.uid
			continue
		}
		set = append(set, mailstore.UIDRange{Start: t.uid, Stop: t.uid})
	}
	return set
}
