package pop3d

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/mailstore/limits"
)

// The refusals a client over the connection limits gets instead of the
// greeting (RFC 3206 section 4).
const (
	refusedPerAddress = "-ERR [SYS/TEMP] too many connections from this address, try again later"
	refusedTotal      = "-ERR [SYS/TEMP] too many connections, try again later"
)

// refusal reads the one line a refused connection gets and checks that
// the server closes it after that line.
func refusal(t *testing.T, conn net.Conn) string {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(clientTimeout))
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read refusal: %q, %v", line, err)
	}
	if rest, err := io.ReadAll(r); err != nil || len(rest) > 0 {
		t.Errorf("after the refusal: %q, %v; want the connection closed", rest, err)
	}
	return strings.TrimSuffix(line, "\r\n")
}

// greetedFrom dials from the address from until the server greets it:
// a connection's place in the budget is given back just after the client
// sees its end.
func greetedFrom(t *testing.T, addr, from string) *client {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn := dialRaw(t, addr, from)
		conn.SetReadDeadline(time.Now().Add(clientTimeout))
		r := bufio.NewReader(conn)
		line, err := r.ReadString('\n')
		if strings.HasPrefix(line, "+OK ") {
			return &client{t: t, conn: conn, r: r}
		}
		if !strings.HasPrefix(line, "-ERR [SYS/TEMP]") || time.Now().After(deadline) {
			t.Fatalf("greeting from %s: %q, %v", from, line, err)
		}
		conn.Close()
		time.Sleep(10 * time.Millisecond)
	}
}

// TestConnectionsPerAddress: one client address may hold
// MaxConnectionsPerAddress connections; one more gets -ERR [SYS/TEMP] and
// is closed, while other addresses are served.
func TestConnectionsPerAddress(t *testing.T) {
	st := openStore(t)
	ts := startServer(t, st, func(cfg *Config) { cfg.Limits.MaxConnectionsPerAddress = 3 })
	var held []*client
	for range 3 {
		held = append(held, dialFrom(t, ts.addr, "127.0.0.2"))
	}
	if got := refusal(t, dialRaw(t, ts.addr, "127.0.0.2")); got != refusedPerAddress {
		t.Errorf("fourth connection from one address: %q, want %q", got, refusedPerAddress)
	}
	other := dialFrom(t, ts.addr, "127.0.0.3")
	other.login(alice, alicePass)
	other.ok("QUIT")
	// The held sessions are still served.
	for _, c := range held {
		c.ok("CAPA")
		c.body()
	}
	// A connection that ends gives its place back.
	held[0].ok("QUIT")
	c := greetedFrom(t, ts.addr, "127.0.0.2")
	c.login(bob, bobPass)
	c.ok("QUIT")
	if logs := ts.logs.String(); !strings.Contains(logs, `msg=refused what=connection`) || !strings.Contains(logs, "remote=127.0.0.2:") {
		t.Errorf("refusal not logged with the client address:\n%s", logs)
	}
}

// TestConnectionsTotal: the server's own budget and the process-wide one
// (its parent, Shared.Conns) both bound connections from all addresses,
// on the STLS and the implicit-TLS listener alike.
func TestConnectionsTotal(t *testing.T) {
	st := openStore(t)
	serverTLS, clientTLS := testTLS(t)
	ts := startServer(t, st, func(cfg *Config) {
		cfg.Limits.MaxConnections = 2
		cfg.TLSConfig = serverTLS
	})
	a := dialFrom(t, ts.addr, "127.0.1.1")
	b := dialTLS(t, ts.tlsAddr, clientTLS)
	if got := refusal(t, dialRaw(t, ts.addr, "127.0.1.3")); got != refusedTotal {
		t.Errorf("third connection: %q, want %q", got, refusedTotal)
	}
	// On the implicit-TLS port the refusal comes inside TLS.
	tc := tls.Client(dialRaw(t, ts.tlsAddr, "127.0.1.4"), clientTLS)
	tc.SetDeadline(time.Now().Add(clientTimeout))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake of a refused connection: %v", err)
	}
	if got := refusal(t, tc); got != refusedTotal {
		t.Errorf("third connection over TLS: %q, want %q", got, refusedTotal)
	}
	a.ok("QUIT")
	b.ok("QUIT")
	greetedFrom(t, ts.addr, "127.0.1.5").ok("QUIT")

	// The process-wide budget is shared with the other servers: with two
	// places taken elsewhere, POP3 has none left, whatever its own limit.
	process := limits.NewConns(3, 0, nil)
	ts2 := startServer(t, st, func(cfg *Config) { cfg.Shared.Conns = process })
	c := dialFrom(t, ts2.addr, "127.0.1.6")
	for i := range 2 {
		release, err := process.Acquire(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}))
		if err != nil {
			t.Fatal(err)
		}
		defer release()
	}
	if got := refusal(t, dialRaw(t, ts2.addr, "127.0.1.7")); got != refusedTotal {
		t.Errorf("connection over the process-wide budget: %q, want %q", got, refusedTotal)
	}
	c.login(alice, alicePass)
	c.ok("QUIT")
}

// TestLoginTimeout: before login a silent client is dropped after
// LoginTimeout; after login IdleTimeout applies.
func TestLoginTimeout(t *testing.T) {
	st := openStore(t)
	const loginTimeout = 300 * time.Millisecond
	ts := startServer(t, st, func(cfg *Config) {
		cfg.Limits.LoginTimeout = loginTimeout
		cfg.Limits.IdleTimeout = time.Minute
	})
	idle := dial(t, ts.addr)
	start := time.Now()
	if !idle.closed() {
		t.Fatal("connection without login still open")
	}
	if took := time.Since(start); took < loginTimeout*3/4 {
		t.Errorf("closed after %v, before the login timeout", took)
	}
	// USER is not a login: the timeout still applies after it.
	user := dial(t, ts.addr)
	user.ok("USER " + alice)
	if !user.closed() {
		t.Fatal("connection after USER still open")
	}

	c := dial(t, ts.addr)
	c.login(alice, alicePass)
	time.Sleep(3 * loginTimeout)
	c.ok("STAT")
	c.ok("QUIT")
	if !strings.Contains(ts.logs.String(), `state=AUTHORIZATION errors=0 reason="idle timeout"`) {
		t.Errorf("log does not name the timeout:\n%s", ts.logs.String())
	}
}

// TestMaxErrorsConfigured: unknown commands, bad arguments and failed
// logins count towards Limits.MaxErrors; the last one's -ERR ends the
// session.
func TestMaxErrorsConfigured(t *testing.T) {
	st := openStore(t)
	ts := startServer(t, st, func(cfg *Config) { cfg.Limits.MaxErrors = 3 })
	c := dial(t, ts.addr)
	if got := c.cmd("XYZZY"); got != "-ERR unknown command" {
		t.Errorf("unknown command: %q", got)
	}
	if got := c.cmd("USER"); got != "-ERR syntax error in arguments" {
		t.Errorf("USER without a name: %q", got)
	}
	c.ok("USER " + alice)
	if got := c.cmd("PASS wrong"); !strings.HasPrefix(got, "-ERR [AUTH]") {
		t.Errorf("wrong password: %q", got)
	}
	if !c.closed() {
		t.Error("connection open after 3 errors")
	}

	c = dial(t, ts.addr)
	for range 2 {
		if got := c.cmd("AUTH PLAIN " + plainIR("", alice, "wrong")); !strings.HasPrefix(got, "-ERR [AUTH]") {
			t.Fatalf("wrong password: %q", got)
		}
	}
	c.login(alice, alicePass)
	if got := c.cmd("RETR 1"); !strings.HasPrefix(got, "-ERR") {
		t.Fatalf("RETR of a missing message: %q", got)
	}
	if !c.closed() {
		t.Error("connection open after 3 errors")
	}
}

// TestCrossProtocolBlocking: failed logins recorded in the shared Logins
// by another protocol block POP3 logins from that address, even with the
// right password, and POP3's failures block the address for the others.
func TestCrossProtocolBlocking(t *testing.T) {
	st := openStore(t)
	logins := noDelayLogins(limits.LoginPolicy{MaxFailures: 3})
	ts := startServer(t, st, func(cfg *Config) { cfg.Shared.Logins = logins })

	blocked := netip.MustParseAddr("127.0.2.1")
	for range 3 {
		err := logins.Check(context.Background(), limits.Attempt{Protocol: "imap", Mechanism: "LOGIN", Remote: blocked, User: alice},
			func(context.Context) (bool, error) { return false, nil })
		if err != limits.ErrLoginFailed {
			t.Fatalf("IMAP failure: %v", err)
		}
	}
	const refusedBlocked = "-ERR [SYS/TEMP] too many failed logins from this address, try again later"
	c := dialFrom(t, ts.addr, blocked.String())
	c.ok("USER " + alice)
	if got := c.cmd("PASS " + alicePass); got != refusedBlocked {
		t.Errorf("USER/PASS from a blocked address: %q, want %q", got, refusedBlocked)
	}
	if got := c.cmd("AUTH PLAIN " + plainIR("", alice, alicePass)); got != refusedBlocked {
		t.Errorf("AUTH PLAIN from a blocked address: %q, want %q", got, refusedBlocked)
	}
	// Another address is not touched.
	dialFrom(t, ts.addr, "127.0.2.2").login(alice, alicePass)

	// POP3's failures count for every protocol.
	guesser := netip.MustParseAddr("127.0.2.3")
	g := dialFrom(t, ts.addr, guesser.String())
	g.ok("USER " + bob)
	g.cmd("PASS wrong")
	g.cmd("AUTH PLAIN " + plainIR("", bob, "wrong"))
	g.cmd("AUTH PLAIN " + plainIR(alice, bob, bobPass)) // another authorization identity
	if !logins.Blocked(guesser) {
		t.Fatal("three POP3 failures did not block the address")
	}
	err := logins.Check(context.Background(), limits.Attempt{Protocol: "smtp", Mechanism: "PLAIN", Remote: guesser, User: bob},
		func(context.Context) (bool, error) { return true, nil })
	if err != limits.ErrBlocked {
		t.Errorf("SMTP login after POP3 failures: %v, want ErrBlocked", err)
	}

	// One log line per failure, in limits' form, with the address alone.
	var failed []string
	for _, l := range strings.Split(ts.logs.String(), "\n") {
		if strings.Contains(l, `msg="login failed"`) {
			failed = append(failed, l)
			if strings.Count(l, "remote=") != 1 {
				t.Errorf("failed-login line names the remote more than once: %s", l)
			}
		}
	}
	if len(failed) != 5 {
		t.Errorf("%d failed-login lines, want 5 (2 blocked, 3 wrong):\n%s", len(failed), strings.Join(failed, "\n"))
	}
	for _, want := range []string{
		"protocol=pop3 remote=127.0.2.1 user=alice@example.org mechanism=USER reason=\"address blocked\"",
		"protocol=pop3 remote=127.0.2.1 user=alice@example.org mechanism=PLAIN reason=\"address blocked\"",
		"protocol=pop3 remote=127.0.2.3 user=bob@example.org mechanism=USER reason=\"wrong credentials\"",
		"protocol=pop3 remote=127.0.2.3 user=bob@example.org mechanism=PLAIN reason=\"wrong credentials, address now blocked\"",
	} {
		if !strings.Contains(strings.Join(failed, "\n"), want) {
			t.Errorf("no failed-login line with %s:\n%s", want, strings.Join(failed, "\n"))
		}
	}
}

