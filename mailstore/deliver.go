package mailstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Envelope is the SMTP envelope of a message to deliver, with the DSN
// parameters (RFC 3461) the relay needs for remote recipients.
type Envelope struct {
	Sender     string // "" for the null reverse-path
	Recipients []Recipient
	EnvID      string // ENVID
	Ret        string // RET: FULL or HDRS

	// SpecialUse, when set, delivers to each local user's mailbox with
	// this RFC 6154 attribute instead of INBOX (`\Junk` for mail that
	// failed DMARC with p=quarantine, say). A user without one gets it
	// created, with its usual name (see SpecialUseName), subscribed and
	// carrying the attribute, in the delivery's transaction. Only the
	// attributes of real mailboxes are allowed: not `\All` or `\Flagged`.
	SpecialUse string

	// Report, when set, is called inside the delivery's transaction when
	// some recipients get nothing while others get the message; the
	// report it returns (nil: none) goes to Sender in the same commit, so
	// that a sender answered 250 for all is told of those that failed.
	Report func(failed []RecipientError) []byte

	// LocalOnly refuses every recipient outside the local domains with
	// ErrNotLocal instead of queueing it: the envelope of a client that
	// did not authenticate, whose recipients RCPT found local (RFC 5321
	// 3.6.2: no open relay), must not be relayed because a domain was
	// removed between RCPT and delivery. Aliases of local addresses
	// still forward to remote targets.
	LocalOnly bool
}

// Recipient is one RCPT TO.
type Recipient struct {
	Address string
	Notify  string // NOTIFY, as given
	ORcpt   string // ORCPT, as given

	// Resolved, when set, is Resolve's answer for Address obtained during
	// this SMTP transaction (at RCPT): DeliverEnvelope uses it instead of
	// resolving the address again. The writer inserts by user id, and ids
	// are never reused, so a user deleted since gets nothing (Failed, with
	// ErrNoSuchUser). With Envelope.LocalOnly, a resolution that reaches
	// remote addresses is not trusted and the address is resolved again,
	// so that a domain removed since is not relayed to.
	Resolved *Resolution
}

// Delivery tells what became of each recipient.
type Delivery struct {
	Stored []Stored          // one per local user reached
	Queued []QueuedRecipient // remote addresses put in the outbound queue
	Failed []RecipientError  // recipients that got nothing
	// Reported is set when Envelope.Report's report was stored or queued.
	Reported bool
	// ReportQueued is set when that report went into the outbound queue.
	ReportQueued bool
}

// Stored is one message added to a local mailbox.
type Stored struct {
	Recipient string // the address as given
	User      string // the user it reached
	MailboxID int64
	Mailbox   string // its name: INBOX, or the one Envelope.SpecialUse chose
	UID       uint32
}

// QueuedRecipient is one outbound queue entry.
type QueuedRecipient struct {
	Recipient string // the address as given
	Address   string // the remote address queued
	QueueID   int64
}

// RecipientError is a recipient that could not be delivered to; Err wraps
// ErrNoSuchUser, ErrOverQuota or ErrInvalidAddress.
type RecipientError struct {
	Recipient string
	Err       error
}

// Deliver delivers a message to local users' INBOXes and queues it for
// remote recipients, resolving aliases, with the body stored once. It
// returns after the commit is durable. Concurrent calls share transactions
// (group commit). Recipients that fail are listed in Delivery.Failed; the
// error is non-nil only when nothing at all was delivered or queued.
func (s *Store) Deliver(ctx context.Context, sender string, recipients []string, msg []byte) (*Delivery, error) {
	env := Envelope{Sender: sender, Recipients: make([]Recipient, len(recipients))}
	for i, r := range recipients {
		env.Recipients[i].Address = r
	}
	return s.DeliverEnvelope(ctx, env, msg)
}

// target is one resolved destination of a recipient.
type target struct {
	rcpt   int // index in Envelope.Recipients
	userID int64
	user   string
	remote string
}

