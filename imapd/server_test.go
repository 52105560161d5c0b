package imapd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"

	"github.com/postern/postern/mailstore/limits"
	"github.com/postern/postern/mailstore/storetest"
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
	const maxErrors = 5
	env := newEnv(t, func(c *Config) { c.Limits.MaxErrors = maxErrors })
	rc := dialRaw(t, env.addr)
	for i := 0; i < maxErrors-1; i++ {
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
	// One line per failure, written by limits for fail2ban.
	if n := strings.Count(env.logs.String(), `protocol=imap remote=127.0.0.1 user=u@example.test mechanism=LOGIN`); n != maxErrors-1 {
		t.Errorf("%d login failure lines, want %d:\n%s", n, maxErrors-1, env.logs)
	}

	// MaxErrors failures end the session.
	rc2 := dialRaw(t, env.addr)
	for i := 0; i < maxErrors-1; i++ {
		rc2.cmd("a", `LOGIN u@example.test wrong`)
	}
	fmt.Fprintf(rc2.c, "z LOGIN u@example.test wrong\r\n")
	rc2.c.SetReadDeadline(time.Now().Add(waitTimeout))
	all, _ := io.ReadAll(rc2.c)
	if !strings.Contains(string(all), "z NO [AUTHENTICATIONFAILED]") || !strings.Contains(string(all), "* BYE") {
		t.Errorf("after %d failures the server said %q, want NO and BYE", maxErrors, all)
	}
}

func TestLoginBlockedAcrossSessions(t *testing.T) {
	logins := limits.NewLogins(limits.LoginPolicy{FailureDelay: -1, MaxFailures: 3})
	env := newEnv(t, func(c *Config) { c.Shared.Logins = logins })
	for i := 0; i < 3; i++ {
		rc := dialRaw(t, env.addr)
		if got := rc.cmd("a", `LOGIN u@example.test wrong`); !strings.HasPrefix(got[len(got)-1], "a NO [AUTHENTICATIONFAILED]") {
			t.Fatalf("bad password = %q", got)
		}
	}
	// Blocked now, even with the right password, on a new connection.
	rc := dialRaw(t, env.addr)
	if got := rc.cmd("b", `LOGIN u@example.test "secret pw"`); !strings.HasPrefix(got[len(got)-1], "b NO [UNAVAILABLE]") {
		t.Errorf("good password from a blocked address = %q", got)
	}
	if got := rc.cmd("c", "AUTHENTICATE PLAIN AHVAZXhhbXBsZS50ZXN0AHNlY3JldCBwdw=="); !strings.HasPrefix(got[len(got)-1], "c NO [UNAVAILABLE]") {
		t.Errorf("AUTHENTICATE from a blocked address = %q", got)
	}
}

