package imapd

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"sync"
	"time"
)

// clientConn sits between a client's connection (TCP, or TLS over it)
// and imapserver, which reads commands from it and writes responses to
// it. imapserver answers some malformed input with NO [SERVERBUG], hangs
// on a synchronizing literal it will not take, and has fixed timeouts;
// clientConn frames the client's commands itself first and so:
//
//   - reads each command whole (line and literals) before imapserver sees
//     any of it, refusing a line over the command limit (BAD [TOOBIG]) and
//     a literal over its limit (NO [TOOBIG]) before the "+" that would
//     invite it (RFC 7888 4: a non-synchronizing one ends the session);
//     an APPEND message literal is passed through as it arrives;
//   - hands imapserver a command one piece (line or literal) at a time
//     and drops what is left of it once imapserver has answered, so the
//     rest of a failed command is never read as new commands;
//   - sets the read deadlines: LoginTimeout or IdleTimeout for the next
//     command (or IDLE's DONE, or a SASL response), commandTimeout for
//     the rest of it;
//   - watches the responses: counts BAD and failed logins (MaxErrors,
//     then BYE), and turns imapserver's "NO [SERVERBUG] Internal server
//     error", which it gives for input its decoder rejects (invalid
//     mailbox names, lists nested too deep, bad base64...), into BAD: the
//     session's own internal failures use another text (errServerBug);
//   - does STARTTLS itself, then hands the TLS connection to a new
//     imapserver connection (its greeting suppressed), because imapserver
//     would put its TLS layer under this one.
//
// imapserver calls Read from its command goroutine only; Write may come
// from other goroutines (IDLE updates, BYE), under its own lock.
type clientConn struct {
	net.Conn // the client's connection
	srv      *Server
	id       string
	// start is when the session started, for the log (kept across
	// STARTTLS), as time since processStart: 8 bytes, monotonic.
	start time.Duration
	// release gives back the connection's place in the budget.
	release func()

	// r buffers the client's input. It is nil while the connection
	// waits for its next command or IDLE's DONE with nothing buffered:
	// the buffer goes back to readers (see awaitInput).
	r *bufio.Reader

	// Read side, on imapserver's command goroutine.
	segs     [][]byte // pieces of the current command not yet handed over
	stream   int64    // APPEND literal bytes to pass through as they come
	awaitLit int64    // a synchronizing APPEND literal awaits imapserver's "+"
	// dropped holds the last bytes of a line readLine dropped as too
	// long, so that a literal it announces is seen.
	dropped  []byte
	tail     bool // the rest of an APPEND follows its message literal
	handover bool // STARTTLS: Close starts TLS instead of closing
	// first is the byte awaitInput read, when hasFirst (see connInput).
	first    [1]byte
	hasFirst bool
	isTLS    bool
	// implicitTLS: the connection came to the TLS listener ("imaps" in
	// the log; kept across STARTTLS, which stays "imap").
	implicitTLS bool
	// secure: plaintext logins are allowed (see Config.Secure).
	secure bool

	// The fields are ordered so that the struct packs into a smaller
	// allocation: one exists per connection.
	mu       sync.Mutex
	tag, cmd string // the command in progress
	errors   int
	out      outState
	answered bool // its tagged response was written
	cont     bool // a "+" was written since the client last sent data
	authed   bool // logged in
	eof      bool // Read returns io.EOF (BYE sent, or STARTTLS)
	greeting bool // drop the greeting (after STARTTLS)
	closed   bool
}

// processStart is what clientConn.start counts from.
var processStart = time.Now()

// listener names the connection's listener in the log.
func (c *clientConn) listener() string { return listenerName(c.implicitTLS) }

// outState follows the response stream line by line.
type outState struct {
	line    []byte // start of the current line, held until it is classified
	tail    []byte // last bytes of a passed line, for a literal announcement
	literal int64  // literal bytes to pass through
	passing bool   // the current line is being passed through
}

