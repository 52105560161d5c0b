package pop3d

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore/limits"
)

// insecure makes every connection without TLS count as not secure, as a
// connection from another machine would.
func insecure(cfg *Config) { cfg.Secure = func(net.Conn) bool { return false } }

// startTLS switches the client to TLS after a +OK to STLS. No greeting
// follows (RFC 2595 section 4).
func (c *client) startTLS(cfg *tls.Config) {
	c.t.Helper()
	tc := tls.Client(c.conn, cfg)
	tc.SetDeadline(time.Now().Add(clientTimeout))
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake after STLS: %v", err)
	}
	c.conn = tc
	c.r = bufio.NewReader(tc)
}

func (c *client) capa() []string {
	c.t.Helper()
	c.ok("CAPA")
	return c.lines()
}

// TestSTLS: on a connection that is not secure, plaintext logins are
// refused with [AUTH] and not advertised until STLS.
func TestSTLS(t *testing.T) {
	st := openStore(t)
	appendMessages(t, st, alice, [][]byte{makeMessage(1, 3000)})
	_, bodies := storedMessages(t, st, alice)
	serverTLS, clientTLS := testTLS(t)
	ts := startServer(t, st, func(cfg *Config) {
		insecure(cfg)
		cfg.TLSConfig = serverTLS
	})

	c := dial(t, ts.addr)
	caps := c.capa()
	if !slices.Contains(caps, "STLS") || slices.Contains(caps, "USER") || slices.Contains(caps, "SASL PLAIN") {
		t.Errorf("CAPA before STLS: %q", caps)
	}
	for _, cmd := range []string{"USER " + alice, "AUTH PLAIN", "AUTH PLAIN " + plainIR("", alice, alicePass)} {
		if got := c.cmd(cmd); !strings.HasPrefix(got, "-ERR [AUTH]") {
			t.Errorf("%s without TLS: %q", cmd, got)
		}
	}
	if got := c.cmd("PASS " + alicePass); !strings.HasPrefix(got, "-ERR") {
		t.Errorf("PASS without TLS: %q", got)
	}
	c.ok("AUTH")
	if mechs := c.lines(); len(mechs) != 0 {
		t.Errorf("AUTH lists %q without TLS", mechs)
	}
	if got := c.cmd("STLS x"); !strings.HasPrefix(got, "-ERR") {
		t.Errorf("STLS with an argument: %q", got)
	}

	c.ok("STLS")
	c.startTLS(clientTLS)
	caps = c.capa()
	if slices.Contains(caps, "STLS") || !slices.Contains(caps, "USER") || !slices.Contains(caps, "SASL PLAIN") {
		t.Errorf("CAPA after STLS: %q", caps)
	}
	if got := c.cmd("STLS"); !strings.HasPrefix(got, "-ERR") {
		t.Errorf("second STLS: %q", got)
	}
	c.login(alice, alicePass)
	if got := c.multi("RETR 1"); string(got) != string(bodies[0]) {
		t.Errorf("RETR over TLS: %q", trim(got))
	}
	c.ok("QUIT")
}

// TestSTLSInjection: commands sent in the clear after STLS, before the
// handshake, are dropped, not run inside TLS (RFC 2595 section 4; the
// STARTTLS command injection of CVE-2011-0411).
func TestSTLSInjection(t *testing.T) {
	st := openStore(t)
	serverTLS, clientTLS := testTLS(t)
	ts := startServer(t, st, func(cfg *Config) { cfg.TLSConfig = serverTLS })

	c := dial(t, ts.addr)
	c.send("STLS\r\nCAPA")
	if got := c.status(); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("STLS: %q", got)
	}
	c.startTLS(clientTLS)
	if got := c.cmd("NOOP"); !strings.HasPrefix(got, "-ERR") {
		t.Fatalf("first reply inside TLS is %q: the injected CAPA ran", got)
	}
}

// TestImplicitTLS: the ServeTLS listener speaks TLS from the first byte and
// accepts plaintext logins.
func TestImplicitTLS(t *testing.T) {
	st := openStore(t)
	serverTLS, clientTLS := testTLS(t)
	ts := startServer(t, st, func(cfg *Config) {
		insecure(cfg)
		cfg.TLSConfig = serverTLS
	})
	c := dialTLS(t, ts.tlsAddr, clientTLS)
	caps := c.capa()
	if slices.Contains(caps, "STLS") || !slices.Contains(caps, "USER") {
		t.Errorf("CAPA on implicit TLS: %q", caps)
	}
	if got := c.cmd("STLS"); !strings.HasPrefix(got, "-ERR") {
		t.Errorf("STLS on implicit TLS: %q", got)
	}
	c.ok("AUTH PLAIN " + plainIR("", alice, alicePass))
	c.ok("STAT")
	c.ok("QUIT")

	// A client that does not speak TLS is dropped after a failed handshake.
	conn, err := net.Dial("tcp", ts.tlsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("CAPA\r\n"))
	conn.SetReadDeadline(time.Now().Add(clientTimeout))
	buf := make([]byte, 100)
	n, _ := conn.Read(buf)
	if strings.Contains(string(buf[:n]), "+OK") {
		t.Errorf("plain client on the TLS port got %q", buf[:n])
	}
}

