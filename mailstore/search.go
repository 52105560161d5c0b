package mailstore

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"
)

// SearchCriteria selects a mailbox's messages by what the store keeps in
// their rows: UIDs, flags, sizes, MODSEQ and internal dates (the IMAP
// SEARCH keys that need no message content, RFC 3501 6.4.4). A message
// matches when it meets every field that is set, no key of Not and one
// side of each Or. The zero value matches every message.
type SearchCriteria struct {
	UID     []UIDSet // the UID is in each set; an empty set matches nothing
	Flag    []string // the message has each flag (case-insensitive)
	NotFlag []string // and none of these
	Larger  int64    // size > Larger, when not 0
	Smaller int64    // size < Smaller, when not 0
	ModSeq  uint64   // MODSEQ >= ModSeq, when not 0 (RFC 7162 3.1.5)
	// Since and Before compare the day of the internal date in UTC with
	// the day of the time given (its date only, as IMAP SINCE and
	// BEFORE do): on or after Since, before Before.
	Since, Before time.Time
	// MayContain and HeaderMayContain narrow the search with the
	// full-text index, as a prefilter only: each needle (compared
	// lower-cased) is in the message's text (header fields and decoded
	// text parts, as IMAP TEXT sees them; BODY's text is part of it), or
	// in the text of its From, To, Cc, Bcc and Subject fields, or the
	// message is one the index cannot answer for (a needle shorter than
	// three characters, a body not indexed by this version). The caller
	// confirms each message it gets; a prefilter inside Not would be
	// wrong, and is refused with ErrInvalidName.
	MayContain       []string
	HeaderMayContain []string
	Not              []SearchCriteria
	Or               [][2]SearchCriteria
}

// Bounds on one search, so that no client builds an unbounded statement.
const (
	maxSearchDepth  = 100
	maxSearchParams = 4096
)