const (
	// commandTimeout bounds the rest of a command once it has started
	// (imapserver: 30 s per command).
	commandTimeout = 30 * time.Second
	// literalTimeout bounds each read of an APPEND literal.
	literalTimeout = time.Minute
	// maxCommandLiterals bounds the literal bytes of one command (other
	// than an APPEND message).
	maxCommandLiterals = 64 << 10
	// maxDiscard bounds the bytes of an over-long line that are read and
	// dropped before the session is ended instead.
	maxDiscard = 16 << 20
	// maxHeldLine bounds a response line held back to be classified.
	maxHeldLine = 8 << 10
	// libInternalError is how imapserver answers an error that is neither
	// an *imap.Error nor a decoder expectation (imapserver/conn.go).
	libInternalError = "NO [SERVERBUG] Internal server error"
)

var errLineTooLong = errors.New("command line too long")

// readBufferSize is the size of a connection's input buffer.
const readBufferSize = 4096

// readers holds the input buffers of connections that are waiting: an idle
// connection holds none of its own (imapserver's are its own).
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufferSize) }}

func newClientConn(srv *Server, raw net.Conn, id string, isTLS, secure bool, release func()) *clientConn {
	return &clientConn{Conn: raw, srv: srv, id: id, isTLS: isTLS, secure: secure, release: release}
}

// reader makes sure the connection has its input buffer.
func (c *clientConn) reader() *bufio.Reader {
	if c.r == nil {
		c.r = readers.Get().(*bufio.Reader)
		c.r.Reset((*connInput)(c))
		c.srv.inputBuffers.Add(1)
	}
	return c.r
}

// putReader gives the input buffer back to the pool, if the connection
// has one.
func (c *clientConn) putReader() {
	if c.r != nil {
		c.r.Reset(nil)
		readers.Put(c.r)
		c.r = nil
		c.srv.inputBuffers.Add(-1)
	}
}

// doneReading gives the input buffer back once imapserver reads no more
// from this connection: the session ended (LOGOUT, an error, the client
// gone) or goes on over TLS after STARTTLS. It runs on imapserver's
// command goroutine, the one that reads.
func (c *clientConn) doneReading() {
	c.segs, c.hasFirst = nil, false
	c.putReader()
}

// connInput is what the input buffer reads: the byte awaitInput read
// first, if any, then the connection.
type connInput clientConn

func (in *connInput) Read(p []byte) (int, error) {
	if in.hasFirst && len(p) > 0 {
		p[0], in.hasFirst = in.first[0], false
		return 1, nil
	}
	return in.Conn.Read(p)
}

