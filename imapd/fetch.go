package imapd

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mime"
)

// maxSectionDepth bounds a FETCH section's part numbers; no part of a
// stored message is deeper (mime's structure limit).
const maxSectionDepth = 40

// Fetch answers FETCH and UID FETCH (RFC 3501 6.4.5, RFC 3516 BINARY).
// Everything a message's response needs is read before the response is
// started, since imapserver holds the connection's write lock from
// CreateMessage to Close; only BODY[] and its whole-message kin stream
// from the store while it is held.
func (s *session) Fetch(w *imapserver.FetchWriter, numSet imap.NumSet, options *imap.FetchOptions) error {
	defer s.enter()()
	ctx, cancel := s.ctx()
	defer cancel()
	targets := s.view.resolve(ctx, s.numSet(numSet))
	if len(targets) == 0 {
		return nil
	}
	msgs, err := s.cc.srv.store.Messages(ctx, s.boxID, uidSetOf(targets))
	if err != nil {
		if errors.Is(err, mailstore.ErrNotFound) {
			return errMailboxGone
		}
		return s.internal("fetch", err)
	}
	byUID := make(map[uint32]*mailstore.Message, len(msgs))
	for i := range msgs {
		byUID[msgs[i].UID] = &msgs[i]
	}

	// RFC 3501 6.4.5: BODY[...] (not PEEK) and BINARY[...] set \Seen;
	// the flags then go out with the message.
	setsSeen := false
	for _, bs := range options.BodySection {
		setsSeen = setsSeen || !bs.Peek
	}
	for _, bs := range options.BinarySection {
		setsSeen = setsSeen || !bs.Peek
	}
	seenNow := map[uint32]bool{}
	if setsSeen && !s.view.readOnly {
		var unseen []target
		for _, t := range targets {
			if m := byUID[t.uid]; m != nil && !m.HasFlag(mailstore.FlagSeen) {
				unseen = append(unseen, t)
			}
		}
		if len(unseen) > 0 {
			changed, err := s.cc.srv.store.StoreFlags(ctx, s.boxID, uidSetOf(unseen), mailstore.FlagsAdd, []string{mailstore.FlagSeen})
			if err != nil {
				return s.internal("set \\Seen", err)
			}
			for _, m := range changed {
				if old := byUID[m.UID]; old != nil {
					*old = m
					seenNow[m.UID] = true
				}
			}
			s.view.flagsStored(ctx, changed, true)
		}
	}

	gone := false
	for _, t := range targets {
		m := byUID[t.uid]
		if m == nil {
			gone = true // expunged meanwhile; its EXPUNGE comes later
			continue
		}
		if err := s.fetchOne(ctx, w, t.seq, m, options, seenNow[m.UID]); err != nil {
			return err
		}
	}
	if gone {
		// RFC 2180 4.1.3: the messages that still exist, then NO.
		s.info("fetch of expunged messages")
		return errExpungeIssued
	}
	return nil
}

// bodyError is FETCH's answer when a message's body cannot be read: one
// expunged by another session meanwhile (mailstore.ErrNotFound) is the
// client's to learn about with NOOP (RFC 2180 4.1.3, RFC 5530
// EXPUNGEISSUED); anything else is the server's.
func (s *session) bodyError(op string, uid uint32, err error) error {
	if errors.Is(err, mailstore.ErrNotFound) {
		s.info("message expunged while fetched", "uid", uid, "err", err)
		return errExpungeIssued
	}
	return s.internal(op, err)
}

// fetchItem is one body section, prepared before the response starts:
// either bytes, or a range of the stored body to stream.
type fetchItem struct {
	body    *imap.FetchItemBodySection
	binary  *imap.FetchItemBinarySection
	data    []byte
	stream  bool
	off, n  int64
	sizeFor *imap.FetchItemBinarySectionSize
	size    uint32
}

