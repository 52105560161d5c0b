package mime

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-message/textproto"
)

// Limits on the structure of one message. Real mail stays far below them;
// a message built to go past them gets a flatter BODYSTRUCTURE rather than
// unbounded work or memory.
const (
	// maxStructureDepth bounds the nesting of multipart and message/rfc822
	// parts. Deeper parts are shown as opaque application/octet-stream.
	maxStructureDepth = 32
	// maxStructureParts bounds the parts of one message; the parts after
	// it are left out of the structure.
	maxStructureParts = 5000
	// maxHeaderBytes bounds the header block kept for parsing; past it the
	// header is still skipped, and counted, but its fields are not read.
	maxHeaderBytes = 1 << 20
	// maxParams bounds the parameters of one Content-Type or
	// Content-Disposition field, and maxParamSections the RFC 2231
	// continuations of one parameter.
	maxParams        = 64
	maxParamSections = 100
)

// BodyStructure computes the IMAP BODYSTRUCTURE (RFC 3501 7.4.2, RFC 9051
// 7.5.2) of a message. It reads r once, keeping at most a few kilobytes
// per nesting level in memory, so that the size of a message or of its
// attachments does not matter. Every part carries its extension data, so
// the result serves both BODY and BODYSTRUCTURE.
//
// It differs from imapserver.ExtractBodyStructure, which holds each
// message/rfc822 part in memory once per nesting level, in these ways:
//   - a part without Content-Type is text/plain; charset=us-ascii (RFC 2045
//     5.2), or message/rfc822 inside a multipart/digest (RFC 2046 5.1.5);
//   - a Content-Type that does not parse is text/plain; charset=us-ascii
//     rather than a made-up media type, and a multipart without a boundary
//     is text/plain too;
//   - a multipart with no part gets one empty text/plain part (the grammar
//     needs at least one, and go-imap's writer panics without it);
//   - RFC 2231 parameter continuations (name*0*=...; name*1*=...) are
//     joined into one "name*" parameter that keeps its charset, and a
//     parameter that mime.ParseMediaType refuses does not cost the others;
//   - a message/rfc822 part that cannot be opened (a transfer encoding
//     other than 7bit, 8bit or binary, or too deep) is shown as
//     application/octet-stream, which the grammar allows without an
//     envelope.
func BodyStructure(r io.Reader) (imap.BodyStructure, error) {
	d, err := ParseIMAPData(r)
	if err != nil {
		return nil, err
	}
	return d.BodyStructure, nil
}

// bsParser walks one message.
type bsParser struct {
	parts int
}

// bsCounter counts the bytes and lines that go through it.
type bsCounter struct {
	r     io.Reader
	n     int64
	lines int64
}

func (c *bsCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	c.lines += int64(bytes.Count(p[:n], []byte{'\n'}))
	return n, err
}

// bsReadHeader reads a header up to and including the empty line that
// ends it (or to the end of the input), and returns its fields and its
// size in bytes. Lines that are not fields are skipped rather than making
// the whole header unreadable.
func bsReadHeader(br *bufio.Reader) (textproto.Header, int64, error) {
	var raw bytes.Buffer
	var size int64
	keep := func(b []byte) {
		size += int64(len(b))
		if raw.Len()+len(b) <= maxHeaderBytes {
			raw.Write(b)
		}
	}
	for {
		line, err := br.ReadSlice('\n')
		long := false
		for errors.Is(err, bufio.ErrBufferFull) {
			keep(line)
			long = true
			line, err = br.ReadSlice('\n')
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return textproto.Header{}, size, fmt.Errorf("read header: %w", err)
		}
		if !long && (string(line) == "\r\n" || string(line) == "\n") {
			size += int64(len(line)) // the empty line ends the header
			break
		}
		keep(line)
		if err != nil {
			break // io.EOF: a message with no body
		}
	}
	return bsParseHeader(raw.Bytes()), size, nil
}

// bsParseHeader parses header fields, dropping the lines that are not
// part of a field (no colon, a space in the name, a continuation with
// nothing to continue).
func bsParseHeader(raw []byte) textproto.Header {
	var clean bytes.Buffer
	clean.Grow(len(raw) + 2)
	inField := false
	for len(raw) > 0 {
		end := bytes.IndexByte(raw, '\n')
		var line []byte
		if end < 0 {
			line, raw = raw, nil
		} else {
			line, raw = raw[:end+1], raw[end+1:]
		}
		body := bytes.TrimRight(line, "\r\n")
		switch {
		case len(body) == 0:
			continue
		case body[0] == ' ' || body[0] == '\t':
			if !inField {
				continue
			}
		default:
			colon := bytes.IndexByte(body, ':')
			if colon <= 0 || bytes.ContainsAny(body[:colon], " \t") {
				inField = false
				continue
			}
			inField = true
		}
		clean.Write(body)
		clean.WriteString("\r\n")
	}
	clean.WriteString("\r\n")
	h, err := textproto.ReadHeader(bufio.NewReader(&clean))
	if err != nil {
		return textproto.Header{}
	}
	return h
}

