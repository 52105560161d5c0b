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
	lf := bytes.IndexByte(b, '\n')
	limit := len(b)
	if lf >= 0 {
		limit = lf
	}
	if cr := bytes.IndexByte(b[:limit], '\r'); cr >= 0 && cr+1 < limit {
		return cr, cr + 1 // a bare CR inside the line
	}
	switch {
	case lf < 0:
		if len(b) > 0 && b[len(b)-1] == '\r' {
			return len(b) - 1, len(b) // a bare CR at the very end
		}
		return len(b), len(b)
	case lf > 0 && b[lf-1] == '\r':
		return lf - 1, lf + 1
	default:
		return lf, lf + 1
	}
}