// DeliverEnvelope is Deliver with DSN parameters.
func (s *Store) DeliverEnvelope(ctx context.Context, env Envelope, msg []byte) (*Delivery, error) {
	d := &Delivery{}
	if env.SpecialUse != "" && SpecialUseName(env.SpecialUse) == "" {
		return nil, fmt.Errorf("deliver: %w: special use %q", ErrInvalidName, env.SpecialUse)
	}
	// Resolution and hashing happen before the writer, which only inserts.
	var targets []target
	seenUser := map[int64]bool{}
	for i, r := range env.Recipients {
		var res Resolution
		var err error
		if r.Resolved != nil && (!env.LocalOnly || len(r.Resolved.Remote) == 0) {
			res = *r.Resolved
		} else {
			res, err = s.Resolve(ctx, r.Address)
		}
		if err != nil {
			if errors.Is(err, ErrNoSuchUser) || errors.Is(err, ErrInvalidAddress) {
				d.Failed = append(d.Failed, RecipientError{Recipient: r.Address, Err: err})
				continue
			}
			return nil, fmt.Errorf("deliver: %w", err)
		}
		if a, _ := NormalizeAddress(r.Address); env.LocalOnly && len(res.Users) == 0 && len(res.Remote) == 1 && strings.EqualFold(res.Remote[0], a) {
			// Resolve gives an address back as itself only when its
			// domain is not local (an alias cannot name itself).
			d.Failed = append(d.Failed, RecipientError{Recipient: r.Address, Err: fmt.Errorf("%s: %w", r.Address, ErrNotLocal)})
			continue
		}
		for _, u := range res.Users {
			if !seenUser[u.ID] {
				seenUser[u.ID] = true
				targets = append(targets, target{rcpt: i, userID: u.ID, user: u.Address})
			}
		}
		for _, a := range res.Remote {
			targets = append(targets, target{rcpt: i, remote: a})
		}
	}
	if len(targets) == 0 {
		return d, fmt.Errorf("deliver: no recipient accepted: %w", firstErr(d.Failed, ErrNoSuchUser))
	}
	body := prepareBody(msg)
	now := s.now()
	size := int64(len(body.data))
	failedBefore := len(d.Failed)
	var locks lockHint
	for _, tg := range targets {
		if tg.remote == "" {
			locks.users = append(locks.users, tg.userID)
		}
	}
	// A delivery that reaches nobody (every user over quota, disabled or
	// gone since RCPT) writes nothing and does not fail its request, so
	// that a client repeating it cannot make group commits run again
	// with savepoints (writer.run): the UIDs are taken first, and the
	// body stored only once someone takes it.
	noneAccepted := false
	err := s.w.doLocked(ctx, locks, func(t *wtx) error {
		// A retried request starts again from the resolution's results.
		d.Stored, d.Queued, d.Failed = d.Stored[:0], d.Queued[:0], d.Failed[:failedBefore]
		d.Reported, d.ReportQueued = false, false
		noneAccepted = false
		type slot struct {
			rcpt   string
			user   string
			inbox  int64
			name   string
			uid    uint32
			modseq uint64
		}
		slots := make([]slot, 0, len(targets))
		remotes := 0
		for _, tg := range targets {
			rcpt := env.Recipients[tg.rcpt]
			if tg.remote != "" {
				remotes++
				continue
			}
			inbox, name, uid, modseq, err := t.deliveryUID(tg.userID, env.SpecialUse, size)
			if errors.Is(err, ErrNoSuchUser) || errors.Is(err, ErrOverQuota) {
				d.Failed = append(d.Failed, RecipientError{Recipient: rcpt.Address, Err: fmt.Errorf("%s: %w", tg.user, err)})
				continue
			}
			if err != nil {
				return fmt.Errorf("deliver to %s: %w", tg.user, err)
			}
			slots = append(slots, slot{rcpt: rcpt.Address, user: tg.user, inbox: inbox, name: name, uid: uid, modseq: modseq})
		}
		if len(slots) == 0 && remotes == 0 {
			noneAccepted = true
			return nil
		}
		bodyID, err := t.storeBody(body)
		if err != nil {
			return fmt.Errorf("deliver: %w", err)
		}
		for _, sl := range slots {
			if err := t.insertMessage(sl.inbox, sl.uid, sl.modseq, 0, nil, now, size, bodyID); err != nil {
				return fmt.Errorf("deliver to %s: %w", sl.user, err)
			}
			d.Stored = append(d.Stored, Stored{Recipient: sl.rcpt, User: sl.user, MailboxID: sl.inbox, Mailbox: sl.name, UID: sl.uid})
		}
		for _, tg := range targets {
			if tg.remote == "" {
				continue
			}
			rcpt := env.Recipients[tg.rcpt]
			id, err := t.enqueue(env, rcpt, tg.remote, bodyID, now)
			if err != nil {
				return fmt.Errorf("deliver: %w", err)
			}
			d.Queued = append(d.Queued, QueuedRecipient{Recipient: rcpt.Address, Address: tg.remote, QueueID: id})
		}
		d.Reported, d.ReportQueued = false, false
		if env.Report != nil && env.Sender != "" && len(d.Failed) > 0 {
			if report := env.Report(d.Failed); report != nil {
				var err error
				if d.Reported, d.ReportQueued, err = t.deliverReport(s, env.Sender, report, now); err != nil {
					return fmt.Errorf("deliver report to %s: %w", env.Sender, err)
				}
			}
		}
		return nil
	})
	if err == nil && noneAccepted {
		return d, fmt.Errorf("deliver: no recipient accepted: %w", firstErr(d.Failed, ErrNoSuchUser))
	}
	if err != nil {
		if len(d.Stored) == 0 && len(d.Queued) == 0 && len(d.Failed) > 0 {
			return d, err
		}
		return nil, err
	}
	return d, nil
}