func (s *session) fetchOne(ctx context.Context, w *imapserver.FetchWriter, seq uint32, m *mailstore.Message, options *imap.FetchOptions, seenNow bool) error {
	var data *mime.IMAPData
	needData := options.Envelope || options.BodyStructure != nil || len(options.BinarySection) > 0
	for _, bs := range options.BodySection {
		needData = needData || len(bs.Part) == 0
	}
	if needData {
		var err error
		if data, err = s.cc.srv.cache.get(ctx, m.BodyID); err != nil {
			return s.bodyError("read message structure", m.UID, err)
		}
	}
	var items []fetchItem
	var body *mailstore.Body
	openBody := func() (*mailstore.Body, error) {
		if body == nil {
			var err error
			if body, err = s.cc.srv.store.OpenBody(ctx, m.BodyID); err != nil {
				return nil, err
			}
		}
		return body, nil
	}
	defer func() {
		if body != nil {
			body.Close()
		}
	}()
	for _, bs := range options.BodySection {
		it := fetchItem{body: bs}
		if off, n, ok := wholeRange(bs, data, m.Size); ok {
			it.stream, it.off, it.n = true, off, n
		} else {
			b, err := openBody()
			if err != nil {
				return s.bodyError("open message", m.UID, err)
			}
			if _, err := b.Seek(0, io.SeekStart); err != nil {
				return s.bodyError("open message", m.UID, err)
			}
			if len(bs.Part) > maxSectionDepth {
				it.data = nil
			} else {
				it.data = imapserver.ExtractBodySection(b, bs)
			}
		}
		items = append(items, it)
	}
	for _, bs := range options.BinarySection {
		if len(bs.Part) > maxSectionDepth || !knownEncoding(data, bs.Part) {
			return errUnknownCTE // RFC 3516 4.1
		}
		b, err := openBody()
		if err != nil {
			return s.bodyError("open message", m.UID, err)
		}
		if _, err := b.Seek(0, io.SeekStart); err != nil {
			return s.bodyError("open message", m.UID, err)
		}
		data, err := binarySection(b, bs.Part)
		if err != nil {
			return s.bodyError("read message part", m.UID, err)
		}
		items = append(items, fetchItem{binary: bs, data: partialOf(data, bs.Partial)})
	}
	for _, bss := range options.BinarySectionSize {
		if len(bss.Part) > maxSectionDepth {
			return errUnknownCTE
		}
		b, err := openBody()
		if err != nil {
			return s.bodyError("open message", m.UID, err)
		}
		if _, err := b.Seek(0, io.SeekStart); err != nil {
			return s.bodyError("open message", m.UID, err)
		}
		data, err := binarySection(b, bss.Part)
		if err != nil {
			return s.bodyError("read message part", m.UID, err)
		}
		items = append(items, fetchItem{sizeFor: bss, size: uint32(len(data))})
	}
	for i := range items {
		if items[i].stream {
			if _, err := openBody(); err != nil {
				return s.bodyError("open message", m.UID, err)
			}
		}
	}

	r := w.CreateMessage(seq)
	if options.UID {
		r.WriteUID(imap.UID(m.UID))
	}
	if options.Flags || seenNow {
		r.WriteFlags(s.view.flagsOut(m.UID, m.Flags))
	}
	if options.InternalDate {
		r.WriteInternalDate(m.InternalDate)
	}
	if options.RFC822Size {
		r.WriteRFC822Size(m.Size)
	}
	if options.Envelope {
		r.WriteEnvelope(data.Envelope)
	}
	if options.BodyStructure != nil {
		r.WriteBodyStructure(data.BodyStructure)
	}
	for _, it := range items {
		switch {
		case it.sizeFor != nil:
			r.WriteBinarySectionSize(it.sizeFor, it.size)
		case it.binary != nil:
			wc := r.WriteBinarySection(it.binary, int64(len(it.data)))
			if _, err := wc.Write(it.data); err != nil {
				wc.Close()
				r.Close()
				return err
			}
			if err := wc.Close(); err != nil {
				r.Close()
				return err
			}
		case it.stream:
			wc := r.WriteBodySection(it.body, it.n)
			if err := streamRange(wc, body, it.off, it.n); err != nil {
				// The literal is cut short: the connection cannot go on.
				s.conn.NetConn().Close()
				if errors.Is(err, mailstore.ErrNotFound) {
					s.info("message expunged while its body was sent", "uid", m.UID, "err", err)
				} else {
					s.error("stream message body failed", "uid", m.UID, "err", err)
				}
				wc.Close()
				r.Close()
				return fmt.Errorf("stream message body: %w", err)
			}
			if err := wc.Close(); err != nil {
				r.Close()
				return err
			}
		default:
			wc := r.WriteBodySection(it.body, int64(len(it.data)))
			if _, err := wc.Write(it.data); err != nil {
				wc.Close()
				r.Close()
				return err
			}
			if err := wc.Close(); err != nil {
				r.Close()
				return err
			}
		}
	}
	return r.Close()
}

