package mime

import (
	"bytes"
	"errors"
	"fmt"
)

// MaxLineLength is the longest line RFC 5322 2.1.1 allows in a message, in
// octets without its CRLF (RFC 5321 4.5.3.1.6: 1000 with the CRLF).
const MaxLineLength = 998

var (
	// ErrNUL is a NUL octet in a message, which RFC 5322 (outside obsolete
	// syntax) and 8BITMIME (RFC 6152) forbid.
	ErrNUL = errors.New("mime: message contains a NUL octet")
	// ErrLineTooLong is a line longer than MaxLineLength.
	ErrLineTooLong = errors.New("mime: line longer than 998 octets")
)

// CanonicalText checks the text of a message and gives every line a CRLF
// end: a bare LF or a bare CR becomes CRLF (RFC 5321 2.3.8 allows CR and
// LF only as a pair). It fails with ErrNUL for a NUL octet and with
// ErrLineTooLong for a line longer than MaxLineLength. A message whose line
// ends are all CRLF already is returned as is, not copied. A last line
// without a line end keeps none.
func CanonicalText(msg []byte) ([]byte, error) {
	if i := bytes.IndexByte(msg, 0); i >= 0 {
		return nil, fmt.Errorf("%w (offset %d)", ErrNUL, i)
	}
	bare := false
	line := 1
	for rest := msg; len(rest) > 0; line++ {
		end, next := textLineEnd(rest)
		if end > MaxLineLength {
			return nil, fmt.Errorf("%w (line %d has %d)", ErrLineTooLong, line, end)
		}
		if next-end == 1 {
			bare = true // LF alone, or CR not before LF
		}
		rest = rest[next:]
	}
	if !bare {
		return msg, nil
	}
	out := make([]byte, 0, len(msg)+len(msg)/32+2)
	for rest := msg; len(rest) > 0; {
		end, next := textLineEnd(rest)
		out = append(out, rest[:end]...)
		if next > end {
			out = append(out, '\r', '\n')
		}
		rest = rest[next:]
	}
	return out, nil
}

// textLineEnd finds the first line of b: its text is b[:end], and the next
// line starts at b[next]. The line end is CRLF, LF or a CR not followed by
// LF; end == next == len(b) when the last line has none.
func textLineEnd(b []byte) (end, next int) {
	// One scan to the first CR or LF: searching for LF first would rescan
	// the rest of the message for every bare CR line.
	i := bytes.IndexAny(b, "\r\n")
	switch {
	case i < 0:
		return len(b), len(b)
	case b[i] == '\n':
		return i, i + 1
	case i+1 < len(b) && b[i+1] == '\n':
		return i, i + 2 // CRLF
	default:
		return i, i + 1 // a bare CR
	}
}
