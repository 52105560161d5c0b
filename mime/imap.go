package mime

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-imap/v2"
)

// IMAPData is what IMAP's FETCH needs to know of a message that never
// changes: its ENVELOPE, its BODYSTRUCTURE and where its body starts.
// Stored bodies are immutable, so it is computed once per body (with
// ParseIMAPData) and kept, as MarshalBinary's bytes.
type IMAPData struct {
	Envelope      *imap.Envelope
	BodyStructure imap.BodyStructure
	// HeaderSize is the length of the header including the empty line
	// that ends it: BODY[TEXT] starts there.
	HeaderSize int64
	// Size is the length of the whole message.
	Size int64
}

// ParseIMAPData reads a message (RFC 5322, CRLF or LF line ends) and
// computes its IMAPData; see Envelope and BodyStructure for what they
// correct. A malformed message is no error: it gets the structure a
// lenient reader sees. Only a read error fails. Every string in the result
// is UTF-8: raw 8-bit header text that is not is read as Latin-1.
func ParseIMAPData(r io.Reader) (*IMAPData, error) {
	c := &bsCounter{r: r}
	br := bufio.NewReader(c)
	h, hsize, err := bsReadHeader(br)
	if err != nil {
		return nil, fmt.Errorf("mime: imap data: %w", err)
	}
	var p bsParser
	er := &errReader{r: br}
	bs := p.part(h, er, 0, "")
	if _, err := io.Copy(io.Discard, er); err != nil || er.err != nil {
		return nil, fmt.Errorf("mime: imap data: %w", errors.Join(err, er.err))
	}
	d := &IMAPData{Envelope: Envelope(h), BodyStructure: bs, HeaderSize: hsize, Size: c.n}
	fixEnvelope(d.Envelope)
	fixStructure(d.BodyStructure)
	return d, nil
}

// fixUTF8 makes a header-derived string valid UTF-8. Raw 8-bit header
// text that is not UTF-8 (RFC 6532) is nearly always Latin-1 or
// Windows-1252, so it is read as Latin-1: letters survive, and what IMAP
// sends (and what is stored) is always UTF-8.
func fixUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	r := make([]rune, 0, len(s))
	for i := 0; i < len(s); i++ {
		r = append(r, rune(s[i]))
	}
	return string(r)
}

func fixAddresses(l []imap.Address) {
	for i := range l {
		l[i].Name, l[i].Mailbox, l[i].Host = fixUTF8(l[i].Name), fixUTF8(l[i].Mailbox), fixUTF8(l[i].Host)
	}
}

func fixEnvelope(e *imap.Envelope) {
	if e == nil {
		return
	}
	e.Subject, e.MessageID = fixUTF8(e.Subject), fixUTF8(e.MessageID)
	for i := range e.InReplyTo {
		e.InReplyTo[i] = fixUTF8(e.InReplyTo[i])
	}
	for _, l := range [][]imap.Address{e.From, e.Sender, e.ReplyTo, e.To, e.Cc, e.Bcc} {
		fixAddresses(l)
	}
}

func fixParams(p map[string]string) map[string]string {
	if p == nil {
		return nil
	}
	out := make(map[string]string, len(p))
	for k, v := range p {
		out[fixUTF8(k)] = fixUTF8(v)
	}
	return out
}

func fixDisposition(d *imap.BodyStructureDisposition) {
	if d != nil {
		d.Value, d.Params = fixUTF8(d.Value), fixParams(d.Params)
	}
}

func fixStrings(l []string) {
	for i := range l {
		l[i] = fixUTF8(l[i])
	}
}