// deliveryUID takes the next UID and MODSEQ of the mailbox a delivery of
// size bytes goes to (deliveryHead), checking the quota. For INBOX, the
// common case, one statement reads and raises them, only when the user
// is enabled and has room; when it changes nothing, deliveryHead tells
// why.
func (t *wtx) deliveryUID(userID int64, use string, size int64) (mailbox int64, name string, uid uint32, modseq uint64, err error) {
	if use == "" && !t.w.usageBySum {
		err := t.queryRow(`UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1
			WHERE user_id = ? AND name = 'INBOX' AND EXISTS (SELECT 1 FROM users
				WHERE id = ? AND disabled = 0 AND (quota_bytes = 0 OR used_bytes + ? <= quota_bytes))
			RETURNING id, uidnext - 1, highestmodseq`, userID, userID, size).Scan(&mailbox, &uid, &modseq)
		if err == nil {
			return mailbox, "INBOX", uid, modseq, nil
		}
		if !isNoRows(err) {
			return 0, "", 0, 0, fmt.Errorf("take a UID in the INBOX of user %d: %w", userID, err)
		}
	}
	mailbox, name, h, err := t.deliveryHead(userID, use, size)
	if err != nil {
		return 0, "", 0, 0, err
	}
	uid = h.uidnext
	if err := t.bump(mailbox, &h, 1, nil); err != nil {
		return 0, "", 0, 0, err
	}
	return mailbox, name, uid, h.modseq, nil
}

