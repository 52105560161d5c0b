package smtpd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
	"github.com/postern/postern/mailstore/storetest"
)

// The test world: example.test is local, with alice, bob, a team alias to
// both and a forwarding alias to a remote address.
const (
	testHost      = "mx.example.test"
	testDomain    = "example.test"
	alice         = "alice@example.test"
	alicePassword = "alice secret"
	bob           = "bob@example.test"
	bobPassword   = "bob secret"
	team          = "team@example.test"
	forward       = "fwd@example.test"
	remote        = "carol@remote.test"
)

// testEnv is a Server on three loopback listeners over a fresh store.
type testEnv struct {
	t         *testing.T
	store     *mailstore.Store
	srv       *Server
	cfg       Config
	mx        string // addresses
	sub       string
	subTLS    string
	clientTLS *tls.Config // trusts the server's certificate
	logs      *storetest.SyncBuffer
}

// newTestEnv starts a server; opts adjust its Config first.
func newTestEnv(t testing.TB, opts ...func(*Config)) *testEnv {
	t.Helper()
	store, err := mailstore.Open(filepath.Join(t.TempDir(), "mail.db"), mailstore.Options{PasswordCost: mailstore.FastPasswordHash})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	must(t, store.AddDomain(ctx, testDomain))
	_, err = store.AddUser(ctx, alice, alicePassword)
	must(t, err)
	_, err = store.AddUser(ctx, bob, bobPassword)
	must(t, err)
	must(t, store.AddAlias(ctx, team, alice, bob))
	must(t, store.AddAlias(ctx, forward, remote))

	serverTLS, clientTLS := testCertificates(t)
	logs := &storetest.SyncBuffer{}
	cfg := Config{
		Hostname:  testHost,
		TLSConfig: serverTLS,
		Logger:    slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		// Every test client comes from 127.0.0.1.
		Limits:           limits.Protocol{MaxConnectionsPerAddress: 200},
		SubmissionLimits: limits.Protocol{MaxConnectionsPerAddress: 200},
		// Failed logins are answered at once, and many are allowed.
		Shared: limits.Shared{Logins: limits.NewLogins(limits.LoginPolicy{FailureDelay: -1, MaxFailures: 1000})},
	}
	for _, o := range opts {
		o(&cfg)
	}
	env := &testEnv{store: store, cfg: cfg, clientTLS: clientTLS, logs: logs}
	if tt, ok := t.(*testing.T); ok {
		env.t = tt
	}
	env.srv = New(cfg, store)
	listen := func(serve func(net.Listener) error) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go serve(ln)
		return ln.Addr().String()
	}
	env.mx = listen(env.srv.ServeMX)
	env.sub = listen(env.srv.ServeSubmission)
	env.subTLS = listen(env.srv.ServeSubmissionTLS)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := env.srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		store.Close()
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	return env
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// testCertificates makes a self-signed certificate for testHost and
// 127.0.0.1, and a client configuration that trusts it.
func testCertificates(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	c := storetest.SelfSigned(t, testHost, "127.0.0.1")
	return c.Server(), c.Client(testHost)
}

// certPEM writes the test certificate's PEM file, for clients outside Go.
func (e *testEnv) certPEM(t *testing.T) string {
	t.Helper()
	return storetest.Cert{TLS: e.cfg.TLSConfig.Certificates[0]}.WritePEM(t)
}

// inbox returns the bodies in a user's INBOX, oldest first.
func (e *testEnv) inbox(t testing.TB, user string) [][]byte {
	t.Helper()
	return e.mailbox(t, user, "INBOX")
}

// mailbox returns the bodies in one of a user's mailboxes, oldest first.
func (e *testEnv) mailbox(t testing.TB, user, name string) [][]byte {
	t.Helper()
	ctx := context.Background()
	u, err := e.store.UserByAddress(ctx, user)
	must(t, err)
	mb, err := e.store.MailboxByName(ctx, u.ID, name)
	must(t, err)
	msgs, err := e.store.Messages(ctx, mb.ID, nil)
	must(t, err)
	var out [][]byte
	for _, m := range msgs {
		b, err := e.store.ReadBody(ctx, m.BodyID)
		must(t, err)
		out = append(out, b)
	}
	return out
}

// queue returns the outbound queue.
func (e *testEnv) queue(t testing.TB) []mailstore.QueueEntry {
	t.Helper()
	q, err := e.store.Queue(context.Background(), time.Time{}, 0)
	must(t, err)
	return q
}

// raw is a hand-driven SMTP client for checking exact replies.
type raw struct {
	t        testing.TB
	conn     net.Conn
	r        *bufio.Reader
	greeting string
}

// dial connects and reads the greeting.
func (e *testEnv) dial(t testing.TB, addr string) *raw {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	must(t, err)
	t.Cleanup(func() { conn.Close() })
	c := &raw{t: t, conn: conn, r: bufio.NewReader(conn)}
	c.greeting = c.expect("220 ")
	return c
}