// awaitInput waits, until the read deadline, for the client to send
// something. With nothing buffered, the input buffer goes back to the
// pool while it waits, and the wait is a read of one byte into the
// connection's own struct: a session idling for half an hour holds no
// buffer of ours (crypto/tls keeps its own record buffer).
func (c *clientConn) awaitInput() error {
	if c.hasFirst || c.r != nil && c.r.Buffered() > 0 {
		return nil
	}
	c.putReader()
	n, err := c.Conn.Read(c.first[:])
	if n == 1 {
		c.hasFirst = true
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// awaitCommand waits for the client's next command, with the login or
// idle timeout; past it the client is told why the session ends.
func (c *clientConn) awaitCommand() error {
	c.Conn.SetReadDeadline(time.Now().Add(c.waitTimeout()))
	err := c.awaitInput()
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.writeLine("* BYE [UNAVAILABLE] Autologout: idle for too long")
	}
	return err
}

// SetReadDeadline is imapserver's; clientConn sets its own (see Read).
func (c *clientConn) SetReadDeadline(time.Time) error { return nil }

// SetDeadline keeps imapserver's write deadline only.
func (c *clientConn) SetDeadline(t time.Time) error { return c.Conn.SetWriteDeadline(t) }

func (c *clientConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	handover := c.handover
	c.mu.Unlock()
	if handover {
		go c.srv.startTLS(c)
		return nil
	}
	err := c.Conn.Close()
	c.srv.connGone(c)
	return err
}

// Read hands imapserver the client's input, framed (see clientConn).
func (c *clientConn) Read(p []byte) (int, error) {
	for {
		c.mu.Lock()
		eof, answered, cont, started := c.eof, c.answered, c.cont, c.tag != ""
		c.mu.Unlock()
		if eof {
			return 0, io.EOF
		}
		switch {
		case len(c.segs) > 0:
			if answered {
				c.segs = nil // imapserver gave up on the command: drop the rest
				continue
			}
			n := copy(p, c.segs[0])
			if c.segs[0] = c.segs[0][n:]; len(c.segs[0]) == 0 {
				c.segs[0] = nil
				if c.segs = c.segs[1:]; len(c.segs) == 0 {
					c.segs = nil // an idle session keeps no command
				}
			}
			return n, nil
		case c.awaitLit > 0:
			if cont && !answered {
				c.stream, c.awaitLit = c.awaitLit, 0
				c.setCont(false)
			} else {
				c.awaitLit, c.tail = 0, false // refused: the client sends nothing
			}
			continue
		case c.stream > 0:
			c.Conn.SetReadDeadline(time.Now().Add(literalTimeout))
			buf := p
			if answered {
				buf = make([]byte, 4096) // refused after all: read it to drop it
			}
			n, err := c.reader().Read(buf[:min(int64(len(buf)), c.stream)])
			c.stream -= int64(n)
			if answered {
				if err != nil {
					return 0, err
				}
				continue
			}
			return n, err
		case !answered && cont && (c.cmd == "IDLE" || c.cmd == "AUTHENTICATE"):
			// IDLE's DONE, or a SASL response, as it is.
			if err := c.rawLine(); err != nil {
				return 0, err
			}
			continue
		}
		if started && !answered && !c.tail {
			// imapserver reads on past the command's end (a quoted
			// string across lines, say): the command ends here.
			return 0, io.EOF
		}
		if c.tail && answered {
			c.tail = false // imapserver answered before the message: what follows is new
		}
		if !c.tail {
			// Waiting here rather than in frame keeps the goroutine's
			// stack shallow while the client is silent.
			if err := c.awaitCommand(); err != nil {
				return 0, err
			}
		}
		if err := c.frame(); err != nil {
			return 0, err
		}
	}
}

func (c *clientConn) setCont(v bool) {
	c.mu.Lock()
	c.cont = v
	c.mu.Unlock()
}

// rawLine reads one line that is not a command: the wait for its first
// byte has the idle (or login) timeout, the rest the command timeout, as
// a command has (a client that sends "D" and stops must not hold an input
// buffer for the idle timeout).
func (c *clientConn) rawLine() error {
	c.Conn.SetReadDeadline(time.Now().Add(c.waitTimeout()))
	if err := c.awaitInput(); err != nil {
		return err
	}
	c.Conn.SetReadDeadline(time.Now().Add(c.srv.cmdTimeout))
	line, err := c.readLine(c.srv.maxLine)
	if errors.Is(err, errLineTooLong) {
		line, err = []byte("*\r\n"), nil // cancels AUTHENTICATE, ends IDLE with BAD
	}
	if err != nil {
		// The client stopped in the middle of the line: the session ends,
		// as when it stops in the middle of a command. imapserver would
		// answer the IDLE or AUTHENTICATE and read on; nothing more is
		// sent or read.
		c.mu.Lock()
		c.eof = true
		c.mu.Unlock()
		c.Conn.Close()
		return err
	}
	c.setCont(false)
	c.segs = [][]byte{line}
	return nil
}

// waitTimeout is how long the client may take to send its next command.
func (c *clientConn) waitTimeout() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.authed {
		return c.srv.lim.IdleTimeout
	}
	return c.srv.lim.LoginTimeout
}

