package imapd

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"
)

// send writes raw bytes.
func (rc *rawConn) send(s string) {
	rc.t.Helper()
	if _, err := io.WriteString(rc.c, s); err != nil {
		rc.t.Fatal(err)
	}
}

// until reads lines up to and including the one starting with prefix.
func (rc *rawConn) until(prefix string) []string {
	rc.t.Helper()
	var out []string
	for {
		l := rc.readLine()
		out = append(out, l)
		if strings.HasPrefix(l, prefix) {
			return out
		}
	}
}

func (rc *rawConn) login() {
	rc.t.Helper()
	if got := rc.cmd("L", `LOGIN u@example.test "secret pw"`); !strings.HasPrefix(got[len(got)-1], "L OK") {
		rc.t.Fatalf("login = %q", got)
	}
}

func last(lines []string) string { return lines[len(lines)-1] }

func TestMalformedInputGetsBAD(t *testing.T) {
	env := newEnv(t)
	rc := dialRaw(t, env.addr)
	rc.login()
	rc.cmd("S", "SELECT INBOX")
	cases := []struct{ name, cmd, want string }{
		{"1 MB command line", "SELECT " + strings.Repeat("x", 1<<20), "a BAD [TOOBIG]"},
		{"invalid UTF-8 mailbox", "SELECT \"\xff\xfe\"", "a BAD"},
		{"invalid modified UTF-7", `CREATE "&Jjo"`, "a BAD"},
		{"modified UTF-7 null shift", `CREATE "&AGE-&AGE-"`, "a BAD"},
		{"NUL in mailbox name", "CREATE \"a\x00b\"", "a BAD"},
		{"deep SEARCH", "SEARCH " + strings.Repeat("(", 20000) + "ALL" + strings.Repeat(")", 20000), "a BAD"},
		{"bad tag", "", "* BAD"},
		{"number overflow", "FETCH 99999999999999999999 FLAGS", "a BAD"},
	}
	for _, tc := range cases {
		var got []string
		if tc.name == "bad tag" {
			rc.send("(x NOOP\r\n")
			got = rc.until("* BAD")
		} else {
			got = rc.cmd("a", tc.cmd)
		}
		if l := last(got); !strings.HasPrefix(l, tc.want) {
			t.Errorf("%s: got %.200q, want %s", tc.name, got, tc.want)
		}
		for _, l := range got {
			if strings.Contains(l, "SERVERBUG") {
				t.Errorf("%s: %q", tc.name, l)
			}
		}
		if l := last(rc.cmd("n", "NOOP")); !strings.HasPrefix(l, "n OK") {
			t.Fatalf("after %s, NOOP = %q", tc.name, l)
		}
	}
	if strings.Contains(env.logs.String(), "level=ERROR") {
		t.Errorf("client errors logged as ERROR:\n%s", env.logs)
	}

	// AUTHENTICATE with an initial response that is not base64.
	rc2 := dialRaw(t, env.addr)
	if l := last(rc2.cmd("b", "AUTHENTICATE PLAIN !!!not-base64")); !strings.HasPrefix(l, "b BAD") {
		t.Errorf("AUTHENTICATE with bad base64 = %q", l)
	}
	// And as a continuation line.
	rc2.send("c AUTHENTICATE PLAIN\r\n")
	if l := rc2.readLine(); !strings.HasPrefix(l, "+") {
		t.Fatalf("AUTHENTICATE = %q", l)
	}
	rc2.send("%%%\r\n")
	if l := last(rc2.until("c ")); !strings.HasPrefix(l, "c BAD") {
		t.Errorf("bad base64 continuation = %q", l)
	}
	rc2.login()
}