func fixStructure(bs imap.BodyStructure) {
	switch bs := bs.(type) {
	case *imap.BodyStructureMultiPart:
		bs.Subtype = fixUTF8(bs.Subtype)
		for _, c := range bs.Children {
			fixStructure(c)
		}
		if x := bs.Extended; x != nil {
			x.Params, x.Location = fixParams(x.Params), fixUTF8(x.Location)
			fixDisposition(x.Disposition)
			fixStrings(x.Language)
		}
	case *imap.BodyStructureSinglePart:
		bs.Type, bs.Subtype, bs.ID, bs.Description, bs.Encoding = fixUTF8(bs.Type), fixUTF8(bs.Subtype), fixUTF8(bs.ID), fixUTF8(bs.Description), fixUTF8(bs.Encoding)
		bs.Params = fixParams(bs.Params)
		if m := bs.MessageRFC822; m != nil {
			fixEnvelope(m.Envelope)
			fixStructure(m.BodyStructure)
		}
		if x := bs.Extended; x != nil {
			x.Location = fixUTF8(x.Location)
			fixDisposition(x.Disposition)
			fixStrings(x.Language)
		}
	}
}

// errReader turns a read error into the end of the input for the
// structure walk (which would take a truncated part for a short one) and
// keeps it for ParseIMAPData to report.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	if e.err != nil {
		return 0, io.EOF
	}
	n, err := e.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		e.err = err
		return n, io.EOF
	}
	return n, err
}

// imapDataVersion names the encoding of MarshalBinary; data of another
// version is recomputed.
const imapDataVersion = 1

// ErrIMAPDataVersion is returned by UnmarshalBinary for data written by
// another version of this package: compute it again.
var ErrIMAPDataVersion = errors.New("mime: imap data of another version")

type imapDataJSON struct {
	V          int       `json:"v"`
	Envelope   *envJSON  `json:"e"`
	Body       *bodyJSON `json:"b"`
	HeaderSize int64     `json:"h"`
	Size       int64     `json:"s"`
}

type envJSON struct {
	Date      time.Time      `json:"d,omitzero"`
	Subject   string         `json:"s,omitempty"`
	From      []imap.Address `json:"f,omitempty"`
	Sender    []imap.Address `json:"se,omitempty"`
	ReplyTo   []imap.Address `json:"r,omitempty"`
	To        []imap.Address `json:"t,omitempty"`
	Cc        []imap.Address `json:"c,omitempty"`
	Bcc       []imap.Address `json:"b,omitempty"`
	InReplyTo []string       `json:"i,omitempty"`
	MessageID string         `json:"m,omitempty"`
}

type bodyJSON struct {
	// Multipart
	Children []*bodyJSON `json:"c,omitempty"`
	// Single part
	Type        string            `json:"t,omitempty"`
	Subtype     string            `json:"st"`
	Params      map[string]string `json:"p,omitempty"`
	ID          string            `json:"id,omitempty"`
	Description string            `json:"de,omitempty"`
	Encoding    string            `json:"en,omitempty"`
	Size        uint32            `json:"sz,omitempty"`
	Text        bool              `json:"tx,omitempty"`
	Lines       int64             `json:"l,omitempty"`
	MsgEnvelope *envJSON          `json:"me,omitempty"`
	MsgBody     *bodyJSON         `json:"mb,omitempty"`
	// Extension data of both kinds
	Disposition *imap.BodyStructureDisposition `json:"di,omitempty"`
	Language    []string                       `json:"la,omitempty"`
	Location    string                         `json:"lo,omitempty"`
}

// MarshalBinary encodes d for storage (compact JSON with a version).
func (d *IMAPData) MarshalBinary() ([]byte, error) {
	j := imapDataJSON{V: imapDataVersion, Envelope: toEnvJSON(d.Envelope), HeaderSize: d.HeaderSize, Size: d.Size}
	b, err := toBodyJSON(d.BodyStructure, 0)
	if err != nil {
		return nil, err
	}
	j.Body = b
	return json.Marshal(j)
}

// UnmarshalBinary decodes what MarshalBinary encoded.
func (d *IMAPData) UnmarshalBinary(data []byte) error {
	var j imapDataJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return fmt.Errorf("mime: decode imap data: %w", err)
	}
	if j.V != imapDataVersion {
		return ErrIMAPDataVersion
	}
	bs, err := fromBodyJSON(j.Body, 0)
	if err != nil {
		return err
	}
	*d = IMAPData{Envelope: fromEnvJSON(j.Envelope), BodyStructure: bs, HeaderSize: j.HeaderSize, Size: j.Size}
	return nil
}

