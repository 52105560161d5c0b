package mime

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/emersion/go-message/textproto"
)

// ErrMalformedHeader is a header section that does not parse as RFC 5322
// 2.2 header fields.
var ErrMalformedHeader = errors.New("mime: malformed header")

// ReadHeader parses the header section at the start of msg (RFC 5322 2.2)
// with go-message. A message without a blank line is all header; one that
// starts with a blank line has an empty header. The error wraps
// ErrMalformedHeader and does not quote the message.
func ReadHeader(msg []byte) (textproto.Header, error) {
	hr := headerReaders.Get().(*headerReader)
	hr.src.Reset(msg)
	hr.br.Reset(&hr.src)
	h, err := textproto.ReadHeader(hr.br)
	// go-message copies what it keeps: the readers hold nothing of msg
	// once reset to nothing.
	hr.src.Reset(nil)
	hr.br.Reset(&hr.src)
	headerReaders.Put(hr)
	if err != nil {
		return textproto.Header{}, fmt.Errorf("%w: %s", ErrMalformedHeader, headerProblem(err))
	}
	return h, nil
}

// headerReader is the reader ReadHeader parses through: pooled, so that
// a message's header costs no new 4 KiB bufio buffer (ingest parses one
// per message received).
type headerReader struct {
	src bytes.Reader
	br  *bufio.Reader
}

var headerReaders = sync.Pool{New: func() any {
	hr := &headerReader{}
	hr.br = bufio.NewReader(&hr.src)
	return hr
}}

// headerProblem names what go-message refused without the text of the
// line, which is the sender's data and may be long.
func headerProblem(err error) string {
	msg := err.Error()
	for _, p := range []string{
		"malformed MIME header initial line",
		"malformed MIME header line",
		"malformed MIME header key",
	} {
		if strings.Contains(msg, p) {
			return p
		}
	}
	const max = 80
	if len(msg) > max {
		msg = msg[:max] + "..."
	}
	return msg
}

// CountReceived is the number of Received fields, the hops a message has
// made; RFC 5321 6.3 uses it to detect mail loops.
func CountReceived(h textproto.Header) int {
	return h.FieldsByKey("Received").Len()
}