func TestLiteralLimits(t *testing.T) {
	env := newEnv(t, func(c *Config) { c.MaxMessageBytes = 1000 })
	rc := dialRaw(t, env.addr)

	// Over the limit: refused at once, no "+".
	rc.send("a LOGIN {4097}\r\n")
	if l := rc.readLine(); !strings.HasPrefix(l, "a NO [TOOBIG]") {
		t.Fatalf("LOGIN {4097} = %q", l)
	}
	// Within it, synchronizing literals are invited one by one.
	rc.send("b LOGIN {14}\r\n")
	if l := rc.readLine(); !strings.HasPrefix(l, "+") {
		t.Fatalf("LOGIN {14} = %q", l)
	}
	rc.send("u@example.test {9}\r\n")
	if l := rc.readLine(); !strings.HasPrefix(l, "+") {
		t.Fatalf("second literal = %q", l)
	}
	rc.send("secret pw\r\n")
	if l := last(rc.until("b ")); !strings.HasPrefix(l, "b OK") {
		t.Fatalf("LOGIN with literals = %q", l)
	}

	// APPEND over MaxMessageBytes: NO [TOOBIG] before the "+".
	rc.send("c APPEND INBOX {1001}\r\n")
	if l := rc.readLine(); !strings.HasPrefix(l, "c NO [TOOBIG]") {
		t.Fatalf("APPEND {1001} = %q", l)
	}
	// The mailbox name as a literal is not the message.
	msg := testMessage(1, "literal")
	rc.send(fmt.Sprintf("d APPEND {5+}\r\nINBOX (\\Seen) {%d+}\r\n%s\r\n", len(msg), msg))
	if l := last(rc.until("d ")); !strings.HasPrefix(l, "d OK [APPENDUID") {
		t.Fatalf("APPEND with literal mailbox = %q", l)
	}
	// A failed command's literals are not read as commands.
	rc.send("e LOGIN {7+}\r\nx LOGOUT\r\n")
	if l := last(rc.until("e ")); !strings.HasPrefix(l, "e BAD") {
		t.Errorf("LOGIN when logged in = %q", l)
	}
	if l := last(rc.cmd("f", "NOOP")); !strings.HasPrefix(l, "f OK") {
		t.Fatalf("NOOP = %q", l)
	}

	// A non-synchronizing literal over the limit ends the session: its
	// data is already on the way.
	rc.send("g LOGIN {5000+}\r\n")
	rc.c.SetReadDeadline(time.Now().Add(waitTimeout))
	all, _ := io.ReadAll(rc.c)
	if !strings.HasPrefix(string(all), "g NO [TOOBIG]") || !strings.Contains(string(all), "* BYE") {
		t.Errorf("LOGIN {5000+} = %q", all)
	}
}

func TestLoginAndIdleTimeouts(t *testing.T) {
	env := newEnv(t, func(c *Config) {
		c.Limits.LoginTimeout = 300 * time.Millisecond
		c.Limits.IdleTimeout = 600 * time.Millisecond
	})
	rc := dialRaw(t, env.addr)
	rc.c.SetReadDeadline(time.Now().Add(waitTimeout))
	all, _ := io.ReadAll(rc.c)
	if !strings.HasPrefix(string(all), "* BYE") {
		t.Errorf("silent client before login got %q, want BYE", all)
	}
	rc2 := dialRaw(t, env.addr)
	rc2.login()
	time.Sleep(400 * time.Millisecond) // past LoginTimeout, within IdleTimeout
	if l := last(rc2.cmd("a", "NOOP")); !strings.HasPrefix(l, "a OK") {
		t.Fatalf("NOOP = %q", l)
	}
	rc2.c.SetReadDeadline(time.Now().Add(waitTimeout))
	all, _ = io.ReadAll(rc2.c)
	if !strings.HasPrefix(string(all), "* BYE") {
		t.Errorf("idle client got %q, want BYE", all)
	}
}

func TestMaxErrors(t *testing.T) {
	env := newEnv(t, func(c *Config) { c.Limits.MaxErrors = 3 })
	rc := dialRaw(t, env.addr)
	rc.login()
	rc.cmd("a", "SELECT \"\xff\"")
	rc.cmd("b", "FROB")
	rc.send("c FETCH x\r\n")
	rc.c.SetReadDeadline(time.Now().Add(waitTimeout))
	all, _ := io.ReadAll(rc.c)
	if !strings.HasPrefix(string(all), "c BAD") || !strings.Contains(string(all), "* BYE") {
		t.Errorf("third BAD: got %q, want BAD then BYE", all)
	}
}

