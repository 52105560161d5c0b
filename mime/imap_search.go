package mime

import (
	"bufio"
	"io"
	"strings"
	"unicode/utf8"

	message "github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"
)

// maxSearchPartBytes bounds the decoded text read from one part for
// SEARCH BODY and TEXT; the rest of a larger part is not searched.
const maxSearchPartBytes = 8 << 20

// ReadHeaderLoose reads a message header up to the empty line that ends
// it, skipping lines that are not header fields, and returns the fields
// and the header's size in bytes (the empty line included).
func ReadHeaderLoose(r *bufio.Reader) (textproto.Header, int64, error) {
	return bsReadHeader(r)
}

// HeaderText is a header field value as a reader sees it: unfolded, with
// RFC 2047 encoded words decoded where the charset is known.
func HeaderText(v string) string {
	return envDecodeWords(strings.TrimSpace(envUnfold(v)))
}

// MessageText calls fn with the text of a message, as IMAP SEARCH TEXT
// and BODY look at it (RFC 3501 6.4.4): first, when withHeader is set,
// each header field as "Name: value" with encoded words decoded; then the
// body of every text part, decoded from its transfer encoding and
// charset, and the header and text of every attached message. Other
// parts (images, applications) are skipped. fn returns false to stop.
func MessageText(r io.Reader, withHeader bool, fn func(text string) bool) error {
	br := bufio.NewReader(r)
	h, _, err := bsReadHeader(br)
	if err != nil {
		return err
	}
	w := textWalker{fn: fn}
	w.entity(h, br, withHeader, 0, "")
	return nil
}

type textWalker struct {
	fn    func(string) bool
	parts int
	stop  bool
}

func (w *textWalker) emit(s string) {
	if !w.stop && !w.fn(s) {
		w.stop = true
	}
}

func (w *textWalker) entity(h textproto.Header, body io.Reader, withHeader bool, depth int, parent string) {
	w.parts++
	if w.stop || w.parts > maxStructureParts {
		return
	}
	if withHeader {
		for f := h.Fields(); f.Next() && !w.stop; {
			w.emit(f.Key() + ": " + HeaderText(f.Value()))
		}
	}
	typ, sub, params := bsContentType(h, parent)
	switch {
	case typ == "multipart" && params["boundary"] != "" && depth < maxStructureDepth:
		mr := textproto.NewMultipartReader(body, params["boundary"])
		for !w.stop {
			p, err := mr.NextPart()
			if err != nil {
				return
			}
			w.entity(p.Header, p, false, depth+1, "multipart/"+sub)
		}
	case typ == "message" && (sub == "rfc822" || sub == "global") && depth < maxStructureDepth:
		decoded := decodedBody(h, body)
		br := bufio.NewReader(decoded)
		ih, _, err := bsReadHeader(br)
		if err != nil {
			return
		}
		w.entity(ih, br, true, depth+1, "")
	case typ == "text":
		decoded := decodedBody(h, body)
		b, _ := io.ReadAll(io.LimitReader(decoded, maxSearchPartBytes))
		w.emit(toUTF8(b, params["charset"]))
	}
}

// decodedBody undoes the transfer encoding (not the charset) of a part;
// an unknown encoding leaves the content as it is.
func decodedBody(h textproto.Header, body io.Reader) io.Reader {
	plain := textproto.Header{}
	if cte := h.Get("Content-Transfer-Encoding"); cte != "" {
		plain.Set("Content-Transfer-Encoding", cte)
	}
	plain.Set("Content-Type", "application/octet-stream")
	e, err := message.New(message.Header{Header: plain}, body)
	if e == nil || err != nil && e.Body == nil {
		return body
	}
	return e.Body
}

// toUTF8 converts text in a charset to UTF-8: through go-message's
// charset support when it is linked in, else by hand for Latin-1 and its
// relatives (the commonest legacy charsets); any other text is searched as
// it is.
func toUTF8(b []byte, charset string) string {
	cs := strings.ToLower(strings.TrimSpace(charset))
	switch cs {
	case "", "utf-8", "utf8", "us-ascii", "ascii":
		return string(b)
	}
	if message.CharsetReader != nil {
		if r, err := message.CharsetReader(cs, strings.NewReader(string(b))); err == nil && r != nil {
			if out, err := io.ReadAll(r); err == nil {
				return string(out)
			}
		}
	}
	switch cs {
	case "iso-8859-1", "latin1", "iso_8859-1", "l1", "iso-8859-15", "windows-1252", "cp1252":
		if utf8.Valid(b) {
			return string(b)
		}
		r := make([]rune, len(b))
		for i, c := range b {
			r[i] = rune(c)
		}
		return string(r)
	}
	return string(b)
}

// AddressSearchTexts is what IMAP SEARCH FROM, TO, CC and BCC look in
// (RFC 3501 6.4.4: a substring of the field) besides the field's own
// text: for each address of an address-list value, its display name
// (unquoted, encoded words decoded), its mailbox, its host,
// "mailbox@host" and "name <mailbox@host>"; for a group, its name. So a
// search for a name as a reader sees it, or for the address as written
// in an address book, finds the message whatever quoting, comments,
// folding or encoding the field uses.
func AddressSearchTexts(v string) []string {
	var out []string
	for _, a := range EnvelopeAddressList(v) {
		if a.Host == "" {
			if a.Mailbox != "" {
				out = append(out, a.Mailbox) // a group's name
			}
			continue
		}
		// A quoted encoded word is left for the client in ENVELOPE but
		// decoded here: senders write them so, and readers see the text.
		name := HeaderText(a.Name)
		mb, host := a.Mailbox, a.Host
		if mb == envMissingMailbox {
			mb = ""
		}
		if host == envMissingDomain {
			host = ""
		}
		addr := mb
		if host != "" {
			addr += "@" + host
		}
		out = append(out, name, mb, host, addr)
		if name != "" {
			out = append(out, name+" <"+addr+">")
		}
	}
	return out
}
