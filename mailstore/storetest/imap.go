package storetest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// IMAPUpdates records what an IMAP server tells a client without being
// asked (RFC 9051 7.4 EXPUNGE, 7.3.1 EXISTS, 7.3.5 FLAGS, 7.5.2 FETCH of
// flags), in IDLE or between commands. Lock Mu to read the fields while the
// client runs; WaitFor's condition runs with Mu held.
type IMAPUpdates struct {
	Mu           sync.Mutex
	Exists       []uint32      // each EXISTS count
	Expunges     []uint32      // each EXPUNGE sequence number
	Flags        []string      // each FETCH as "seq uid flags"
	MailboxFlags [][]imap.Flag // each FLAGS response

	signal chan struct{}
}

// NewIMAPUpdates makes an empty record; give its Handler to the client.
func NewIMAPUpdates() *IMAPUpdates { return &IMAPUpdates{signal: make(chan struct{}, 1)} }

// note wakes WaitFor without ever blocking the client's reader: one
// pending wake-up is enough, since WaitFor checks everything recorded.
func (u *IMAPUpdates) note() {
	select {
	case u.signal <- struct{}{}:
	default:
	}
}

// Handler is the client's imapclient.Options.UnilateralDataHandler.
func (u *IMAPUpdates) Handler() *imapclient.UnilateralDataHandler {
	return &imapclient.UnilateralDataHandler{
		Expunge: func(seq uint32) {
			u.Mu.Lock()
			u.Expunges = append(u.Expunges, seq)
			u.Mu.Unlock()
			u.note()
		},
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			u.Mu.Lock()
			if d.NumMessages != nil {
				u.Exists = append(u.Exists, *d.NumMessages)
			}
			if d.Flags != nil {
				u.MailboxFlags = append(u.MailboxFlags, d.Flags)
			}
			u.Mu.Unlock()
			u.note()
		},
		Fetch: func(msg *imapclient.FetchMessageData) {
			buf, _ := msg.Collect()
			if buf == nil {
				return
			}
			u.Mu.Lock()
			u.Flags = append(u.Flags, fmt.Sprintf("%d %d %v", buf.SeqNum, buf.UID, buf.Flags))
			u.Mu.Unlock()
			u.note()
		},
	}
}

// WaitFor waits up to timeout for cond to hold, checking after each update,
// and fails the test with what was recorded if it does not.
func (u *IMAPUpdates) WaitFor(tb testing.TB, what string, timeout time.Duration, cond func(u *IMAPUpdates) bool) {
	tb.Helper()
	deadline := time.After(timeout)
	for {
		u.Mu.Lock()
		ok := cond(u)
		u.Mu.Unlock()
		if ok {
			return
		}
		select {
		case <-u.signal:
		case <-deadline:
			u.Mu.Lock()
			defer u.Mu.Unlock()
			tb.Fatalf("no %s within %v: exists %v, expunges %v, fetch %v, flags %v", what, timeout, u.Exists, u.Expunges, u.Flags, u.MailboxFlags)
		}
	}
}
