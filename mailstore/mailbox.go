package mailstore

import (
	"context"
	"fmt"
	"strings"
)

// Separator is the mailbox hierarchy delimiter.
const Separator = "/"

// maxMailboxName bounds a mailbox name in bytes; maxMailboxDepth bounds its
// levels.
const (
	maxMailboxName  = 1000
	maxMailboxDepth = 32
	// MaxSubscriptions bounds the names one user can subscribe to; they
	// need no mailbox, so nothing else bounds them.
	MaxSubscriptions = 10000
)

// Mailbox is one of a user's mailboxes.
type Mailbox struct {
	ID            int64
	UserID        int64
	Name          string
	UIDValidity   uint32
	UIDNext       uint32
	HighestModSeq uint64
	SpecialUse    string   // `\Sent`, `\Drafts`, ... (RFC 6154) or ""
	Subscribed    bool     // the name is in the user's subscriptions (see Subscriptions)
	NoSelect      bool     // a name kept only because it has children
	Keywords      []string // keywords ever used in the mailbox
}

// MailboxStatus is what STATUS and STAT report.
type MailboxStatus struct {
	Messages      uint32
	Unseen        uint32
	Deleted       uint32
	Size          int64
	UIDNext       uint32
	UIDValidity   uint32
	HighestModSeq uint64
}

// NormalizeMailboxName checks a mailbox name and spells INBOX (any case, RFC
// 3501 5.1) as "INBOX", also as the first level of a hierarchical name.
func NormalizeMailboxName(name string) (string, error) {
	if name == "" || len(name) > maxMailboxName {
		return "", fmt.Errorf("%w: mailbox name %q", ErrInvalidName, name)
	}
	parts := strings.Split(name, Separator)
	if len(parts) > maxMailboxDepth {
		return "", fmt.Errorf("%w: mailbox name %q has more than %d levels", ErrInvalidName, name, maxMailboxDepth)
	}
	for _, p := range parts {
		if p == "" {
			return "", fmt.Errorf("%w: mailbox name %q has an empty level", ErrInvalidName, name)
		}
		for _, c := range p {
			if c < 0x20 || c == 0x7f || c == '*' || c == '%' {
				return "", fmt.Errorf("%w: mailbox name %q", ErrInvalidName, name)
			}
		}
	}
	if strings.EqualFold(parts[0], "INBOX") {
		parts[0] = "INBOX"
	}
	return strings.Join(parts, Separator), nil
}

// mailboxColumns reads a mailbox row (FROM mailboxes, unaliased) with
// whether its name is subscribed.
const mailboxColumns = "id, user_id, name, uidvalidity, uidnext, highestmodseq, special_use, " +
	"EXISTS (SELECT 1 FROM subscriptions s WHERE s.user_id = mailboxes.user_id AND s.name = mailboxes.name), noselect, keywords"

func scanMailbox(sc interface{ Scan(...any) error }) (Mailbox, error) {
	var mb Mailbox
	var kw string
	err := sc.Scan(&mb.ID, &mb.UserID, &mb.Name, &mb.UIDValidity, &mb.UIDNext, &mb.HighestModSeq,
		&mb.SpecialUse, &mb.Subscribed, &mb.NoSelect, &kw)
	mb.Keywords = splitKeywords(kw)
	return mb, err
}

// Mailboxes lists a user's mailboxes by name.
func (s *Store) Mailboxes(ctx context.Context, userID int64) ([]Mailbox, error) {
	rows, err := s.read(ctx, "SELECT "+mailboxColumns+" FROM mailboxes WHERE user_id = ? ORDER BY name", userID)
	if err != nil {
		return nil, fmt.Errorf("list mailboxes of user %d: %w", userID, err)
	}
	defer rows.Close()
	var out []Mailbox
	for rows.Next() {
		mb, err := scanMailbox(rows)
		if err != nil {
			return nil, fmt.Errorf("list mailboxes of user %d: %w", userID, err)
		}
		out = append(out, mb)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list mailboxes of user %d: %w", userID, err)
	}
	return out, nil
}

// MailboxByName finds one of a user's mailboxes.
func (s *Store) MailboxByName(ctx context.Context, userID int64, name string) (Mailbox, error) {
	n, err := NormalizeMailboxName(name)
	if err != nil {
		return Mailbox{}, err
	}
	mb, err := scanMailbox(s.readRow(ctx, "SELECT "+mailboxColumns+" FROM mailboxes WHERE user_id = ? AND name = ?", userID, n))
	if isNoRows(err) {
		return Mailbox{}, fmt.Errorf("mailbox %q: %w", n, ErrNotFound)
	}
	if err != nil {
		return Mailbox{}, fmt.Errorf("mailbox %q: %w", n, err)
	}
	return mb, nil
}

