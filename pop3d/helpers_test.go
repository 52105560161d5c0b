package pop3d

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
	"github.com/postern/postern/mailstore/storetest"
)

const (
	testDomain = "example.org"
	alice      = "alice@example.org"
	bob        = "bob@example.org"
	// The password has a space: RFC 1939 lets PASS take the rest of the line.
	alicePass = "correct horse"
	bobPass   = "battery staple"
	// clientTimeout bounds every read and write of the test client.
	clientTimeout = 30 * time.Second
)

// openStore opens a new mailstore in a temporary directory with the users
// alice and bob.
func openStore(t testing.TB) *mailstore.Store {
	t.Helper()
	return openStoreAt(t, filepath.Join(t.TempDir(), "postern.db"), true)
}

func openStoreAt(t testing.TB, path string, setup bool) *mailstore.Store {
	t.Helper()
	st, err := mailstore.Open(path, mailstore.Options{PasswordCost: mailstore.FastPasswordHash})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if setup {
		addTestUsers(t, st)
	}
	return st
}

// addTestUsers adds the test domain and the users alice and bob.
func addTestUsers(t testing.TB, st *mailstore.Store) {
	t.Helper()
	ctx := context.Background()
	if err := st.AddDomain(ctx, testDomain); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddUser(ctx, alice, alicePass); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddUser(ctx, bob, bobPass); err != nil {
		t.Fatal(err)
	}
}

// inbox returns a user's INBOX.
func inbox(t testing.TB, st *mailstore.Store, address string) mailstore.Mailbox {
	t.Helper()
	ctx := context.Background()
	u, err := st.UserByAddress(ctx, address)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := st.MailboxByName(ctx, u.ID, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	return mb
}

// appendMessages stores msgs in a user's INBOX, several at a time so that
// the store's group commit makes it quick. The UIDs follow no particular
// order; tests read the expected contents back from the store.
func appendMessages(t testing.TB, st *mailstore.Store, address string, msgs [][]byte) {
	t.Helper()
	mb := inbox(t, st, address)
	var wg sync.WaitGroup
	errs := make(chan error, len(msgs))
	work := make(chan []byte)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range work {
				if _, err := st.Append(context.Background(), mb.ID, nil, time.Time{}, m); err != nil {
					errs <- err
				}
			}
		}()
	}
	for _, m := range msgs {
		work <- m
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// storedMessages returns the messages of a user's INBOX and their bodies,
// in UID order: message n of a POP3 session is element n-1.
func storedMessages(t testing.TB, st *mailstore.Store, address string) ([]mailstore.Message, [][]byte) {
	t.Helper()
	ctx := context.Background()
	msgs, err := st.Messages(ctx, inbox(t, st, address).ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	bodies := make([][]byte, len(msgs))
	for i, m := range msgs {
		if bodies[i], err = st.ReadBody(ctx, m.BodyID); err != nil {
			t.Fatal(err)
		}
	}
	return msgs, bodies
}

// makeMessage builds message i of about size octets, with CRLF line ends
// and some lines that start with "." (a lone "." among them), so that
// byte-stuffing is exercised.
func makeMessage(i, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Bob <%s>\r\nTo: Alice <%s>\r\nSubject: message %d\r\n", bob, alice, i)
	fmt.Fprintf(&b, "Message-ID: <%d.test@example.org>\r\nDate: Mon, 24 Nov 2025 10:00:00 +0000\r\n\r\n", i)
	for line := 0; b.Len() < size; line++ {
		switch line % 9 {
		case 3:
			b.WriteString(".\r\n")
		case 5:
			fmt.Fprintf(&b, ".leading dot on line %d of message %d\r\n", line, i)
		case 7:
			b.WriteString("..two dots\r\n")
		default:
			fmt.Fprintf(&b, "line %d of message %d: the quick brown fox jumps over the lazy dog\r\n", line, i)
		}
	}
	return b.Bytes()
}

// testServer runs a Server for st on 127.0.0.1. configure adjusts its
// Config before New.
type testServer struct {
	srv     *Server
	addr    string // plain listener (STLS when TLS is configured)
	tlsAddr string // implicit TLS listener, when TLS is configured
	logs    *storetest.SyncBuffer
	served  chan error
}

func startServer(t testing.TB, st *mailstore.Store, configure func(*Config)) *testServer {
	t.Helper()
	ts := &testServer{logs: &storetest.SyncBuffer{}, served: make(chan error, 2)}
	cfg := Config{
		Hostname: "pop.example.org",
		Logger:   slog.New(slog.NewTextHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Shared:   limits.Shared{Logins: noDelayLogins(limits.LoginPolicy{})},
	}
	if configure != nil {
		configure(&cfg)
	}
	ts.srv = New(cfg, st)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = ln.Addr().String()
	go func() { ts.served <- ts.srv.Serve(ln) }()
	listeners := 1
	if cfg.TLSConfig != nil {
		tln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ts.tlsAddr = tln.Addr().String()
		go func() { ts.served <- ts.srv.ServeTLS(tln) }()
		listeners++
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := ts.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		for range listeners {
			if err := <-ts.served; !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		}
		if t.Failed() {
			t.Logf("server log:\n%s", ts.logs.String())
		}
	})
	return ts
}

// testTLS makes a self-signed certificate for 127.0.0.1 and returns the
// server's TLS config and a client config that trusts it.
func testTLS(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	c := storetest.SelfSigned(t, "pop.example.org", "127.0.0.1")
	return c.Server(), c.Client("127.0.0.1")
}

// client is a small POP3 client for the tests. It checks that every line
// the server sends ends with CRLF.
type client struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

func dial(t testing.TB, addr string) *client {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return newClient(t, conn)
}

// noDelayLogins is a failed-login record with policy p that answers
// failed logins at once.
func noDelayLogins(p limits.LoginPolicy) *limits.Logins {
	p.FailureDelay = -1
	return limits.NewLogins(p)
}

// dialRaw connects to addr from the loopback address from (any of
// 127.0.0.0/8 works on Linux), so that tests can play many clients.
func dialRaw(t testing.TB, addr, from string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: clientTimeout}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, from, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// dialFrom is dial from the loopback address from.
func dialFrom(t testing.TB, addr, from string) *client {
	t.Helper()
	return newClient(t, dialRaw(t, addr, from))
}

func dialTLS(t testing.TB, addr string, cfg *tls.Config) *client {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return newClient(t, conn)
}

func newClient(t testing.TB, conn net.Conn) *client {
	t.Helper()
	t.Cleanup(func() { conn.Close() })
	c := &client{t: t, conn: conn, r: bufio.NewReader(conn)}
	if g := c.status(); !strings.HasPrefix(g, "+OK ") {
		t.Fatalf("greeting %q", g)
	}
	return c
}

// send writes one command line.
func (c *client) send(line string) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(clientTimeout))
	if _, err := io.WriteString(c.conn, line+"\r\n"); err != nil {
		c.t.Fatalf("send %q: %v", line, err)
	}
}