// Search returns the messages of a mailbox that meet c, in UID order. A
// flag that is neither a system flag nor a keyword as parseFlags accepts
// is carried by no message. Criteria nested more than 100 deep or with
// more than 4096 values fail with ErrLimit.
func (s *Store) Search(ctx context.Context, mailboxID int64, c *SearchCriteria) ([]Message, error) {
	b := searchSQL{d: s.d}
	if err := b.add(c, 0, false); err != nil {
		return nil, fmt.Errorf("search mailbox %d: %w", mailboxID, err)
	}
	where := b.sb.String()
	args := append([]any{mailboxID}, b.args...)
	// Not prepared once: the statement differs with each search.
	rows, err := s.rdb.QueryContext(ctx, s.d.rebind("SELECT "+messageColumns+" FROM messages WHERE mailbox_id = ? AND "+where+" ORDER BY uid"), s.d.args(args)...)
	if err != nil {
		return nil, fmt.Errorf("search mailbox %d: %w", mailboxID, err)
	}
	defer rows.Close()
	var out []Message
	for rows.Next() {
		m, err := scanMessage(rows)
		if err != nil {
			return nil, fmt.Errorf("search mailbox %d: %w", mailboxID, err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("search mailbox %d: %w", mailboxID, err)
	}
	return out, nil
}

// searchSQL builds the WHERE expression of a search.
type searchSQL struct {
	d    *dialect
	sb   strings.Builder
	args []any
}

func (b *searchSQL) arg(v any) error {
	if len(b.args) >= maxSearchParams {
		return fmt.Errorf("%w: more than %d search values", ErrLimit, maxSearchParams)
	}
	b.args = append(b.args, v)
	return nil
}

// add writes c as one parenthesised conjunction.
func (b *searchSQL) add(c *SearchCriteria, depth int, negated bool) error {
	if depth > maxSearchDepth {
		return fmt.Errorf("%w: search nested more than %d deep", ErrLimit, maxSearchDepth)
	}
	b.sb.WriteString("(1=1")
	and := func(expr string, args ...any) error {
		b.sb.WriteString(" AND ")
		b.sb.WriteString(expr)
		for _, a := range args {
			if err := b.arg(a); err != nil {
				return err
			}
		}
		return nil
	}
	for _, set := range c.UID {
		if err := b.uidSet(set); err != nil {
			return err
		}
	}
	for i, list := range [][]string{c.Flag, c.NotFlag} {
		for _, f := range list {
			expr, arg := flagSQL(b.d, f)
			if i == 1 {
				expr = "NOT " + expr
			}
			var err error
			if arg == nil {
				err = and(expr)
			} else {
				err = and(expr, arg)
			}
			if err != nil {
				return err
			}
		}
	}
	if c.Larger != 0 {
		if err := and("size > ?", c.Larger); err != nil {
			return err
		}
	}
	if c.Smaller != 0 {
		if err := and("size < ?", c.Smaller); err != nil {
			return err
		}
	}
	if c.ModSeq != 0 {
		if c.ModSeq > math.MaxInt64 {
			b.sb.WriteString(" AND 1=0")
		} else if err := and("modseq >= ?", int64(c.ModSeq)); err != nil {
			return err
		}
	}
	for i, list := range [][]string{c.MayContain, c.HeaderMayContain} {
		for _, needle := range list {
			lower := strings.ToLower(needle)
			phrase, ok := ftsPhrase(lower)
			if !ok {
				continue
			}
			if negated {
				return fmt.Errorf("%w: a full-text prefilter under NOT", ErrInvalidName)
			}
			column := "text"
			if i == 1 {
				column = "hdr"
			}
			if b.d.pg && !pgText(lower) {
				continue // no indexed text holds it: the matcher decides
			}
			if b.d.pg {
				// pg_trgm's indexes answer LIKE; the text is lower-cased
				// already, as the needle is.
				if err := and("((SELECT indexed FROM bodies WHERE id = body_id) != ? OR body_id IN (SELECT body_id FROM body_text WHERE "+column+" LIKE ? ESCAPE '\\'))",
					textIndexVersion, "%"+escapeLike(lower)+"%"); err != nil {
					return err
				}
				continue
			}
			if err := and("((SELECT indexed FROM bodies WHERE id = body_id) != ? OR body_id IN (SELECT rowid FROM body_text WHERE body_text MATCH ?))",
				textIndexVersion, column+" : "+phrase); err != nil {
				return err
			}
		}
	}
	if !c.Since.IsZero() {
		// On or after the day: internal_date >= its first instant.
		if n, ok := dayNanos(c.Since); !ok {
			b.sb.WriteString(sqlBool(n < 0)) // every day is after a day before the range
		} else if err := and("internal_date >= ?", n); err != nil {
			return err
		}
	}
	if !c.Before.IsZero() {
		if n, ok := dayNanos(c.Before); !ok {
			b.sb.WriteString(sqlBool(n > 0))
		} else if err := and("internal_date < ?", n); err != nil {
			return err
		}
	}
	for i := range c.Not {
		b.sb.WriteString(" AND NOT ")
		if err := b.add(&c.Not[i], depth+1, !negated); err != nil {
			return err
		}
	}
	for i := range c.Or {
		b.sb.WriteString(" AND (")
		if err := b.add(&c.Or[i][0], depth+1, negated); err != nil {
			return err
		}
		b.sb.WriteString(" OR ")
		if err := b.add(&c.Or[i][1], depth+1, negated); err != nil {
			return err
		}
		b.sb.WriteString(")")
	}
	b.sb.WriteString(")")
	return nil
}

// sqlBool is a constant term of the conjunction.
func sqlBool(v bool) string {
	if v {
		return " AND 1=1"
	}
	return " AND 1=0"
}

// uidSet writes "the UID is in set".
func (b *searchSQL) uidSet(set UIDSet) error {
	b.sb.WriteString(" AND (1=0")
	for _, r := range set {
		lo, hi := r.Start, r.Stop
		if hi == 0 {
			hi = math.MaxUint32
		}
		if lo > hi {
			lo, hi = hi, lo
		}
		b.sb.WriteString(" OR uid BETWEEN ? AND ?")
		if err := b.arg(int64(lo)); err != nil {
			return err
		}
		if err := b.arg(int64(hi)); err != nil {
			return err
		}
	}
	b.sb.WriteString(")")
	return nil
}

// flagSQL is the test for one flag: a bit of flags for a system flag, a
// whole word of keywords for a keyword (keywords hold no spaces and are
// ASCII, so lower() folds them as HasFlag does), false for anything else.
func flagSQL(d *dialect, f string) (string, any) {
	if strings.HasPrefix(f, `\`) {
		for _, sf := range systemFlags {
			if strings.EqualFold(f, sf.name) {
				return fmt.Sprintf("(flags & %d != 0)", sf.bit), nil
			}
		}
		return "1=0", nil
	}
	if _, kw, err := parseFlags([]string{f}); err != nil || len(kw) != 1 {
		return "1=0", nil
	}
	return "(" + d.instr("' ' || lower(keywords) || ' '", "?") + " > 0)", " " + strings.ToLower(f) + " "
}

// dayNanos is the first instant of t's day (its date, whatever its zone)
// in UTC as stored in internal_date; ok is false when that is outside
// what int64 nanoseconds hold, and then n is -1 before the range and 1
// after it.
func dayNanos(t time.Time) (n int64, ok bool) {
	d := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	switch {
	case d.Before(time.Unix(0, math.MinInt64)):
		return -1, false
	case d.After(time.Unix(0, math.MaxInt64)):
		return 1, false
	}
	return d.UnixNano(), true
}