// frame reads the next command (or the rest of an APPEND after its
// message, when c.tail) and queues it in segs, or answers it itself. Read
// has waited for its first byte.
func (c *clientConn) frame() error {
	tail := c.tail
	c.tail = false
	c.mu.Lock()
	tag, name := c.tag, c.cmd
	c.mu.Unlock()
	c.Conn.SetReadDeadline(time.Now().Add(c.srv.cmdTimeout))

	var segs [][]byte
	size := 0
	var lits int64
	for {
		line, err := c.readLine(c.srv.maxLine - size)
		if errors.Is(err, errLineTooLong) {
			t := tag
			if !tail && len(segs) == 0 {
				t, _, _ = parseStart(line)
			}
			// After an APPEND message imapserver still waits for the
			// command's end: only ending the session keeps the two apart.
			return c.refuse(t, "BAD [TOOBIG] Command line too long", tail || announcesNonSync(c.dropped))
		}
		if err != nil {
			return err
		}
		text := bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		if bytes.IndexByte(text, '\r') >= 0 {
			// imapserver would end the line at the CR and read the rest
			// as another command (RFC 3501 9: CR only in CRLF).
			t := tag
			if !tail && len(segs) == 0 {
				t, _, _ = parseStart(text)
			}
			return c.refuse(t, "BAD [CLIENTBUG] CR without LF", announcesNonSync(text))
		}
		first := !tail && len(segs) == 0
		if first {
			if len(text) == 0 {
				continue // an empty line is no command
			}
			var ok bool
			tag, name, ok = parseStart(text)
			if !ok {
				return c.refuse(tag, "BAD [CLIENTBUG] A command is a tag, a space and a command name", announcesNonSync(text))
			}
			if name == "STARTTLS" && len(text) == len(tag)+len(" STARTTLS") && c.canStartTLS() {
				return c.beginTLS(tag)
			}
		}
		size += len(line)
		n, nonSync, hasLit := literalHeader(text)
		if !hasLit {
			segs = append(segs, line)
			break
		}
		// RFC 3501 6.3.11: the message is APPEND's last argument; a
		// literal that opens the arguments is the mailbox name.
		message := name == "APPEND" && !tail && !(first && opensArgs(text, tag, name))
		switch {
		case message && !c.loggedIn():
			// Refused before any "+", so that no message is read for a
			// command that cannot succeed (RFC 3501 6.3.11: APPEND is for
			// the authenticated state).
			return c.refuse(tag, "BAD [CLIENTBUG] APPEND needs a login first", nonSync)
		case message && n > c.srv.maxMessage:
			return c.refuse(tag, fmt.Sprintf("NO [TOOBIG] Messages are limited to %d octets", c.srv.maxMessage), nonSync)
		case !message && (n > c.srv.maxLiteral || lits+n > maxCommandLiterals):
			return c.refuse(tag, fmt.Sprintf("NO [TOOBIG] Literals are limited to %d octets for this command", c.srv.maxLiteral), nonSync)
		}
		if message {
			segs = append(segs, line)
			c.queue(tag, name, segs, tail)
			if nonSync {
				c.stream = n
			} else {
				c.awaitLit = n
			}
			c.tail = true
			return nil
		}
		// A literal imapserver buffers anyway: read it here, and hand it
		// over as non-synchronizing, so that imapserver says no "+".
		if !nonSync {
			if err := c.writeLine("+ Ready for literal data"); err != nil {
				return err
			}
			line = append(line[:len(text)-1], "+}\r\n"...)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.r, data); err != nil {
			return err
		}
		lits += n
		segs = append(segs, line, data)
	}
	c.queue(tag, name, segs, tail)
	return nil
}

