package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/storetest"
	"github.com/postern/postern/smtpd/msgauth/msgauthtest"
)

// received is a message as a test MX got it.
type received struct {
	from string
	to   []string
	data []byte
	helo string
	tls  bool
	mail *smtp.MailOptions
	rcpt []*smtp.RcptOptions
}

type greeting struct {
	name string
	tls  bool
}

// testMX is a mail exchanger on loopback: a go-smtp server with a backend
// that records what it gets and, given a store, delivers it there with a
// Received field, as a real MX would.
type testMX struct {
	t     testing.TB
	srv   *smtp.Server
	ln    net.Listener
	addr  netip.AddrPort
	store *mailstore.Store

	mu        sync.Mutex
	msgs      []received
	greetings []greeting
	conns     int
	active    int
	maxActive int
	rcptErr   map[string]*smtp.SMTPError
	mailErr   *smtp.SMTPError
	dataErr   *smtp.SMTPError
	onData    func() // called with the message read, before the reply
}

// mxOption configures a test MX's go-smtp server.
type mxOption func(*smtp.Server)

func withTLS(cfg *tls.Config) mxOption  { return func(s *smtp.Server) { s.TLSConfig = cfg } }
func withoutUTF8() mxOption             { return func(s *smtp.Server) { s.EnableSMTPUTF8 = false } }
func withDSN() mxOption                 { return func(s *smtp.Server) { s.EnableDSN = true } }
func withMaxBytes(n int64) mxOption     { return func(s *smtp.Server) { s.MaxMessageBytes = n } }
func withDomain(domain string) mxOption { return func(s *smtp.Server) { s.Domain = domain } }

// newTestMX starts an MX listening on addr ("127.0.0.1:0" for any port).
// betaMX starts a DNS server in which beta.test's MX is mx.beta.test at
// 127.0.0.1, and a test MX on 127.0.0.1 with a port of its own.
func betaMX(t testing.TB, opts ...mxOption) (*msgauthtest.DNS, *testMX) {
	t.Helper()
	d := msgauthtest.NewDNS(t)
	mx := newTestMX(t, "127.0.0.1:0", opts...)
	d.Add(t, "beta.test. MX 10 mx.beta.test.", "mx.beta.test. A 127.0.0.1")
	return d, mx
}

// holdData makes every DATA the server reads first send on inData
// (buffered for n) and then wait until the test closes release.
func (m *testMX) holdData(n int) (inData, release chan struct{}) {
	inData, release = make(chan struct{}, n), make(chan struct{})
	m.mu.Lock()
	m.onData = func() {
		inData <- struct{}{}
		<-release
	}
	m.mu.Unlock()
	return inData, release
}

func newTestMX(t testing.TB, addr string, opts ...mxOption) *testMX {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return startTestMX(t, ln, opts...)
}

func startTestMX(t testing.TB, ln net.Listener, opts ...mxOption) *testMX {
	m := &testMX{t: t, rcptErr: map[string]*smtp.SMTPError{}}
	m.ln = &countingListener{Listener: ln, m: m}
	m.addr = netip.MustParseAddrPort(ln.Addr().String())
	s := smtp.NewServer(m)
	s.Domain = "mx.beta.test"
	s.EnableSMTPUTF8 = true
	s.ReadTimeout = 10 * time.Second
	s.WriteTimeout = 10 * time.Second
	s.MaxMessageBytes = 10 << 20
	for _, o := range opts {
		o(s)
	}
	m.srv = s
	go s.Serve(m.ln)
	t.Cleanup(func() { s.Close() })
	return m
}

func (m *testMX) stop() { m.srv.Close() }

func (m *testMX) NewSession(c *smtp.Conn) (smtp.Session, error) {
	_, isTLS := c.TLSConnectionState()
	m.mu.Lock()
	m.greetings = append(m.greetings, greeting{c.Hostname(), isTLS})
	m.mu.Unlock()
	return &mxSession{m: m, r: received{helo: c.Hostname(), tls: isTLS}}, nil
}