// MailboxByID reads a mailbox's current state.
func (s *Store) MailboxByID(ctx context.Context, id int64) (Mailbox, error) {
	mb, err := scanMailbox(s.readRow(ctx, "SELECT "+mailboxColumns+" FROM mailboxes WHERE id = ?", id))
	if isNoRows(err) {
		return Mailbox{}, fmt.Errorf("mailbox %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return Mailbox{}, fmt.Errorf("mailbox %d: %w", id, err)
	}
	return mb, nil
}

// Status counts a mailbox's messages.
func (s *Store) Status(ctx context.Context, mailboxID int64) (MailboxStatus, error) {
	var st MailboxStatus
	err := s.readRow(ctx, `SELECT b.uidnext, b.uidvalidity, b.highestmodseq,
		count(m.id), coalesce(sum(CASE WHEN m.flags & ? = 0 THEN 1 ELSE 0 END), 0),
		coalesce(sum(CASE WHEN m.flags & ? != 0 THEN 1 ELSE 0 END), 0), CAST(coalesce(sum(m.size), 0) AS BIGINT)
		FROM mailboxes b LEFT JOIN messages m ON m.mailbox_id = b.id WHERE b.id = ? GROUP BY b.id`,
		flagSeen, flagDeleted, mailboxID).Scan(&st.UIDNext, &st.UIDValidity, &st.HighestModSeq,
		&st.Messages, &st.Unseen, &st.Deleted, &st.Size)
	if isNoRows(err) {
		return st, fmt.Errorf("status of mailbox %d: %w", mailboxID, ErrNotFound)
	}
	if err != nil {
		return st, fmt.Errorf("status of mailbox %d: %w", mailboxID, err)
	}
	return st, nil
}

// CreateMailbox creates a mailbox and any missing parents (RFC 3501
// 6.3.3). specialUse is "" or an RFC 6154 attribute.
func (s *Store) CreateMailbox(ctx context.Context, userID int64, name, specialUse string) (Mailbox, error) {
	n, err := NormalizeMailboxName(name)
	if err != nil {
		return Mailbox{}, err
	}
	if specialUse != "" && !validSpecialUse(specialUse) {
		return Mailbox{}, fmt.Errorf("create mailbox %q: %w: special use %q", n, ErrInvalidName, specialUse)
	}
	var id int64
	err = s.w.do(ctx, func(t *wtx) error {
		parts := strings.Split(n, Separator)
		for i := 1; i < len(parts); i++ {
			parent := strings.Join(parts[:i], Separator)
			var exists int
			if err := t.queryRow("SELECT count(*) FROM mailboxes WHERE user_id = ? AND name = ?", userID, parent).Scan(&exists); err != nil {
				return fmt.Errorf("create mailbox %q: %w", n, err)
			}
			if exists == 0 {
				if _, err := t.createMailbox(userID, parent, "", false); err != nil {
					return fmt.Errorf("create mailbox %q: %w", n, err)
				}
			}
		}
		var err error
		id, err = t.createMailbox(userID, n, specialUse, false)
		if err != nil {
			return fmt.Errorf("create mailbox %q: %w", n, err)
		}
		return nil
	})
	if err != nil {
		return Mailbox{}, err
	}
	return s.MailboxByID(ctx, id)
}

func validSpecialUse(use string) bool {
	switch use {
	case `\All`, `\Archive`, `\Drafts`, `\Flagged`, `\Junk`, `\Sent`, `\Trash`:
		return true
	}
	return false
}

// createMailbox inserts a mailbox with a fresh UIDVALIDITY, and subscribes
// its name if asked. A \Noselect placeholder of the same name becomes a
// real mailbox.
func (t *wtx) createMailbox(userID int64, name, specialUse string, subscribed bool) (int64, error) {
	if subscribed {
		if err := t.subscribe(userID, name); err != nil {
			return 0, err
		}
	}
	var uidvalidity uint32
	if err := t.queryRow("UPDATE meta SET value = value + 1 WHERE key = 'uidvalidity' RETURNING value").Scan(&uidvalidity); err != nil {
		return 0, fmt.Errorf("next uidvalidity: %w", err)
	}
	var id int64
	var noselect bool
	err := t.queryRow("SELECT id, noselect FROM mailboxes WHERE user_id = ? AND name = ?", userID, name).Scan(&id, &noselect)
	switch {
	case err == nil && noselect:
		_, err = t.exec("UPDATE mailboxes SET noselect = 0, uidvalidity = ?, special_use = ? WHERE id = ?", uidvalidity, specialUse, id)
		return id, err
	case err == nil:
		return 0, fmt.Errorf("mailbox %q: %w", name, ErrExists)
	case !isNoRows(err):
		return 0, err
	}
	err = t.queryRow("INSERT INTO mailboxes (user_id, name, uidvalidity, special_use) VALUES (?, ?, ?, ?) RETURNING id",
		userID, name, uidvalidity, specialUse).Scan(&id)
	return id, err
}

// DeleteMailbox deletes a mailbox and its messages (RFC 3501 6.3.4). A
// mailbox with children keeps its name as \Noselect; INBOX cannot be
// deleted. A subscription to the name stays (RFC 3501 6.3.6).
func (s *Store) DeleteMailbox(ctx context.Context, userID int64, name string) error {
	n, err := NormalizeMailboxName(name)
	if err != nil {
		return err
	}
	if n == "INBOX" {
		return fmt.Errorf("delete mailbox INBOX: %w: INBOX cannot be deleted", ErrInvalidName)
	}
	return s.w.do(ctx, func(t *wtx) error {
		var id int64
		var noselect bool
		err := t.queryRow("SELECT id, noselect FROM mailboxes WHERE user_id = ? AND name = ?", userID, n).Scan(&id, &noselect)
		if isNoRows(err) {
			return fmt.Errorf("delete mailbox %q: %w", n, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("delete mailbox %q: %w", n, err)
		}
		var children int
		if err := t.queryRow("SELECT count(*) FROM mailboxes WHERE user_id = ? AND substr(name, 1, ?) = ?",
			userID, len(n)+1, n+Separator).Scan(&children); err != nil {
			return fmt.Errorf("delete mailbox %q: %w", n, err)
		}
		if children > 0 {
			// RFC 3501 6.3.4: the messages go, the name stays as \Noselect;
			// deleting a \Noselect name with children is an error.
			if noselect {
				return fmt.Errorf("delete mailbox %q: %w", n, ErrHasChildren)
			}
			if _, err := t.exec("DELETE FROM messages WHERE mailbox_id = ?", id); err != nil {
				return fmt.Errorf("delete mailbox %q: %w", n, err)
			}
			if _, err := t.exec("DELETE FROM expunged WHERE mailbox_id = ?", id); err != nil {
				return fmt.Errorf("delete mailbox %q: %w", n, err)
			}
			if _, err := t.exec("UPDATE mailboxes SET noselect = 1, special_use = '' WHERE id = ?", id); err != nil {
				return fmt.Errorf("delete mailbox %q: %w", n, err)
			}
		} else if _, err := t.exec("DELETE FROM mailboxes WHERE id = ?", id); err != nil {
			return fmt.Errorf("delete mailbox %q: %w", n, err)
		}
		t.notify(Change{MailboxID: id, Kind: ChangeMailboxGone})
		return nil
	})
}

// RenameMailbox renames a mailbox and its children (RFC 3501 6.3.5).
// Renaming INBOX moves its messages into a new mailbox and leaves INBOX
// empty; INBOX's children stay where they are. Subscriptions are names
// and are not renamed (RFC 3501 6.3.6: a subscription outlives its
// mailbox).
func (s *Store) RenameMailbox(ctx context.Context, userID int64, oldName, newName string) error {
	from, err := NormalizeMailboxName(oldName)
	if err != nil {
		return err
	}
	to, err := NormalizeMailboxName(newName)
	if err != nil {
		return err
	}
	if to == from || strings.HasPrefix(to, from+Separator) {
		return fmt.Errorf("rename mailbox %q to %q: %w: a mailbox cannot become its own child", from, to, ErrInvalidName)
	}
	if to == "INBOX" {
		return fmt.Errorf("rename mailbox %q to INBOX: %w", from, ErrExists)
	}
	return s.w.do(ctx, func(t *wtx) error {
		var id int64
		err := t.queryRow("SELECT id FROM mailboxes WHERE user_id = ? AND name = ?", userID, from).Scan(&id)
		if isNoRows(err) {
			return fmt.Errorf("rename mailbox %q: %w", from, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("rename mailbox %q: %w", from, err)
		}
		var exists int
		if err := t.queryRow("SELECT count(*) FROM mailboxes WHERE user_id = ? AND name = ? AND noselect = 0", userID, to).Scan(&exists); err != nil {
			return fmt.Errorf("rename mailbox %q: %w", from, err)
		}
		if exists > 0 {
			return fmt.Errorf("rename mailbox %q to %q: %w", from, to, ErrExists)
		}
		// Parents of the new name, then the name itself for INBOX.
		parts := strings.Split(to, Separator)
		for i := 1; i < len(parts); i++ {
			parent := strings.Join(parts[:i], Separator)
			var n int
			if err := t.queryRow("SELECT count(*) FROM mailboxes WHERE user_id = ? AND name = ?", userID, parent).Scan(&n); err != nil {
				return fmt.Errorf("rename mailbox %q: %w", from, err)
			}
			if n == 0 {
				if _, err := t.createMailbox(userID, parent, "", false); err != nil {
					return fmt.Errorf("rename mailbox %q: %w", from, err)
				}
			}
		}
		if from == "INBOX" {
			dst, err := t.createMailbox(userID, to, "", false)
			if err != nil {
				return fmt.Errorf("rename mailbox INBOX to %q: %w", to, err)
			}
			uids, err := t.allUIDs(id)
			if err != nil {
				return fmt.Errorf("rename mailbox INBOX to %q: %w", to, err)
			}
			if _, err := t.copyMessages(id, uids, dst, true); err != nil {
				return fmt.Errorf("rename mailbox INBOX to %q: %w", to, err)
			}
			return nil
		}
		// A \Noselect placeholder under the new name gives way.
		if _, err := t.exec("DELETE FROM mailboxes WHERE user_id = ? AND name = ? AND noselect = 1", userID, to); err != nil {
			return fmt.Errorf("rename mailbox %q: %w", from, err)
		}
		rows, err := t.query("SELECT id, name FROM mailboxes WHERE user_id = ? AND (name = ? OR substr(name, 1, ?) = ?)",
			userID, from, len(from)+1, from+Separator)
		if err != nil {
			return fmt.Errorf("rename mailbox %q: %w", from, err)
		}
		type rename struct {
			id   int64
			name string
		}
		var renames []rename
		for rows.Next() {
			var r rename
			if err := rows.Scan(&r.id, &r.name); err != nil {
				rows.Close()
				return fmt.Errorf("rename mailbox %q: %w", from, err)
			}
			renames = append(renames, r)
		}
		rows.Close()
		for _, r := range renames {
			newName := to + strings.TrimPrefix(r.name, from)
			if _, err := t.exec("UPDATE mailboxes SET name = ? WHERE id = ?", newName, r.id); err != nil {
				return fmt.Errorf("rename mailbox %q to %q: %w", r.name, newName, err)
			}
		}
		return nil
	})
}

// SetSubscribed adds a name to the user's subscriptions or removes it
// (RFC 3501 6.3.6, 6.3.7). Any valid mailbox name can be subscribed,
// whether or not a mailbox has it; more than MaxSubscriptions names fail
// with ErrLimit. Unsubscribing a name that is neither subscribed nor a
// mailbox fails with ErrNotFound; subscribing twice, or unsubscribing a
// mailbox that is not subscribed, is no error.
func (s *Store) SetSubscribed(ctx context.Context, userID int64, name string, subscribed bool) error {
	n, err := NormalizeMailboxName(name)
	if err != nil {
		return err
	}
	return s.w.do(ctx, func(t *wtx) error {
		if subscribed {
			if err := t.subscribe(userID, n); err != nil {
				return fmt.Errorf("subscribe %q: %w", n, err)
			}
			return nil
		}
		res, err := t.exec("DELETE FROM subscriptions WHERE user_id = ? AND name = ?", userID, n)
		if err != nil {
			return fmt.Errorf("unsubscribe %q: %w", n, err)
		}
		if k, _ := res.RowsAffected(); k > 0 {
			return nil
		}
		var exists int
		if err := t.queryRow("SELECT count(*) FROM mailboxes WHERE user_id = ? AND name = ?", userID, n).Scan(&exists); err != nil {
			return fmt.Errorf("unsubscribe %q: %w", n, err)
		}
		if exists == 0 {
			return fmt.Errorf("unsubscribe %q: not subscribed: %w", n, ErrNotFound)
		}
		return nil
	})
}

// subscribe adds a normalized name to the user's subscriptions, within
// MaxSubscriptions.
func (t *wtx) subscribe(userID int64, name string) error {
	var have, count int
	if err := t.queryRow("SELECT count(*) FROM subscriptions WHERE user_id = ? AND name = ?", userID, name).Scan(&have); err != nil {
		return fmt.Errorf("find subscription of user %d: %w", userID, err)
	}
	if have > 0 {
		return nil
	}
	if err := t.queryRow("SELECT count(*) FROM subscriptions WHERE user_id = ?", userID).Scan(&count); err != nil {
		return fmt.Errorf("count subscriptions of user %d: %w", userID, err)
	}
	if count >= MaxSubscriptions {
		return fmt.Errorf("user %d: %w: %d subscriptions is the most allowed", userID, ErrLimit, MaxSubscriptions)
	}
	if _, err := t.exec("INSERT INTO subscriptions (user_id, name) VALUES (?, ?)", userID, name); err != nil {
		return fmt.Errorf("insert subscription of user %d: %w", userID, err)
	}
	return nil
}

// Subscriptions lists the names the user is subscribed to, sorted, with
// or without a mailbox of that name (RFC 3501 6.3.9, RFC 5258 3.1).
func (s *Store) Subscriptions(ctx context.Context, userID int64) ([]string, error) {
	rows, err := s.read(ctx, "SELECT name FROM subscriptions WHERE user_id = ? ORDER BY name LIMIT ?", userID, MaxSubscriptions)
	if err != nil {
		return nil, fmt.Errorf("list subscriptions of user %d: %w", userID, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, fmt.Errorf("list subscriptions of user %d: %w", userID, err)
		}
		out = append(out, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list subscriptions of user %d: %w", userID, err)
	}
	return out, nil
}

// ClaimRecent gives the caller \Recent for the mailbox's messages that no
// session has had it for yet (RFC 3501 2.3.2: the first session to be told
// of a message sees it as recent): every UID above the mailbox's stored
// mark, up to UIDNEXT-1, is marked claimed and returned as the inclusive
// range first..last, with first > last when there is none. Claims are made
// one at a time in the writer, so two sessions never get the same UID.
// Expunged UIDs inside the range are simply absent from the mailbox.
func (s *Store) ClaimRecent(ctx context.Context, mailboxID int64) (first, last uint32, err error) {
	// Most calls find nothing new: answer those without a write.
	var mark, uidnext uint32
	err = s.readRow(ctx, "SELECT recent_uid, uidnext FROM mailboxes WHERE id = ?", mailboxID).Scan(&mark, &uidnext)
	if isNoRows(err) {
		return 0, 0, fmt.Errorf("claim recent in mailbox %d: %w", mailboxID, ErrNotFound)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("claim recent in mailbox %d: %w", mailboxID, err)
	}
	if mark+1 >= uidnext {
		return uidnext, uidnext - 1, nil
	}
	err = s.w.do(ctx, func(t *wtx) error {
		err := t.queryRow("SELECT recent_uid, uidnext FROM mailboxes WHERE id = ?"+t.w.d.forUpdate(), mailboxID).Scan(&mark, &uidnext)
		if isNoRows(err) {
			return fmt.Errorf("claim recent in mailbox %d: %w", mailboxID, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("claim recent in mailbox %d: %w", mailboxID, err)
		}
		if mark+1 >= uidnext {
			return nil
		}
		if _, err := t.exec("UPDATE mailboxes SET recent_uid = ? WHERE id = ?", uidnext-1, mailboxID); err != nil {
			return fmt.Errorf("claim recent in mailbox %d: %w", mailboxID, err)
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	if mark+1 >= uidnext {
		return uidnext, uidnext - 1, nil
	}
	return mark + 1, uidnext - 1, nil
}

// RecentMark is the highest UID of the mailbox that some session has
// claimed \Recent for (see ClaimRecent); every message above it is still
// recent to the next session that claims. It only reads: EXAMINE and
// STATUS use it, since they must not take \Recent from anyone (RFC 3501
// 6.3.2).
func (s *Store) RecentMark(ctx context.Context, mailboxID int64) (uint32, error) {
	var mark uint32
	err := s.readRow(ctx, "SELECT recent_uid FROM mailboxes WHERE id = ?", mailboxID).Scan(&mark)
	if isNoRows(err) {
		return 0, fmt.Errorf("read recent mark of mailbox %d: %w", mailboxID, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("read recent mark of mailbox %d: %w", mailboxID, err)
	}
	return mark, nil
}
