package imapd

import (
	"context"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/postern/postern/mailstore"
)

// The selected-state bookkeeping: which messages each session knows of,
// and what it has still to be told.
//
// One mailboxState exists per mailbox that some session has selected. It
// holds the mailbox's UIDs as the store last committed them, and one
// change-feed subscription; every session on the mailbox has a view with
// the queue of updates (EXISTS, EXPUNGE, FETCH FLAGS, FLAGS) it has not
// yet sent. The queue is what separates the session's sequence numbers
// from the store's: a session's numbers change only when it sends the
// updates (RFC 3501 5.5, 7.4.1).
//
// Nobody waits on the feed on its own: a session drains it, for everyone,
// when it polls at the end of a command or wakes in IDLE. So a mailbox
// nobody looks at costs no goroutine, and a poll with nothing new is a
// channel check and an uncontended lock.
//
// This plays the part of imapserver's MailboxTracker/SessionTracker, which
// Postern does not use because (1) they cannot tell how many messages a
// client knows of, which "*" and range checks need (RFC 3501 9,
// seq-number); (2) they cannot queue an update for one session only, which
// the FLAGS-before-FETCH rule of RFC 3501 7.2.6 needs for a session's own
// STORE; and (3) SessionTracker.DecodeSeqNum reads the mailbox count
// without the mailbox's lock.

// maxQueuedFlagUpdates bounds the FETCH FLAGS updates a view keeps for a
// client that neither polls nor idles; later flag changes are dropped for
// it (counts and expunges never are, so its numbers stay right).
const maxQueuedFlagUpdates = 10000

type updateKind uint8

const (
	updExists updateKind = iota + 1
	updExpunge
	updFlags
	updMailboxFlags
)

// update is one untagged response a view owes its client.
type update struct {
	kind   updateKind
	num    uint32 // updExists: the new count; updExpunge, updFlags: sequence number
	prev   uint32 // updExists: the count before
	uid    uint32
	modseq uint64
	flags  []string // updFlags: message flags; updMailboxFlags: keywords
}

// registry finds the shared state of selected mailboxes.
type registry struct {
	store *mailstore.Store

	mu    sync.Mutex
	boxes map[int64]*mailboxState
}

func newRegistry(store *mailstore.Store) *registry {
	return &registry{store: store, boxes: make(map[int64]*mailboxState)}
}

// mailboxState is one mailbox's state shared by the sessions that have it
// selected.
type mailboxState struct {
	reg  *registry
	id   int64
	sub  *mailstore.Subscription
	refs int // under reg.mu

	mu       sync.Mutex
	uids     []uint32 // the mailbox's messages, ascending
	keywords []string // keywords announced in FLAGS
	gone     bool     // deleted: no more messages will come
	views    map[*view]struct{}
	// idle is closed when changes are applied, to wake the sessions
	// idling on the mailbox, and made again by the next idler: one
	// channel for all of them, none when nobody idles.
	idle chan struct{}
}

// view is one session's view of its selected mailbox.
type view struct {
	st       *mailboxState
	readOnly bool
	// hold keeps the bodies of messages expunged elsewhere readable until
	// the client has been told of the expunge (RFC 2180 4.1): it is
	// synced only when every queued EXPUNGE is about to be sent.
	hold *mailstore.Hold
	// recent holds the messages recent to this session (RFC 3501 2.3.2);
	// nil when the session speaks IMAP4rev2, which has no \Recent. Set
	// before the view is used, never changed after.
	recent *recentSet
	// warn logs a failure that the client is not told of.
	warn func(msg string, args ...any)

	// Guarded by st.mu.
	count  uint32   // messages the client knows of
	queue  []update // updates not yet sent, oldest first
	own    []update // FETCH FLAGS answering the session's own STORE, client numbers
	nflags int      // updFlags entries in queue
}

