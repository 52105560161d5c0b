package mailstore

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// MailboxUIDs returns the UIDs of a mailbox's messages in ascending order
// and the UID of its first message without \Seen (0: none): what an IMAP
// SELECT needs, without reading each message's row. Both come from one
// statement, so from one snapshot.
//
// The UIDs come back as one comma-separated text made inside the database
// from the (mailbox_id, uid) index: on 100,000 messages that is several
// times faster than a row per UID through database/sql.
func (s *Store) MailboxUIDs(ctx context.Context, mailboxID int64) (uids []uint32, firstUnseen uint32, err error) {
	var list string
	err = s.readRow(ctx, `SELECT
		(SELECT `+s.d.uidList()+` FROM messages WHERE mailbox_id = ?),
		(SELECT coalesce(min(uid), 0) FROM messages WHERE mailbox_id = ? AND flags & ? = 0)`,
		mailboxID, mailboxID, flagSeen).Scan(&list, &firstUnseen)
	if err != nil {
		return nil, 0, fmt.Errorf("UIDs of mailbox %d: %w", mailboxID, err)
	}
	if list == "" {
		return nil, firstUnseen, nil
	}
	uids = make([]uint32, 0, strings.Count(list, ",")+1)
	for field := range strings.SplitSeq(list, ",") {
		uid, err := strconv.ParseUint(field, 10, 32)
		if err != nil {
			return nil, 0, fmt.Errorf("UIDs of mailbox %d: UID %q: %w", mailboxID, field, err)
		}
		uids = append(uids, uint32(uid))
	}
	if !slices.IsSorted(uids) {
		slices.Sort(uids)
	}
	return uids, firstUnseen, nil
}

// FirstUnseen returns the UID of a mailbox's first message without \Seen
// (0: none).
func (s *Store) FirstUnseen(ctx context.Context, mailboxID int64) (uint32, error) {
	var uid uint32
	err := s.readRow(ctx, "SELECT coalesce(min(uid), 0) FROM messages WHERE mailbox_id = ? AND flags & ? = 0", mailboxID, flagSeen).Scan(&uid)
	if err != nil {
		return 0, fmt.Errorf("first unseen of mailbox %d: %w", mailboxID, err)
	}
	return uid, nil
}
