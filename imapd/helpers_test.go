package imapd

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
	"github.com/postern/postern/mailstore/storetest"
)

const (
	testUser = "u@example.test"
	testPass = "secret pw"
	// waitTimeout is how long a test waits for an event that should come
	// at once: generous, so that a slow machine never fails a good test.
	waitTimeout = 20 * time.Second
)

// testEnv is a server on 127.0.0.1 over a fresh mailstore.
type testEnv struct {
	t     *testing.T
	store *mailstore.Store
	srv   *Server
	addr  string // plain (STARTTLS) listener
	tls   string // implicit TLS listener
	cert  *x509.Certificate
	user  mailstore.User
	logs  *storetest.SyncBuffer
	db    string // the store's database file
}

// newEnv starts a server; configure may change its Config first.
func newEnv(t testing.TB, configure ...func(*Config)) *testEnv {
	t.Helper()
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "postern.db")
	store, err := mailstore.Open(dbPath, mailstore.Options{PasswordCost: mailstore.FastPasswordHash})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := store.AddDomain(ctx, "example.test"); err != nil {
		t.Fatal(err)
	}
	u, err := store.AddUser(ctx, testUser, testPass)
	if err != nil {
		t.Fatal(err)
	}
	tlsConfig, cert := selfSigned(t)
	logs := &storetest.SyncBuffer{}
	cfg := Config{
		Hostname:  "mail.example.test",
		TLSConfig: tlsConfig,
		Logger:    slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Shared:    limits.Shared{Logins: limits.NewLogins(limits.LoginPolicy{FailureDelay: -1})},
	}
	for _, f := range configure {
		f(&cfg)
	}
	srv := New(cfg, store)
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	implicit, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	go func() { srv.Serve(plain); done <- struct{}{} }()
	go func() { srv.ServeTLS(implicit); done <- struct{}{} }()
	env := &testEnv{store: store, srv: srv, addr: plain.Addr().String(), tls: implicit.Addr().String(), cert: cert, user: u, logs: logs, db: dbPath}
	if tt, ok := t.(*testing.T); ok {
		env.t = tt
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
		<-done
		store.Close()
		if tt, ok := t.(*testing.T); ok && tt.Failed() && os.Getenv("POSTERN_TEST_LOGS") != "" {
			tt.Log(logs.String())
		}
	})
	return env
}

// selfSigned makes a certificate for 127.0.0.1.
func selfSigned(t testing.TB) (*tls.Config, *x509.Certificate) {
	t.Helper()
	c := storetest.SelfSigned(t, "127.0.0.1", "localhost")
	return c.Server(), c.Leaf()
}

func (e *testEnv) clientTLS() *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(e.cert)
	return &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
}

// dial connects to the plain listener (from 127.0.0.1, which counts as
// secure by default) and logs in unless user is "".
func (e *testEnv) dial(t *testing.T, u *storetest.IMAPUpdates) *imapclient.Client {
	t.Helper()
	opts := &imapclient.Options{}
	if u != nil {
		opts.UnilateralDataHandler = u.Handler()
	}
	if os.Getenv("POSTERN_TEST_WIRE") != "" {
		opts.DebugWriter = os.Stderr
	}
	c, err := imapclient.DialInsecure(e.addr, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(testUser, testPass).Wait(); err != nil {
		t.Fatalf("login: %v", err)
	}
	return c
}

// deliver puts a message into the test user's INBOX as SMTP would.
func (e *testEnv) deliver(t testing.TB, msg string) {
	t.Helper()
	if _, err := e.store.Deliver(context.Background(), "sender@remote.test", []string{testUser}, []byte(msg)); err != nil {
		t.Fatal(err)
	}
}

func testMessage(n int, subject string) string {
	return fmt.Sprintf("From: Sender <sender@remote.test>\r\nTo: u@example.test\r\nSubject: %s\r\nDate: Mon, 2 Jan 2006 15:04:05 -0700\r\nMessage-ID: <m%d@remote.test>\r\n\r\nBody of message %d.\r\n", subject, n, n)
}

// rawConn is a line-level IMAP connection for dialogues the client
// library cannot express.
type rawConn struct {
	t *testing.T
	c net.Conn
	b []byte
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawConn{t: t, c: c}
	rc.readLine() // greeting
	return rc
}

func (rc *rawConn) readLine() string {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(waitTimeout))
	for {
		if i := bytes.Index(rc.b, []byte("\r\n")); i >= 0 {
			line := string(rc.b[:i])
			rc.b = rc.b[i+2:]
			return line
		}
		buf := make([]byte, 4096)
		n, err := rc.c.Read(buf)
		if err != nil {
			if err == io.EOF && len(rc.b) > 0 {
				line := string(rc.b)
				rc.b = nil
				return line
			}
			rc.t.Fatalf("read: %v (have %q)", err, rc.b)
		}
		rc.b = append(rc.b, buf[:n]...)
	}
}

// cmd sends a command line and returns every line up to and including
// the tagged response.
func (rc *rawConn) cmd(tag, line string) []string {
	rc.t.Helper()
	if _, err := fmt.Fprintf(rc.c, "%s %s\r\n", tag, line); err != nil {
		rc.t.Fatal(err)
	}
	var out []string
	for {
		l := rc.readLine()
		out = append(out, l)
		if strings.HasPrefix(l, tag+" ") {
			return out
		}
	}
}

func asIMAPError(err error, target **imap.Error) bool { return errors.As(err, target) }

// newEnvLogger discards, for servers built outside newEnv.
func newEnvLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// deliverJunk puts a message into the test user's \Junk mailbox, as SMTP
// does with mail quarantined by DMARC.
func (e *testEnv) deliverJunk(t testing.TB, msg string) {
	t.Helper()
	env := mailstore.Envelope{Sender: "sender@remote.test", Recipients: []mailstore.Recipient{{Address: testUser}}, SpecialUse: `\Junk`}
	if _, err := e.store.DeliverEnvelope(context.Background(), env, []byte(msg)); err != nil {
		t.Fatal(err)
	}
}