func TestStartTLSDropsInjectedCommands(t *testing.T) {
	env := newEnv(t, func(c *Config) { c.Trace = true })
	rc := dialRaw(t, env.addr)
	// b comes before TLS: it must not run (RFC 2595 3.1).
	rc.send("a STARTTLS\r\nb LOGIN u@example.test \"secret pw\"\r\n")
	if l := rc.readLine(); !strings.HasPrefix(l, "a OK") {
		t.Fatalf("STARTTLS = %q", l)
	}
	tc := tls.Client(rc.c, env.clientTLS())
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	tr := &rawConn{t: t, c: tc}
	caps := tr.cmd("c", "CAPABILITY")
	if strings.Contains(caps[0], "STARTTLS") || strings.Contains(caps[0], "LOGINDISABLED") || !strings.Contains(caps[0], "AUTH=PLAIN") {
		t.Errorf("CAPABILITY after STARTTLS = %q", caps)
	}
	if l := last(caps); !strings.HasPrefix(l, "c OK") {
		t.Errorf("first response after STARTTLS = %q (greeting or injected command leaked?)", caps)
	}
	if l := last(tr.cmd("d", "SELECT INBOX")); !strings.HasPrefix(l, "d BAD") {
		t.Errorf("SELECT before login after STARTTLS = %q: the injected LOGIN ran", l)
	}
	if l := last(tr.cmd("e", `LOGIN u@example.test "secret pw"`)); !strings.HasPrefix(l, "e OK") {
		t.Errorf("LOGIN after STARTTLS = %q", l)
	}
	if l := last(tr.cmd("f", "STARTTLS")); !strings.HasPrefix(l, "f ") || strings.HasPrefix(l, "f OK") {
		t.Errorf("second STARTTLS = %q", l)
	}
	// One session in the log vocabulary, across STARTTLS.
	tc.Close()
	deadline := time.Now().Add(waitTimeout)
	for !strings.Contains(env.logs.String(), `msg="session end"`) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	logs := env.logs.String()
	for msg, n := range map[string]int{
		`msg="session start" `:         1,
		`msg="session end" `:           1,
		`msg="tls handshake" `:         1,
		` result=ok version="TLS 1.3"`: 1,
		` tls="TLS 1.3" duration=`:     1,
		`msg=auth `:                    1,
		` result=ok mechanism=LOGIN`:   1,
	} {
		if got := strings.Count(logs, msg); got != n {
			t.Errorf("%d lines with %s, want %d:\n%s", got, msg, n, logs)
		}
	}
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "session=") && !strings.Contains(l, " proto=imap listener=imap remote=127.0.0.1:") {
			t.Errorf("session line without proto, listener and remote: %s", l)
		}
	}
}

// TestIdleConnectionsHoldNoInputBuffer: a connection waiting for its
// first command, one logged in, one in IDLE and one in IDLE over TLS hold
// no input buffer of ours, and each goes on as before once the client
// speaks.
func TestIdleConnectionsHoldNoInputBuffer(t *testing.T) {
	env := newEnv(t)
	env.deliver(t, testMessage(1, "one"))
	fresh := dialRaw(t, env.addr)
	authed := dialRaw(t, env.addr)
	authed.login()
	idler := dialRaw(t, env.addr)
	tc, err := tls.Dial("tcp", env.tls, env.clientTLS())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	tlsIdler := &rawConn{t: t, c: tc}
	tlsIdler.readLine() // greeting
	for _, rc := range []*rawConn{idler, tlsIdler} {
		rc.login()
		if l := last(rc.cmd("s", "SELECT INBOX")); !strings.HasPrefix(l, "s OK") {
			t.Fatalf("SELECT = %q", l)
		}
		rc.send("i IDLE\r\n")
		rc.until("+")
	}
	deadline := time.Now().Add(waitTimeout)
	for env.srv.inputBuffers.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d input buffers held by idle connections", env.srv.inputBuffers.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	env.deliver(t, testMessage(2, "two"))
	for _, rc := range []*rawConn{idler, tlsIdler} {
		rc.until("* 2 EXISTS")
		rc.send("DONE\r\n")
		if l := last(rc.until("i ")); !strings.HasPrefix(l, "i OK") {
			t.Fatalf("IDLE = %q", l)
		}
	}
	if l := last(fresh.cmd("c", "CAPABILITY")); !strings.HasPrefix(l, "c OK") {
		t.Fatalf("CAPABILITY = %q", l)
	}
	if l := last(authed.cmd("n", "NOOP")); !strings.HasPrefix(l, "n OK") {
		t.Fatalf("NOOP = %q", l)
	}
}

// TestPipelineLongerThanInputBuffer: commands sent in one write, more
// than the input buffer holds, are all answered: what the socket still
// has when the buffer is empty is found without waiting for more. The
// commands are 16 bytes each, so that a buffer's worth ends at a
// command's end and the buffer is empty between two commands.
func TestPipelineLongerThanInputBuffer(t *testing.T) {
	env := newEnv(t)
	rc := dialRaw(t, env.addr)
	rc.login()
	const n = 1000
	var b strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "p%08d NOOP\r\n", i)
	}
	if b.Len() != 16*n || readBufferSize%16 != 0 || b.Len() <= 2*readBufferSize {
		t.Fatalf("pipeline of %d bytes does not split at commands in a %d-byte buffer", b.Len(), readBufferSize)
	}
	go io.WriteString(rc.c, b.String())
	for i := 0; i < n; i++ {
		tag := fmt.Sprintf("p%08d ", i)
		if l := last(rc.until(tag)); !strings.HasPrefix(l, tag+"OK") {
			t.Fatalf("command %d: %q", i, l)
		}
	}
}