// open selects a mailbox: it returns a view whose client knows every
// message committed so far, and the UID of the first message without
// \Seen (0: none) when the store was read. Only UIDs are read (the flags
// of a message are read when a command asks for them), so that SELECT of
// a large mailbox costs one index scan.
func (r *registry) open(ctx context.Context, mb mailstore.Mailbox, readOnly bool) (*view, uint32, error) {
	r.mu.Lock()
	st := r.boxes[mb.ID]
	if st != nil && st.isGone() {
		// Deleted while selected, and the ID given again to a new
		// mailbox: the old state stays with its old views only.
		delete(r.boxes, mb.ID)
		st = nil
	}
	if st != nil {
		st.refs++
	}
	r.mu.Unlock()

	// Hold before reading, so that no message the client is told of can
	// lose its body before the client is told it is gone.
	hold := r.store.Hold()
	var firstUnseen uint32
	if st == nil {
		// Subscribe before reading, so that nothing committed in between
		// is missed; what the read already has is recognised and skipped.
		sub := r.store.Subscribe(mb.ID)
		uids, unseen, err := r.store.MailboxUIDs(ctx, mb.ID)
		if err != nil {
			sub.Close()
			hold.Close()
			return nil, 0, err
		}
		firstUnseen = unseen
		fresh := &mailboxState{reg: r, id: mb.ID, sub: sub, refs: 1, views: make(map[*view]struct{})}
		fresh.uids = uids
		fresh.keywords = slices.Clone(mb.Keywords)
		r.mu.Lock()
		if st = r.boxes[mb.ID]; st != nil && !st.isGone() {
			st.refs++ // another session was quicker
		} else {
			st = fresh
			r.boxes[mb.ID] = st
		}
		r.mu.Unlock()
		if st != fresh {
			sub.Close()
		}
	} else {
		var err error
		firstUnseen, err = r.store.FirstUnseen(ctx, mb.ID)
		if err != nil {
			st.release()
			hold.Close()
			return nil, 0, err
		}
	}

	v := &view{st: st, readOnly: readOnly, hold: hold}
	st.mu.Lock()
	st.sync(ctx)
	v.count = uint32(len(st.uids))
	for _, k := range mb.Keywords {
		st.addKeyword(k)
	}
	st.views[v] = struct{}{}
	st.mu.Unlock()
	return v, firstUnseen, nil
}

func (st *mailboxState) isGone() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.gone
}

// release drops one reference; the last one closes the subscription.
func (st *mailboxState) release() {
	r := st.reg
	r.mu.Lock()
	st.refs--
	last := st.refs == 0
	if last && r.boxes[st.id] == st {
		delete(r.boxes, st.id)
	}
	r.mu.Unlock()
	if last {
		st.sub.Close()
	}
}

// close ends the view (UNSELECT, CLOSE, another SELECT, logout).
func (v *view) close() {
	st := v.st
	st.mu.Lock()
	delete(st.views, v)
	v.queue, v.own = nil, nil
	st.mu.Unlock()
	st.release()
	v.hold.Close()
}

// sync applies what the change feed has gathered, queueing updates for
// every view. st.mu must be held.
//
// It takes the changes whether or not the feed's signal is there: an
// idling session may have taken the signal (outside st.mu) and not yet
// applied the changes, and a command's sync must still see every change
// committed before it (a NOOP after APPEND reports the new message).
// The signal is taken first, so that a change published after the Get
// below leaves its signal for the next sync or idler; a signal left for
// changes already applied wakes an idler for nothing.
func (st *mailboxState) sync(ctx context.Context) {
	select {
	case <-st.sub.Pending:
	default:
	}
	st.drain(ctx)
}

// drain applies the feed's changes and wakes the views that are idling
// when there were any. st.mu must be held.
func (st *mailboxState) drain(ctx context.Context) {
	overflow, changes := st.sub.Get()
	if !overflow && len(changes) == 0 {
		return
	}
	if overflow {
		st.resync(ctx)
	}
	for _, c := range changes {
		switch c.Kind {
		case mailstore.ChangeAdded:
			st.added(c.UID, c.Flags)
		case mailstore.ChangeFlags:
			st.flagsChanged(c.UID, c.ModSeq, c.Flags)
		case mailstore.ChangeExpunged:
			st.expunged(c.UID)
		case mailstore.ChangeMailboxGone:
			st.removed()
		}
	}
	if st.idle != nil {
		close(st.idle)
		st.idle = nil
	}
}

