package main

// The letter's content in the demo: its MIME structure drawn part by
// part (RFC 2045, RFC 2046), each part's body as it travels (quoted-
// printable, base64) next to its decoded text, and the Subject decoded
// from its encoded words (RFC 2047). Parts are cut after a few lines;
// -show-body prints every part in full.

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	stdmime "mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/textproto"
	"strings"
)

const (
	// maxPartLines is how many lines of a part the demo shows unless
	// -show-body is given.
	maxPartLines = 6
	// maxMIMEParts and maxMIMEDepth bound the drawing of a message.
	maxMIMEParts = 50
	maxMIMEDepth = 8
)

// drawMIME notes msg's Subject, decoded, and its MIME structure.
func (d *demo) drawMIME(msg []byte) error {
	br := bufio.NewReader(bytes.NewReader(msg))
	h, err := textproto.NewReader(br).ReadMIMEHeader()
	if err != nil {
		return fmt.Errorf("the letter's header: %w", err)
	}
	if raw := h.Get("Subject"); raw != "" {
		dec := new(stdmime.WordDecoder)
		if text, err := dec.DecodeHeader(raw); err == nil && text != raw {
			d.out.note("Subject as sent:  %s", raw)
			d.out.note("Subject decoded:  %s   (encoded words, RFC 2047: =?charset?Q or B?text?=, since a header holds ASCII only)", text)
		}
	}
	how := "each part cut after a few lines; -show-body prints them in full"
	if d.showBody {
		how = "every part in full (-show-body)"
	}
	d.out.note("The letter's MIME structure (RFC 2045, 2046), %s:", how)
	n := 0
	return d.drawPart(h, br, "", 0, &n)
}

// drawPart notes one entity: a multipart's boundary and its parts in
// turn, or a leaf's type, encoding, body as sent and decoded text.
func (d *demo) drawPart(h textproto.MIMEHeader, body io.Reader, num string, depth int, n *int) error {
	*n++
	if *n > maxMIMEParts || depth > maxMIMEDepth {
		return errors.New("too many MIME parts to draw")
	}
	indent := strings.Repeat("  ", depth)
	ct := h.Get("Content-Type")
	mt, params, err := stdmime.ParseMediaType(ct)
	if ct == "" || err != nil {
		mt, params = "text/plain", map[string]string{"charset": "us-ascii"}
	}
	name := "part " + num
	if num == "" {
		name = "the message"
	}
	if strings.HasPrefix(mt, "multipart/") {
		boundary := params["boundary"]
		d.out.note("%s%s: %s, its parts separated by lines \"--%s\"", indent, name, mt, boundary)
		mr := multipart.NewReader(body, boundary)
		for i := 1; ; i++ {
			p, err := mr.NextRawPart()
			if err == io.EOF {
				d.out.note("%s--%s--   (the closing boundary)", indent, boundary)
				return nil
			}
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			d.out.note("%s--%s", indent, boundary)
			sub := fmt.Sprint(i)
			if num != "" {
				sub = num + "." + sub
			}
			if err := d.drawPart(textproto.MIMEHeader(p.Header), p, sub, depth+1, n); err != nil {
				return err
			}
		}
	}
	raw, err := io.ReadAll(io.LimitReader(body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	cte := strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding")))
	if cte == "" {
		cte = "7bit"
	}
	desc := mt
	if cs := params["charset"]; cs != "" {
		desc += "; charset=" + cs
	}
	if _, dp, err := stdmime.ParseMediaType(h.Get("Content-Disposition")); err == nil && dp["filename"] != "" {
		desc += ", file " + dp["filename"]
	}
	d.out.note("%s%s: %s, Content-Transfer-Encoding: %s, %d bytes as sent", indent, name, desc, cte, len(raw))
	d.partLines(indent+"  as sent | ", string(raw))
	var decoded []byte
	switch cte {
	case "quoted-printable":
		decoded, err = io.ReadAll(quotedprintable.NewReader(bytes.NewReader(raw)))
	case "base64":
		// The decoder skips the line breaks (RFC 2045 6.8).
		decoded, err = io.ReadAll(base64.NewDecoder(base64.StdEncoding, bytes.NewReader(raw)))
	default:
		return nil // 7bit, 8bit, binary: sent as it is
	}
	if err != nil {
		return fmt.Errorf("%s: decode %s: %w", name, cte, err)
	}
	if !strings.HasPrefix(mt, "text/") {
		d.out.note("%s  decoded: %d bytes of %s", indent, len(decoded), mt)
		return nil
	}
	d.partLines(indent+"  decoded | ", string(decoded))
	return nil
}

// partLines notes text's lines after prefix, cut after maxPartLines
// unless -show-body.
func (d *demo) partLines(prefix, text string) {
	lines := strings.Split(strings.TrimRight(strings.ReplaceAll(text, "\r\n", "\n"), "\n"), "\n")
	shown := lines
	if !d.showBody && len(lines) > maxPartLines {
		shown = lines[:maxPartLines]
	}
	for _, l := range shown {
		d.out.note("%s%s", prefix, l)
	}
	if rest := len(lines) - len(shown); rest > 0 {
		d.out.note("%s[... %d more lines]", prefix, rest)
	}
}
