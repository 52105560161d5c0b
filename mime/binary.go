package mime

import (
	"bufio"
	"bytes"
	"fmt"
	"io"

	"github.com/emersion/go-message/textproto"
)

// BinarySection is the content of a message part as IMAP BINARY gives it
// (RFC 3516 4.2): the part's octets with its Content-Transfer-Encoding
// undone and nothing else changed (no charset conversion, unlike
// go-message's entity reader, which imapserver.ExtractBinarySection
// uses). A <partial> of BINARY counts on these octets. An empty part
// number is the whole message: its header as it is, then its body,
// decoded unless it is multipart. A part that does not exist gives
// ok false (an empty answer, RFC 3501 6.4.5). An unknown encoding leaves
// the octets as they are; the caller answers [UNKNOWN-CTE] before asking.
// Malformed content (bad base64, an unterminated multipart) ends the data
// where it goes wrong; only a read error fails.
func BinarySection(r io.Reader, part []int) (data []byte, ok bool, err error) {
	er := &errReader{r: r}
	br := bufio.NewReader(er)
	h, _, err := bsReadHeader(br)
	if err == nil {
		err = er.err
	}
	if err != nil {
		return nil, false, fmt.Errorf("mime: binary section %v: %w", part, err)
	}
	data, ok = binarySection(h, br, part)
	if er.err != nil {
		return nil, false, fmt.Errorf("mime: binary section %v: %w", part, er.err)
	}
	return data, ok, nil
}

func binarySection(h textproto.Header, br *bufio.Reader, part []int) ([]byte, bool) {
	var buf bytes.Buffer
	if len(part) == 0 {
		textproto.WriteHeader(&buf, h) // a bytes.Buffer takes every write
		typ, _, _ := bsContentType(h, "")
		body := io.Reader(br)
		if typ != "multipart" {
			body = decodedBody(h, br)
		}
		io.Copy(&buf, body) // a decoding error ends the data there
		return buf.Bytes(), true
	}
	ph, body, found := findPart(h, br, part)
	if !found {
		return nil, false
	}
	io.Copy(&buf, decodedBody(ph, body)) // a decoding error ends the data there
	return buf.Bytes(), true
}

// findPart walks to a part by its number (RFC 3501 6.4.5 section-part):
// each number picks a child of a multipart; a message/rfc822 part that
// is not the last named opens onto its message, whose body the next
// number indexes (its children, or 1 for a body that is not multipart);
// 1 names the body of a part that is not multipart.
func findPart(h textproto.Header, body io.Reader, part []int) (textproto.Header, io.Reader, bool) {
	if len(part) > maxStructureDepth {
		return h, nil, false
	}
	parent := ""
	for i, n := range part {
		typ, sub, params := bsContentType(h, parent)
		if i > 0 && typ == "message" && (sub == "rfc822" || sub == "global") {
			br := bufio.NewReader(decodedBody(h, body))
			ih, _, err := bsReadHeader(br)
			if err != nil {
				return h, nil, false
			}
			h, body, parent = ih, br, ""
			typ, sub, params = bsContentType(h, "")
		}
		if typ != "multipart" || params["boundary"] == "" {
			if n != 1 {
				return h, nil, false
			}
			continue
		}
		if n < 1 || n > maxStructureParts {
			return h, nil, false
		}
		mr := textproto.NewMultipartReader(body, params["boundary"])
		found := false
		for k := 1; k <= n; k++ {
			p, err := mr.NextPart()
			if err != nil {
				return h, nil, false
			}
			if k == n {
				h, body, parent, found = p.Header, p, "multipart/"+sub, true
			}
		}
		if !found {
			return h, nil, false
		}
	}
	return h, body, true
}