// inboxHead reads a user's INBOX for a delivery of size bytes, checking
// the quota unless size is negative, in as few statements as the common
// case allows.
func (t *wtx) inboxHead(userID, size int64) (int64, mailboxHead, error) {
	var id, quota, used int64
	var kw string
	var disabled bool
	h := mailboxHead{userID: userID}
	err := t.queryRow(`SELECT b.id, b.uidnext, b.highestmodseq, b.keywords, u.quota_bytes, u.used_bytes, u.disabled
		FROM mailboxes b JOIN users u ON u.id = b.user_id WHERE b.user_id = ? AND b.name = 'INBOX'`+t.w.d.forUpdateOf("b"), userID).
		Scan(&id, &h.uidnext, &h.modseq, &kw, &quota, &used, &disabled)
	if isNoRows(err) {
		return 0, h, fmt.Errorf("no INBOX: %w", ErrNoSuchUser)
	}
	if err != nil {
		return 0, h, err
	}
	if disabled {
		// Disabled after the recipient was resolved (RCPT): a
		// disabled user receives nothing.
		return 0, h, fmt.Errorf("user %d is disabled: %w", userID, ErrNoSuchUser)
	}
	h.keywords = splitKeywords(kw)
	if size >= 0 {
		if err := t.withinQuota(userID, quota, used, size); err != nil {
			return 0, h, err
		}
	}
	return id, h, nil
}

// SpecialUseName is the name a mailbox created for delivery with an RFC
// 6154 attribute gets, or "" for an attribute delivery does not take
// (`\All` and `\Flagged` name virtual views, not places for mail).
func SpecialUseName(use string) string {
	switch use {
	case `\Archive`:
		return "Archive"
	case `\Drafts`:
		return "Drafts"
	case `\Junk`:
		return "Junk"
	case `\Sent`:
		return "Sent"
	case `\Trash`:
		return "Trash"
	}
	return ""
}

// deliveryHead is inboxHead for delivery into the user's mailbox with the
// special use (INBOX when use is ""). The first selectable mailbox with
// the attribute takes it; without one, a selectable mailbox of the
// attribute's usual name does (the user made it, we leave its attributes
// alone); else that mailbox is created with the attribute, taking the
// place of a \Noselect placeholder of the name if there is one.
func (t *wtx) deliveryHead(userID int64, use string, size int64) (int64, string, mailboxHead, error) {
	if use == "" {
		id, h, err := t.inboxHead(userID, size)
		return id, "INBOX", h, err
	}
	h := mailboxHead{userID: userID}
	var quota, used int64
	var disabled bool
	err := t.queryRow("SELECT quota_bytes, used_bytes, disabled FROM users WHERE id = ?", userID).Scan(&quota, &used, &disabled)
	if isNoRows(err) || err == nil && disabled {
		return 0, "", h, fmt.Errorf("user %d: %w", userID, ErrNoSuchUser)
	}
	if err != nil {
		return 0, "", h, err
	}
	if size >= 0 {
		if err := t.withinQuota(userID, quota, used, size); err != nil {
			return 0, "", h, err
		}
	}
	const cols = "SELECT id, name, uidnext, highestmodseq, keywords FROM mailboxes WHERE user_id = ? AND noselect = 0 AND "
	var id int64
	var name, kw string
	err = t.queryRow(cols+"special_use = ? ORDER BY id LIMIT 1"+t.w.d.forUpdate(), userID, use).Scan(&id, &name, &h.uidnext, &h.modseq, &kw)
	if isNoRows(err) {
		err = t.queryRow(cols+"name = ?"+t.w.d.forUpdate(), userID, SpecialUseName(use)).Scan(&id, &name, &h.uidnext, &h.modseq, &kw)
	}
	if isNoRows(err) {
		name = SpecialUseName(use)
		if id, err = t.createMailbox(userID, name, use, false); err != nil {
			return 0, "", h, fmt.Errorf("create mailbox %q: %w", name, err)
		}
		// Subscribed as clients expect of the special mailboxes, unless
		// the user is at the limit: the mail matters more.
		if err := t.subscribe(userID, name); err != nil && !errors.Is(err, ErrLimit) {
			return 0, "", h, err
		}
		err = t.queryRow("SELECT uidnext, highestmodseq, keywords FROM mailboxes WHERE id = ?"+t.w.d.forUpdate(), id).Scan(&h.uidnext, &h.modseq, &kw)
	}
	if err != nil {
		return 0, "", h, fmt.Errorf("find %s mailbox: %w", use, err)
	}
	h.keywords = splitKeywords(kw)
	return id, name, h, nil
}