func toEnvJSON(e *imap.Envelope) *envJSON {
	if e == nil {
		return nil
	}
	return &envJSON{e.Date, e.Subject, e.From, e.Sender, e.ReplyTo, e.To, e.Cc, e.Bcc, e.InReplyTo, e.MessageID}
}

func fromEnvJSON(e *envJSON) *imap.Envelope {
	if e == nil {
		return &imap.Envelope{}
	}
	return &imap.Envelope{Date: e.Date, Subject: e.Subject, From: e.From, Sender: e.Sender, ReplyTo: e.ReplyTo,
		To: e.To, Cc: e.Cc, Bcc: e.Bcc, InReplyTo: e.InReplyTo, MessageID: e.MessageID}
}

func toBodyJSON(bs imap.BodyStructure, depth int) (*bodyJSON, error) {
	if depth > 2*maxStructureDepth+2 {
		return nil, errors.New("mime: body structure too deep to encode")
	}
	switch bs := bs.(type) {
	case *imap.BodyStructureMultiPart:
		j := &bodyJSON{Subtype: bs.Subtype}
		for _, c := range bs.Children {
			cj, err := toBodyJSON(c, depth+1)
			if err != nil {
				return nil, err
			}
			j.Children = append(j.Children, cj)
		}
		if bs.Extended != nil {
			j.Params, j.Disposition, j.Language, j.Location = bs.Extended.Params, bs.Extended.Disposition, bs.Extended.Language, bs.Extended.Location
		}
		return j, nil
	case *imap.BodyStructureSinglePart:
		j := &bodyJSON{Type: bs.Type, Subtype: bs.Subtype, Params: bs.Params, ID: bs.ID, Description: bs.Description,
			Encoding: bs.Encoding, Size: bs.Size}
		if bs.Text != nil {
			j.Text, j.Lines = true, bs.Text.NumLines
		}
		if m := bs.MessageRFC822; m != nil {
			j.Lines = m.NumLines
			j.MsgEnvelope = toEnvJSON(m.Envelope)
			inner, err := toBodyJSON(m.BodyStructure, depth+1)
			if err != nil {
				return nil, err
			}
			j.MsgBody = inner
		}
		if bs.Extended != nil {
			j.Disposition, j.Language, j.Location = bs.Extended.Disposition, bs.Extended.Language, bs.Extended.Location
		}
		return j, nil
	}
	return nil, fmt.Errorf("mime: unknown body structure %T", bs)
}

func fromBodyJSON(j *bodyJSON, depth int) (imap.BodyStructure, error) {
	if j == nil || depth > 2*maxStructureDepth+2 {
		return nil, errors.New("mime: malformed imap data")
	}
	if j.Type == "" {
		bs := &imap.BodyStructureMultiPart{Subtype: j.Subtype, Extended: &imap.BodyStructureMultiPartExt{
			Params: j.Params, Disposition: j.Disposition, Language: j.Language, Location: j.Location}}
		for _, cj := range j.Children {
			c, err := fromBodyJSON(cj, depth+1)
			if err != nil {
				return nil, err
			}
			bs.Children = append(bs.Children, c)
		}
		if len(bs.Children) == 0 {
			return nil, errors.New("mime: malformed imap data: multipart without parts")
		}
		return bs, nil
	}
	bs := &imap.BodyStructureSinglePart{Type: j.Type, Subtype: j.Subtype, Params: j.Params, ID: j.ID,
		Description: j.Description, Encoding: j.Encoding, Size: j.Size,
		Extended: &imap.BodyStructureSinglePartExt{Disposition: j.Disposition, Language: j.Language, Location: j.Location}}
	if j.Text {
		bs.Text = &imap.BodyStructureText{NumLines: j.Lines}
	}
	if j.MsgBody != nil {
		inner, err := fromBodyJSON(j.MsgBody, depth+1)
		if err != nil {
			return nil, err
		}
		bs.MessageRFC822 = &imap.BodyStructureMessageRFC822{Envelope: fromEnvJSON(j.MsgEnvelope), BodyStructure: inner, NumLines: j.Lines}
	}
	return bs, nil
}