// part computes the structure of one part whose header was read; it
// reads body to its end.
func (p *bsParser) part(h textproto.Header, body io.Reader, depth int, parent string) imap.BodyStructure {
	p.parts++
	typ, sub, params := bsContentType(h, parent)
	enc := bsEncoding(h)
	if typ == "multipart" {
		if boundary := params["boundary"]; boundary != "" && depth < maxStructureDepth {
			return p.multipart(h, body, depth, sub, params)
		}
		if params["boundary"] == "" {
			typ, sub, params = "text", "plain", map[string]string{"charset": "us-ascii"}
		} else {
			typ, sub = "application", "octet-stream"
		}
	}
	bs := &imap.BodyStructureSinglePart{
		Type:        typ,
		Subtype:     sub,
		Params:      params,
		ID:          bsField(h, "Content-Id"),
		Description: bsField(h, "Content-Description"),
		Encoding:    enc,
		Extended: &imap.BodyStructureSinglePartExt{
			Disposition: bsDisposition(h),
			Language:    bsLanguage(h),
			Location:    bsField(h, "Content-Location"),
		},
	}
	c := &bsCounter{r: body}
	isMessage := typ == "message" && (sub == "rfc822" || sub == "global")
	switch {
	case isMessage && bsIdentityEncoding(enc) && depth < maxStructureDepth && p.parts < maxStructureParts:
		br := bufio.NewReader(c)
		ih, _, err := bsReadHeader(br)
		var inner imap.BodyStructure
		if err == nil {
			inner = p.part(ih, br, depth+1, "")
		} else {
			inner = bsEmptyText()
		}
		io.Copy(io.Discard, br)
		bs.MessageRFC822 = &imap.BodyStructureMessageRFC822{
			Envelope:      Envelope(ih),
			BodyStructure: inner,
			NumLines:      c.lines,
		}
	case isMessage:
		io.Copy(io.Discard, c)
		bs.Type, bs.Subtype = "application", "octet-stream"
	default:
		io.Copy(io.Discard, c)
	}
	bs.Size = uint32(min(c.n, math.MaxUint32))
	if bs.Type == "text" {
		bs.Text = &imap.BodyStructureText{NumLines: c.lines}
	}
	return bs
}

func (p *bsParser) multipart(h textproto.Header, body io.Reader, depth int, sub string, params map[string]string) imap.BodyStructure {
	bs := &imap.BodyStructureMultiPart{
		Subtype: sub,
		Extended: &imap.BodyStructureMultiPartExt{
			Params:      params,
			Disposition: bsDisposition(h),
			Language:    bsLanguage(h),
			Location:    bsField(h, "Content-Location"),
		},
	}
	mr := textproto.NewMultipartReader(body, params["boundary"])
	for p.parts < maxStructureParts {
		part, err := mr.NextPart()
		if err != nil {
			break
		}
		bs.Children = append(bs.Children, p.part(part.Header, part, depth+1, "multipart/"+sub))
	}
	if len(bs.Children) == 0 {
		bs.Children = append(bs.Children, bsEmptyText())
	}
	return bs
}

// bsEmptyText stands in for the part a multipart must have.
func bsEmptyText() *imap.BodyStructureSinglePart {
	return &imap.BodyStructureSinglePart{
		Type:     "text",
		Subtype:  "plain",
		Params:   map[string]string{"charset": "us-ascii"},
		Encoding: "7bit",
		Text:     &imap.BodyStructureText{},
		Extended: &imap.BodyStructureSinglePartExt{},
	}
}

// bsIdentityEncoding reports whether a part's content is its own encoding,
// so that an encapsulated message can be read from it.
func bsIdentityEncoding(enc string) bool {
	switch enc {
	case "", "7bit", "8bit", "binary":
		return true
	}
	return false
}

// bsField is a header field as BODYSTRUCTURE shows it: unfolded and
// trimmed, encoded words left for the client.
func bsField(h textproto.Header, key string) string {
	return strings.TrimSpace(envUnfold(h.Get(key)))
}

// bsContentType reads a part's media type and parameters, with the
// defaults of RFC 2045 5.2 and RFC 2046 5.1.5.
func bsContentType(h textproto.Header, parent string) (typ, sub string, params map[string]string) {
	v := bsField(h, "Content-Type")
	if v == "" {
		if parent == "multipart/digest" {
			return "message", "rfc822", nil
		}
		return "text", "plain", map[string]string{"charset": "us-ascii"}
	}
	media, rest, _ := strings.Cut(v, ";")
	media = strings.ToLower(strings.Join(strings.Fields(envStripComments(media)), ""))
	typ, sub, ok := strings.Cut(media, "/")
	if !ok || !bsIsToken(typ) || !bsIsToken(sub) {
		return "text", "plain", map[string]string{"charset": "us-ascii"}
	}
	return typ, sub, bsParams(rest)
}

