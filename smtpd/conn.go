package smtpd

import (
	"bytes"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
)

// conn wraps a client connection for go-smtp. It is the net.Conn go-smtp
// reads and writes (for STARTTLS, the one under go-smtp's tls.Conn), and
// adds what go-smtp lacks:
//
//   - During DATA and BDAT each read gets its own deadline, DataBlockTimeout
//     from now, within DataTimeout for the message; go-smtp's one deadline
//     per command line is ignored then. Otherwise go-smtp's deadline stands.
//   - The first line written, go-smtp's "220 <host> ESMTP Service Ready", is
//     replaced by the greeting "220 <host> ESMTP Postern".
//   - expire makes reads fail at once, so that go-smtp answers 421 and
//     closes the connection the next time it waits for a command.
//   - It counts command lines and the kind of the last operation, for the
//     command bound and for the tracer, and the session's errors.
//   - end writes a last reply and then stops the session: reads fail at
//     once and go-smtp's further writes are dropped, so the client gets
//     that reply last.
type conn struct {
	net.Conn
	log         *slog.Logger
	greeting    []byte
	block       time.Duration // DataBlockTimeout
	dataTimeout time.Duration // DataTimeout
	maxIdle     int           // command lines allowed without a message
	maxErrors   int           // errors allowed without a message

	closeOnce sync.Once
	closed    chan struct{}

	mu        sync.Mutex
	greeted   bool
	data      bool      // a message is being read
	dataEnd   bool      // Data has returned: the next write is its reply
	dataUntil time.Time // end of the whole message's transfer
	expired   bool
	commands  int  // command lines since the last message
	errors    int  // errors since the last message
	ended     bool // end was called: no more reads or writes
	lastWrite bool // the last operation was a write
	writes    int  // writes since the tracer last looked
}

// aLongTimeAgo is a deadline in the past, which makes reads fail at once.
// (Deadlines are on the real clock, whatever Config.Now says.)
var aLongTimeAgo = time.Unix(1, 0)

func newConn(c net.Conn, s *Server, log *slog.Logger, maxErrors int) *conn {
	return &conn{
		Conn:        c,
		log:         log,
		greeting:    []byte("220 " + s.cfg.Hostname + " ESMTP Postern\r\n"),
		block:       s.cfg.DataBlockTimeout,
		dataTimeout: s.cfg.DataTimeout,
		maxIdle:     max(minIdleCommands, 2*s.cfg.MaxRecipients+100),
		maxErrors:   maxErrors,
		closed:      make(chan struct{}),
	}
}

func (c *conn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return 0, os.ErrDeadlineExceeded
	}
	if c.data {
		// RFC 5321 4.5.3.2.5: a time limit per data block, not per message.
		d := time.Now().Add(c.block)
		if d.After(c.dataUntil) {
			d = c.dataUntil
		}
		c.Conn.SetReadDeadline(d)
	}
	c.mu.Unlock()
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.lastWrite = false
	c.mu.Unlock()
	return n, err
}

func (c *conn) Write(p []byte) (int, error) {
	out := p
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return len(p), nil
	}
	if !c.greeted {
		c.greeted = true
		if bytes.HasPrefix(p, []byte("220 ")) {
			out = c.greeting
		}
	}
	if c.dataEnd {
		c.data, c.dataEnd = false, false
	}
	c.lastWrite = true
	c.writes++
	c.mu.Unlock()
	n, err := c.Conn.Write(out)
	if err == nil && len(out) != len(p) {
		n = len(p)
	}
	return n, err
}

// SetReadDeadline is called by go-smtp before it reads each command line
// (and by tls.Conn on its behalf after STARTTLS).
func (c *conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.expired {
		return c.Conn.SetReadDeadline(aLongTimeAgo)
	}
	if c.data {
		return nil // Read sets a deadline per read
	}
	c.commands++
	if c.commands > c.maxIdle {
		c.expired = true
		c.log.Warn("refused", "what", "session", "reason", "limits", "detail", "too many commands without a message", "commands", c.commands)
		return c.Conn.SetReadDeadline(aLongTimeAgo)
	}
	return c.Conn.SetReadDeadline(t)
}

// Close is go-smtp's close, after QUIT or when the session ends: a
// lingering close, so that the last reply reaches the client.
func (c *conn) Close() error {
	err := net.ErrClosed
	c.closeOnce.Do(func() {
		err = lingeringClose(c.Conn)
		close(c.closed)
	})
	return err
}

// abort closes the connection at once, for Shutdown when time is up.
func (c *conn) abort() {
	c.closeOnce.Do(func() {
		c.Conn.Close()
		close(c.closed)
	})
}

// Lingering close: closing a socket with unread input makes the kernel
// send RST, and the client may then lose the last reply unread (a 421
// after pipelined commands). So the server first ends its side, then reads
// and drops what still comes, briefly.
const (
	lingerTimeout = time.Second
	lingerMax     = 64 << 10
)

func lingeringClose(nc net.Conn) error {
	if tc, ok := nc.(*tls.Conn); ok {
		tc.CloseWrite() // close_notify
		nc = tc.NetConn()
	}
	tcp, ok := nc.(*net.TCPConn)
	if !ok {
		return nc.Close()
	}
	tcp.CloseWrite()
	tcp.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.CopyN(io.Discard, tcp, lingerMax)
	return tcp.Close()
}

// beginData switches to per-read deadlines for a message's transfer.
func (c *conn) beginData() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.data, c.dataEnd = true, false
	c.dataUntil = time.Now().Add(c.dataTimeout)
}

// endData is called when Data returns; go-smtp may still read the rest of
// the message, and data mode ends with the reply.
func (c *conn) endData() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dataEnd = true
}

// delivered restarts the counts of command lines and errors: the bounds
// are on what a client does without delivering mail, as in Postfix.
func (c *conn) delivered() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.commands = 0
	c.errors = 0
}

// countError counts one error and reports whether that makes more than
// maxErrors since the last message. Once the session has ended nothing
// counts.
func (c *conn) countError() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return false
	}
	c.errors++
	return c.errors > c.maxErrors
}

// isEnded reports whether end was called.
func (c *conn) isEnded() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ended
}

// end writes reply to w, the plaintext side of the connection (nil: none
// can be written), and ends the session: from now on reads fail at once,
// so that go-smtp closes the connection, and go-smtp's writes, such as its
// own 421 or replies to commands it had already buffered, are dropped.
func (c *conn) end(w io.Writer, reply string) {
	if w != nil {
		io.WriteString(w, reply)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ended, c.expired = true, true
	c.Conn.SetReadDeadline(aLongTimeAgo)
}

// expire ends the session the next time go-smtp waits for a command: the
// read fails at once with a timeout, and go-smtp answers "421 4.4.2" and
// closes. A message being read is not interrupted.
func (c *conn) expire(reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.expired {
		return
	}
	c.expired = true
	c.log.Info("ending session", "reason", reason)
	if !c.data {
		c.Conn.SetReadDeadline(aLongTimeAgo)
	}
}

// wroteSinceLast reports whether the data go-smtp's Debug writer now has
// is outgoing: go-smtp copies each read and each write to it right after
// the operation, so if writes happened since the last call and the last
// operation was a write, this is what was written. Under STARTTLS the
// operations counted are the TLS records below; reads of data TLS had
// already buffered count as reads because no write came between.
func (c *conn) wroteSinceLast() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.lastWrite && c.writes > 0
	c.writes = 0
	return out
}
