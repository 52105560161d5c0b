package imapd

import (
	"bufio"
	"context"
	"errors"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-message/textproto"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mime"
)

// maxSearchDepth bounds the nesting of NOT and OR in one SEARCH.
const maxSearchDepth = 100

// Search answers SEARCH and UID SEARCH (RFC 3501 6.4.4) with ESEARCH
// (RFC 4731) and SEARCHRES (RFC 5182). Every key is evaluated over the
// messages the client knows of: flags, UIDs, sequence numbers, sizes and
// internal dates from the message list first, then, only for the
// messages still in question, the header (HEADER, FROM, SUBJECT, sent
// dates...) and the decoded text (BODY, TEXT).
func (s *session) Search(kind imapserver.NumKind, criteria *imap.SearchCriteria, options *imap.SearchOptions) (*imap.SearchData, error) {
	defer s.enter()()
	ctx, cancel := s.ctx()
	defer cancel()
	if depth(criteria, 0) > maxSearchDepth {
		return nil, &imap.Error{Type: imap.StatusResponseTypeBad, Code: imap.ResponseCodeLimit, Text: "Search is nested too deeply"}
	}
	targets, count := s.view.all(ctx)
	var lastUID uint32
	if n := len(targets); n > 0 {
		lastUID = targets[n-1].uid
	}
	sr := &searcher{s: s, ctx: ctx, count: count, lastUID: lastUID}
	// The store selects by the keys its rows answer (flags, sizes, dates,
	// UIDs and sequence numbers as UIDs); the matcher takes the rest on
	// what is left, unless the store's selection is the answer already.
	sel, exact := sr.storeCriteria(criteria, targets)
	if searchInGo.Load() {
		sel, exact = mailstore.SearchCriteria{}, false
	}
	msgs, err := s.cc.srv.store.Search(ctx, s.boxID, &sel)
	if errors.Is(err, mailstore.ErrLimit) {
		msgs, err = s.cc.srv.store.Search(ctx, s.boxID, &mailstore.SearchCriteria{})
		exact = false
	}
	if err != nil {
		if errors.Is(err, mailstore.ErrNotFound) {
			return nil, errMailboxGone
		}
		return nil, s.internal("search", err)
	}
	var hits []target
	// Both lists ascend by UID: walk them together, keeping the messages
	// the client knows of.
	for i, j := 0, 0; i < len(targets) && j < len(msgs); {
		t, m := targets[i], &msgs[j]
		switch {
		case t.uid < m.UID:
			i++
			continue
		case t.uid > m.UID:
			j++
			continue
		}
		i, j = i+1, j+1
		ok := exact
		if !ok {
			if ok, err = sr.match(&candidate{t: t, m: m}, criteria); err != nil {
				return nil, s.internal("search", err)
			}
		}
		if ok {
			hits = append(hits, t)
		}
	}

	data := &imap.SearchData{Count: uint32(len(hits))}
	if kind == imapserver.NumKindUID {
		set := imap.UIDSet{}
		for _, h := range hits {
			set.AddNum(imap.UID(h.uid))
		}
		data.All = set
		if len(hits) > 0 {
			data.Min, data.Max = hits[0].uid, hits[len(hits)-1].uid
		}
	} else {
		set := imap.SeqSet{}
		for _, h := range hits {
			set.AddNum(h.seq)
		}
		data.All = set
		if len(hits) > 0 {
			data.Min, data.Max = hits[0].seq, hits[len(hits)-1].seq
		}
	}
	if options != nil && options.ReturnSave {
		// RFC 5182 2.1: saved as UIDs, so that it outlives expunges; with
		// MIN or MAX only, only those are saved.
		s.searchRes = s.searchRes[:0]
		switch {
		case options.ReturnAll || options.ReturnCount || !options.ReturnMin && !options.ReturnMax:
			for _, h := range hits {
				s.searchRes = append(s.searchRes, h.uid)
			}
		case len(hits) > 0:
			if options.ReturnMin {
				s.searchRes = append(s.searchRes, hits[0].uid)
			}
			if options.ReturnMax && (len(hits) > 1 || !options.ReturnMin) {
				s.searchRes = append(s.searchRes, hits[len(hits)-1].uid)
			}
		}
	}
	return data, nil
}