// binarySection is a part's content for BINARY and BINARY.SIZE: decoded
// from its transfer encoding only (RFC 3516 4.2); a part that does not
// exist is empty.
func binarySection(b *mailstore.Body, part []int) ([]byte, error) {
	data, _, err := mime.BinarySection(b, part)
	return data, err
}

// partialOf cuts a BINARY <partial> from the decoded octets (RFC 3516
// 4.2: the offset counts in the decoded data); past the end it is empty.
func partialOf(data []byte, p *imap.SectionPartial) []byte {
	if p == nil {
		return data
	}
	if p.Offset >= int64(len(data)) {
		return nil
	}
	return data[p.Offset:min(int64(len(data)), p.Offset+p.Size)]
}

// wholeRange says whether a section is a byte range of the stored message
// (BODY[], BODY[TEXT], BODY[HEADER], with or without <partial>), which is
// then streamed rather than extracted, and which range.
func wholeRange(bs *imap.FetchItemBodySection, data *mime.IMAPData, size int64) (off, n int64, ok bool) {
	if len(bs.Part) > 0 || len(bs.HeaderFields) > 0 || len(bs.HeaderFieldsNot) > 0 || data == nil {
		return 0, 0, false
	}
	switch bs.Specifier {
	case imap.PartSpecifierNone:
		off, n = 0, size
	case imap.PartSpecifierText:
		off, n = min(data.HeaderSize, size), size-min(data.HeaderSize, size)
	case imap.PartSpecifierHeader:
		off, n = 0, min(data.HeaderSize, size)
	default:
		return 0, 0, false
	}
	if p := bs.Partial; p != nil {
		if p.Offset >= n {
			return off + n, 0, true
		}
		off += p.Offset
		n = min(n-p.Offset, p.Size)
	}
	return off, n, true
}

func streamRange(w io.Writer, b *mailstore.Body, off, n int64) error {
	if n == 0 {
		return nil
	}
	if _, err := b.Seek(off, io.SeekStart); err != nil {
		return err
	}
	_, err := io.CopyN(w, b, n)
	return err
}

// knownEncoding reports whether BINARY can decode the part: its
// Content-Transfer-Encoding must be one of RFC 2045's.
func knownEncoding(data *mime.IMAPData, part []int) bool {
	if data == nil {
		return true
	}
	bs := data.BodyStructure
	if len(part) == 0 {
		if sp, ok := bs.(*imap.BodyStructureSinglePart); ok {
			return mimeEncodingKnown(sp.Encoding)
		}
		return true
	}
	for i, n := range part {
		switch b := bs.(type) {
		case *imap.BodyStructureMultiPart:
			if n < 1 || n > len(b.Children) {
				return true // no such part: an empty answer, not an error
			}
			bs = b.Children[n-1]
		case *imap.BodyStructureSinglePart:
			if b.MessageRFC822 != nil && i > 0 {
				bs = b.MessageRFC822.BodyStructure
				if mp, ok := bs.(*imap.BodyStructureMultiPart); ok {
					if n < 1 || n > len(mp.Children) {
						return true
					}
					bs = mp.Children[n-1]
				}
			} else if n != 1 {
				return true
			}
		}
	}
	if sp, ok := bs.(*imap.BodyStructureSinglePart); ok {
		return mimeEncodingKnown(sp.Encoding)
	}
	return true
}

func mimeEncodingKnown(enc string) bool {
	switch enc {
	case "", "7bit", "8bit", "binary", "base64", "quoted-printable":
		return true
	}
	return false
}