// resync catches up after the feed overflowed: it compares the UIDs with
// the store's and announces what changed, flags included for every
// message (the feed lost which ones changed).
func (st *mailboxState) resync(ctx context.Context) {
	msgs, err := st.reg.store.Messages(ctx, st.id, nil)
	if err != nil {
		return // the feed will signal again; until then the view stays as it was
	}
	have := make(map[uint32]bool, len(msgs))
	for _, m := range msgs {
		have[m.UID] = true
	}
	for i := len(st.uids) - 1; i >= 0; i-- {
		if !have[st.uids[i]] {
			st.expunged(st.uids[i])
		}
	}
	for _, m := range msgs {
		if n := len(st.uids); n == 0 || m.UID > st.uids[n-1] {
			st.added(m.UID, m.Flags)
		} else {
			st.flagsChanged(m.UID, m.ModSeq, m.Flags)
		}
	}
}

func (st *mailboxState) seqOf(uid uint32) (uint32, bool) {
	i, ok := slices.BinarySearch(st.uids, uid)
	return uint32(i + 1), ok
}

// addKeyword records a keyword; it reports whether it is new.
func (st *mailboxState) addKeyword(k string) bool {
	for _, have := range st.keywords {
		if strings.EqualFold(have, k) {
			return false
		}
	}
	st.keywords = append(st.keywords, k)
	return true
}