// dialTLS connects to the implicit-TLS listener.
func (e *testEnv) dialTLS(t testing.TB) *raw {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.subTLS, e.clientTLS)
	must(t, err)
	t.Cleanup(func() { conn.Close() })
	c := &raw{t: t, conn: conn, r: bufio.NewReader(conn)}
	c.greeting = c.expect("220 ")
	return c
}

// send writes lines, each ended with CRLF, in one write.
func (c *raw) send(lines ...string) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c.conn, strings.Join(lines, "\r\n")+"\r\n"); err != nil {
		c.t.Fatalf("send %q: %v", lines, err)
	}
}

// reply reads one reply, all its lines, joined by "\n".
func (c *raw) reply() string {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	var lines []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("read reply after %q: %v", lines, err)
		}
		line = strings.TrimRight(line, "\r\n")
		lines = append(lines, line)
		if len(line) < 4 || line[3] != '-' {
			return strings.Join(lines, "\n")
		}
	}
}

// expect reads a reply and fails unless it starts with prefix.
func (c *raw) expect(prefix string) string {
	c.t.Helper()
	r := c.reply()
	if !strings.HasPrefix(r, prefix) {
		c.t.Fatalf("reply %q, want %q...", r, prefix)
	}
	return r
}

// cmd sends a command and expects a reply starting with prefix.
func (c *raw) cmd(line, prefix string) string {
	c.t.Helper()
	c.send(line)
	return c.expect(prefix)
}

// startTLS upgrades the connection after EHLO.
func (c *raw) startTLS(cfg *tls.Config) {
	c.t.Helper()
	c.cmd("STARTTLS", "220 ")
	tc := tls.Client(c.conn, cfg)
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.conn = tc
	c.r = bufio.NewReader(tc)
}

// data sends DATA, the message (dot-stuffed) and the final dot, and
// returns the reply to the message.
func (c *raw) data(msg string) string {
	c.t.Helper()
	c.cmd("DATA", "354 ")
	c.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c.conn, dotStuff(msg)+".\r\n"); err != nil {
		c.t.Fatal(err)
	}
	return c.reply()
}

// dotStuff prepares a CRLF message for DATA (RFC 5321 4.5.2), with a
// final CRLF.
func dotStuff(msg string) string {
	if msg != "" && !strings.HasSuffix(msg, "\r\n") {
		msg += "\r\n"
	}
	if strings.HasPrefix(msg, ".") {
		msg = "." + msg
	}
	return strings.ReplaceAll(msg, "\r\n.", "\r\n..")
}

// plainAuth is the AUTH PLAIN initial response for a user.
func plainAuth(user, password string) string {
	return base64Std("\x00" + user + "\x00" + password)
}

// submit authenticates on the loopback submission port (secure by the
// default rule) with go-smtp's client and sends one message.
func (e *testEnv) submit(t testing.TB, user, password, from string, to []string, msg string) error {
	t.Helper()
	c, err := smtp.Dial(e.sub)
	must(t, err)
	defer c.Close()
	if err := c.Auth(saslPlain(user, password)); err != nil {
		return err
	}
	return c.SendMail(from, to, strings.NewReader(msg))
}

// simpleMessage is a small valid message from alice.
func simpleMessage(subject string) string {
	return messageFrom("Alice <alice@example.test>", subject)
}

// messageFrom is a small valid message with the From field given.
func messageFrom(from, subject string) string {
	return "From: " + from + "\r\nTo: bob@example.test\r\nSubject: " + subject +
		"\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <" + subject + "@example.test>\r\n\r\nHello.\r\n"
}

// trimTrace checks that body is msg with only trace fields (and, when
// allowed, Date and Message-ID) in front, and returns those fields.
func trimTrace(t testing.TB, body []byte, msg string, allowed ...string) string {
	t.Helper()
	if !bytes.HasSuffix(body, []byte(msg)) {
		t.Fatalf("stored message does not end with the message sent:\n%.500q", body)
	}
	prefix := string(body[:len(body)-len(msg)])
	allowed = append(allowed, "Return-Path", "Received")
	for _, line := range strings.Split(strings.TrimSuffix(prefix, "\r\n"), "\r\n") {
		if strings.HasPrefix(line, "\t") {
			continue
		}
		name, _, _ := strings.Cut(line, ":")
		ok := false
		for _, a := range allowed {
			ok = ok || strings.EqualFold(name, a)
		}
		if !ok {
			t.Fatalf("unexpected field %q added", line)
		}
	}
	return prefix
}

// interop reports whether a client program is there; without it the test
// is skipped, unless POSTERN_REQUIRE_INTEROP=1.
func interop(t *testing.T, program string) string {
	t.Helper()
	path, err := exec.LookPath(program)
	if err != nil {
		if os.Getenv("POSTERN_REQUIRE_INTEROP") == "1" {
			t.Fatalf("%s is required (POSTERN_REQUIRE_INTEROP=1): %v", program, err)
		}
		t.Skipf("%s not installed", program)
	}
	return path
}

// insecureEverywhere makes no address count as secure, so that the rules
// for remote clients can be tested on loopback.
func insecureEverywhere(c *Config) { c.SecureAddr = func(netip.Addr) bool { return false } }