func depth(c *imap.SearchCriteria, d int) int {
	if d > maxSearchDepth {
		return d
	}
	deepest := d
	for i := range c.Not {
		deepest = max(deepest, depth(&c.Not[i], d+1))
	}
	for i := range c.Or {
		deepest = max(deepest, depth(&c.Or[i][0], d+1), depth(&c.Or[i][1], d+1))
	}
	return deepest
}

// searchInGo makes SEARCH read every message and match all keys in Go, as
// before the store took part; only BenchmarkSearch sets it, to compare.
var searchInGo atomic.Bool

// maxStoreRanges bounds the ranges of one set given to the store; a set
// with more is given as the one range that spans it.
const maxStoreRanges = 256

// storeCriteria is what the store can select of crit: every message that
// meets crit meets it. exact reports that the converse holds too for the
// messages in targets, so that the matcher need not look at them. Keys
// the store cannot answer (\Recent, sent dates, header and text) are left
// out, and a NOT over such a key is left out whole.
func (sr *searcher) storeCriteria(crit *imap.SearchCriteria, targets []target) (mailstore.SearchCriteria, bool) {
	var out mailstore.SearchCriteria
	exact := true
	for _, set := range crit.SeqNum {
		var uids mailstore.UIDSet
		for _, r := range set {
			lo, hi := r.Start, r.Stop
			if lo == 0 {
				lo = sr.count
			}
			if hi == 0 {
				hi = sr.count
			}
			if lo > hi {
				lo, hi = hi, lo
			}
			// The targets ascend by sequence number and by UID alike: the
			// UIDs from the first at or above lo to the last at or below
			// hi are those of the messages numbered lo to hi.
			i := sort.Search(len(targets), func(i int) bool { return targets[i].seq >= lo })
			j := sort.Search(len(targets), func(j int) bool { return targets[j].seq > hi }) - 1
			if i <= j {
				uids = append(uids, mailstore.UIDRange{Start: targets[i].uid, Stop: targets[j].uid})
			}
		}
		uids, ok := boundRanges(uids)
		out.UID = append(out.UID, uids)
		exact = exact && ok
	}
	for _, set := range crit.UID {
		var uids mailstore.UIDSet
		for _, r := range sr.s.uidSet(set) {
			lo, hi := uint32(r.Start), uint32(r.Stop)
			if lo == 0 {
				lo = sr.lastUID
			}
			if hi == 0 {
				hi = sr.lastUID
			}
			if lo > hi {
				lo, hi = hi, lo
			}
			if hi == 0 {
				continue // "*" of an empty mailbox names nothing
			}
			uids = append(uids, mailstore.UIDRange{Start: lo, Stop: hi})
		}
		uids, ok := boundRanges(uids)
		out.UID = append(out.UID, uids)
		exact = exact && ok
	}
	for i, list := range [][]imap.Flag{crit.Flag, crit.NotFlag} {
		for _, f := range list {
			if isRecentFlag(f) || !printableASCII(string(f)) {
				// \Recent is the session's; other text is left to
				// HasFlag's Unicode case folding.
				exact = false
				continue
			}
			if i == 0 {
				out.Flag = append(out.Flag, string(f))
			} else {
				out.NotFlag = append(out.NotFlag, string(f))
			}
		}
	}
	// The matcher ignores bounds of 0 or less, as the store does 0.
	out.Larger, out.Smaller = max(crit.Larger, 0), max(crit.Smaller, 0)
	if crit.ModSeq != nil {
		out.ModSeq = crit.ModSeq.ModSeq
	}
	out.Since, out.Before = crit.Since, crit.Before
	if !crit.SentSince.IsZero() || !crit.SentBefore.IsZero() || len(crit.Header) > 0 || len(crit.Body) > 0 || len(crit.Text) > 0 {
		exact = false
	}
	// The full-text index narrows BODY and TEXT (BODY's text is part of
	// what TEXT looks in) and FROM, TO, CC, BCC and SUBJECT; the matcher
	// decides. Under NOT this is left out whole, as every inexact key is.
	out.MayContain = append(append(out.MayContain, crit.Body...), crit.Text...)
	for _, hf := range crit.Header {
		if addressField(hf.Key) || strings.EqualFold(hf.Key, "Subject") {
			out.HeaderMayContain = append(out.HeaderMayContain, hf.Value)
		}
	}
	for i := range crit.Not {
		if not, ok := sr.storeCriteria(&crit.Not[i], targets); ok {
			out.Not = append(out.Not, not)
		} else {
			exact = false
		}
	}
	for i := range crit.Or {
		a, okA := sr.storeCriteria(&crit.Or[i][0], targets)
		b, okB := sr.storeCriteria(&crit.Or[i][1], targets)
		out.Or = append(out.Or, [2]mailstore.SearchCriteria{a, b})
		exact = exact && okA && okB
	}
	return out, exact
}

