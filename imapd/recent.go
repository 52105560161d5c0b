package imapd

import (
	"context"
	"slices"
	"strings"
	"sync"

	"github.com/emersion/go-imap/v2"

	"github.com/postern/postern/mailstore"
)

// The \Recent flag (RFC 3501 2.3.2): a message is recent to the first
// session told of it, and to no other. The store keeps, per mailbox, the
// highest UID some session has claimed (mailstore.ClaimRecent); a session
// that selects the mailbox read-write claims everything above it, and
// claims again each time it tells its client of new messages, so a
// message delivered while two sessions have the mailbox selected is
// recent in exactly one of them. EXAMINE and STATUS only read the mark
// (RFC 3501 6.3.2: EXAMINE must not take \Recent from anyone).
//
// IMAP4rev2 dropped \Recent (RFC 9051 appendix E): a session that enabled
// it claims nothing and is told nothing of it.

const flagRecent = `\Recent`

// recentSet is the UIDs that are recent to one session in its selected
// mailbox, as ascending disjoint ranges. Claims come in ascending order, so
// it holds one range per claim at most, usually one in all.
type recentSet struct {
	mu     sync.Mutex
	ranges []mailstore.UIDRange
}

// add records first..last (nothing when first > last).
func (r *recentSet) add(first, last uint32) {
	if first > last || first == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := len(r.ranges); n > 0 {
		prev := &r.ranges[n-1]
		if last <= prev.Stop {
			return
		}
		if first <= prev.Stop+1 {
			prev.Stop = last
			return
		}
	}
	r.ranges = append(r.ranges, mailstore.UIDRange{Start: first, Stop: last})
}

func (r *recentSet) has(uid uint32) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	i, _ := slices.BinarySearchFunc(r.ranges, uid, func(rg mailstore.UIDRange, u uint32) int {
		switch {
		case rg.Stop < u:
			return -1
		case rg.Start > u:
			return 1
		}
		return 0
	})
	return i < len(r.ranges) && r.ranges[i].Start <= uid && uid <= r.ranges[i].Stop
}

// learnRecent gives the session \Recent for the messages no session has
// had it for: claimed when the mailbox is selected read-write, only read
// when it is examined (then up to the highest UID the view knows). It is
// called on SELECT and whenever the client is about to be told of new
// messages.
func (v *view) learnRecent(ctx context.Context) error {
	if v.recent == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	store := v.st.reg.store
	if !v.readOnly {
		first, last, err := store.ClaimRecent(ctx, v.st.id)
		if err != nil {
			return err
		}
		v.recent.add(first, last)
		return nil
	}
	mark, err := store.RecentMark(ctx, v.st.id)
	if err != nil {
		return err
	}
	v.st.mu.Lock()
	var top uint32
	if n := len(v.st.uids); n > 0 {
		top = v.st.uids[n-1]
	}
	v.st.mu.Unlock()
	v.recent.add(mark+1, top)
	return nil
}

// recentCount is the number of messages the client knows of that are
// recent to the session. st.mu must be held.
func (v *view) recentCount() uint32 {
	if v.recent == nil {
		return 0
	}
	var n uint32
	for i, uid := range v.st.uids {
		if !v.recent.has(uid) {
			continue
		}
		if _, ok := v.toClient(uint32(i + 1)); ok {
			n++
		}
	}
	return n
}

// isRecent reports whether a message is recent to the session.
func (v *view) isRecent(uid uint32) bool {
	return v.recent != nil && v.recent.has(uid)
}

// flagsOut is a message's FLAGS as the session shows them: the stored
// flags, and \Recent when the message is recent to it.
func (v *view) flagsOut(uid uint32, flags []string) []imap.Flag {
	out := toIMAPFlags(flags)
	if v.isRecent(uid) {
		out = append(out, imap.Flag(flagRecent))
	}
	return out
}

// unclaimedRecent counts the mailbox's messages above the recent mark:
// recent to whichever session selects the mailbox next.
func (s *session) unclaimedRecent(ctx context.Context, mailboxID int64) (uint32, error) {
	mark, err := s.cc.srv.store.RecentMark(ctx, mailboxID)
	if err != nil {
		return 0, err
	}
	msgs, err := s.cc.srv.store.Messages(ctx, mailboxID, mailstore.UIDSet{{Start: mark + 1, Stop: 0}})
	if err != nil {
		return 0, err
	}
	return uint32(len(msgs)), nil
}

func isRecentFlag(f imap.Flag) bool { return strings.EqualFold(string(f), flagRecent) }
