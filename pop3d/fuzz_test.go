package pop3d

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore/limits"
)

// fuzzConn is a connection whose client sends the fuzzer's bytes and then
// closes; what the server writes is kept.
type fuzzConn struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func (c *fuzzConn) Read(p []byte) (int, error)  { return c.in.Read(p) }
func (c *fuzzConn) Write(p []byte) (int, error) { return c.out.Write(p) }
func (c *fuzzConn) Close() error                { return nil }
func (c *fuzzConn) LocalAddr() net.Addr         { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 110} }
func (c *fuzzConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (c *fuzzConn) SetDeadline(t time.Time) error      { return nil }
func (c *fuzzConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(t time.Time) error { return nil }

// fuzzSessionTimeout bounds one session on one input: no input may make
// the server hang.
const fuzzSessionTimeout = 10 * time.Second

// FuzzSession feeds arbitrary client bytes to a session on a real store
// with a small maildrop: the server must not panic or hang, and what it
// sends must be a sequence of well-formed replies: "+OK" or "-ERR" status
// lines (or SASL "+ " challenges) of at most 512 octets, each multi-line
// body CRLF-terminated lines up to a lone ".".
func FuzzSession(f *testing.F) {
	st := openStore(f)
	mb := inbox(f, st, alice)
	var replies []fuzzReply
	srv := New(Config{
		Limits: limits.Protocol{LoginTimeout: time.Second, IdleTimeout: time.Second},
		// Every input comes from one address: it must never be blocked,
		// or the fuzzer could not reach TRANSACTION after a few inputs.
		Shared: limits.Shared{Logins: noDelayLogins(limits.LoginPolicy{MaxFailures: 1 << 30})},
	}, st)
	srv.onReply = func(line string, multiline bool) { replies = append(replies, fuzzReply{line, multiline}) }

	f.Fuzz(func(t *testing.T, data []byte) {
		// Top the maildrop up: earlier inputs may have deleted messages.
		msgs, err := st.Messages(context.Background(), mb.ID, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) < 3 {
			appendMessages(t, st, alice, [][]byte{makeMessage(1, 600), makeMessage(2, 90), []byte("Subject: dots\r\n\r\n.\r\n..\r\nend")})
		}
		replies = replies[:0]
		conn := &fuzzConn{in: bytes.NewReader(data)}
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.serveConn(conn, false)
		}()
		select {
		case <-done:
		case <-time.After(fuzzSessionTimeout):
			t.Fatalf("session still running after %v", fuzzSessionTimeout)
		}
		checkReplies(t, conn.out.Bytes(), replies)
	})
}

type fuzzReply struct {
	line      string
	multiline bool
}

// checkReplies checks that out is exactly the replies, in order, each well
// formed.
func checkReplies(t *testing.T, out []byte, replies []fuzzReply) {
	t.Helper()
	if len(replies) == 0 || !strings.HasPrefix(replies[0].line, "+OK ") {
		t.Fatalf("no greeting: %v", replies)
	}
	rest := out
	for i, r := range replies {
		switch {
		case r.line == "+OK", strings.HasPrefix(r.line, "+OK "),
			r.line == "-ERR", strings.HasPrefix(r.line, "-ERR "),
			strings.HasPrefix(r.line, "+ ") && !r.multiline:
		default:
			t.Fatalf("reply %d is not a status line: %q", i, r.line)
		}
		// RFC 2449 section 4: a status line has at most 512 octets.
		if len(r.line)+2 > 512 || strings.ContainsAny(r.line, "\r\n\x00") {
			t.Fatalf("reply %d is malformed: %q", i, r.line)
		}
		line, after, found := bytes.Cut(rest, []byte("\r\n"))
		if !found || string(line) != r.line {
			t.Fatalf("reply %d: sent %q, want %q", i, trim(rest), r.line)
		}
		rest = after
		if !r.multiline {
			continue
		}
		if !strings.HasPrefix(r.line, "+OK") {
			t.Fatalf("multi-line reply %d after %q", i, r.line)
		}
		for {
			line, after, found := bytes.Cut(rest, []byte("\r\n"))
			if !found {
				t.Fatalf("reply %d: multi-line body without terminator: %q", i, trim(rest))
			}
			if bytes.IndexByte(line, '\n') >= 0 {
				t.Fatalf("reply %d: bare LF in body line %q", i, line)
			}
			rest = after
			if string(line) == "." {
				break
			}
		}
	}
	if len(rest) > 0 {
		t.Fatalf("%d octets sent after the last reply: %q", len(rest), trim(rest))
	}
}