// deliverReport stores a report for sender in the current transaction:
// in the INBOX of the local users the address reaches (not held to their
// quota: a report must not be lost for want of room), or queued with the
// null sender for a remote address. An address that reaches nobody gets
// nothing (reported false).
func (t *wtx) deliverReport(s *Store, sender string, report []byte, now time.Time) (reported, queued bool, err error) {
	res, err := s.Resolve(context.Background(), sender)
	if errors.Is(err, ErrNoSuchUser) || errors.Is(err, ErrInvalidAddress) {
		return false, false, nil
	}
	if err != nil {
		return false, false, err
	}
	body := prepareBody(report)
	bodyID, err := t.storeBody(body)
	if err != nil {
		return false, false, err
	}
	for _, u := range res.Users {
		inbox, h, err := t.inboxHead(u.ID, -1) // no quota for reports
		if errors.Is(err, ErrNoSuchUser) {
			continue
		}
		if err != nil {
			return false, false, err
		}
		uid := h.uidnext
		if err := t.bump(inbox, &h, 1, nil); err != nil {
			return false, false, err
		}
		if err := t.insertMessage(inbox, uid, h.modseq, 0, nil, now, int64(len(body.data)), bodyID); err != nil {
			return false, false, err
		}
		reported = true
	}
	for _, a := range res.Remote {
		if _, err := t.enqueue(Envelope{}, Recipient{Address: a}, a, bodyID, now); err != nil {
			return false, false, err
		}
		reported, queued = true, true
	}
	if !reported {
		// Nobody took the body. It may be one that a Hold still needs
		// (same content, expunged), so it is not deleted here: the
		// sweep takes it like any other unreferenced body.
		if err := t.noteOrphan(bodyID); err != nil {
			return false, false, err
		}
	}
	return reported, queued, nil
}

func firstErr(failed []RecipientError, fallback error) error {
	if len(failed) > 0 {
		return failed[0].Err
	}
	return fallback
}

// QueueEntry is one recipient of one message waiting for the relay.
type QueueEntry struct {
	ID          int64
	Sender      string
	Recipient   string
	Domain      string
	BodyID      int64
	Size        int64
	Attempts    int
	NextAttempt time.Time
	Created     time.Time
	LastError   string
	DelayWarned bool // the sender has been told the message is delayed
	EnvID       string
	Ret         string
	Notify      string
	ORcpt       string
	// LeaseOwner names the relay (frontend) that holds the entry until
	// LeaseUntil; "" or a past LeaseUntil: nobody (QueueLease).
	LeaseOwner string
	LeaseUntil time.Time
}

// Leased reports whether a relay holds the entry at now.
func (e QueueEntry) Leased(now time.Time) bool {
	return e.LeaseOwner != "" && now.Before(e.LeaseUntil)
}

