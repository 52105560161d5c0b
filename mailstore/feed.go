package mailstore

import "sync"

// ChangeKind says what happened to a message or mailbox.
type ChangeKind int

const (
	// ChangeAdded: a message was added (delivery, APPEND, COPY, MOVE).
	ChangeAdded ChangeKind = iota + 1
	// ChangeFlags: a message's flags or keywords changed.
	ChangeFlags
	// ChangeExpunged: a message was removed.
	ChangeExpunged
	// ChangeMailboxGone: the mailbox was deleted or renamed away; its
	// subscribers should stop using the mailbox ID.
	ChangeMailboxGone
)

// Change is one committed change to a mailbox.
type Change struct {
	MailboxID int64
	Kind      ChangeKind
	UID       uint32
	ModSeq    uint64
	Flags     []string // for ChangeAdded and ChangeFlags
}

// maxPendingChanges bounds what a subscriber that does not read keeps; past
// it the subscriber is told it overflowed and must re-read the mailbox.
const maxPendingChanges = 10000

// Subscription receives the changes of one mailbox. Pending is signalled
// (without blocking the writer) whenever Get has something new.
type Subscription struct {
	MailboxID int64
	Pending   <-chan struct{}

	pending  chan struct{}
	feed     *feed
	mu       sync.Mutex
	changes  []Change
	overflow bool
}

// Get takes the changes gathered since the last call. overflow means some
// were dropped: re-read the mailbox from the store.
func (sub *Subscription) Get() (overflow bool, changes []Change) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	overflow, changes = sub.overflow, sub.changes
	sub.overflow, sub.changes = false, nil
	return overflow, changes
}

// Close stops the subscription.
func (sub *Subscription) Close() { sub.feed.remove(sub) }

func (sub *Subscription) add(c Change) {
	sub.mu.Lock()
	if len(sub.changes) >= maxPendingChanges {
		sub.overflow = true
		sub.changes = nil
	}
	if !sub.overflow {
		sub.changes = append(sub.changes, c)
	}
	sub.mu.Unlock()
	select {
	case sub.pending <- struct{}{}:
	default:
	}
}

// feed is the in-process change feed.
type feed struct {
	mu   sync.RWMutex
	subs map[int64]map[*Subscription]struct{}
	// lastGone, when set, is told that a mailbox lost its last
	// subscriber (PostgreSQL: stop following it).
	lastGone func(mailboxID int64)
}

// has reports whether a mailbox has subscribers.
func (f *feed) has(mailboxID int64) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.subs[mailboxID]) > 0
}

func newFeed() *feed { return &feed{subs: make(map[int64]map[*Subscription]struct{})} }

// Subscribe starts receiving the changes committed to a mailbox.
func (s *Store) Subscribe(mailboxID int64) *Subscription {
	ch := make(chan struct{}, 1)
	sub := &Subscription{MailboxID: mailboxID, Pending: ch, pending: ch, feed: s.feed}
	s.feed.mu.Lock()
	m := s.feed.subs[mailboxID]
	if m == nil {
		m = make(map[*Subscription]struct{})
		s.feed.subs[mailboxID] = m
	}
	m[sub] = struct{}{}
	s.feed.mu.Unlock()
	if s.listen != nil {
		s.listen.watch(mailboxID)
	}
	return sub
}

func (f *feed) remove(sub *Subscription) {
	f.mu.Lock()
	last := false
	if m := f.subs[sub.MailboxID]; m != nil {
		delete(m, sub)
		if len(m) == 0 {
			delete(f.subs, sub.MailboxID)
			last = true
		}
	}
	f.mu.Unlock()
	if last && f.lastGone != nil {
		f.lastGone(sub.MailboxID)
	}
}

func (f *feed) publish(changes []Change) {
	if len(changes) == 0 {
		return
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, c := range changes {
		for sub := range f.subs[c.MailboxID] {
			sub.add(c)
		}
	}
}

// closeAll wakes every subscriber one last time at Close.
func (f *feed) closeAll() {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, m := range f.subs {
		for sub := range m {
			select {
			case sub.pending <- struct{}{}:
			default:
			}
		}
	}
}