func (m *testMX) received() []received {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]received(nil), m.msgs...)
}

func (m *testMX) greetingsSeen() []greeting {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]greeting(nil), m.greetings...)
}

func (m *testMX) stats() (conns, maxActive int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.conns, m.maxActive
}

func (m *testMX) setRcptErr(addr string, e *smtp.SMTPError) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rcptErr[addr] = e
}

type mxSession struct {
	m *testMX
	r received
}

func (s *mxSession) Reset() {
	s.r = received{helo: s.r.helo, tls: s.r.tls}
}

func (s *mxSession) Logout() error { return nil }

func (s *mxSession) Mail(from string, opts *smtp.MailOptions) error {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	if s.m.mailErr != nil {
		return s.m.mailErr
	}
	s.r.from, s.r.mail = from, opts
	return nil
}

func (s *mxSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	if e := s.m.rcptErr[to]; e != nil {
		return e
	}
	s.r.to = append(s.r.to, to)
	s.r.rcpt = append(s.r.rcpt, opts)
	return nil
}

func (s *mxSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.m.mu.Lock()
	hook, dataErr := s.m.onData, s.m.dataErr
	s.m.mu.Unlock()
	if hook != nil {
		hook()
	}
	if dataErr != nil {
		return dataErr
	}
	s.r.data = data
	if s.m.store != nil {
		// What beta's smtpd would do: a Received field on top, then the
		// mailstore.
		with := "ESMTP"
		if s.r.tls {
			with = "ESMTPS"
		}
		trace := fmt.Sprintf("Received: from %s by %s with %s; %s\r\n", s.r.helo, s.m.srv.Domain, with, time.Now().Format(time.RFC1123Z))
		env := mailstore.Envelope{Sender: s.r.from}
		for _, to := range s.r.to {
			env.Recipients = append(env.Recipients, mailstore.Recipient{Address: to})
		}
		if _, err := s.m.store.DeliverEnvelope(context.Background(), env, append([]byte(trace), data...)); err != nil {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: err.Error()}
		}
	}
	s.m.mu.Lock()
	s.m.msgs = append(s.m.msgs, s.r)
	s.m.mu.Unlock()
	s.r = received{helo: s.r.helo, tls: s.r.tls}
	return nil
}

// countingListener counts connections, and those open at once.
type countingListener struct {
	net.Listener
	m *testMX
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.m.mu.Lock()
	l.m.conns++
	l.m.active++
	l.m.maxActive = max(l.m.maxActive, l.m.active)
	l.m.mu.Unlock()
	return &countedConn{Conn: c, m: l.m}, nil
}

type countedConn struct {
	net.Conn
	m    *testMX
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.m.mu.Lock()
		c.m.active--
		c.m.mu.Unlock()
	})
	return c.Conn.Close()
}

// selfSigned returns a server certificate for names and a pool that
// trusts it.
func selfSigned(t testing.TB, names ...string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	c := storetest.SelfSigned(t, names...)
	return c.TLS, c.Pool
}