func TestConnectionLimits(t *testing.T) {
	env := newEnv(t, func(c *Config) { c.Limits.MaxConnectionsPerAddress = 2 })
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
	if got := string(buf[:n]); !strings.HasPrefix(got, "* BYE [UNAVAILABLE]") {
		t.Errorf("third connection got %q, want BYE [UNAVAILABLE]", got)
	}

	// The process-wide budget, shared with other servers, counts too.
	shared := limits.NewConns(1, 0, nil)
	env2 := newEnv(t, func(c *Config) { c.Shared.Conns = shared })
	dialRaw(t, env2.addr)
	c2, err := net.Dial("tcp", env2.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetReadDeadline(time.Now().Add(waitTimeout))
	n, _ = c2.Read(buf)
	if got := string(buf[:n]); !strings.HasPrefix(got, "* BYE [UNAVAILABLE] Too many connections") {
		t.Errorf("connection over the shared budget got %q", got)
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
	// Credentials where the mechanism goes are hidden too.
	rc.cmd("b2", "AUTHENTICATE dXNlcjpzZWNyZXQ=")
	rc.cmd("c", "SELECT INBOX")
	rc.cmd("d", "LOGOUT")
	// The trace sees a line just after the socket does: wait for the last.
	deadline := time.Now().Add(waitTimeout)
	for !strings.Contains(env.logs.String(), `dir=S line="d OK`) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	logs := env.logs.String()
	for _, secret := range []string{"secret pw", "AHVAZXhhbXBsZS50ZXN0AHNlY3JldCBwdw==", "dXNlcjpzZWNyZXQ="} {
		if strings.Contains(logs, secret) {
			t.Errorf("trace shows %q:\n%s", secret, logs)
		}
	}
	for _, want := range []string{`dir=C line="a LOGIN ***"`, `dir=C line="b2 AUTHENTICATE ***"`, `dir=S line="a OK`, `dir=C line="c SELECT INBOX"`, `dir=S line="* OK [UIDVALIDITY`} {
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
	// EOF or a reset: either way the server closed it (a reset when the
	// close finds the handshake's state unfinished); a timeout is not.
	if _, err := io.ReadAll(c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("connection not closed by Shutdown: %v", err)
	}
}

// panickingHandler panics on a record that names user; other records go
// to the handler it wraps.
type panickingHandler struct {
	slog.Handler
	user string
}

func (h panickingHandler) Handle(ctx context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "user" && a.Value.String() == h.user {
			panic("log handler fails for " + h.user)
		}
		return true
	})
	return h.Handler.Handle(ctx, r)
}

func (h panickingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return panickingHandler{h.Handler.WithAttrs(as), h.user}
}

func (h panickingHandler) WithGroup(name string) slog.Handler {
	return panickingHandler{h.Handler.WithGroup(name), h.user}
}

// TestLoginPanicFailsCommand: a panic in LOGIN's work, which runs on a
// goroutine of its own, fails the command with NO [SERVERBUG] and is
// logged with the session; the session and the server go on.
func TestLoginPanicFailsCommand(t *testing.T) {
	const user = "panic@example.test"
	env := newEnv(t, func(c *Config) {
		// The failed-login line (limits.LogFailure) is written on
		// LOGIN's goroutine.
		c.Logger = slog.New(panickingHandler{c.Logger.Handler(), user})
	})
	rc := dialRaw(t, env.addr)
	if l := last(rc.cmd("a", "LOGIN "+user+" wrong")); !strings.HasPrefix(l, "a NO [SERVERBUG]") {
		t.Fatalf("LOGIN that panics = %q, want NO [SERVERBUG]", l)
	}
	rc.login()
	if l := last(rc.cmd("b", "SELECT INBOX")); !strings.HasPrefix(l, "b OK") {
		t.Fatalf("SELECT after the panic = %q", l)
	}
	logs := env.logs.String()
	if !regexp.MustCompile(`level=ERROR msg="login panicked" server=imap session=\w+ .*err="panic: log handler fails for ` + user + `" stack=`).MatchString(logs) {
		t.Errorf("no ERROR line for the panic with the session in\n%s", logs)
	}
}

// The trace hides credentials however the client spaces its command, and
// whatever it puts where AUTHENTICATE's mechanism goes.
func TestTraceRedactsOddlySpacedSecrets(t *testing.T) {
	for _, line := range []string{
		"a2  LOGIN bob hunter2",
		"a3 LOGIN\tbob\thunter2",
		"a4\tLOGIN bob hunter2",
		"a5 AUTHENTICATE\tPLAIN\tAGJvYgBodW50ZXIy",
		"a6 AUTHENTICATE hunter2",
		"a7 authenticate AGJvYgBodW50ZXIyeHl6",
	} {
		logs := &storetest.SyncBuffer{}
		tw := newTraceWriter(slog.New(slog.NewTextHandler(logs, nil)))
		tw.emit(fromClient, line)
		if out := logs.String(); strings.Contains(out, "hunter2") || strings.Contains(out, "AGJvYgBodW50ZXIy") || !strings.Contains(out, "***") {
			t.Errorf("%q traced as %s", line, out)
		}
	}
}
