package smtpd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
)

// dialFrom connects from a given loopback address (all of 127/8 is
// loopback on Linux) and returns the first reply.
func dialFrom(t *testing.T, addr, from string) (net.Conn, string) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Skipf("cannot dial from %s: %v", from, err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, _ := bufio.NewReader(conn).ReadString('\n')
	return conn, strings.TrimRight(line, "\r\n")
}

func TestConnectionLimits(t *testing.T) {
	// One budget for the whole process, as cmd/postern makes it.
	e := newTestEnv(t, func(c *Config) {
		c.Shared.Conns = limits.NewConns(3, 2, nil)
		c.Limits.MaxConnectionsPerAddress = 0
		c.SubmissionLimits.MaxConnectionsPerAddress = 0
	})
	a, g := dialFrom(t, e.mx, "127.0.0.1")
	if !strings.HasPrefix(g, "220 ") {
		t.Fatal(g)
	}
	_, g = dialFrom(t, e.sub, "127.0.0.1")
	if !strings.HasPrefix(g, "220 ") {
		t.Fatal(g)
	}
	if _, g = dialFrom(t, e.mx, "127.0.0.1"); g != "421 4.7.0 mx.example.test Too many connections from your address, try again later" {
		t.Errorf("third from one address: %q", g)
	}
	if _, g = dialFrom(t, e.mx, "127.0.0.2"); !strings.HasPrefix(g, "220 ") {
		t.Errorf("from another address: %q", g)
	}
	if _, g = dialFrom(t, e.mx, "127.0.0.3"); g != "421 4.7.0 mx.example.test Too many connections, try again later" {
		t.Errorf("over the total: %q", g)
	}
	// Implicit TLS: the refusal comes over TLS.
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}
	tc, err := tls.DialWithDialer(d, "tcp", e.subTLS, e.clientTLS)
	must(t, err)
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, _ := bufio.NewReader(tc).ReadString('\n')
	tc.Close()
	if !strings.HasPrefix(line, "421 4.7.0 ") {
		t.Errorf("over the total on 465: %q", line)
	}
	// A closed connection frees its place.
	a.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, g = dialFrom(t, e.mx, "127.0.0.1")
		if strings.HasPrefix(g, "220 ") || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.HasPrefix(g, "220 ") {
		t.Errorf("after a close: %q", g)
	}
}

func TestCommandTimeout(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.Limits.LoginTimeout = 200 * time.Millisecond })
	c := e.dial(t, e.mx)
	c.cmd("EHLO client.example.test", "250")
	start := time.Now()
	c.expect("421 4.4.2 ")
	if d := time.Since(start); d < 150*time.Millisecond || d > 3*time.Second {
		t.Errorf("timed out after %v", d)
	}
	if _, err := c.r.ReadString('\n'); !errors.Is(err, io.EOF) {
		t.Errorf("connection still open: %v", err)
	}
}

func TestSlowDataIsAccepted(t *testing.T) {
	// The whole transfer takes much longer than a command may, but no
	// read waits longer than DataBlockTimeout (RFC 5321 4.5.3.2.5).
	e := newTestEnv(t, func(c *Config) {
		// Generous beside the 150 ms pauses below: under -race on a busy
		// machine a read can be late by a few hundred milliseconds.
		c.Limits.LoginTimeout = 300 * time.Millisecond
		c.DataBlockTimeout = 2 * time.Second
		c.DataTimeout = 20 * time.Second
	})
	for _, bdat := range []bool{false, true} {
		c := e.dial(t, e.mx)
		c.cmd("EHLO client.example.test", "250")
		c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
		c.cmd("RCPT TO:<"+alice+">", "250 ")
		msg := simpleMessage("slow") + strings.Repeat("slow line\r\n", 100)
		if bdat {
			c.send("BDAT " + itoa(len(msg)) + " LAST")
		} else {
			c.cmd("DATA", "354 ")
			msg += ".\r\n"
		}
		for i := 0; i < len(msg); i += len(msg) / 8 {
			c.conn.Write([]byte(msg[i:min(i+len(msg)/8, len(msg))]))
			time.Sleep(150 * time.Millisecond)
		}
		c.expect("250 ")
	}
	if n := len(e.inbox(t, alice)); n != 2 {
		t.Errorf("%d messages stored, want 2", n)
	}
}