// TestAllowInsecureAuth: auth.allow_insecure accepts plaintext logins
// without TLS.
func TestAllowInsecureAuth(t *testing.T) {
	st := openStore(t)
	ts := startServer(t, st, func(cfg *Config) {
		insecure(cfg)
		cfg.AllowInsecureAuth = true
	})
	c := dial(t, ts.addr)
	if caps := c.capa(); !slices.Contains(caps, "USER") || !slices.Contains(caps, "SASL PLAIN") {
		t.Errorf("CAPA: %q", caps)
	}
	c.login(alice, alicePass)
	c.ok("QUIT")
}

type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c addrConn) RemoteAddr() net.Addr { return c.remote }

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1": true, "127.3.2.1": true, "::1": true,
		"10.0.0.1": false, "192.0.2.7": false, "2001:db8::1": false, "::ffff:127.0.0.1": true,
	} {
		c := addrConn{remote: &net.TCPAddr{IP: net.ParseIP(addr), Port: 4000}}
		if got := isLoopback(c); got != want {
			t.Errorf("isLoopback(%s) = %v, want %v", addr, got, want)
		}
	}
	if isLoopback(addrConn{remote: &net.UnixAddr{Name: "/tmp/x", Net: "unix"}}) {
		t.Error("a Unix socket counts as loopback")
	}
}

// TestAuthPlain covers RFC 5034: initial response, continuation, "=",
// cancel, bad base64, wrong passwords and authorization identities.
func TestAuthPlain(t *testing.T) {
	st := openStore(t)
	ts := startServer(t, st, nil)

	tests := []struct {
		name  string
		lines []string // the AUTH command, then continuation lines
		want  string
	}{
		{"initial response", []string{"AUTH PLAIN " + plainIR("", alice, alicePass)}, "+OK"},
		{"initial response with authzid", []string{"AUTH PLAIN " + plainIR(alice, alice, alicePass)}, "+OK"},
		{"continuation", []string{"AUTH PLAIN", plainIR("", alice, alicePass)}, "+OK"},
		{"lower case", []string{"auth plain", plainIR("", alice, alicePass)}, "+OK"},
		{"cancel", []string{"AUTH PLAIN", "*"}, "-ERR"},
		{"bad base64", []string{"AUTH PLAIN", "%%%"}, "-ERR"},
		{"empty response", []string{"AUTH PLAIN", ""}, "-ERR [AUTH]"},
		{"empty initial response", []string{"AUTH PLAIN ="}, "-ERR [AUTH]"},
		{"no NULs", []string{"AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte(alice+alicePass))}, "-ERR [AUTH]"},
		{"wrong password", []string{"AUTH PLAIN " + plainIR("", alice, "wrong")}, "-ERR [AUTH]"},
		{"wrong password in continuation", []string{"AUTH PLAIN", plainIR("", alice, "wrong")}, "-ERR [AUTH]"},
		{"unknown user", []string{"AUTH PLAIN " + plainIR("", "nobody@example.org", alicePass)}, "-ERR [AUTH]"},
		{"other authzid", []string{"AUTH PLAIN " + plainIR(bob, alice, alicePass)}, "-ERR [AUTH]"},
		{"continuation too long", []string{"AUTH PLAIN", strings.Repeat("QUFB", 1000)}, "-ERR"},
		{"unknown mechanism", []string{"AUTH LOGIN"}, "-ERR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, ts.addr)
			c.send(tt.lines[0])
			for _, l := range tt.lines[1:] {
				if got := c.status(); got != "+ " {
					t.Fatalf("challenge %q, want \"+ \"", got)
				}
				c.send(l)
			}
			got := c.status()
			if !strings.HasPrefix(got, tt.want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
			if strings.HasPrefix(got, "+OK") {
				c.ok("STAT")
			} else {
				// Still in AUTHORIZATION, in step.
				c.capa()
				c.login(alice, alicePass)
			}
			c.ok("QUIT")
		})
	}
}

// TestFailedLoginDelay: a failed login is answered only after
// the shared login policy's FailureDelay; a good one at once.
func TestFailedLoginDelay(t *testing.T) {
	st := openStore(t)
	const delay = 300 * time.Millisecond
	ts := startServer(t, st, func(cfg *Config) {
		cfg.Shared.Logins = limits.NewLogins(limits.LoginPolicy{FailureDelay: delay})
	})
	c := dial(t, ts.addr)
	for _, cmd := range [][]string{{"USER " + alice, "PASS wrong"}, {"AUTH PLAIN " + plainIR("", alice, "wrong")}} {
		start := time.Now()
		for _, l := range cmd[:len(cmd)-1] {
			c.ok(l)
		}
		if got := c.cmd(cmd[len(cmd)-1]); !strings.HasPrefix(got, "-ERR [AUTH]") {
			t.Fatalf("%q: %q", cmd, got)
		}
		if took := time.Since(start); took < delay {
			t.Errorf("%q failed after %v, want at least %v", cmd, took, delay)
		}
	}
	start := time.Now()
	c.login(alice, alicePass)
	if took := time.Since(start); took > delay {
		t.Errorf("good login took %v", took)
	}
	c.ok("QUIT")
}