// queue hands a command's pieces to imapserver.
func (c *clientConn) queue(tag, name string, segs [][]byte, cont bool) {
	if !cont {
		c.mu.Lock()
		c.tag, c.cmd, c.answered, c.cont = tag, name, false, false
		c.mu.Unlock()
	}
	c.segs = segs
}

// refuse answers a command that imapserver never sees. After a
// non-synchronizing literal the session ends: its data is on the way and
// may be anything (RFC 7888 4).
func (c *clientConn) refuse(tag, resp string, end bool) error {
	if tag == "" {
		tag = "*"
	}
	c.mu.Lock()
	c.tag, c.cmd, c.answered, c.cont = tag, "", true, false
	c.mu.Unlock()
	if err := c.writeLine(tag + " " + resp); err != nil {
		return err
	}
	if end {
		c.writeLine("* BYE Literal refused")
		c.mu.Lock()
		c.eof = true
		c.mu.Unlock()
	}
	return nil
}

// readLine reads up to and including LF, at most limit bytes; past
// that, it drops the line and returns its start with errLineTooLong,
// keeping its last bytes in c.dropped.
func (c *clientConn) readLine(limit int) ([]byte, error) {
	c.dropped = c.dropped[:0]
	var line []byte
	r := c.reader()
	for {
		frag, err := r.ReadSlice('\n')
		if len(line)+len(frag) > limit {
			line = append(line, frag[:min(len(frag), max(0, 256-len(line)))]...)
			dropped := len(frag)
			c.keepTail(frag)
			for errors.Is(err, bufio.ErrBufferFull) && dropped < maxDiscard {
				frag, err = r.ReadSlice('\n')
				dropped += len(frag)
				c.keepTail(frag)
			}
			if err != nil {
				if errors.Is(err, bufio.ErrBufferFull) {
					err = errors.New("command line without end")
				}
				return nil, err
			}
			return line, errLineTooLong
		}
		line = append(line, frag...)
		if err == nil {
			return line, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}

// keepTail keeps the last bytes seen of a line being dropped.
func (c *clientConn) keepTail(frag []byte) {
	const keep = 32
	c.dropped = append(c.dropped, frag...)
	if len(c.dropped) > keep {
		c.dropped = append(c.dropped[:0], c.dropped[len(c.dropped)-keep:]...)
	}
}

// announcesNonSync reports whether a line ends in a non-synchronizing
// literal (RFC 7888): its data follows at once, so a refused command's
// data would be read as commands unless the session ends.
func announcesNonSync(line []byte) bool {
	text := bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
	_, nonSync, ok := literalHeader(text)
	return ok && nonSync
}

func (c *clientConn) loggedIn() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.authed
}

// parseStart reads a command's tag and name (with UID's subcommand
// folded in, as imapserver does); ok is false when either is missing or
// not an atom (RFC 3501 9: tag, command).
func parseStart(line []byte) (tag, name string, ok bool) {
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 {
		t := line
		if !isTag(t) {
			return "", "", false
		}
		return string(t), "", false
	}
	if !isTag(line[:sp]) {
		return "", "", false
	}
	tag = string(line[:sp])
	rest := line[sp+1:]
	word := func() string {
		i := 0
		for i < len(rest) && isAtomChar(rest[i]) {
			i++
		}
		w := string(bytes.ToUpper(rest[:i]))
		rest = rest[i:]
		return w
	}
	name = word()
	if name == "" {
		return tag, "", false
	}
	if name == "UID" && len(rest) > 1 && rest[0] == ' ' {
		rest = rest[1:]
		if sub := word(); sub != "" {
			name += " " + sub
		}
	}
	return tag, name, true
}

func isTag(b []byte) bool {
	if len(b) == 0 || len(b) > 256 {
		return false
	}
	for _, ch := range b {
		if !isAtomChar(ch) || ch == '+' {
			return false
		}
	}
	return true
}

// isAtomChar is RFC 3501's ATOM-CHAR: no atom-specials, no CTL.
func isAtomChar(ch byte) bool {
	switch ch {
	case '(', ')', '{', ' ', '%', '*', '"', '\\', ']':
		return false
	}
	return ch > 0x20 && ch < 0x7f
}

// literalHeader reads the literal announcement that ends a line
// ("{n}", "{n+}", with "~" for literal8; RFC 3501 4.3, RFC 7888, RFC 3516).
func literalHeader(text []byte) (n int64, nonSync, ok bool) {
	if len(text) < 3 || text[len(text)-1] != '}' {
		return 0, false, false
	}
	open := bytes.LastIndexByte(text, '{')
	if open < 0 {
		return 0, false, false
	}
	num := text[open+1 : len(text)-1]
	if len(num) > 0 && num[len(num)-1] == '+' {
		nonSync, num = true, num[:len(num)-1]
	}
	if len(num) == 0 {
		return 0, false, false
	}
	for _, d := range num {
		if d < '0' || d > '9' {
			return 0, false, false
		}
	}
	if len(num) > 18 {
		return math.MaxInt64, nonSync, true // too many digits: refused as too big
	}
	v, err := strconv.ParseInt(string(num), 10, 64)
	if err != nil {
		return 0, false, false
	}
	return v, nonSync, true
}

// opensArgs reports whether the literal announced at the end of text is
// the command's first argument.
func opensArgs(text []byte, tag, name string) bool {
	args := text[min(len(text), len(tag)+1+len(name)+1):]
	args = bytes.TrimPrefix(args, []byte("~"))
	return len(args) > 0 && args[0] == '{'
}

func (c *clientConn) canStartTLS() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.isTLS && !c.authed && c.srv.cfg.TLSConfig != nil
}

