package smtpd

import (
	"bytes"
	"context"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/postern/postern/mailstore/limits"
)

// maxTraceLine bounds a traced line; go-smtp refuses command lines over
// 2000 octets anyway.
const maxTraceLine = 4096

// tracer logs the protocol lines of one connection ("C" from the client,
// "S" from the server). It is go-smtp's Debug writer, which gets a copy of
// every read and write in plaintext, also under STARTTLS; conn tells which
// direction a copy is. AUTH data is redacted, and message data (DATA until
// the final dot, BDAT chunks) is logged as its size only.
type tracer struct {
	// log is the session's logger's handler: emit builds each record
	// itself, with no caller PC (no log handler of Postern's shows the
	// source) and no boxing of the attributes.
	log      slog.Handler
	c        *conn
	greeting string

	in, out  []byte // partial lines
	greeted  bool
	auth     bool // between AUTH and its final reply: client lines are secret
	mode     int
	bdatLeft int64
	dataSize int64
	bol      bool // in DATA: at the start of a line (after CRLF)
	prevCR   bool // in DATA: the last octet was CR
	dotLine  int  // in DATA: progress through "." CR LF at the start of a line
}

const (
	traceCommands = iota
	traceData     // after 354, until CRLF.CRLF
	traceBDAT     // inside a BDAT chunk
)

func newTracer(log *slog.Logger, c *conn, hostname string) *tracer {
	return &tracer{log: log.Handler(), c: c, greeting: "220 " + hostname + " ESMTP Postern"}
}

func (t *tracer) Write(p []byte) (int, error) {
	if t.c.wroteSinceLast() {
		t.server(p)
	} else {
		t.client(p)
	}
	return len(p), nil
}

func (t *tracer) server(p []byte) {
	t.out = appendLines(t.out, p, func(line string) {
		if !t.greeted {
			t.greeted = true
			if strings.HasPrefix(line, "220 ") {
				line = t.greeting
			}
		}
		switch {
		case t.auth && !isReplyLine(line):
			line = "[redacted]" // a client's AUTH line taken for the server's
		case strings.HasPrefix(line, "334"):
			// an AUTH challenge: the exchange goes on
		case strings.HasPrefix(line, "354"):
			t.auth = false
			t.mode, t.dataSize, t.dotLine = traceData, 0, 0
			t.bol, t.prevCR = true, false
		default:
			t.auth = false
		}
		t.emit("S", line)
	})
}

func (t *tracer) client(p []byte) {
	for len(p) > 0 {
		switch t.mode {
		case traceData:
			p = t.scanData(p)
		case traceBDAT:
			n := int64(len(p))
			if n > t.bdatLeft {
				n = t.bdatLeft
			}
			t.bdatLeft -= n
			t.dataSize += n
			p = p[n:]
			if t.bdatLeft == 0 {
				t.mode = traceCommands
				t.emit("C", "["+strconv.FormatInt(t.dataSize, 10)+" octets of BDAT chunk]")
			}
		default:
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				t.in = appendBounded(t.in, p)
				return
			}
			t.in = appendBounded(t.in, p[:i+1])
			p = p[i+1:]
			line := lineString(t.in)
			t.in = t.in[:0]
			t.command(line)
		}
	}
}

// command traces one client line outside message data.
func (t *tracer) command(line string) {
	f, n := firstFields(line)
	switch {
	case t.auth && !isReplyLine(line):
		line = "[redacted]"
	case n > 0 && strings.EqualFold(f[0], "AUTH"):
		t.auth = true
		switch {
		case n == 1:
			line = f[0]
		case !limits.KnownMechanism(f[1]):
			line = f[0] + " [redacted]" // credentials in the mechanism's place
		case n > 2:
			line = f[0] + " " + f[1] + " [redacted]"
		default:
			line = f[0] + " " + f[1]
		}
	case n > 1 && strings.EqualFold(f[0], "BDAT"):
		// As go-smtp does: a size, optionally LAST, and the chunk follows.
		if n == 2 || n == 3 && strings.EqualFold(f[2], "LAST") {
			if n, err := strconv.ParseUint(f[1], 10, 32); err == nil && n > 0 {
				t.mode, t.bdatLeft, t.dataSize = traceBDAT, int64(n), 0
			}
		}
	}
	t.emit("C", line)
}

// firstFields returns the first three fields of line (as strings.Fields
// splits it, on Unicode white space) and how many fields it has, counting
// no further than four, without allocating.
func firstFields(line string) (f [3]string, n int) {
	for n < 4 {
		line = strings.TrimLeftFunc(line, unicode.IsSpace)
		if line == "" {
			break
		}
		end := strings.IndexFunc(line, unicode.IsSpace)
		if end < 0 {
			end = len(line)
		}
		if n < len(f) {
			f[n] = line[:end]
		}
		n++
		line = line[end:]
	}
	return f, n
}