// readLine reads one line and returns it without CRLF.
func (c *client) readLine() (string, error) {
	c.conn.SetReadDeadline(time.Now().Add(clientTimeout))
	line, err := c.r.ReadString('\n')
	if err != nil {
		return line, err
	}
	if !strings.HasSuffix(line, "\r\n") {
		return line, fmt.Errorf("line %q does not end with CRLF", line)
	}
	return strings.TrimSuffix(line, "\r\n"), nil
}

// status reads a status line.
func (c *client) status() string {
	c.t.Helper()
	line, err := c.readLine()
	if err != nil {
		c.t.Fatalf("read status line: %v", err)
	}
	return line
}

// cmd sends a command and returns its status line.
func (c *client) cmd(line string) string {
	c.t.Helper()
	c.send(line)
	return c.status()
}

// ok sends a command that must succeed.
func (c *client) ok(line string) string {
	c.t.Helper()
	st := c.cmd(line)
	if !strings.HasPrefix(st, "+OK") {
		c.t.Fatalf("%s: %s", line, st)
	}
	return st
}

// body reads a multi-line body up to its terminator and returns it
// byte-unstuffed, with its CRLF line ends.
func (c *client) body() []byte {
	c.t.Helper()
	var b bytes.Buffer
	for {
		line, err := c.readLine()
		if err != nil {
			c.t.Fatalf("read multi-line body: %v", err)
		}
		if line == "." {
			return b.Bytes()
		}
		if strings.HasPrefix(line, ".") {
			line = line[1:]
		}
		b.WriteString(line)
		b.WriteString("\r\n")
	}
}

// lines reads a multi-line body as lines.
func (c *client) lines() []string {
	c.t.Helper()
	b := c.body()
	if len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\r\n"), "\r\n")
}

// multi sends a command with a multi-line answer and returns its body.
func (c *client) multi(line string) []byte {
	c.t.Helper()
	c.ok(line)
	return c.body()
}

func (c *client) login(user, pass string) string {
	c.t.Helper()
	c.ok("USER " + user)
	return c.ok("PASS " + pass)
}

// closed reports whether the server has closed the connection: the next
// read gets EOF (or a reset) and no data.
func (c *client) closed() bool {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(clientTimeout))
	line, err := c.r.ReadString('\n')
	if err == nil {
		c.t.Errorf("unexpected line %q", line)
		return false
	}
	return line == "" && !errors.Is(err, os.ErrDeadlineExceeded)
}

// plainIR is an AUTH PLAIN initial response.
func plainIR(authzid, user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(authzid + "\x00" + user + "\x00" + pass))
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }
