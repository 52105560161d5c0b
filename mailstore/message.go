package mailstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
)

// System flags (RFC 3501 2.3.2) are kept as bits; keywords as text.
const (
	flagSeen = 1 << iota
	flagAnswered
	flagFlagged
	flagDeleted
	flagDraft
)

// The system flags as IMAP spells them.
const (
	FlagSeen     = `\Seen`
	FlagAnswered = `\Answered`
	FlagFlagged  = `\Flagged`
	FlagDeleted  = `\Deleted`
	FlagDraft    = `\Draft`
)

var systemFlags = []struct {
	name string
	bit  int
}{
	{FlagSeen, flagSeen}, {FlagAnswered, flagAnswered}, {FlagFlagged, flagFlagged},
	{FlagDeleted, flagDeleted}, {FlagDraft, flagDraft},
}

// maxKeywords bounds the keywords of one message; maxKeywordLen one
// keyword's length.
const (
	maxKeywords   = 64
	maxKeywordLen = 128
	// maxMailboxKeywords bounds the keywords a mailbox remembers (they are
	// never forgotten, and every FLAGS response lists them).
	maxMailboxKeywords = 256
)

// chunkSize is how bodies are split in storage and read back.
const chunkSize = 256 << 10

// Message is a message's metadata; its content is read with OpenBody.
type Message struct {
	MailboxID    int64
	UID          uint32
	ModSeq       uint64
	Flags        []string // system flags first, then keywords
	InternalDate time.Time
	Size         int64
	BodyID       int64
}

// HasFlag reports whether the message carries flag (case-insensitive).
func (m Message) HasFlag(flag string) bool {
	for _, f := range m.Flags {
		if strings.EqualFold(f, flag) {
			return true
		}
	}
	return false
}

// UIDRange is an inclusive range of UIDs; Stop 0 means no upper bound.
type UIDRange struct{ Start, Stop uint32 }

// UIDSet is a union of ranges. A nil set means every message.
type UIDSet []UIDRange

// UIDs makes a set of single UIDs.
func UIDs(uids ...uint32) UIDSet {
	set := make(UIDSet, len(uids))
	for i, u := range uids {
		set[i] = UIDRange{u, u}
	}
	return set
}

// Contains reports whether uid is in the set.
func (set UIDSet) Contains(uid uint32) bool {
	if set == nil {
		return true
	}
	for _, r := range set {
		if uid >= r.Start && (r.Stop == 0 || uid <= r.Stop) {
			return true
		}
	}
	return false
}

// uidMatcher is a UIDSet sorted and merged once, so that testing each
// row of a large mailbox against a set of many ranges (IMAP SEARCHRES,
// say) costs a binary search. nil matches every UID.
type uidMatcher []UIDRange

func newUIDMatcher(set UIDSet) uidMatcher {
	if set == nil {
		return nil
	}
	m := make(uidMatcher, 0, len(set))
	for _, r := range set {
		if r.Stop == 0 {
			r.Stop = math.MaxUint32
		}
		if r.Start > r.Stop {
			r.Start, r.Stop = r.Stop, r.Start
		}
		m = append(m, r)
	}
	sort.Slice(m, func(i, j int) bool { return m[i].Start < m[j].Start })
	merged := m[:0]
	for _, r := range m {
		// Overlapping or adjacent (r.Start-1 wraps only when r.Start is 0,
		// which the first test catches).
		if n := len(merged); n > 0 && (r.Start <= merged[n-1].Stop || r.Start-1 == merged[n-1].Stop) {
			merged[n-1].Stop = max(merged[n-1].Stop, r.Stop)
			continue
		}
		merged = append(merged, r)
	}
	if len(merged) == 0 {
		return uidMatcher{} // an empty set matches nothing
	}
	return merged
}

func (m uidMatcher) contains(uid uint32) bool {
	if m == nil {
		return true
	}
	i := sort.Search(len(m), func(i int) bool { return m[i].Stop >= uid })
	return i < len(m) && m[i].Start <= uid
}

// FlagOp says how StoreFlags combines flags (IMAP STORE FLAGS, +FLAGS, -FLAGS).
type FlagOp int

const (
	FlagsSet FlagOp = iota
	FlagsAdd
	FlagsRemove
)

// parseFlags splits IMAP flag names into system bits and keywords,
// refusing malformed keywords.
func parseFlags(flags []string) (bits int, keywords []string, err error) {
	for _, f := range flags {
		if strings.HasPrefix(f, `\`) {
			found := false
			for _, sf := range systemFlags {
				if strings.EqualFold(f, sf.name) {
					bits |= sf.bit
					found = true
				}
			}
			if !found && !strings.EqualFold(f, `\Recent`) {
				return 0, nil, fmt.Errorf("%w: flag %q", ErrInvalidName, f)
			}
			continue
		}
		if f == "" || len(f) > maxKeywordLen || strings.ContainsAny(f, "(){ %*\"\\]") {
			return 0, nil, fmt.Errorf("%w: keyword %q", ErrInvalidName, f)
		}
		for _, c := range f {
			if c <= 0x20 || c >= 0x7f {
				return 0, nil, fmt.Errorf("%w: keyword %q", ErrInvalidName, f)
			}
		}
		keywords = addKeyword(keywords, f)
	}
	if len(keywords) > maxKeywords {
		return 0, nil, fmt.Errorf("%w: more than %d keywords", ErrInvalidName, maxKeywords)
	}
	return bits, keywords, nil
}

// addKeyword adds kw unless a keyword equal but for case is there.
func addKeyword(list []string, kw string) []string {
	for _, k := range list {
		if strings.EqualFold(k, kw) {
			return list
		}
	}
	return append(list, kw)
}

func removeKeywords(list, remove []string) []string {
	out := list[:0:0]
	for _, k := range list {
		keep := true
		for _, r := range remove {
			if strings.EqualFold(k, r) {
				keep = false
			}
		}
		if keep {
			out = append(out, k)
		}
	}
	return out
}

func splitKeywords(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, " ")
}

func joinKeywords(k []string) string { return strings.Join(k, " ") }

func flagList(bits int, keywords []string) []string {
	out := make([]string, 0, 5+len(keywords))
	for _, sf := range systemFlags {
		if bits&sf.bit != 0 {
			out = append(out, sf.name)
		}
	}
	return append(out, keywords...)
}

const messageColumns = "mailbox_id, uid, modseq, flags, keywords, internal_date, size, body_id"

func scanMessage(sc interface{ Scan(...any) error }) (Message, error) {
	var m Message
	var bits int
	var kw string
	var date int64
	if err := sc.Scan(&m.MailboxID, &m.UID, &m.ModSeq, &bits, &kw, &date, &m.Size, &m.BodyID); err != nil {
		return Message{}, err
	}
	m.Flags = flagList(bits, splitKeywords(kw))
	m.InternalDate = time.Unix(0, date).UTC()
	return m, nil
}

// Messages lists the messages of a mailbox whose UIDs are in set, in UID
// order.
func (s *Store) Messages(ctx context.Context, mailboxID int64, set UIDSet) ([]Message, error) {
	rows, err := s.read(ctx, "SELECT "+messageColumns+" FROM messages WHERE mailbox_id = ? AND uid >= ? AND (? = 0 OR uid <= ?) ORDER BY uid",
		mailboxID, setMin(set), setMax(set), setMax(set))
	if err != nil {
		return nil, fmt.Errorf("list messages of mailbox %d: %w", mailboxID, err)
	}
	defer rows.Close()
	match := newUIDMatcher(set)
	var out []Message
	for rows.Next() {
		m, err := scanMessage(rows)
		if err != nil {
			return nil, fmt.Errorf("list messages of mailbox %d: %w", mailboxID, err)
		}
		if match.contains(m.UID) {
			out = append(out, m)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list messages of mailbox %d: %w", mailboxID, err)
	}
	return out, nil
}

// setMin and setMax bound a set for the SQL range; 0 from setMax means
// unbounded.
func setMin(set UIDSet) uint32 {
	if len(set) == 0 {
		return 0
	}
	lo := set[0].Start
	for _, r := range set {
		lo = min(lo, r.Start)
	}
	return lo
}

func setMax(set UIDSet) uint32 {
	var hi uint32
	for _, r := range set {
		if r.Stop == 0 {
			return 0
		}
		hi = max(hi, r.Stop)
	}
	return hi
}

// Body is a stored message body, read in chunks from the database so that
// a large message is never loaded whole. It is an io.ReadSeeker.
type Body struct {
	s      *Store
	ctx    context.Context
	id     int64
	size   int64
	off    int64
	chunk  []byte // the chunk holding off, or nil
	chunkN int64  // index of chunk
}

// OpenBody opens a stored body for reading. The size and the first chunk
// come in one query, so a small message costs one. A body that is gone
// (see Hold) fails with an error that wraps ErrNotFound, here or in Read.
func (s *Store) OpenBody(ctx context.Context, bodyID int64) (*Body, error) {
	b := &Body{s: s, ctx: ctx, id: bodyID}
	err := s.readRow(ctx, `SELECT b.size, c.data FROM bodies b JOIN body_chunks c ON c.body_id = b.id AND c.seq = 0
		WHERE b.id = ?`, bodyID).Scan(&b.size, &b.chunk)
	if isNoRows(err) {
		return nil, fmt.Errorf("open body %d: %w", bodyID, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("open body %d: %w", bodyID, err)
	}
	return b, nil
}

// Size is the body's length in bytes.
func (b *Body) Size() int64 { return b.size }

func (b *Body) Read(p []byte) (int, error) {
	if b.off >= b.size {
		return 0, io.EOF
	}
	n := b.off / chunkSize
	if n != b.chunkN {
		b.chunk = nil
		err := b.s.readRow(b.ctx, "SELECT data FROM body_chunks WHERE body_id = ? AND seq = ?", b.id, n).Scan(&b.chunk)
		if err != nil {
			if isNoRows(err) {
				err = ErrNotFound
			}
			return 0, fmt.Errorf("read body %d chunk %d: %w", b.id, n, err)
		}
		b.chunkN = n
	}
	start := b.off - n*chunkSize
	if start >= int64(len(b.chunk)) {
		return 0, fmt.Errorf("read body %d: chunk %d is short", b.id, n)
	}
	c := copy(p, b.chunk[start:])
	b.off += int64(c)
	return c, nil
}

// Seek implements io.Seeker.
func (b *Body) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += b.off
	case io.SeekEnd:
		offset += b.size
	default:
		return 0, fmt.Errorf("seek body %d: bad whence %d", b.id, whence)
	}
	if offset < 0 {
		return 0, fmt.Errorf("seek body %d: negative offset %d", b.id, offset)
	}
	b.off = offset
	return offset, nil
}

// Close releases the reader.
func (b *Body) Close() error {
	b.chunk, b.chunkN = nil, -1
	return nil
}

// ReadBody returns a whole body; for small bodies and tests. Large ones
// should be streamed with OpenBody. A body that is gone fails with an error
// that wraps ErrNotFound.
func (s *Store) ReadBody(ctx context.Context, bodyID int64) ([]byte, error) {
	b, err := s.OpenBody(ctx, bodyID)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	buf := make([]byte, b.Size())
	if _, err := io.ReadFull(b, buf); err != nil {
		return nil, fmt.Errorf("read body %d: %w", bodyID, err)
	}
	return buf, nil
}

// preparedBody is a message ready for the writer: line ends fixed and the
// hash computed outside the write transaction.
type preparedBody struct {
	data []byte
	sum  [sha256.Size]byte
}

func prepareBody(msg []byte) preparedBody {
	data := toCRLF(msg)
	return preparedBody{data: data, sum: sha256.Sum256(data)}
}

var crlfBytes, lfBytes, crBytes = []byte("\r\n"), []byte("\n"), []byte("\r")

// toCRLF turns bare LF and bare CR into CRLF and ends the last line, so
// that sizes match what POP3 and IMAP send. Input already in that form is
// returned as is.
func toCRLF(b []byte) []byte {
	if len(b) > 0 && b[len(b)-1] != '\n' && b[len(b)-1] != '\r' {
		b = append(b[:len(b):len(b)], '\r', '\n')
	}
	// Every LF follows a CR and every CR comes before an LF exactly when
	// the three counts agree (the pairs never overlap); counting is
	// vectorised, which a loop over the bytes is not.
	if crlf := bytes.Count(b, crlfBytes); bytes.Count(b, lfBytes) == crlf && bytes.Count(b, crBytes) == crlf {
		return b
	}
	out := make([]byte, 0, len(b)+len(b)/32)
	for i, c := range b {
		switch {
		case c == '\n' && (i == 0 || b[i-1] != '\r'):
			out = append(out, '\r', '\n')
		case c == '\r' && (i+1 == len(b) || b[i+1] != '\n'):
			out = append(out, '\r', '\n')
		default:
			out = append(out, c)
		}
	}
	return out
}

// storeBody returns the ID of the body with this content, inserting it if
// new. Its reference count is raised by the message or queue row that uses
// it (triggers).
func (t *wtx) storeBody(b preparedBody) (int64, error) {
	var id int64
	var inserted bool
	if t.w.d.pg {
		// The conflict path locks the existing row, so that another
		// frontend's sweep (DELETE ... WHERE refs <= 0) waits for this
		// transaction and then finds the body referenced again; xmax is
		// 0 only on a row this statement inserted.
		err := t.queryRow(`INSERT INTO bodies (sha256, size) VALUES (?, ?)
			ON CONFLICT (sha256) DO UPDATE SET size = bodies.size RETURNING id, xmax = 0`, b.sum[:], len(b.data)).Scan(&id, &inserted)
		if err != nil {
			return 0, fmt.Errorf("insert body: %w", err)
		}
	} else {
		res, err := t.exec("INSERT INTO bodies (sha256, size) VALUES (?, ?) ON CONFLICT (sha256) DO NOTHING", b.sum[:], len(b.data))
		if err != nil {
			return 0, fmt.Errorf("insert body: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			// Stored before: share it.
			if err := t.queryRow("SELECT id FROM bodies WHERE sha256 = ?", b.sum[:]).Scan(&id); err != nil {
				return 0, fmt.Errorf("find body: %w", err)
			}
		} else if id, err = res.LastInsertId(); err != nil {
			return 0, fmt.Errorf("insert body: %w", err)
		} else {
			inserted = true
		}
	}
	if !inserted {
		return id, nil
	}
	t.afterCommit(t.w.indexKick) // the indexer takes it from here
	for seq, off := 0, 0; off < len(b.data) || seq == 0; seq, off = seq+1, off+chunkSize {
		end := min(off+chunkSize, len(b.data))
		if _, err := t.exec("INSERT INTO body_chunks (body_id, seq, data) VALUES (?, ?, ?)", id, seq, b.data[off:end]); err != nil {
			return 0, fmt.Errorf("insert body chunk %d: %w", seq, err)
		}
	}
	return id, nil
}

// mailboxHead is what the writer needs to add messages to a mailbox.
type mailboxHead struct {
	userID   int64
	uidnext  uint32
	modseq   uint64
	noselect bool
	keywords []string
}

func (t *wtx) head(mailboxID int64) (mailboxHead, error) {
	var h mailboxHead
	var kw string
	err := t.queryRow("SELECT user_id, uidnext, highestmodseq, noselect, keywords FROM mailboxes WHERE id = ?"+t.w.d.forUpdate(), mailboxID).
		Scan(&h.userID, &h.uidnext, &h.modseq, &h.noselect, &kw)
	if isNoRows(err) {
		return h, fmt.Errorf("mailbox %d: %w", mailboxID, ErrNotFound)
	}
	if err != nil {
		return h, fmt.Errorf("mailbox %d: %w", mailboxID, err)
	}
	if h.noselect {
		return h, fmt.Errorf("mailbox %d: %w", mailboxID, ErrNoSelect)
	}
	h.keywords = splitKeywords(kw)
	return h, nil
}

// bump gives the mailbox a new MODSEQ (and UIDNEXT) and records keywords
// it has not seen before.
func (t *wtx) bump(mailboxID int64, h *mailboxHead, newUIDs uint32, keywords []string) error {
	h.modseq++
	h.uidnext += newUIDs
	before := len(h.keywords)
	for _, k := range keywords {
		h.keywords = addKeyword(h.keywords, k)
	}
	if len(h.keywords) > maxMailboxKeywords && len(h.keywords) > before {
		return fmt.Errorf("mailbox %d: %w: more than %d keywords", mailboxID, ErrLimit, maxMailboxKeywords)
	}
	var err error
	if len(h.keywords) != before {
		_, err = t.exec("UPDATE mailboxes SET uidnext = ?, highestmodseq = ?, keywords = ? WHERE id = ?",
			h.uidnext, h.modseq, joinKeywords(h.keywords), mailboxID)
	} else {
		_, err = t.exec("UPDATE mailboxes SET uidnext = ?, highestmodseq = ? WHERE id = ?", h.uidnext, h.modseq, mailboxID)
	}
	if err != nil {
		return fmt.Errorf("update mailbox %d: %w", mailboxID, err)
	}
	return nil
}

// checkQuota fails with ErrOverQuota when adding bytes would pass the
// user's quota.
func (t *wtx) checkQuota(userID, adding int64) error {
	var quota, used int64
	if err := t.queryRow("SELECT quota_bytes, used_bytes FROM users WHERE id = ?", userID).Scan(&quota, &used); err != nil {
		return fmt.Errorf("quota of user %d: %w", userID, err)
	}
	return t.withinQuota(userID, quota, used, adding)
}

// withinQuota fails with ErrOverQuota when adding bytes to used would pass
// quota (0: none).
func (t *wtx) withinQuota(userID, quota, used, adding int64) error {
	if quota == 0 {
		return nil
	}
	if t.w.usageBySum {
		if err := t.queryRow("SELECT coalesce(sum(m.size), 0) FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.user_id = ?",
			userID).Scan(&used); err != nil {
			return fmt.Errorf("usage of user %d: %w", userID, err)
		}
	}
	if used+adding > quota {
		return fmt.Errorf("user %d: %w (%d of %d bytes used, %d more)", userID, ErrOverQuota, used, quota, adding)
	}
	return nil
}

// insertMessage adds one message at UID h.uidnext-1 (after bump).
func (t *wtx) insertMessage(mailboxID int64, uid uint32, modseq uint64, bits int, keywords []string, date time.Time, size, bodyID int64) error {
	_, err := t.exec("INSERT INTO messages (mailbox_id, uid, modseq, flags, keywords, internal_date, size, body_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
		mailboxID, uid, modseq, bits, joinKeywords(keywords), date.UnixNano(), size, bodyID)
	if err != nil {
		return fmt.Errorf("insert message uid %d in mailbox %d: %w", uid, mailboxID, err)
	}
	t.notify(Change{MailboxID: mailboxID, Kind: ChangeAdded, UID: uid, ModSeq: modseq, Flags: flagList(bits, keywords)})
	return nil
}

// Append adds a message to a mailbox with flags and an internal date
// (zero: now), as IMAP APPEND does.
func (s *Store) Append(ctx context.Context, mailboxID int64, flags []string, date time.Time, msg []byte) (Message, error) {
	bits, keywords, err := parseFlags(flags)
	if err != nil {
		return Message{}, fmt.Errorf("append to mailbox %d: %w", mailboxID, err)
	}
	if date.IsZero() {
		date = s.now()
	}
	body := prepareBody(msg)
	m := Message{MailboxID: mailboxID, Flags: flagList(bits, keywords), InternalDate: date.UTC(), Size: int64(len(body.data))}
	err = s.w.doLocked(ctx, lockHint{mailboxes: []int64{mailboxID}}, func(t *wtx) error {
		h, err := t.head(mailboxID)
		if err != nil {
			return fmt.Errorf("append: %w", err)
		}
		if err := t.checkQuota(h.userID, m.Size); err != nil {
			return fmt.Errorf("append: %w", err)
		}
		if m.BodyID, err = t.storeBody(body); err != nil {
			return fmt.Errorf("append: %w", err)
		}
		m.UID = h.uidnext
		if err := t.bump(mailboxID, &h, 1, keywords); err != nil {
			return fmt.Errorf("append: %w", err)
		}
		m.ModSeq = h.modseq
		return t.insertMessage(mailboxID, m.UID, m.ModSeq, bits, keywords, date, m.Size, m.BodyID)
	})
	if err != nil {
		return Message{}, err
	}
	return m, nil
}

// StoreFlags changes the flags of the messages in set and returns them all
// as they are afterwards. Messages whose flags change get one new MODSEQ.
func (s *Store) StoreFlags(ctx context.Context, mailboxID int64, set UIDSet, op FlagOp, flags []string) ([]Message, error) {
	bits, keywords, err := parseFlags(flags)
	if err != nil {
		return nil, fmt.Errorf("store flags in mailbox %d: %w", mailboxID, err)
	}
	var out []Message
	err = s.w.doLocked(ctx, lockHint{mailboxes: []int64{mailboxID}}, func(t *wtx) error {
		out = out[:0]
		h, err := t.head(mailboxID)
		if err != nil {
			return fmt.Errorf("store flags: %w", err)
		}
		msgs, err := t.messages(mailboxID, set)
		if err != nil {
			return fmt.Errorf("store flags: %w", err)
		}
		newModSeq := h.modseq + 1
		changed := false
		for _, m := range msgs {
			oldBits, oldKw, _ := parseFlags(m.Flags)
			newBits, newKw := oldBits, oldKw
			switch op {
			case FlagsSet:
				newBits, newKw = bits, keywords
			case FlagsAdd:
				newBits = oldBits | bits
				for _, k := range keywords {
					newKw = addKeyword(newKw, k)
				}
			case FlagsRemove:
				newBits = oldBits &^ bits
				newKw = removeKeywords(oldKw, keywords)
			}
			if len(newKw) > maxKeywords {
				return fmt.Errorf("store flags on uid %d: %w: more than %d keywords", m.UID, ErrInvalidName, maxKeywords)
			}
			if newBits != oldBits || joinKeywords(newKw) != joinKeywords(oldKw) {
				if _, err := t.exec("UPDATE messages SET flags = ?, keywords = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?",
					newBits, joinKeywords(newKw), newModSeq, mailboxID, m.UID); err != nil {
					return fmt.Errorf("store flags on uid %d: %w", m.UID, err)
				}
				m.ModSeq = newModSeq
				m.Flags = flagList(newBits, newKw)
				changed = true
				t.notify(Change{MailboxID: mailboxID, Kind: ChangeFlags, UID: m.UID, ModSeq: newModSeq, Flags: m.Flags})
			}
			out = append(out, m)
		}
		if changed {
			return t.bump(mailboxID, &h, 0, keywords)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// messages reads messages inside the write transaction.
func (t *wtx) messages(mailboxID int64, set UIDSet) ([]Message, error) {
	rows, err := t.query("SELECT "+messageColumns+" FROM messages WHERE mailbox_id = ? AND uid >= ? AND (? = 0 OR uid <= ?) ORDER BY uid",
		mailboxID, setMin(set), setMax(set), setMax(set))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	match := newUIDMatcher(set)
	var out []Message
	for rows.Next() {
		m, err := scanMessage(rows)
		if err != nil {
			return nil, err
		}
		if match.contains(m.UID) {
			out = append(out, m)
		}
	}
	return out, rows.Err()
}

func (t *wtx) allUIDs(mailboxID int64) (UIDSet, error) {
	msgs, err := t.messages(mailboxID, nil)
	if err != nil {
		return nil, err
	}
	uids := make([]uint32, len(msgs))
	for i, m := range msgs {
		uids[i] = m.UID
	}
	return UIDs(uids...), nil
}

// UIDPair maps a source UID to the UID its copy got (UIDPLUS, RFC 4315).
type UIDPair struct{ Src, Dst uint32 }

// Copy copies the messages in set to another mailbox of the same store,
// keeping flags and internal dates.
func (s *Store) Copy(ctx context.Context, srcID int64, set UIDSet, dstID int64) ([]UIDPair, error) {
	return s.copyOrMove(ctx, srcID, set, dstID, false)
}

// Move moves the messages in set to a mailbox in one transaction (RFC
// 6851): copies appear and originals are expunged together. The
// destination may be the source itself (RFC 6851 3.3 does not forbid it):
// the messages get new UIDs at the end of the mailbox. A move between
// mailboxes of one user adds nothing to the user's usage, so it is never
// refused for quota.
func (s *Store) Move(ctx context.Context, srcID int64, set UIDSet, dstID int64) ([]UIDPair, error) {
	return s.copyOrMove(ctx, srcID, set, dstID, true)
}

func (s *Store) copyOrMove(ctx context.Context, srcID int64, set UIDSet, dstID int64, move bool) ([]UIDPair, error) {
	var pairs []UIDPair
	err := s.w.doLocked(ctx, lockHint{mailboxes: []int64{srcID, dstID}}, func(t *wtx) error {
		var err error
		pairs, err = t.copyMessages(srcID, set, dstID, move)
		return err
	})
	return pairs, err
}

func (t *wtx) copyMessages(srcID int64, set UIDSet, dstID int64, move bool) ([]UIDPair, error) {
	msgs, err := t.messages(srcID, set)
	if err != nil {
		return nil, fmt.Errorf("copy from mailbox %d: %w", srcID, err)
	}
	if len(msgs) == 0 {
		return nil, nil
	}
	h, err := t.head(dstID)
	if err != nil {
		return nil, fmt.Errorf("copy to mailbox %d: %w", dstID, err)
	}
	var srcUser int64
	if err := t.queryRow("SELECT user_id FROM mailboxes WHERE id = ?", srcID).Scan(&srcUser); err != nil {
		return nil, fmt.Errorf("copy from mailbox %d: %w", srcID, err)
	}
	if !move || srcUser != h.userID {
		var size int64
		for _, m := range msgs {
			size += m.Size
		}
		if err := t.checkQuota(h.userID, size); err != nil {
			return nil, fmt.Errorf("copy to mailbox %d: %w", dstID, err)
		}
	}
	var allKw []string
	for _, m := range msgs {
		_, kw, _ := parseFlags(m.Flags)
		for _, k := range kw {
			allKw = addKeyword(allKw, k)
		}
	}
	first := h.uidnext
	if err := t.bump(dstID, &h, uint32(len(msgs)), allKw); err != nil {
		return nil, err
	}
	pairs := make([]UIDPair, len(msgs))
	copies := make([]Message, len(msgs))
	for i, m := range msgs {
		pairs[i] = UIDPair{Src: m.UID, Dst: first + uint32(i)}
		m.MailboxID, m.UID, m.ModSeq = dstID, pairs[i].Dst, h.modseq
		copies[i] = m
	}
	if err := t.insertMessages(copies); err != nil {
		return nil, err
	}
	if move {
		uids := make([]uint32, len(msgs))
		for i, m := range msgs {
			uids[i] = m.UID
		}
		if _, err := t.removeMessages(srcID, uids); err != nil {
			return nil, err
		}
	}
	return pairs, nil
}

// Expunge removes the messages flagged \Deleted, only those in set when
// set is not nil (UID EXPUNGE), and returns their UIDs in order.
func (s *Store) Expunge(ctx context.Context, mailboxID int64, set UIDSet) ([]uint32, error) {
	var out []uint32
	err := s.w.doLocked(ctx, lockHint{mailboxes: []int64{mailboxID}}, func(t *wtx) error {
		msgs, err := t.messages(mailboxID, set)
		if err != nil {
			return fmt.Errorf("expunge mailbox %d: %w", mailboxID, err)
		}
		var uids []uint32
		for _, m := range msgs {
			if m.HasFlag(FlagDeleted) {
				uids = append(uids, m.UID)
			}
		}
		out, err = t.removeMessages(mailboxID, uids)
		return err
	})
	return out, err
}

// DeleteMessages removes exactly the given messages, flagged or not (POP3
// UPDATE state), and returns the UIDs that were there.
func (s *Store) DeleteMessages(ctx context.Context, mailboxID int64, uids []uint32) ([]uint32, error) {
	return s.deleteMessages(ctx, nil, mailboxID, uids)
}

// DeleteMessagesLeased is DeleteMessages fenced by a maildrop lease (POP3
// UPDATE, RFC 1939 section 8): in the same transaction it checks that
// the lease is still its holder's and not expired, and otherwise fails
// with an error wrapping ErrLeaseLost, removing nothing. mailboxID must
// be a mailbox of the lease's user.
func (s *Store) DeleteMessagesLeased(ctx context.Context, lease *MaildropLease, mailboxID int64, uids []uint32) ([]uint32, error) {
	if lease == nil || lease.s != s {
		return nil, fmt.Errorf("delete from mailbox %d: the maildrop lease is not one of this store's", mailboxID)
	}
	if err := lease.Err(); err != nil {
		return nil, fmt.Errorf("delete from mailbox %d: %w", mailboxID, err)
	}
	return s.deleteMessages(ctx, lease, mailboxID, uids)
}

func (s *Store) deleteMessages(ctx context.Context, lease *MaildropLease, mailboxID int64, uids []uint32) ([]uint32, error) {
	var out []uint32
	err := s.w.doLocked(ctx, lockHint{mailboxes: []int64{mailboxID}}, func(t *wtx) error {
		if lease != nil {
			if err := t.checkLease(lease); err != nil {
				return fmt.Errorf("delete from mailbox %d: %w", mailboxID, err)
			}
			var owner int64
			err := t.queryRow("SELECT user_id FROM mailboxes WHERE id = ?", mailboxID).Scan(&owner)
			if err != nil && !isNoRows(err) {
				return fmt.Errorf("delete from mailbox %d: %w", mailboxID, err)
			}
			if err == nil && owner != lease.userID {
				return fmt.Errorf("delete from mailbox %d: it belongs to user %d, the lease to user %d", mailboxID, owner, lease.userID)
			}
		}
		var err error
		out, err = t.removeMessages(mailboxID, uids)
		return err
	})
	return out, err
}

func (t *wtx) removeMessages(mailboxID int64, uids []uint32) ([]uint32, error) {
	if len(uids) == 0 {
		return nil, nil
	}
	sorted := append([]uint32(nil), uids...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	sorted = slices.Compact(sorted)
	h, err := t.head(mailboxID)
	if err != nil && !errors.Is(err, ErrNoSelect) {
		return nil, fmt.Errorf("expunge: %w", err)
	}
	modseq := h.modseq + 1
	at := t.w.now().Unix()
	var gone []uint32
	// In chunks, each one statement: on PostgreSQL every statement
	// updates the user's usage row once (statement triggers), and a row
	// updated thousands of times in one transaction gets slow.
	for len(sorted) > 0 {
		chunk := sorted[:min(len(sorted), maxRowsPerStatement)]
		sorted = sorted[len(chunk):]
		args := []any{mailboxID}
		for _, uid := range chunk {
			args = append(args, uid)
		}
		rows, err := t.query("DELETE FROM messages WHERE mailbox_id = ? AND uid IN ("+strings.Repeat("?, ", len(chunk)-1)+"?) RETURNING uid", args...)
		if err != nil {
			return nil, fmt.Errorf("expunge %d uids from mailbox %d: %w", len(chunk), mailboxID, err)
		}
		var removed []uint32
		for rows.Next() {
			var uid uint32
			if err := rows.Scan(&uid); err != nil {
				rows.Close()
				return nil, fmt.Errorf("expunge from mailbox %d: %w", mailboxID, err)
			}
			removed = append(removed, uid)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("expunge from mailbox %d: %w", mailboxID, err)
		}
		if len(removed) == 0 {
			continue
		}
		slices.Sort(removed)
		args = args[:0]
		for _, uid := range removed {
			args = append(args, mailboxID, uid, modseq, at)
		}
		if _, err := t.exec("INSERT INTO expunged (mailbox_id, uid, modseq, at) VALUES "+valueRows(len(removed), 4), args...); err != nil {
			return nil, fmt.Errorf("record expunge of %d uids from mailbox %d: %w", len(removed), mailboxID, err)
		}
		gone = append(gone, removed...)
	}
	slices.Sort(gone)
	for _, uid := range gone {
		t.notify(Change{MailboxID: mailboxID, Kind: ChangeExpunged, UID: uid, ModSeq: modseq})
	}
	if len(gone) > 0 {
		if _, err := t.exec("UPDATE mailboxes SET highestmodseq = ? WHERE id = ?", modseq, mailboxID); err != nil {
			return nil, fmt.Errorf("update mailbox %d: %w", mailboxID, err)
		}
	}
	return gone, nil
}

// maxRowsPerStatement bounds the rows one multi-row statement writes
// (8 values a message row: well within both engines' limits on
// parameters).
const maxRowsPerStatement = 500

// valueRows is n rows of cols placeholders each, for a VALUES list.
func valueRows(n, cols int) string {
	row := "(" + strings.Repeat("?, ", cols-1) + "?)"
	return strings.Repeat(row+", ", n-1) + row
}

// insertMessages adds messages (MailboxID, UID, ModSeq set; UIDs already
// taken with bump) in as few statements as the bounds allow.
func (t *wtx) insertMessages(msgs []Message) error {
	for len(msgs) > 0 {
		chunk := msgs[:min(len(msgs), maxRowsPerStatement)]
		msgs = msgs[len(chunk):]
		args := make([]any, 0, 8*len(chunk))
		for _, m := range chunk {
			bits, kw, _ := parseFlags(m.Flags)
			args = append(args, m.MailboxID, m.UID, m.ModSeq, bits, joinKeywords(kw), m.InternalDate.UnixNano(), m.Size, m.BodyID)
		}
		if _, err := t.exec("INSERT INTO messages (mailbox_id, uid, modseq, flags, keywords, internal_date, size, body_id) VALUES "+
			valueRows(len(chunk), 8), args...); err != nil {
			return fmt.Errorf("insert %d messages in mailbox %d: %w", len(chunk), chunk[0].MailboxID, err)
		}
		for _, m := range chunk {
			t.notify(Change{MailboxID: m.MailboxID, Kind: ChangeAdded, UID: m.UID, ModSeq: m.ModSeq, Flags: m.Flags})
		}
	}
	return nil
}

// maxBodyMeta bounds one piece of derived data kept for a body.
const maxBodyMeta = 1 << 20

// BodyMeta returns derived data stored for a body under kind (for example
// a serialised IMAP BODYSTRUCTURE); ok is false when none is stored.
func (s *Store) BodyMeta(ctx context.Context, bodyID int64, kind string) (data []byte, ok bool, err error) {
	err = s.readRow(ctx, "SELECT data FROM body_meta WHERE body_id = ? AND kind = ?", bodyID, kind).Scan(&data)
	if isNoRows(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read %s of body %d: %w", kind, bodyID, err)
	}
	return data, true, nil
}

// SetBodyMeta stores derived data for a body under kind. Bodies never
// change, so data computed once stays right; it goes with the body.
func (s *Store) SetBodyMeta(ctx context.Context, bodyID int64, kind string, data []byte) error {
	if len(data) > maxBodyMeta {
		return fmt.Errorf("store %s of body %d: %d bytes is over the %d limit", kind, bodyID, len(data), maxBodyMeta)
	}
	return s.w.do(ctx, func(t *wtx) error {
		// The body may have been expunged meanwhile: then there is
		// nothing to keep.
		_, err := t.exec(`INSERT INTO body_meta (body_id, kind, data) SELECT id, ?, ? FROM bodies WHERE id = ?
			ON CONFLICT (body_id, kind) DO UPDATE SET data = excluded.data`, kind, data, bodyID)
		if err != nil {
			return fmt.Errorf("store %s of body %d: %w", kind, bodyID, err)
		}
		return nil
	})
}
