package mailstore

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// The change feed across frontends (PostgreSQL).
//
// Every commit NOTIFYs pgChannel with "<mailbox id> <highest MODSEQ>" for
// each mailbox it changed. The notification is only a wake-up: each Store
// keeps, for every mailbox it has subscribers for, the MODSEQ and UIDNEXT
// up to which it has published, and on a hint reads from the database
// what changed since (messages with a higher MODSEQ, tombstones in
// expunged with a higher MODSEQ) and publishes that to its in-process
// feed. A Store's own commits take the same path, synchronously after
// the commit, so that each change is published once, in MODSEQ order,
// whichever frontend made it. A listener that lost its connection
// reconnects and re-reads every subscribed mailbox: a lost notification
// delays a change, never loses it.

// pgChannel is the NOTIFY channel of mailbox changes.
const pgChannel = "postern_changes"

// listenRetry is how long the listener waits before reconnecting.
const listenRetry = time.Second

// pgListener follows the changes of the mailboxes a Store has
// subscribers for.
type pgListener struct {
	s      *Store
	mu     sync.Mutex // serialises catch-ups; guards state
	state  map[int64]*feedMark
	cancel context.CancelFunc
	done   chan struct{}
}

// feedMark is how far a mailbox's changes have been published.
type feedMark struct {
	known   bool // modseq and uidnext were read
	gone    bool // ChangeMailboxGone was published
	modseq  uint64
	uidnext uint32
}

func newPGListener(s *Store) *pgListener {
	ctx, cancel := context.WithCancel(context.Background())
	l := &pgListener{s: s, state: make(map[int64]*feedMark), cancel: cancel, done: make(chan struct{})}
	go l.run(ctx)
	return l
}

func (l *pgListener) stop() {
	l.cancel()
	<-l.done
}

// watch starts following a mailbox that got its first subscriber.
func (l *pgListener) watch(mailboxID int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.state[mailboxID]; ok {
		return
	}
	m := &feedMark{}
	l.state[mailboxID] = m
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var noselect bool
	err := l.s.readRow(ctx, "SELECT highestmodseq, uidnext, noselect FROM mailboxes WHERE id = ?", mailboxID).
		Scan(&m.modseq, &m.uidnext, &noselect)
	// On failure the mark stays unknown and the next catch-up sets it.
	m.known = err == nil
}

// unwatch stops following a mailbox whose last subscriber left.
func (l *pgListener) unwatch(mailboxID int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.s.feed.has(mailboxID) {
		delete(l.state, mailboxID)
	}
}

// published is called by the writer after a commit with the changes it
// made: their mailboxes are caught up now, before the writer answers.
func (l *pgListener) published(changes []Change) {
	var last int64 = -1
	for _, c := range changes {
		if c.MailboxID == last {
			continue
		}
		last = c.MailboxID
		l.catchUp(context.Background(), c.MailboxID, 0)
	}
}

// hint handles a notification.
func (l *pgListener) hint(ctx context.Context, payload string) {
	id, modseq, ok := strings.Cut(payload, " ")
	if !ok {
		return
	}
	mailboxID, err1 := strconv.ParseInt(id, 10, 64)
	seq, err2 := strconv.ParseUint(modseq, 10, 64)
	if err1 != nil || err2 != nil {
		return
	}
	l.catchUp(ctx, mailboxID, seq)
}

// catchUpAll re-reads every followed mailbox, after (re)connecting.
func (l *pgListener) catchUpAll(ctx context.Context) {
	l.mu.Lock()
	ids := make([]int64, 0, len(l.state))
	for id := range l.state {
		ids = append(ids, id)
	}
	l.mu.Unlock()
	for _, id := range ids {
		l.catchUp(ctx, id, 0)
	}
}

// catchUp publishes what changed in a followed mailbox since its mark.
// A hinted MODSEQ (not 0) at or below the mark needs no read: that
// Store's own commit, published already.
func (l *pgListener) catchUp(ctx context.Context, mailboxID int64, hinted uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.state[mailboxID]
	if m == nil || (hinted != 0 && m.known && hinted <= m.modseq) {
		return
	}
	changes, err := l.read(ctx, mailboxID, m)
	if err != nil {
		if ctx.Err() == nil {
			l.s.log.Warn("read mailbox changes", "mailbox", mailboxID, "err", err)
		}
		return
	}
	l.s.feed.publish(changes)
}

// read reads, in one snapshot, the changes of a mailbox past m and moves
// m to the mailbox's state.
func (l *pgListener) read(ctx context.Context, mailboxID int64, m *feedMark) ([]Change, error) {
	tx, err := l.s.rdb.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	var modseq uint64
	var uidnext uint32
	var noselect bool
	err = tx.QueryRowContext(ctx, "SELECT highestmodseq, uidnext, noselect FROM mailboxes WHERE id = $1", mailboxID).
		Scan(&modseq, &uidnext, &noselect)
	if isNoRows(err) || err == nil && noselect {
		if m.gone {
			return nil, nil
		}
		m.gone, m.known = true, false
		return []Change{{MailboxID: mailboxID, Kind: ChangeMailboxGone}}, nil
	}
	if err != nil {
		return nil, err
	}
	if m.gone || !m.known {
		// Reborn under the same ID (a \Noselect name made a mailbox
		// again, with a new UIDVALIDITY), or never read: start here.
		m.gone, m.known, m.modseq, m.uidnext = false, true, modseq, uidnext
		return nil, nil
	}
	if modseq <= m.modseq {
		return nil, nil
	}
	var changes []Change
	rows, err := tx.QueryContext(ctx, `SELECT uid, modseq, flags, keywords FROM messages
		WHERE mailbox_id = $1 AND modseq > $2`, mailboxID, int64(m.modseq))
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		c := Change{MailboxID: mailboxID}
		var bits int
		var kw string
		if err := rows.Scan(&c.UID, &c.ModSeq, &bits, &kw); err != nil {
			rows.Close()
			return nil, err
		}
		c.Flags = flagList(bits, splitKeywords(kw))
		c.Kind = ChangeFlags
		if c.UID >= m.uidnext {
			c.Kind = ChangeAdded
		}
		changes = append(changes, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows, err = tx.QueryContext(ctx, "SELECT uid, modseq FROM expunged WHERE mailbox_id = $1 AND modseq > $2",
		mailboxID, int64(m.modseq))
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		c := Change{MailboxID: mailboxID, Kind: ChangeExpunged}
		if err := rows.Scan(&c.UID, &c.ModSeq); err != nil {
			rows.Close()
			return nil, err
		}
		changes = append(changes, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	// In the order they were made; within one MODSEQ, additions (UID
	// order) before flag changes before expunges, as the writer does.
	sort.Slice(changes, func(i, j int) bool {
		a, b := changes[i], changes[j]
		if a.ModSeq != b.ModSeq {
			return a.ModSeq < b.ModSeq
		}
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		return a.UID < b.UID
	})
	m.modseq, m.uidnext = modseq, uidnext
	return changes, nil
}

// run keeps a LISTEN connection, reconnecting when it breaks.
func (l *pgListener) run(ctx context.Context) {
	defer close(l.done)
	for ctx.Err() == nil {
		if err := l.listen(ctx); err != nil && ctx.Err() == nil {
			l.s.log.Warn("change feed listener lost its connection; reconnecting", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(listenRetry):
			}
		}
	}
}

func (l *pgListener) listen(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, l.s.dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+pgChannel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	// What happened while there was no listener.
	l.catchUpAll(ctx)
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("wait for notification: %w", err)
		}
		l.hint(ctx, n.Payload)
	}
}