func bsEncoding(h textproto.Header) string {
	f := strings.Fields(envStripComments(h.Get("Content-Transfer-Encoding")))
	if len(f) == 0 {
		return ""
	}
	return strings.ToLower(f[0])
}

func bsDisposition(h textproto.Header) *imap.BodyStructureDisposition {
	v := bsField(h, "Content-Disposition")
	if v == "" {
		return nil
	}
	value, rest, _ := strings.Cut(v, ";")
	value = strings.ToLower(strings.TrimSpace(envStripComments(value)))
	if !bsIsToken(value) {
		return nil
	}
	return &imap.BodyStructureDisposition{Value: value, Params: bsParams(rest)}
}

func bsLanguage(h textproto.Header) []string {
	var out []string
	for _, l := range strings.Split(envStripComments(bsField(h, "Content-Language")), ",") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// bsIsToken reports whether s is a MIME token (RFC 2045 5.1).
func bsIsToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?=`, c) >= 0 {
			return false
		}
	}
	return true
}

// bsParams parses the parameters of a Content-Type or
// Content-Disposition field (what follows the first ";") leniently: a
// malformed parameter is skipped, not the whole list. Names are lower
// case. RFC 2231 continuations are joined: into "name" when no section is
// charset-encoded, else into "name*" whose value keeps the
// "charset'language'" prefix and the percent-encoding, for the client to
// decode as RFC 2231 says. Values are otherwise as written (encoded words
// included).
func bsParams(s string) map[string]string {
	type section struct {
		n     int
		ext   bool
		value string
	}
	var order []string
	plain := map[string]string{}
	sections := map[string][]section{}
	count := 0
	for i := 0; i < len(s) && count < maxParams; {
		for i < len(s) && (s[i] == ';' || s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n') {
			i++
		}
		start := i
		for i < len(s) && s[i] != '=' && s[i] != ';' {
			i++
		}
		name := strings.ToLower(strings.TrimSpace(s[start:i]))
		if i >= len(s) || s[i] != '=' {
			continue // no value: skip to the next ';'
		}
		i++
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
		var value string
		if i < len(s) && s[i] == '"' {
			var b strings.Builder
			for i++; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				b.WriteByte(s[i])
			}
			i++ // the closing quote, or past the end
			value = b.String()
		} else {
			start := i
			for i < len(s) && s[i] != ';' {
				i++
			}
			value = strings.TrimSpace(s[start:i])
		}
		if name == "" || strings.ContainsAny(name, " \t\"") {
			continue
		}
		count++
		base, ext := name, false
		if strings.HasSuffix(base, "*") {
			base, ext = strings.TrimSuffix(base, "*"), true
		}
		n := -1
		if j := strings.LastIndexByte(base, '*'); j >= 0 {
			if k, err := strconv.Atoi(base[j+1:]); err == nil && k >= 0 && k < maxParamSections {
				base, n = base[:j], k
			}
		}
		if base == "" {
			continue
		}
		if _, seen := plain[base]; !seen && sections[base] == nil {
			order = append(order, base)
		}
		switch {
		case n < 0 && !ext:
			if _, dup := plain[base]; !dup {
				plain[base] = value
			}
		case n < 0:
			sections[base] = append(sections[base], section{n: 0, ext: true, value: value})
		default:
			sections[base] = append(sections[base], section{n: n, ext: ext, value: value})
		}
	}
	if len(order) == 0 {
		return nil
	}
	out := make(map[string]string, len(order))
	for _, name := range order {
		if v, ok := plain[name]; ok {
			out[name] = v
		}
		secs := sections[name]
		if len(secs) == 0 {
			continue
		}
		sort.SliceStable(secs, func(a, b int) bool { return secs[a].n < secs[b].n })
		anyExt := false
		var joined []section
		for k, sec := range secs {
			if sec.n != k {
				break // a gap or a duplicate ends the value
			}
			joined = append(joined, sec)
			anyExt = anyExt || sec.ext
		}
		if len(joined) == 0 {
			continue
		}
		var b strings.Builder
		if anyExt && !joined[0].ext {
			b.WriteString("''") // no charset given: RFC 2231 allows both parts empty
		}
		for _, sec := range joined {
			if anyExt && !sec.ext {
				b.WriteString(bsPercentEncode(sec.value))
			} else {
				b.WriteString(sec.value)
			}
		}
		if anyExt {
			out[name+"*"] = b.String()
		} else if _, ok := out[name]; !ok {
			out[name] = b.String()
		}
	}
	return out
}

// bsPercentEncode encodes what RFC 2231 7 does not allow as attribute-char.
func bsPercentEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c > ' ' && c < 0x7f && strings.IndexByte(`*'%()<>@,;:\"/[]?=`, c) < 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}