func TestStalledData(t *testing.T) {
	e := newTestEnv(t, func(c *Config) {
		c.Limits.LoginTimeout = 300 * time.Millisecond
		c.DataBlockTimeout = 200 * time.Millisecond
		c.DataTimeout = time.Second
	})
	t.Run("stalled", func(t *testing.T) {
		c := e.dial(t, e.mx)
		c.cmd("EHLO client.example.test", "250")
		c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
		c.cmd("RCPT TO:<"+alice+">", "250 ")
		c.cmd("DATA", "354 ")
		c.send("Subject: stalled", "", "half a message")
		c.expect("451 4.4.2 ")
		c.expect("421 ")
	})
	t.Run("trickling past the message limit", func(t *testing.T) {
		c := e.dial(t, e.mx)
		c.cmd("EHLO client.example.test", "250")
		c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
		c.cmd("RCPT TO:<"+alice+">", "250 ")
		c.cmd("DATA", "354 ")
		stop := time.Now().Add(3 * time.Second)
		for time.Now().Before(stop) {
			if _, err := c.conn.Write([]byte("x\r\n")); err != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		c.expect("451 4.4.2 ")
	})
	if n := len(e.inbox(t, alice)); n != 0 {
		t.Errorf("%d messages stored", n)
	}
}

func TestTooManyCommands(t *testing.T) {
	e := newTestEnv(t)
	c := e.dial(t, e.mx)
	const sent = 3000
	go c.conn.Write([]byte("EHLO client.example.test\r\n" + strings.Repeat("NOOP\r\n", sent)))
	c.expect("250")
	ok := 0
	for {
		r := c.reply()
		if strings.HasPrefix(r, "421 ") {
			break
		}
		if !strings.HasPrefix(r, "250 ") {
			t.Fatalf("reply %q", r)
		}
		ok++
	}
	// Lines already buffered when the bound is reached are still answered.
	if ok < minIdleCommands-1 || ok >= sent {
		t.Errorf("%d NOOPs answered before 421", ok)
	}
}

func TestShutdown(t *testing.T) {
	e := newTestEnv(t)
	idle := e.dial(t, e.mx)
	idle.cmd("EHLO client.example.test", "250")
	busy := e.dial(t, e.mx)
	busy.cmd("EHLO client.example.test", "250")
	busy.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	busy.cmd("RCPT TO:<"+alice+">", "250 ")
	busy.cmd("DATA", "354 ")
	busy.send("Subject: in flight", "", "first half")

	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(context.Background()) }()
	idle.expect("421 ")
	if _, err := net.DialTimeout("tcp", e.mx, time.Second); err == nil {
		t.Error("still accepting after Shutdown")
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a message in transfer", err)
	case <-time.After(200 * time.Millisecond):
	}
	busy.send("second half", ".")
	busy.expect("250 ")
	busy.expect("421 ")
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	if n := len(e.inbox(t, alice)); n != 1 {
		t.Errorf("%d messages stored, want the one in flight", n)
	}
}

func TestShutdownDeadline(t *testing.T) {
	e := newTestEnv(t)
	c := e.dial(t, e.mx)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	c.cmd("RCPT TO:<"+alice+">", "250 ")
	c.cmd("DATA", "354 ")
	c.send("Subject: never finished")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := e.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v, want the deadline", err)
	}
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c.r); err != nil {
		t.Errorf("connection not closed: %v", err)
	}
	if n := len(e.inbox(t, alice)); n != 0 {
		t.Errorf("%d messages stored", n)
	}
}