// newStore opens a mailstore in a temporary directory with local domains
// and users (whose password is "pw").
func newStore(t testing.TB, clock *storetest.Clock, domains []string, users ...string) *mailstore.Store {
	t.Helper()
	st := openStore(t, filepath.Join(t.TempDir(), "postern.db"), clock)
	ctx := context.Background()
	for _, d := range domains {
		if err := st.AddDomain(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range users {
		if _, err := st.AddUser(ctx, u, "pw"); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func openStore(t testing.TB, path string, clock *storetest.Clock) *mailstore.Store {
	t.Helper()
	opts := mailstore.Options{PasswordCost: mailstore.FastPasswordHash}
	if clock != nil {
		opts.Now = clock.Now
	}
	st, err := mailstore.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// inbox returns the contents of a user's INBOX messages, oldest first.
func inbox(t testing.TB, st *mailstore.Store, user string) [][]byte {
	t.Helper()
	ctx := context.Background()
	u, err := st.UserByAddress(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := st.MailboxByName(ctx, u.ID, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := st.Messages(ctx, mb.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, m := range msgs {
		b, err := st.ReadBody(ctx, m.BodyID)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

func queue(t testing.TB, st *mailstore.Store) []mailstore.QueueEntry {
	t.Helper()
	q, err := st.Queue(context.Background(), time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// submit queues a message from alice@alpha.test as alpha's submission
// service would, with alpha's Received field.
func submit(t testing.TB, st *mailstore.Store, env mailstore.Envelope, subject string) []byte {
	t.Helper()
	msg := []byte("Received: from [127.0.0.1] by mail.alpha.test with ESMTPSA; Sat, 1 Mar 2025 10:00:00 +0000\r\n" +
		"From: Alice <" + env.Sender + ">\r\n" +
		"To: " + env.Recipients[0].Address + "\r\n" +
		"Subject: " + subject + "\r\n" +
		"Message-ID: <" + strings.ReplaceAll(subject, " ", "-") + "@alpha.test>\r\n" +
		"\r\n" +
		"Hello from alpha: " + subject + "\r\n")
	if _, err := st.DeliverEnvelope(context.Background(), env, msg); err != nil {
		t.Fatal(err)
	}
	return msg
}

func envelope(from string, to ...string) mailstore.Envelope {
	env := mailstore.Envelope{Sender: from}
	for _, a := range to {
		env.Recipients = append(env.Recipients, mailstore.Recipient{Address: a})
	}
	return env
}

// alpha is the sending side of most tests: a store for alpha.test with
// alice, and a relay over it resolving through dns.
type alpha struct {
	store *mailstore.Store
	relay *Relay
	clock *storetest.Clock
	log   *storetest.SyncBuffer
}

func newAlpha(t testing.TB, d *msgauthtest.DNS, port uint16, change ...func(*Config)) *alpha {
	t.Helper()
	clock := storetest.NewClock()
	st := newStore(t, clock, []string{"alpha.test"}, "alice@alpha.test")
	return newAlphaOn(t, st, clock, d, port, change...)
}

func newAlphaOn(t testing.TB, st *mailstore.Store, clock *storetest.Clock, d *msgauthtest.DNS, port uint16, change ...func(*Config)) *alpha {
	lb := &storetest.SyncBuffer{}
	now := time.Now
	if clock != nil {
		now = clock.Now
	}
	cfg := Config{
		Hostname: "mail.alpha.test",
		Resolver: NewResolver(d.Addr),
		Port:     int(port),
		Now:      now,
		Logger:   slog.New(slog.NewTextHandler(lb, nil)),
		Timeouts: Timeouts{Connect: 5 * time.Second, Command: 10 * time.Second, DataInit: 10 * time.Second,
			DataBlock: 10 * time.Second, DataEnd: 10 * time.Second},
	}
	for _, c := range change {
		c(&cfg)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("relay log:\n%s", lb.String())
		}
	})
	return &alpha{store: st, relay: New(cfg, st), clock: clock, log: lb}
}

func (a *alpha) runOnce(t testing.TB) {
	t.Helper()
	if err := a.relay.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// listenAny listens on 127.0.0.1 at a free port: the first MX's listener,
// whose port the relay dials on every MX.
func listenAny(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// listenOn listens on another loopback address at the same port, for a
// second MX; tests that need one skip where that is impossible.
func listenOn(t testing.TB, ip string, port uint16) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", netip.AddrPortFrom(netip.MustParseAddr(ip), port).String())
	if err != nil {
		if errors.Is(err, syscall.EADDRNOTAVAIL) {
			t.Skipf("cannot listen on %s: %v", ip, err)
		}
		t.Fatal(err)
	}
	return ln
}