// beginTLS answers STARTTLS (RFC 3501 6.2.1) and makes imapserver's
// connection end; Close then runs the handshake. Whatever the client
// sent after STARTTLS is dropped: it came before TLS (RFC 2595 3.1).
func (c *clientConn) beginTLS(tag string) error {
	if err := c.writeLine(tag + " OK Begin TLS negotiation now"); err != nil {
		return err
	}
	c.reader().Discard(c.r.Buffered())
	c.mu.Lock()
	c.handover, c.eof = true, true
	c.mu.Unlock()
	return nil
}

// writeLine sends a line of clientConn's own.
func (c *clientConn) writeLine(s string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.Conn.SetWriteDeadline(time.Now().Add(c.srv.cmdTimeout))
	if err := c.emit([]byte(s + "\r\n")); err != nil {
		return err
	}
	if len(s) > len(c.tag) && s[:len(c.tag)+1] == c.tag+" " {
		c.classify([]byte(s))
	}
	return nil
}

// Write passes imapserver's responses on, watching them (see clientConn).
func (c *clientConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(p)
	o := &c.out
	for len(p) > 0 {
		if o.literal > 0 {
			k := int(min(o.literal, int64(len(p))))
			if err := c.emit(p[:k]); err != nil {
				return 0, err
			}
			o.literal -= int64(k)
			p = p[k:]
			continue
		}
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i+1]
		}
		p = p[len(chunk):]
		if o.passing {
			if err := c.emit(chunk); err != nil {
				return 0, err
			}
			o.tail = append(o.tail, chunk...)
			if len(o.tail) > 32 {
				o.tail = append(o.tail[:0], o.tail[len(o.tail)-32:]...)
			}
			if i >= 0 {
				c.endLine(o.tail)
			}
			continue
		}
		o.line = append(o.line, chunk...)
		if i >= 0 {
			line := o.line
			o.line = nil
			if err := c.completeLine(line); err != nil {
				return 0, err
			}
			continue
		}
		if !c.mayHold(o.line) {
			o.passing = true
			if err := c.emit(o.line); err != nil {
				return 0, err
			}
			o.tail = append(o.tail[:0], o.line[max(0, len(o.line)-32):]...)
			o.line = nil
		}
	}
	return n, nil
}