// A flood on the MX never takes the connections submission users need:
// the two listener groups have separate budgets.
func TestSeparateBudgets(t *testing.T) {
	e := newTestEnv(t, func(c *Config) {
		c.Limits = limits.Protocol{MaxConnections: 3, MaxConnectionsPerAddress: 100}
		c.SubmissionLimits = limits.Protocol{MaxConnections: 2, MaxConnectionsPerAddress: 100}
	})
	for range 3 {
		e.dial(t, e.mx)
	}
	if _, g := dialFrom(t, e.mx, "127.0.0.1"); g != "421 4.7.0 mx.example.test Too many connections, try again later" {
		t.Fatalf("MX over its budget: %q", g)
	}
	// Submission still answers, on both its listeners, until its own
	// budget is spent.
	c := e.dial(t, e.sub)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("AUTH PLAIN "+plainAuth(alice, alicePassword), "235 ")
	e.dialTLS(t)
	if _, g := dialFrom(t, e.sub, "127.0.0.1"); !strings.HasPrefix(g, "421 4.7.0 ") {
		t.Fatalf("submission over its budget: %q", g)
	}
}

func TestPerAddressLimit(t *testing.T) {
	e := newTestEnv(t, func(c *Config) {
		c.Limits = limits.Protocol{MaxConnectionsPerAddress: 2}
		c.SubmissionLimits = limits.Protocol{MaxConnectionsPerAddress: 1}
	})
	dialFrom(t, e.mx, "127.0.0.1")
	dialFrom(t, e.mx, "127.0.0.1")
	if _, g := dialFrom(t, e.mx, "127.0.0.1"); g != "421 4.7.0 mx.example.test Too many connections from your address, try again later" {
		t.Errorf("third from one address: %q", g)
	}
	if _, g := dialFrom(t, e.mx, "127.0.0.2"); !strings.HasPrefix(g, "220 ") {
		t.Errorf("from another address: %q", g)
	}
	if _, g := dialFrom(t, e.sub, "127.0.0.1"); !strings.HasPrefix(g, "220 ") {
		t.Errorf("submission, first from the address: %q", g)
	}
	if _, g := dialFrom(t, e.sub, "127.0.0.1"); !strings.HasPrefix(g, "421 4.7.0 ") {
		t.Errorf("submission, second from the address: %q", g)
	}
}

// Failed logins recorded by another protocol through the same Logins block
// AUTH here, even with the right password.
func TestCrossProtocolLoginBlock(t *testing.T) {
	logins := limits.NewLogins(limits.LoginPolicy{MaxFailures: 3, FailureDelay: -1})
	e := newTestEnv(t, func(c *Config) { c.Shared.Logins = logins })
	c := e.dial(t, e.sub)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("AUTH PLAIN "+plainAuth(alice, alicePassword), "235 ")

	wrong := func(context.Context) (bool, error) { return false, nil }
	for range 3 {
		err := logins.Check(context.Background(), limits.Attempt{Protocol: "pop3", Mechanism: "USER",
			Remote: netip.MustParseAddr("127.0.0.1"), User: alice}, wrong)
		if !errors.Is(err, limits.ErrLoginFailed) {
			t.Fatalf("pop3 check: %v", err)
		}
	}
	c = e.dial(t, e.sub)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("AUTH PLAIN "+plainAuth(alice, alicePassword), "454 4.7.0 ")
	c.cmd("MAIL FROM:<"+alice+">", "530 5.7.0 ")
	// Another address is not blocked.
	conn, g := dialFrom(t, e.sub, "127.0.0.2")
	if !strings.HasPrefix(g, "220 ") {
		t.Fatal(g)
	}
	c2 := &raw{t: t, conn: conn, r: bufio.NewReader(conn)}
	c2.cmd("EHLO client.example.test", "250")
	c2.cmd("AUTH PLAIN "+plainAuth(alice, alicePassword), "235 ")
}