// TestLoginGateBusy: password checks wait in the shared gate; with its
// one slot taken and its queue of one full, further logins get
// -ERR [SYS/TEMP] at once, and the one waiting gets through when the slot
// is free.
func TestLoginGateBusy(t *testing.T) {
	st := openStore(t)
	logins := noDelayLogins(limits.LoginPolicy{MaxHashes: 1, HashQueue: 1, HashWait: time.Minute})
	ts := startServer(t, st, func(cfg *Config) { cfg.Shared.Logins = logins })

	// Another protocol's password check holds the only slot.
	running, release := make(chan struct{}), make(chan struct{})
	held := make(chan error, 1)
	go func() {
		held <- logins.Check(context.Background(), limits.Attempt{Protocol: "imap", Remote: netip.MustParseAddr("127.0.3.1")},
			func(context.Context) (bool, error) {
				close(running)
				<-release
				return true, nil
			})
	}()
	<-running

	const n = 8
	clients := make([]*client, n)
	for i := range clients {
		clients[i] = dialFrom(t, ts.addr, fmt.Sprintf("127.0.3.%d", 10+i))
		clients[i].ok("USER " + alice)
	}
	replies := make(chan string, n)
	for _, c := range clients {
		go func() {
			c.conn.SetDeadline(time.Now().Add(clientTimeout))
			io.WriteString(c.conn, "PASS "+alicePass+"\r\n")
			line, err := c.readLine()
			if err != nil {
				line = "read error: " + err.Error()
			}
			replies <- line
		}()
	}
	const busy = "-ERR [SYS/TEMP] too many logins in progress, try again later"
	for range n - 1 {
		if got := <-replies; got != busy {
			t.Errorf("login with the gate full: %q, want %q", got, busy)
		}
	}
	select {
	case got := <-replies:
		t.Fatalf("a login was answered while the only slot was held: %q", got)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if err := <-held; err != nil {
		t.Errorf("held check: %v", err)
	}
	if got := <-replies; !strings.HasPrefix(got, "+OK maildrop locked") {
		t.Errorf("the waiting login: %q", got)
	}
	// A busy answer is not the client's fault: those sessions go on and
	// may try again.
	for _, c := range clients {
		c.cmd("QUIT")
	}
}

// TestGoodLoginDuringFailures: while many addresses guess passwords
// through a single password-check slot, a correct login from an address
// without failures still succeeds.
func TestGoodLoginDuringFailures(t *testing.T) {
	st := openStore(t)
	logins := noDelayLogins(limits.LoginPolicy{MaxHashes: 1, MaxFailures: 1 << 20})
	ts := startServer(t, st, func(cfg *Config) { cfg.Shared.Logins = logins })

	var failures atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			guess(ts.addr, fmt.Sprintf("127.0.4.%d", 1+i), stop, &failures)
		}()
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()
	deadline := time.Now().Add(30 * time.Second)
	for failures.Load() < 40 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d failed logins in 30s", failures.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	c := dialFrom(t, ts.addr, "127.0.4.200")
	c.ok("USER " + bob)
	if got := c.cmd("PASS " + bobPass); !strings.HasPrefix(got, "+OK") {
		t.Errorf("good login during %d failures from other addresses: %q", failures.Load(), got)
	}
	c.ok("QUIT")
}

// guess logs in from the address from with wrong passwords until stop is
// closed, counting the -ERR [AUTH] answers. It reconnects when the server
// ends the session.
func guess(addr, from string, stop chan struct{}, failures *atomic.Int64) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: clientTimeout}
	for {
		select {
		case <-stop:
			return
		default:
		}
		conn, err := d.Dial("tcp", addr)
		if err != nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		conn.SetDeadline(time.Now().Add(clientTimeout))
		r := bufio.NewReader(conn)
		line, _ := r.ReadString('\n')
		for strings.HasPrefix(line, "+OK") {
			select {
			case <-stop:
				conn.Close()
				return
			default:
			}
			io.WriteString(conn, "USER "+alice+"\r\nPASS wrong\r\n")
			r.ReadString('\n')
			if line, _ = r.ReadString('\n'); strings.HasPrefix(line, "-ERR [AUTH]") {
				failures.Add(1)
				line = "+OK"
			}
		}
		conn.Close()
	}
}