// TestMalformedCommandLogged: a command imapserver's decoder refuses is
// logged at info with the session ID and the command, also now that
// connections share an imapserver server.
func TestMalformedCommandLogged(t *testing.T) {
	env := newEnv(t)
	rc := dialRaw(t, env.addr)
	rc.login()
	if l := last(rc.cmd("a", `CREATE "&Jjo"`)); !strings.HasPrefix(l, "a BAD") {
		t.Fatalf("CREATE with invalid modified UTF-7 = %q", l)
	}
	start := regexp.MustCompile(`msg="session start" server=imap session=(\w+)`).FindStringSubmatch(env.logs.String())
	if start == nil {
		t.Fatalf("no session start in\n%s", env.logs)
	}
	want := regexp.MustCompile(`level=INFO msg="imapserver: malformed command" server=imap session=` + start[1] + ` proto=imap command=CREATE`)
	if !want.MatchString(env.logs.String()) {
		t.Errorf("no %s in\n%s", want, env.logs)
	}
}

// TestCommandTimeoutAfterFirstByteOfRawLine: once the client has sent
// the first byte of IDLE's DONE or of an AUTHENTICATE response, the rest
// of the line has the command timeout, not the idle or login timeout.
func TestCommandTimeoutAfterFirstByteOfRawLine(t *testing.T) {
	env := newEnv(t, func(c *Config) {
		c.Limits.LoginTimeout = time.Hour
		c.Limits.IdleTimeout = time.Hour
		c.cmdTimeout = 200 * time.Millisecond
	})
	idler := dialRaw(t, env.addr)
	idler.login()
	idler.cmd("s", "SELECT INBOX")
	idler.send("i IDLE\r\n")
	idler.until("+")
	auth := dialRaw(t, env.addr)
	auth.send("a AUTHENTICATE PLAIN\r\n")
	auth.until("+")
	for name, rc := range map[string]*rawConn{"IDLE": idler, "AUTHENTICATE": auth} {
		rc.send("D") // and nothing more
		rc.c.SetReadDeadline(time.Now().Add(waitTimeout))
		_, err := io.ReadAll(rc.c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("%s: connection still open %v after a partial line", name, waitTimeout)
		}
	}
}

// TestEndedConnectionsGiveBackInputBuffer: a connection that ends while
// holding its input buffer (LOGOUT, too many errors, the client gone in
// the middle of a command, the plain connection after STARTTLS, a line
// left unfinished) gives it back, so the count of buffers held goes back
// to zero.
func TestEndedConnectionsGiveBackInputBuffer(t *testing.T) {
	env := newEnv(t, func(c *Config) {
		c.Limits.MaxErrors = 1
		c.cmdTimeout = 200 * time.Millisecond
	})
	logout := dialRaw(t, env.addr)
	logout.login()
	logout.cmd("z", "LOGOUT")

	bad := dialRaw(t, env.addr)
	bad.send("a FROB\r\n")

	gone := dialRaw(t, env.addr)
	gone.send("a LOGIN {14}\r\n")
	gone.until("+")
	gone.send("u@example")
	gone.c.Close()

	starttls := dialRaw(t, env.addr)
	starttls.send("a STARTTLS\r\n")
	starttls.until("a OK")
	tc := tls.Client(starttls.c, env.clientTLS())
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	overTLS := &rawConn{t: t, c: tc}
	overTLS.cmd("b", "NOOP")

	unfinished := dialRaw(t, env.addr)
	unfinished.send("a AUTHENTICATE PLAIN\r\n")
	unfinished.until("+")
	unfinished.send("AG")

	for _, rc := range []*rawConn{logout, bad, unfinished} {
		rc.c.SetReadDeadline(time.Now().Add(waitTimeout))
		io.ReadAll(rc.c) // until the server closes it
	}
	tc.Close()
	deadline := time.Now().Add(waitTimeout)
	for env.srv.inputBuffers.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d input buffers counted after every connection ended", env.srv.inputBuffers.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