// With one password-check slot, concurrent AUTH never check two passwords
// with the store at once, and all get their answer.
func TestPasswordChecksBounded(t *testing.T) {
	logins := limits.NewLogins(limits.LoginPolicy{MaxHashes: 1, MaxFailures: 1000, FailureDelay: -1})
	e := newTestEnv(t, func(c *Config) { c.Shared.Logins = logins })
	var running, most atomic.Int32
	check := e.srv.checkPassword
	e.srv.checkPassword = func(ctx context.Context, user, password string) (mailstore.User, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(5 * time.Millisecond) // let others try to overlap
		return check(ctx, user, password)
	}
	const clients = 24
	var wg sync.WaitGroup
	replies := make(chan string, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.DialTimeout("tcp", e.sub, 5*time.Second)
			if err != nil {
				replies <- err.Error()
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(30 * time.Second))
			r := bufio.NewReader(conn)
			password := alicePassword
			if i%2 == 1 {
				password = "wrong"
			}
			io.WriteString(conn, "EHLO client.example.test\r\nAUTH PLAIN "+plainAuth(alice, password)+"\r\n")
			var last string
			for !strings.HasPrefix(last, "235 ") && !strings.HasPrefix(last, "535 ") && !strings.HasPrefix(last, "454 ") {
				line, err := r.ReadString('\n')
				if err != nil {
					replies <- "read: " + err.Error()
					return
				}
				last = line
			}
			replies <- last[:3] + map[bool]string{true: " wrong", false: " right"}[password == "wrong"]
		}()
	}
	wg.Wait()
	close(replies)
	for r := range replies {
		if r != "235 right" && r != "535 wrong" {
			t.Errorf("reply %q", r)
		}
	}
	if m := most.Load(); m != 1 {
		t.Errorf("%d password checks ran at once, want 1", m)
	}
}

func TestMaxErrors(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.Limits.MaxErrors = 3 })
	t.Run("go-smtp's own refusals", func(t *testing.T) {
		c := e.dial(t, e.mx)
		c.cmd("EHLO client.example.test", "250")
		for range 3 {
			c.cmd("MAIL FROM:<s@elsewhere.test> FOO=BAR", "500 5.5.4 ")
		}
		// Pipelined: the fourth error ends the session; what follows is
		// not answered.
		c.send("MAIL FROM:<s@elsewhere.test> FOO=BAR", "NOOP", "NOOP")
		c.expect("500 5.5.4 ")
		c.expect("421 4.7.0 mx.example.test Too many errors")
		c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if rest, err := io.ReadAll(c.r); err != nil || len(rest) > 0 {
			t.Errorf("after 421: %q, %v", rest, err)
		}
	})
	t.Run("refused recipients beyond a few", func(t *testing.T) {
		c := e.dial(t, e.mx)
		c.cmd("EHLO client.example.test", "250")
		c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
		for i := range freeRcptRefusals + 3 {
			c.cmd("RCPT TO:<nobody"+itoa(i)+"@example.test>", "550 5.1.1 ")
		}
		c.cmd("RCPT TO:<someone@example.test>", "421 4.7.0 ")
	})
	t.Run("a delivered message restarts the count", func(t *testing.T) {
		c := e.dial(t, e.mx)
		c.cmd("EHLO client.example.test", "250")
		for range 3 {
			c.cmd("MAIL FROM:<s@elsewhere.test> FOO=BAR", "500 ")
		}
		c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
		c.cmd("RCPT TO:<"+alice+">", "250 ")
		if r := c.data(simpleMessage("ok")); !strings.HasPrefix(r, "250 ") {
			t.Fatal(r)
		}
		for range 3 {
			c.cmd("MAIL FROM:<s@elsewhere.test> FOO=BAR", "500 ")
		}
		c.cmd("NOOP", "250 ")
	})
	t.Run("under STARTTLS", func(t *testing.T) {
		c := e.dial(t, e.mx)
		c.cmd("EHLO client.example.test", "250")
		c.startTLS(e.clientTLS)
		c.cmd("EHLO client.example.test", "250")
		for range 3 {
			c.cmd("RCPT TO:<"+alice+">", "502 5.5.1 ")
		}
		c.cmd("RCPT TO:<"+alice+">", "502 5.5.1 ")
		c.expect("421 4.7.0 ")
	})
}