func (t *wtx) enqueue(env Envelope, rcpt Recipient, address string, bodyID int64, now time.Time) (int64, error) {
	var id int64
	err := t.queryRow(`INSERT INTO queue (sender, recipient, domain, body_id, next_attempt, created, env_id, ret, notify, orcpt)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
		env.Sender, address, domainOf(address), bodyID, now.UnixNano(), now.UnixNano(), env.EnvID, env.Ret, rcpt.Notify, rcpt.ORcpt).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("queue message for %s: %w", address, err)
	}
	return id, nil
}

const queueColumns = "q.id, q.sender, q.recipient, q.domain, q.body_id, b.size, q.attempts, q.next_attempt, q.created, q.last_error, q.delay_warned, q.env_id, q.ret, q.notify, q.orcpt, q.lease_owner, q.lease_until"

func scanQueueEntry(sc interface{ Scan(...any) error }) (QueueEntry, error) {
	var e QueueEntry
	var next, created, leaseUntil int64
	err := sc.Scan(&e.ID, &e.Sender, &e.Recipient, &e.Domain, &e.BodyID, &e.Size, &e.Attempts, &next, &created,
		&e.LastError, &e.DelayWarned, &e.EnvID, &e.Ret, &e.Notify, &e.ORcpt, &e.LeaseOwner, &leaseUntil)
	e.NextAttempt = time.Unix(0, next).UTC()
	e.Created = time.Unix(0, created).UTC()
	if leaseUntil != 0 {
		e.LeaseUntil = time.Unix(0, leaseUntil).UTC()
	}
	return e, err
}

// Queue lists outbound queue entries: all of them when due is zero, else
// those due at or before it (at most limit, 0: no limit), oldest first.
func (s *Store) Queue(ctx context.Context, due time.Time, limit int) ([]QueueEntry, error) {
	q := "SELECT " + queueColumns + " FROM queue q JOIN bodies b ON b.id = q.body_id"
	var args []any
	if !due.IsZero() {
		q += " WHERE q.next_attempt <= ?"
		args = append(args, due.UnixNano())
	}
	q += " ORDER BY q.next_attempt, q.id"
	if limit > 0 {
		q += " LIMIT ?"
		args = append(args, limit)
	}
	rows, err := s.read(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list queue: %w", err)
	}
	defer rows.Close()
	var out []QueueEntry
	for rows.Next() {
		e, err := scanQueueEntry(rows)
		if err != nil {
			return nil, fmt.Errorf("list queue: %w", err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list queue: %w", err)
	}
	return out, nil
}

// QueueDefer records a failed attempt and when to try again; delayWarned
// records that the sender has now been told of the delay (it stays set).
func (s *Store) QueueDefer(ctx context.Context, id int64, next time.Time, lastError string, delayWarned bool) error {
	if s.d.pg && !pgText(lastError) {
		// A remote server's reply may carry any bytes; PostgreSQL text
		// takes only UTF-8 without NUL.
		lastError = strings.ToValidUTF8(strings.ReplaceAll(lastError, "\x00", ""), "\uFFFD")
	}
	return s.w.do(ctx, func(t *wtx) error {
		res, err := t.exec("UPDATE queue SET attempts = attempts + 1, next_attempt = ?, last_error = ?, delay_warned = CASE WHEN ? != 0 THEN 1 ELSE delay_warned END WHERE id = ?",
			next.UnixNano(), lastError, delayWarned, id)
		if err != nil {
			return fmt.Errorf("defer queue entry %d: %w", id, err)
		}
		return affected(res, fmt.Sprintf("defer queue entry %d", id))
	})
}

// QueueRetry makes an entry (or every entry, for id 0) due now.
func (s *Store) QueueRetry(ctx context.Context, id int64) error {
	now := s.now().UnixNano()
	return s.w.do(ctx, func(t *wtx) error {
		if id == 0 {
			_, err := t.exec("UPDATE queue SET next_attempt = ?", now)
			if err != nil {
				return fmt.Errorf("retry queue: %w", err)
			}
			return nil
		}
		res, err := t.exec("UPDATE queue SET next_attempt = ? WHERE id = ?", now, id)
		if err != nil {
			return fmt.Errorf("retry queue entry %d: %w", id, err)
		}
		return affected(res, fmt.Sprintf("retry queue entry %d", id))
	})
}

// QueueRemove takes an entry out of the queue (delivered, failed for good,
// or deleted by an administrator).
func (s *Store) QueueRemove(ctx context.Context, id int64) error {
	return s.w.do(ctx, func(t *wtx) error {
		res, err := t.exec("DELETE FROM queue WHERE id = ?", id)
		if err != nil {
			return fmt.Errorf("remove queue entry %d: %w", id, err)
		}
		return affected(res, fmt.Sprintf("remove queue entry %d", id))
	})
}