// scanData counts message data up to the line "." that ends it, which it
// consumes, and returns what follows. As in go-smtp, only a dot after CRLF
// starts that line. Only a dot can begin the end, so the octets between
// dots are skipped with IndexByte, keeping just the line-end state their
// last two octets leave (step is the rule for one octet).
func (t *tracer) scanData(p []byte) []byte {
	for i := 0; i < len(p); {
		if t.dotLine == 0 {
			j := bytes.IndexByte(p[i:], '.')
			if j < 0 {
				j = len(p) - i
			}
			if j > 0 {
				t.skip(p[i : i+j])
				i += j
				continue
			}
		}
		if t.step(p[i]) {
			return p[i+1:]
		}
		i++
	}
	return nil
}

// skip counts seg, which holds no dot while no end line is under way,
// leaving the state step would.
func (t *tracer) skip(seg []byte) {
	t.dataSize += int64(len(seg))
	last := seg[len(seg)-1]
	prevCR := t.prevCR
	if len(seg) > 1 {
		prevCR = seg[len(seg)-2] == '\r'
	}
	t.bol = prevCR && last == '\n'
	t.prevCR = last == '\r'
}

// step takes one octet and reports whether it ended the message data.
func (t *tracer) step(b byte) bool {
	t.dataSize++
	switch {
	case t.dotLine == 1 && b == '\r':
		t.dotLine = 2
	case t.dotLine == 2 && b == '\n':
		t.mode = traceCommands
		t.emit("C", "["+strconv.FormatInt(t.dataSize-3, 10)+" octets of message data]")
		t.emit("C", ".")
		return true
	case t.bol && b == '.':
		t.dotLine = 1
	default:
		t.dotLine = 0
	}
	t.bol = t.prevCR && b == '\n'
	t.prevCR = b == '\r'
	return false
}

// emit logs one traced line: message "trace", dir= and line=, at info.
func (t *tracer) emit(dir, line string) {
	ctx := context.Background()
	if !t.log.Enabled(ctx, slog.LevelInfo) {
		return
	}
	r := slog.NewRecord(time.Now(), slog.LevelInfo, "trace", 0)
	r.AddAttrs(slog.String("dir", dir), slog.String("line", line))
	t.log.Handle(ctx, r) // as slog.Logger does, a handler's error is dropped
}

// appendLines adds p to the partial line buf and calls fn with each
// complete line, without its line end.
func appendLines(buf, p []byte, fn func(string)) []byte {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			return appendBounded(buf, p)
		}
		buf = appendBounded(buf, p[:i+1])
		p = p[i+1:]
		fn(lineString(buf))
		buf = buf[:0]
	}
	return buf
}

// commonLines are lines every session has, given as they are instead of
// allocating a copy each time (the lines go on into the console's ring):
// the client's commands without arguments and go-smtp's fixed replies.
var commonLines = func() map[string]string {
	m := map[string]string{}
	for _, l := range []string{
		"DATA", "QUIT", "RSET", "NOOP", "STARTTLS",
		"354 Go ahead. End your data with <CR><LF>.<CR><LF>",
		"250 2.0.0 OK: queued",
		"250 2.0.0 Session reset",
		"250 2.0.0 I have successfully done nothing",
		"221 2.0.0 Bye",
		"220 2.0.0 Ready to start TLS",
		"235 2.0.0 Authentication succeeded",
		"250 2.0.0 Continue",
	} {
		m[l] = l
	}
	return m
}()

// lineString returns buf without its line end as a string.
func lineString(buf []byte) string {
	buf = bytes.TrimRight(buf, "\r\n")
	if l, ok := commonLines[string(buf)]; ok { // no allocation for the lookup
		return l
	}
	return string(buf)
}

// appendBounded appends up to maxTraceLine octets in all.
func appendBounded(buf, p []byte) []byte {
	if room := maxTraceLine - len(buf); len(p) > room {
		p = p[:max(room, 0)]
	}
	return append(buf, p...)
}

// isReplyLine reports whether line looks like an SMTP reply ("334 ...");
// base64 never has a space or a hyphen, so a client's AUTH line never does.
func isReplyLine(line string) bool {
	return len(line) >= 4 && line[0] >= '2' && line[0] <= '5' &&
		line[1] >= '0' && line[1] <= '9' && line[2] >= '0' && line[2] <= '9' && (line[3] == ' ' || line[3] == '-')
}