// mayHold says whether a line starting with start could be one to
// classify or rewrite: the tagged response, or a continuation request.
func (c *clientConn) mayHold(start []byte) bool {
	if len(start) > maxHeldLine {
		return false
	}
	if c.greeting {
		return true
	}
	// Any tagged line: imapserver's internal error is rewritten whatever
	// the tag. Untagged lines ("* ") pass at once.
	return start[0] != '*' || (len(start) > 1 && start[1] != ' ')
}

// completeLine handles a whole response line that was held.
func (c *clientConn) completeLine(line []byte) error {
	if c.greeting {
		c.greeting = false // the client had its greeting before STARTTLS
		return nil
	}
	text := bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
	if sp := bytes.IndexByte(text, ' '); sp > 0 && string(text[sp+1:]) == libInternalError {
		line = append(text[:sp:sp], " BAD [CLIENTBUG] Malformed command\r\n"...)
		text = line[:len(line)-2]
		if !c.eof { // else the input ended, which is no malformed command
			c.logMalformed()
		}
	}
	if c.tag != "" && bytes.HasPrefix(text, []byte(c.tag+" ")) {
		if err := c.emit(line); err != nil {
			return err
		}
		c.classify(text)
		return nil
	}
	if len(text) > 0 && text[0] == '+' {
		c.cont = true
	}
	if err := c.emit(line); err != nil {
		return err
	}
	c.endLine(text)
	return nil
}

// endLine notes a literal announced at the end of a response line.
func (c *clientConn) endLine(end []byte) {
	c.out.passing = false
	c.out.tail = c.out.tail[:0]
	end = bytes.TrimSuffix(bytes.TrimSuffix(end, []byte("\n")), []byte("\r"))
	if n, _, ok := literalHeader(end); ok {
		c.out.literal = n
	}
}

// classify notes the tagged response text, c.mu held: the command is
// over; errors are counted, and too many end the session.
func (c *clientConn) classify(text []byte) {
	c.answered, c.cont = true, false
	st := text[len(c.tag)+1:]
	switch {
	case bytes.HasPrefix(st, []byte("OK")):
		switch c.cmd {
		case "LOGIN", "AUTHENTICATE":
			c.authed = true
		case "UNAUTHENTICATE":
			c.authed = false
		}
		return
	case bytes.HasPrefix(st, []byte("BAD")), bytes.HasPrefix(st, []byte("NO [AUTHENTICATIONFAILED]")):
		c.errors++
	default:
		return
	}
	if c.errors >= c.srv.lim.MaxErrors && !c.eof {
		c.emit([]byte("* BYE Too many errors\r\n"))
		c.eof = true
	}
}

// emit writes to the client, c.mu held.
func (c *clientConn) emit(b []byte) error {
	_, err := c.Conn.Write(b)
	return err
}

// startTLS runs the handshake after STARTTLS and gives the TLS
// connection to a new imapserver connection, as the same session ID.
func (s *Server) startTLS(old *clientConn) {
	raw := old.Conn
	tc := tls.Server(raw, s.cfg.TLSConfig)
	tc.SetDeadline(time.Now().Add(tlsHandshakeTimeout))
	if err := tc.Handshake(); err != nil {
		s.log.Info("tls handshake", "session", old.id, "proto", "imap", "listener", old.listener(),
			"remote", raw.RemoteAddr().String(), "result", "fail", "version", "", "err", err)
		raw.Close()
		s.connGone(old)
		return
	}
	tc.SetDeadline(time.Time{})
	c := newClientConn(s, tc, old.id, true, true, old.release)
	c.implicitTLS, c.start = old.implicitTLS, old.start
	c.greeting = true
	if !s.replaceConn(old, c) {
		raw.Close()
		return
	}
	s.serveConn(c)
}

// command is the name of the command in progress.
func (c *clientConn) command() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cmd
}