// boundRanges returns set, or when it has more than maxStoreRanges ranges
// the one range that spans them (ok false: wider than the set).
func boundRanges(set mailstore.UIDSet) (mailstore.UIDSet, bool) {
	if len(set) <= maxStoreRanges {
		if set == nil {
			set = mailstore.UIDSet{} // names nothing
		}
		return set, true
	}
	lo, hi := set[0].Start, set[0].Stop
	for _, r := range set {
		lo, hi = min(lo, r.Start), max(hi, r.Stop)
	}
	return mailstore.UIDSet{{Start: lo, Stop: hi}}, false
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// searcher evaluates criteria; candidate is one message, with what was
// read of it so far.
type searcher struct {
	s       *session
	ctx     context.Context
	count   uint32
	lastUID uint32
}

type candidate struct {
	t      target
	m      *mailstore.Message
	header *textproto.Header
	sent   *time.Time
	texts  map[bool][]string // decoded text, with and without the header
}

// match reports whether c meets every key of crit, the cheap ones first.
func (sr *searcher) match(c *candidate, crit *imap.SearchCriteria) (bool, error) {
	for _, set := range crit.SeqNum {
		if !seqContains(set, c.t.seq, sr.count) {
			return false, nil
		}
	}
	for _, set := range crit.UID {
		set = sr.s.uidSet(set)
		if !uidContains(set, c.t.uid, sr.lastUID) {
			return false, nil
		}
	}
	for _, f := range crit.Flag {
		if !sr.hasFlag(c, f) {
			return false, nil
		}
	}
	for _, f := range crit.NotFlag {
		if sr.hasFlag(c, f) {
			return false, nil
		}
	}
	if crit.Larger > 0 && c.m.Size <= crit.Larger {
		return false, nil
	}
	if crit.Smaller > 0 && c.m.Size >= crit.Smaller {
		return false, nil
	}
	if crit.ModSeq != nil && c.m.ModSeq < crit.ModSeq.ModSeq {
		return false, nil
	}
	// RFC 3501 6.4.4: dates disregard time and time zone.
	if !crit.Since.IsZero() || !crit.Before.IsZero() {
		if !inDates(dateOf(c.m.InternalDate), crit.Since, crit.Before) {
			return false, nil
		}
	}
	if !crit.SentSince.IsZero() || !crit.SentBefore.IsZero() {
		sent, err := sr.sentDate(c)
		if err != nil {
			return false, err
		}
		if !inDates(sent, crit.SentSince, crit.SentBefore) {
			return false, nil
		}
	}
	for _, hf := range crit.Header {
		ok, err := sr.headerMatch(c, hf)
		if err != nil || !ok {
			return false, err
		}
	}
	for _, needle := range crit.Body {
		ok, err := sr.textMatch(c, needle, false)
		if err != nil || !ok {
			return false, err
		}
	}
	for _, needle := range crit.Text {
		ok, err := sr.textMatch(c, needle, true)
		if err != nil || !ok {
			return false, err
		}
	}
	for i := range crit.Not {
		ok, err := sr.match(c, &crit.Not[i])
		if err != nil || ok {
			return false, err
		}
	}
	for i := range crit.Or {
		ok, err := sr.match(c, &crit.Or[i][0])
		if err != nil {
			return false, err
		}
		if !ok {
			if ok, err = sr.match(c, &crit.Or[i][1]); err != nil || !ok {
				return false, err
			}
		}
	}
	return true, nil
}

// hasFlag tests a flag; \Recent is the session's own (RECENT, NEW, OLD:
// imapserver turns NEW into RECENT UNSEEN and OLD into NOT RECENT).
func (sr *searcher) hasFlag(c *candidate, f imap.Flag) bool {
	if isRecentFlag(f) {
		return sr.s.view.isRecent(c.m.UID)
	}
	return c.m.HasFlag(string(f))
}

// seqContains tests a sequence set where "*" is the client's last message.
func seqContains(set imap.SeqSet, seq, last uint32) bool {
	for _, r := range set {
		if rangeContains(r.Start, r.Stop, seq, last) {
			return true
		}
	}
	return false
}

func uidContains(set imap.UIDSet, uid, last uint32) bool {
	for _, r := range set {
		if rangeContains(uint32(r.Start), uint32(r.Stop), uid, last) {
			return true
		}
	}
	return false
}

func rangeContains(start, stop, n, last uint32) bool {
	if start == 0 {
		start = last
	}
	if stop == 0 {
		stop = last
	}
	if start > stop {
		start, stop = stop, start
	}
	return n >= start && n <= stop
}

func dateOf(t time.Time) time.Time {
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}

func inDates(d, since, before time.Time) bool {
	if !since.IsZero() && d.Before(dateOf(since)) {
		return false
	}
	if !before.IsZero() && !d.Before(dateOf(before)) {
		return false
	}
	return true
}

func (sr *searcher) readHeader(c *candidate) (*textproto.Header, error) {
	if c.header != nil {
		return c.header, nil
	}
	b, err := sr.s.cc.srv.store.OpenBody(sr.ctx, c.m.BodyID)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	h, _, err := mime.ReadHeaderLoose(bufio.NewReader(b))
	if err != nil {
		return nil, err
	}
	c.header = &h
	return c.header, nil
}

// sentDate is the Date field's day, in the field's own time zone; a
// message without a usable one counts with its internal date.
func (sr *searcher) sentDate(c *candidate) (time.Time, error) {
	if c.sent != nil {
		return *c.sent, nil
	}
	h, err := sr.readHeader(c)
	if err != nil {
		return time.Time{}, err
	}
	d := mime.Envelope(*h).Date
	if d.IsZero() {
		d = c.m.InternalDate
	}
	d = dateOf(d)
	c.sent = &d
	return d, nil
}

// headerMatch: HEADER name value, FROM, TO, CC, BCC, SUBJECT (RFC 3501
// 6.4.4): a case-insensitive substring of the field, raw or decoded; an
// empty value matches every message that has the field.
func (sr *searcher) headerMatch(c *candidate, hf imap.SearchCriteriaHeaderField) (bool, error) {
	h, err := sr.readHeader(c)
	if err != nil {
		return false, err
	}
	needle := strings.ToLower(hf.Value)
	for f := h.FieldsByKey(hf.Key); f.Next(); {
		if needle == "" {
			return true, nil
		}
		raw := f.Value()
		if strings.Contains(strings.ToLower(raw), needle) || strings.Contains(strings.ToLower(mime.HeaderText(raw)), needle) {
			return true, nil
		}
		if addressField(hf.Key) {
			// Any part of an address: name, mailbox, host, or the
			// whole "name <mailbox@host>" (RFC 3501 6.4.4).
			for _, t := range mime.AddressSearchTexts(raw) {
				if strings.Contains(strings.ToLower(t), needle) {
					return true, nil
				}
			}
		}
	}
	return false, nil
}

// addressField reports whether a SEARCH header key is one of the address
// keys FROM, TO, CC and BCC (imapserver passes them as HEADER keys).
func addressField(key string) bool {
	switch strings.ToLower(key) {
	case "from", "to", "cc", "bcc":
		return true
	}
	return false
}

// textMatch: BODY (withHeader false) and TEXT, on the decoded text.
func (sr *searcher) textMatch(c *candidate, needle string, withHeader bool) (bool, error) {
	needle = strings.ToLower(needle)
	if c.texts == nil {
		c.texts = make(map[bool][]string)
	}
	texts, ok := c.texts[withHeader]
	if !ok {
		b, err := sr.s.cc.srv.store.OpenBody(sr.ctx, c.m.BodyID)
		if err != nil {
			return false, err
		}
		err = mime.MessageText(b, withHeader, func(t string) bool {
			texts = append(texts, strings.ToLower(t))
			return true
		})
		b.Close()
		if err != nil {
			return false, err
		}
		c.texts[withHeader] = texts
	}
	for _, t := range texts {
		if strings.Contains(t, needle) {
			return true, nil
		}
	}
	return false, nil
}