// announceKeywords queues a FLAGS update, before any message shows a
// keyword the clients have not been told of (RFC 3501 7.2.6).
func (st *mailboxState) announceKeywords(flags []string) {
	changed := false
	for _, f := range flags {
		if !strings.HasPrefix(f, `\`) && st.addKeyword(f) {
			changed = true
		}
	}
	if !changed {
		return
	}
	kw := slices.Clone(st.keywords)
	for v := range st.views {
		v.queue = append(v.queue, update{kind: updMailboxFlags, flags: kw})
	}
}

func (st *mailboxState) added(uid uint32, flags []string) {
	if st.gone {
		return
	}
	if n := len(st.uids); n > 0 && uid <= st.uids[n-1] {
		return // already known: committed before the view read the mailbox
	}
	st.announceKeywords(flags)
	st.uids = append(st.uids, uid)
	n := uint32(len(st.uids))
	for v := range st.views {
		if k := len(v.queue); k > 0 && v.queue[k-1].kind == updExists {
			v.queue[k-1].num = n // one EXISTS for a run of arrivals
			continue
		}
		v.queue = append(v.queue, update{kind: updExists, num: n, prev: n - 1})
	}
}

func (st *mailboxState) flagsChanged(uid uint32, modseq uint64, flags []string) {
	seq, ok := st.seqOf(uid)
	if !ok {
		return
	}
	st.announceKeywords(flags)
	for v := range st.views {
		if v.nflags >= maxQueuedFlagUpdates {
			continue
		}
		v.nflags++
		v.queue = append(v.queue, update{kind: updFlags, num: seq, uid: uid, modseq: modseq, flags: flags})
	}
}

func (st *mailboxState) expunged(uid uint32) {
	seq, ok := st.seqOf(uid)
	if !ok {
		return
	}
	st.uids = slices.Delete(st.uids, int(seq-1), int(seq))
	for v := range st.views {
		v.queue = append(v.queue, update{kind: updExpunge, num: seq})
	}
}

// removed handles the deletion of the mailbox: to its sessions it becomes
// empty, and stays so.
func (st *mailboxState) removed() {
	for i := len(st.uids) - 1; i >= 0; i-- {
		st.expunged(st.uids[i])
	}
	st.gone = true
}

// Number translation, with st.mu held.

// toServer maps a sequence number of the client's to the store's current
// numbering; ok is false for a number the client does not have or whose
// message is gone (its EXPUNGE not sent yet).
func (v *view) toServer(seq uint32) (uint32, bool) {
	if seq == 0 || seq > v.count {
		return 0, false
	}
	for _, u := range v.queue {
		if u.kind != updExpunge {
			continue
		}
		if seq == u.num {
			return 0, false
		}
		if seq > u.num {
			seq--
		}
	}
	return seq, true
}

// toClient maps a store sequence number to the client's; ok is false for
// a message the client has not been told of.
func (v *view) toClient(seq uint32) (uint32, bool) {
	for i := len(v.queue) - 1; i >= 0; i-- {
		u := v.queue[i]
		switch u.kind {
		case updExists:
			if seq > u.prev {
				return 0, false
			}
		case updExpunge:
			if seq >= u.num {
				seq++
			}
		}
	}
	return seq, seq >= 1 && seq <= v.count
}

// target is a message a command names: its number for the client and its
// UID.
type target struct {
	seq uint32
	uid uint32
}

// resolve turns a sequence or UID set into the messages it names that the
// client knows of and that still exist, in ascending order. "*" is the
// client's last message (RFC 3501 9, seq-number); a UID range n:* also
// holds the last message when n is above every UID (RFC 3501 6.4.8).
func (v *view) resolve(ctx context.Context, set imap.NumSet) []target {
	st := v.st
	st.mu.Lock()
	defer st.mu.Unlock()
	st.sync(ctx)
	var out []target
	switch set := set.(type) {
	case imap.SeqSet:
		for _, r := range set {
			start, stop := r.Start, r.Stop
			if start == 0 {
				start = v.count
			}
			if stop == 0 {
				stop = v.count
			}
			if start > stop {
				start, stop = stop, start
			}
			stop = min(stop, v.count)
			for seq := max(start, 1); seq <= stop && seq != 0; seq++ {
				if s, ok := v.toServer(seq); ok {
					out = append(out, target{seq: seq, uid: st.uids[s-1]})
				}
			}
		}
	case imap.UIDSet:
		last := uint32(0) // the client's last UID
		if v.count > 0 {
			for seq := v.count; seq >= 1; seq-- {
				if s, ok := v.toServer(seq); ok {
					last = st.uids[s-1]
					break
				}
			}
		}
		for _, r := range set {
			start, stop := uint32(r.Start), uint32(r.Stop)
			if start == 0 {
				start = last
			}
			if stop == 0 {
				stop = last
			}
			if start > stop {
				start, stop = stop, start
			}
			lo, _ := slices.BinarySearch(st.uids, start)
			for i := lo; i < len(st.uids) && st.uids[i] <= stop; i++ {
				if seq, ok := v.toClient(uint32(i + 1)); ok {
					out = append(out, target{seq: seq, uid: st.uids[i]})
				}
			}
		}
	}
	if len(out) > 1 {
		sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
		out = slices.CompactFunc(out, func(a, b target) bool { return a.seq == b.seq })
	}
	return out
}

// all lists every message the client knows of that still exists.
func (v *view) all(ctx context.Context) (targets []target, count uint32) {
	return v.resolve(ctx, imap.SeqSet{{Start: 1, Stop: 0}}), v.countNow()
}

func (v *view) countNow() uint32 {
	v.st.mu.Lock()
	defer v.st.mu.Unlock()
	return v.count
}

// flagsStored records the outcome of the session's own flag change: the
// queued FETCH FLAGS of those messages that it supersedes are dropped,
// and, unless silent, the session owes its client a FETCH FLAGS for each
// (sent at the next poll, after any FLAGS update).
func (v *view) flagsStored(ctx context.Context, msgs []mailstore.Message, silent bool) {
	st := v.st
	st.mu.Lock()
	defer st.mu.Unlock()
	st.sync(ctx) // the store published the change before returning
	latest := make(map[uint32]uint64, len(msgs))
	for _, m := range msgs {
		latest[m.UID] = m.ModSeq
	}
	q := v.queue[:0]
	for _, u := range v.queue {
		if u.kind == updFlags {
			if ms, ok := latest[u.uid]; ok && u.modseq <= ms {
				v.nflags--
				continue
			}
		}
		q = append(q, u)
	}
	clear(v.queue[len(q):])
	v.queue = q
	if silent {
		return
	}
	for _, m := range msgs {
		s, ok := st.seqOf(m.UID)
		if !ok {
			continue
		}
		if seq, ok := v.toClient(s); ok {
			v.own = append(v.own, update{kind: updFlags, num: seq, uid: m.UID, flags: m.Flags})
		}
	}
}

// changed brings the shared state up to date after the session changed
// the mailbox itself (EXPUNGE, MOVE, COPY or APPEND into it).
func (v *view) changed(ctx context.Context) {
	v.st.mu.Lock()
	v.st.sync(ctx)
	v.st.mu.Unlock()
}

// take removes the updates to send now: the FLAGS updates first (they do
// not depend on numbering), then the session's own FETCH FLAGS (numbered
// as the client numbers now), then the queue in order, up to the first
// EXPUNGE when expunges are not allowed (RFC 3501 7.4.1: not during
// FETCH, STORE or SEARCH).
func (v *view) take(ctx context.Context, allowExpunge bool) []update {
	if allowExpunge {
		// Every expunge committed before this Sync is in the feed now, is
		// drained below and sent with the rest of the queue before the
		// session reads another body (the store's order, see Hold.Sync).
		v.hold.Sync()
	}
	st := v.st
	st.mu.Lock()
	defer st.mu.Unlock()
	st.sync(ctx)
	if len(v.queue) == 0 && len(v.own) == 0 {
		return nil
	}
	var out []update
	for _, u := range v.queue {
		if u.kind == updMailboxFlags {
			out = append(out, u)
		}
	}
	out = append(out, v.own...)
	v.own = nil
	n := 0
	for _, u := range v.queue {
		if u.kind == updExpunge && !allowExpunge {
			break
		}
		n++
		switch u.kind {
		case updExists:
			v.count = u.num
			out = append(out, u)
		case updExpunge:
			v.count--
			out = append(out, u)
		case updFlags:
			v.nflags--
			out = append(out, u)
		}
	}
	// Keep the FLAGS updates out of what stays: they were just sent.
	rest := v.queue[n:]
	q := make([]update, 0, len(rest))
	for _, u := range rest {
		if u.kind != updMailboxFlags {
			q = append(q, u)
		}
	}
	if len(q) == 0 {
		q = nil
	}
	v.queue = q
	return out
}

// poll sends the updates owed to the client.
func (v *view) poll(ctx context.Context, w *imapserver.UpdateWriter, allowExpunge bool) error {
	out := v.take(ctx, allowExpunge)
	lastExists := -1
	for i, u := range out {
		if u.kind == updExists {
			lastExists = i
		}
	}
	var recent uint32
	if lastExists >= 0 && v.recent != nil {
		// The client is told of new messages: this session claims the
		// ones no other has been told of (RFC 3501 2.3.2), and says how
		// many are recent after the last EXISTS (RFC 3501 7.3.2).
		if err := v.learnRecent(ctx); err != nil && v.warn != nil {
			v.warn("claim \\Recent", "err", err)
		}
		v.st.mu.Lock()
		recent = v.recentCount()
		v.st.mu.Unlock()
	}
	for i, u := range out {
		var err error
		switch u.kind {
		case updExists:
			err = w.WriteNumMessages(u.num)
			if err == nil && i == lastExists && v.recent != nil {
				err = w.WriteNumRecent(recent)
			}
		case updExpunge:
			err = w.WriteExpunge(u.num)
		case updFlags:
			err = w.WriteMessageFlags(u.num, imap.UID(u.uid), v.flagsOut(u.uid, u.flags))
		case updMailboxFlags:
			err = w.WriteMailboxFlags(mailboxFlags(u.flags))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// idleWait returns what an idling session waits on: the channel closed
// when changes are next applied, and the feed's own channel. owed is true,
// and the channels nil, when updates are already queued for the session.
func (v *view) idleWait() (wake, pending <-chan struct{}, owed bool) {
	st := v.st
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(v.queue) > 0 || len(v.own) > 0 {
		return nil, nil, true
	}
	if st.idle == nil {
		st.idle = make(chan struct{})
	}
	return st.idle, st.sub.Pending, false
}

// feedSignalled is called by an idling session that took the feed's
// signal itself: it applies the changes, which wakes the other idlers.
// Another session may have applied them meanwhile (see sync): then there
// is nothing left to apply and the updates are already queued.
func (v *view) feedSignalled(ctx context.Context) {
	v.st.mu.Lock()
	defer v.st.mu.Unlock()
	v.st.drain(ctx)
}

// systemFlags are the flags of RFC 3501 2.3.2 that Postern stores (not
// \Recent, which is per session, see recent.go, and which IMAP4rev2
// dropped).
var systemFlags = []string{mailstore.FlagSeen, mailstore.FlagAnswered, mailstore.FlagFlagged, mailstore.FlagDeleted, mailstore.FlagDraft}

// mailboxFlags is the FLAGS list: system flags and keywords.
func mailboxFlags(keywords []string) []imap.Flag {
	out := make([]imap.Flag, 0, len(systemFlags)+len(keywords))
	for _, f := range systemFlags {
		out = append(out, imap.Flag(f))
	}
	for _, k := range keywords {
		out = append(out, imap.Flag(k))
	}
	return out
}

func toIMAPFlags(flags []string) []imap.Flag {
	out := make([]imap.Flag, len(flags))
	for i, f := range flags {
		out[i] = imap.Flag(f)
	}
	return out
}
