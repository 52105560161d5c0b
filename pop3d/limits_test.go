package pop3d

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore/limits"
	"github.com/postern/postern/mailstore/storetest"
)

// TestLineLength: a command line may have 255 octets with its CRLF (RFC
// 2449 section 4); a longer one is refused and the session goes on; one
// that never ends closes the connection.
func TestLineLength(t *testing.T) {
	st := openStore(t)
	ts := startServer(t, st, nil)
	c := dial(t, ts.addr)

	longest := "USER " + strings.Repeat("a", maxCommandLine-len("USER ")-2)
	if got := c.cmd(longest); !strings.HasPrefix(got, "+OK") {
		t.Errorf("255-octet line: %q", got)
	}
	if got := c.cmd(longest + "a"); got != "-ERR line too long (at most 255 octets)" {
		t.Errorf("256-octet line: %q", got)
	}
	// PASS does not follow USER any more: the long line came between.
	if got := c.cmd("PASS " + alicePass); !strings.HasPrefix(got, "-ERR") {
		t.Errorf("PASS after a refused line: %q", got)
	}
	if got := c.cmd("AUTH PLAIN " + strings.Repeat("A", 300)); !strings.HasPrefix(got, "-ERR line too long") {
		t.Errorf("AUTH with a 300-octet initial response: %q", got)
	}
	c.login(alice, alicePass)
	c.ok("STAT")

	// More than maxDiscard without a line end: the server gives up.
	c.conn.Write([]byte(strings.Repeat("x", maxDiscard+readBufferSize+10)))
	if !c.closed() {
		t.Error("connection still open after an endless line")
	}
}

// TestTooManyErrors: the session ends after the reply to the tenth error.
func TestTooManyErrors(t *testing.T) {
	st := openStore(t)
	ts := startServer(t, st, nil)
	c := dial(t, ts.addr)
	for i := 1; i <= DefaultLimits.MaxErrors; i++ {
		if got := c.cmd("XYZZY"); !strings.HasPrefix(got, "-ERR") {
			t.Fatalf("error %d: %q", i, got)
		}
		if i == DefaultLimits.MaxErrors-1 {
			// Good commands do not reset the count.
			c.ok("CAPA")
			c.body()
		}
	}
	if !c.closed() {
		t.Error("connection open after 10 errors")
	}

	// A locked maildrop is not the client's fault: it does not count.
	c1 := dial(t, ts.addr)
	c1.login(alice, alicePass)
	c2 := dial(t, ts.addr)
	for range DefaultLimits.MaxErrors + 2 {
		c2.ok("USER " + alice)
		if got := c2.cmd("PASS " + alicePass); !strings.HasPrefix(got, "-ERR [IN-USE]") {
			t.Fatalf("PASS: %q", got)
		}
	}
	c2.ok("QUIT")
	c1.ok("QUIT")
}

// TestIdleTimeout: a silent client is disconnected without a reply (RFC
// 1939 section 3), and its DELE marks are forgotten.
func TestIdleTimeout(t *testing.T) {
	st := openStore(t)
	appendMessages(t, st, alice, [][]byte{makeMessage(1, 500)})
	ts := startServer(t, st, func(cfg *Config) { cfg.Limits.IdleTimeout = 200 * time.Millisecond })
	c := dial(t, ts.addr)
	c.login(alice, alicePass)
	c.ok("DELE 1")
	start := time.Now()
	if !c.closed() {
		t.Fatal("connection still open")
	}
	if took := time.Since(start); took < 150*time.Millisecond {
		t.Errorf("closed after %v", took)
	}
	c2 := dialRetryInUse(t, ts.addr, alice, alicePass)
	if got := c2.ok("STAT"); !strings.HasPrefix(got, "+OK 1 ") {
		t.Errorf("STAT after idle timeout: %q", got)
	}
	c2.ok("QUIT")
	if !strings.Contains(ts.logs.String(), "reason=\"idle timeout\"") {
		t.Errorf("log does not name the idle timeout:\n%s", ts.logs.String())
	}
}

func TestDefaults(t *testing.T) {
	srv := New(Config{}, nil)
	if srv.lim != DefaultLimits {
		t.Errorf("limits in force %+v, want DefaultLimits %+v", srv.lim, DefaultLimits)
	}
	if DefaultLimits.IdleTimeout < 10*time.Minute {
		t.Errorf("default idle timeout %v: RFC 1939 section 3 wants at least 10 minutes", DefaultLimits.IdleTimeout)
	}
	if d := srv.logins.Policy().FailureDelay; d <= 0 {
		t.Errorf("default failed-login delay %v", d)
	}
	// A field set keeps its value; the others take the defaults.
	srv = New(Config{Limits: limits.Protocol{MaxErrors: 3}}, nil)
	if srv.lim.MaxErrors != 3 || srv.lim.LoginTimeout != DefaultLimits.LoginTimeout || srv.budget.Max() != DefaultLimits.MaxConnections {
		t.Errorf("limits in force %+v", srv.lim)
	}
	if srv.cfg.Hostname == "" {
		t.Error("no default hostname")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.ServeTLS(ln); err == nil || errors.Is(err, ErrServerClosed) {
		t.Errorf("ServeTLS without TLSConfig: %v", err)
	}
}

// TestShutdown: Shutdown stops accepting at once, lets sessions finish
// until its context ends, then closes them without removing anything.
func TestShutdown(t *testing.T) {
	st := openStore(t)
	appendMessages(t, st, alice, [][]byte{makeMessage(1, 500), makeMessage(2, 500)})
	logs := &storetest.SyncBuffer{}
	srv := New(Config{Shared: limits.Shared{Logins: noDelayLogins(limits.LoginPolicy{})}, Logger: slog.New(slog.NewTextHandler(logs, nil))}, st)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	quitter := dial(t, ln.Addr().String())
	quitter.login(bob, bobPass)
	dropped := dial(t, ln.Addr().String())
	dropped.login(alice, alicePass)
	dropped.ok("DELE 1")

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()

	select {
	case err := <-served:
		if !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve still running after Shutdown")
	}
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Error("new connection accepted after Shutdown")
	}
	// Sessions in progress go on.
	dropped.ok("STAT")
	quitter.ok("QUIT")

	select {
	case err := <-shut:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown: %v, want DeadlineExceeded", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	if !dropped.closed() {
		t.Error("session still open after Shutdown's deadline")
	}
	if msgs, _ := storedMessages(t, st, alice); len(msgs) != 2 {
		t.Errorf("%d messages left, want 2", len(msgs))
	}
	if err := srv.Serve(ln); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Shutdown: %v", err)
	}

	// Shutdown with no sessions returns at once.
	srv2 := New(Config{}, st)
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv2.Serve(ln2)
	c := dial(t, ln2.Addr().String())
	c.ok("QUIT")
	if err := srv2.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// TestTrace: with Trace set every line is logged with the session ID and
// direction, and no password or SASL data shows.
func TestTrace(t *testing.T) {
	st := openStore(t)
	appendMessages(t, st, alice, [][]byte{makeMessage(1, 500)})
	ts := startServer(t, st, func(cfg *Config) { cfg.Trace = true })
	c := dial(t, ts.addr)
	c.ok("USER " + alice)
	c.cmd("PASS wrong password")
	c.login(alice, alicePass)
	c.multi("RETR 1")
	c.ok("QUIT")
	c2 := dial(t, ts.addr)
	c2.ok("AUTH PLAIN " + plainIR("", alice, alicePass))
	c2.ok("QUIT")
	c3 := dial(t, ts.addr)
	c3.send("AUTH PLAIN")
	c3.status()
	c3.send(plainIR("", alice, alicePass))
	c3.status()
	c3.ok("QUIT")

	logs := ts.logs.String()
	for _, secret := range []string{alicePass, "wrong password", plainIR("", alice, alicePass), "quick brown fox"} {
		if strings.Contains(logs, secret) {
			t.Errorf("log shows %q:\n%s", secret, logs)
		}
	}
	for _, want := range []string{
		`dir=C line="USER alice@example.org"`,
		`dir=C line="PASS ***"`,
		`dir=C line="AUTH PLAIN ***"`,
		`dir=C line=***`,
		`dir=S line="+OK pop.example.org POP3 server ready"`,
		`dir=S line="<`,
		`msg=auth `,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
	for _, l := range strings.Split(strings.TrimSpace(logs), "\n") {
		if strings.Contains(l, "msg=trace") && !strings.Contains(l, "session=") {
			t.Errorf("trace line without session ID: %s", l)
		}
	}
}
