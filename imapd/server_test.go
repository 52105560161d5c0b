package imapd

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
)

func TestCapabilities(t *testing.T) {
	env := newEnv(t)
	c := env.dial(t, nil)
	caps, err := c.Capability().Wait()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []imap.Cap{imap.CapIMAP4rev1, imap.CapIMAP4rev2, imap.CapNamespace, imap.CapUIDPlus,
		imap.CapESearch, imap.CapSearchRes, imap.CapListExtended, imap.CapListStatus, imap.CapMove,
		imap.CapStatusSize, imap.CapBinary, imap.CapChildren, imap.CapSpecialUse, imap.CapCreateSpecialUse,
		imap.CapLiteralPlus, imap.CapUnauthenticate, imap.CapIdle, imap.CapEnable, imap.CapUnselect,
		imap.CapSASLIR, imap.CapUTF8Accept, "APPENDLIMIT=33554432"} {
		if !caps.Has(want) {
			t.Errorf("capability %s missing from %v", want, caps)
		}
	}
}

func TestLoginRefusedWithoutTLS(t *testing.T) {
	env := newEnv(t, func(c *Config) {
		c.Secure = func(net.Conn) bool { return false } // as if the client were remote
	})
	rc := dialRaw(t, env.addr)
	caps := rc.cmd("a", "CAPABILITY")
	if !strings.Contains(caps[0], "LOGINDISABLED") || !strings.Contains(caps[0], "STARTTLS") || strings.Contains(caps[0], "AUTH=PLAIN") {
		t.Errorf("CAPABILITY without TLS = %q, want LOGINDISABLED and STARTTLS", caps[0])
	}
	if got := rc.cmd("b", `LOGIN u@example.test "secret pw"`); !strings.HasPrefix(got[len(got)-1], "b NO [PRIVACYREQUIRED]") {
		t.Errorf("LOGIN without TLS = %q", got)
	}
	if got := rc.cmd("c", "AUTHENTICATE PLAIN AHVAZXhhbXBsZS50ZXN0AHNlY3JldCBwdw=="); !strings.HasPrefix(got[len(got)-1], "c NO [PRIVACYREQUIRED]") {
		t.Errorf("AUTHENTICATE without TLS = %q", got)
	}

	// After STARTTLS, the same server lets the login through.
	c, err := imapclient.DialStartTLS(env.addr, &imapclient.Options{TLSConfig: env.clientTLS()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(testUser, testPass).Wait(); err != nil {
		t.Fatalf("login after STARTTLS: %v", err)
	}
	// And so does implicit TLS.
	c2, err := imapclient.DialTLS(env.tls, &imapclient.Options{TLSConfig: env.clientTLS()})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := c2.Authenticate(sasl.NewPlainClient("", testUser, testPass)); err != nil {
		t.Fatalf("AUTHENTICATE PLAIN over TLS: %v", err)
	}
}

func TestAllowInsecureAuth(t *testing.T) {
	env := newEnv(t, func(c *Config) {
		c.Secure = func(net.Conn) bool { return false }
		c.AllowInsecureAuth = true
	})
	rc := dialRaw(t, env.addr)
	if got := rc.cmd("a", `LOGIN u@example.test "secret pw"`); !strings.HasPrefix(got[len(got)-1], "a OK") {
		t.Errorf("LOGIN with AllowInsecureAuth = %q", got)
	}
}

func TestLoginFailures(t *testing.T) {
	env := newEnv(t)
	rc := dialRaw(t, env.addr)
	for i := 0; i < maxAuthFailures-1; i++ {
		got := rc.cmd("a", `LOGIN u@example.test wrong`)
		if !strings.HasPrefix(got[len(got)-1], "a NO [AUTHENTICATIONFAILED]") {
			t.Fatalf("bad password = %q", got)
		}
	}
	got := rc.cmd("b", `LOGIN u@example.test "secret pw"`)
	if !strings.HasPrefix(got[len(got)-1], "b OK") {
		t.Fatalf("good password after failures = %q", got)
	}
	if strings.Contains(env.logs.String(), "secret pw") {
		t.Error("the password shows in the log")
	}

	// maxAuthFailures ends the session.
	rc2 := dialRaw(t, env.addr)
	for i := 0; i < maxAuthFailures-1; i++ {
		rc2.cmd("a", `LOGIN u@example.test wrong`)
	}
	fmt.Fprintf(rc2.c, "z LOGIN u@example.test wrong\r\n")
	rc2.c.SetReadDeadline(time.Now().Add(waitTimeout))
	all, _ := io.ReadAll(rc2.c)
	if !strings.Contains(string(all), "* BYE") {
		t.Errorf("after %d failures the server said %q, want BYE", maxAuthFailures, all)
	}
}

func TestThrottlePerIP(t *testing.T) {
	th := newThrottle()
	now := time.Now()
	for i := 0; i < maxAuthFailuresPerIP; i++ {
		if th.blocked("192.0.2.1", now) {
			t.Fatalf("blocked after %d failures", i)
		}
		th.fail("192.0.2.1", now)
	}
	if !th.blocked("192.0.2.1", now) {
		t.Error("not blocked after maxAuthFailuresPerIP failures")
	}
	if th.blocked("192.0.2.2", now) {
		t.Error("another address is blocked")
	}
	if th.blocked("192.0.2.1", now.Add(authFailureWindow+time.Second)) {
		t.Error("still blocked after the window")
	}
}

func TestConnectionLimits(t *testing.T) {
	env := newEnv(t, func(c *Config) { c.MaxConnectionsPerIP = 2 })
	dialRaw(t, env.addr)
	dialRaw(t, env.addr)
	c, err := net.Dial("tcp", env.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(waitTimeout))
	buf := make([]byte, 200)
	n, _ := c.Read(buf)
	if got := string(buf[:n]); !strings.HasPrefix(got, "* BYE") {
		t.Errorf("third connection got %q, want BYE", got)
	}
}

func TestShutdownSaysBye(t *testing.T) {
	env := newEnv(t)
	rc := dialRaw(t, env.addr)
	rc.cmd("a", `LOGIN u@example.test "secret pw"`)
	rc.cmd("b", "SELECT INBOX")
	if _, err := rc.c.Write([]byte("c IDLE\r\n")); err != nil {
		t.Fatal(err)
	}
	if l := rc.readLine(); !strings.HasPrefix(l, "+") {
		t.Fatalf("IDLE = %q", l)
	}
	idle := dialRaw(t, env.addr) // not logged in, waiting for a command
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	start := time.Now()
	if err := env.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Shutdown took %v with only idle sessions", d)
	}
	for _, c := range []*rawConn{rc, idle} {
		if l := c.readLine(); !strings.HasPrefix(l, "* BYE") {
			t.Errorf("got %q, want BYE", l)
		}
	}
	if _, err := net.Dial("tcp", env.addr); err == nil {
		t.Error("listener still accepts after Shutdown")
	}
}

func TestTraceRedactsSecrets(t *testing.T) {
	env := newEnv(t, func(c *Config) { c.Trace = true })
	rc := dialRaw(t, env.addr)
	rc.cmd("a", `LOGIN u@example.test "secret pw"`)
	rc.cmd("b", "AUTHENTICATE PLAIN AHVAZXhhbXBsZS50ZXN0AHNlY3JldCBwdw==")
	rc.cmd("c", "SELECT INBOX")
	rc.cmd("d", "LOGOUT")
	// The trace sees a line just after the socket does: wait for the last.
	deadline := time.Now().Add(waitTimeout)
	for !strings.Contains(env.logs.String(), `dir=S line="d OK`) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	logs := env.logs.String()
	for _, secret := range []string{"secret pw", "AHVAZXhhbXBsZS50ZXN0AHNlY3JldCBwdw=="} {
		if strings.Contains(logs, secret) {
			t.Errorf("trace shows %q:\n%s", secret, logs)
		}
	}
	for _, want := range []string{`dir=C line="a LOGIN ***"`, `dir=S line="a OK`, `dir=C line="c SELECT INBOX"`, `dir=S line="* OK [UIDVALIDITY`} {
		if !strings.Contains(logs, want) {
			t.Errorf("trace lacks %s:\n%s", want, logs)
		}
	}
}

func TestUnauthenticate(t *testing.T) {
	env := newEnv(t)
	c := env.dial(t, nil)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Unauthenticate().Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err == nil {
		t.Error("SELECT works after UNAUTHENTICATE")
	}
	if err := c.Login(testUser, testPass).Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestSilentTLSClientIsDropped(t *testing.T) {
	env := newEnv(t)
	c, err := net.Dial("tcp", env.tls)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Say nothing. The server gives up after tlsHandshakeTimeout; here it
	// is enough that the session is counted and Shutdown still ends it.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	env.srv.Shutdown(ctx)
	c.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := io.ReadAll(c); err != nil {
		t.Errorf("connection not closed by Shutdown: %v", err)
	}
}
