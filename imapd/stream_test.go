package imapd

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests of clientConn's framing under input split at every byte and of
// many sessions at once.

// writeSplit writes s in random pieces, some with a short pause after
// them, so that the server sees reads of every size, down to one byte.
func writeSplit(c net.Conn, rng *rand.Rand, s string) error {
	for len(s) > 0 {
		n := 1 + rng.IntN(min(len(s), 40))
		if rng.IntN(4) == 0 {
			n = len(s)
		}
		if _, err := c.Write([]byte(s[:n])); err != nil {
			return fmt.Errorf("write %q: %w", s[:n], err)
		}
		s = s[n:]
		if rng.IntN(3) == 0 {
			time.Sleep(time.Duration(rng.IntN(300)) * time.Microsecond)
		}
	}
	return nil
}

// TestSplitLiteralsAndSASLResponses: LOGIN with non-synchronizing
// literals, an AUTHENTICATE PLAIN response and a synchronizing literal of
// SELECT, each followed by the next command in the same write, all split
// at random points, are read as the client meant.
func TestSplitLiteralsAndSASLResponses(t *testing.T) {
	env := newEnv(t)
	for i := 0; i < 40; i++ {
		rng := rand.New(rand.NewPCG(uint64(i), 3))
		rc := dialRaw(t, env.addr)
		if i%2 == 0 {
			s := "a LOGIN {14+}\r\nu@example.test {9+}\r\nsecret pw\r\nb NOOP\r\n"
			if err := writeSplit(rc.c, rng, s); err != nil {
				t.Fatal(err)
			}
			if l := last(rc.until("a ")); !strings.HasPrefix(l, "a OK") {
				t.Fatalf("round %d: LOGIN = %q", i, l)
			}
		} else {
			rc.send("a AUTHENTICATE PLAIN\r\n")
			rc.until("+")
			resp := base64.StdEncoding.EncodeToString([]byte("\x00u@example.test\x00secret pw"))
			if err := writeSplit(rc.c, rng, resp+"\r\nb NOOP\r\n"); err != nil {
				t.Fatal(err)
			}
			if l := last(rc.until("a ")); !strings.HasPrefix(l, "a OK") {
				t.Fatalf("round %d: AUTHENTICATE = %q", i, l)
			}
		}
		if l := last(rc.until("b ")); !strings.HasPrefix(l, "b OK") {
			t.Fatalf("round %d: NOOP after login = %q", i, l)
		}
		rc.send("c SELECT {5}\r\n")
		rc.until("+")
		if err := writeSplit(rc.c, rng, "INBOX\r\nd NOOP\r\n"); err != nil {
			t.Fatal(err)
		}
		if l := last(rc.until("c ")); !strings.HasPrefix(l, "c OK") {
			t.Fatalf("round %d: SELECT with a literal = %q", i, l)
		}
		if l := last(rc.until("d ")); !strings.HasPrefix(l, "d OK") {
			t.Fatalf("round %d: NOOP after SELECT = %q", i, l)
		}
		rc.c.Close()
	}
}

// streamConn reads response lines on a goroutine other than the test's:
// it returns errors where rawConn would stop the test.
type streamConn struct {
	c   net.Conn
	b   []byte
	own string // the prefix of this connection's tags
}

func (sc *streamConn) readLine() (string, error) {
	sc.c.SetReadDeadline(time.Now().Add(waitTimeout))
	for {
		if i := bytes.Index(sc.b, []byte("\r\n")); i >= 0 {
			l := string(sc.b[:i])
			sc.b = sc.b[i+2:]
			return l, nil
		}
		buf := make([]byte, 4096)
		n, err := sc.c.Read(buf)
		if err != nil {
			return "", fmt.Errorf("read (have %q): %w", sc.b, err)
		}
		sc.b = append(sc.b, buf[:n]...)
	}
}

// until reads up to and including the line starting with prefix; a
// tagged line with another connection's tag is an error.
func (sc *streamConn) until(prefix string) ([]string, error) {
	var out []string
	for {
		l, err := sc.readLine()
		if err != nil {
			return out, fmt.Errorf("waiting for %q: %w", prefix, err)
		}
		out = append(out, l)
		if !strings.HasPrefix(l, "*") && !strings.HasPrefix(l, "+") && !strings.HasPrefix(l, sc.own) {
			return out, fmt.Errorf("line of another session: %q", l)
		}
		if strings.HasPrefix(l, prefix) {
			return out, nil
		}
	}
}

// expect runs until and checks that the last line starts with prefix+want.
func (sc *streamConn) expect(prefix, want string) ([]string, error) {
	out, err := sc.until(prefix)
	if err != nil {
		return out, err
	}
	if l := last(out); !strings.HasPrefix(l, prefix+want) {
		return out, fmt.Errorf("got %q, want %s%s", l, prefix, want)
	}
	return out, nil
}

var appendUIDPattern = regexp.MustCompile(`APPENDUID \d+ (\d+)`)

// TestConcurrentSessionsSplitWrites: sessions over plain TCP, implicit
// TLS and STARTTLS at once run pipelined NOOPs, IDLE ended with DONE and
// the next command in one write, and APPENDs (synchronizing or not) whose
// message they then fetch back, all written in random pieces: every
// session gets its own answers, in order, and the messages as sent.
func TestConcurrentSessionsSplitWrites(t *testing.T) {
	env := newEnv(t)
	const sessions, rounds = 12, 25
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for ci := 0; ci < sessions; ci++ {
		wg.Add(1)
		go func(ci int) {
			defer wg.Done()
			if err := splitWriteSession(env, ci, rounds); err != nil {
				errs <- fmt.Errorf("session %d: %w", ci, err)
			}
		}(ci)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func splitWriteSession(env *testEnv, ci, rounds int) error {
	rng := rand.New(rand.NewPCG(uint64(ci), 7))
	var c net.Conn
	var err error
	if ci%3 == 1 {
		c, err = tls.Dial("tcp", env.tls, env.clientTLS())
	} else {
		c, err = net.Dial("tcp", env.addr)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	tag := func(s string) string { return fmt.Sprintf("c%02d%s", ci, s) }
	sc := &streamConn{c: c, own: tag("")}
	if _, err := sc.readLine(); err != nil { // greeting
		return err
	}
	if ci%3 == 2 {
		fmt.Fprintf(c, "%s STARTTLS\r\n", tag("st"))
		if _, err := sc.expect(tag("st "), "OK"); err != nil {
			return fmt.Errorf("STARTTLS: %w", err)
		}
		tc := tls.Client(c, env.clientTLS())
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("TLS handshake: %w", err)
		}
		c, sc.c, sc.b = tc, tc, nil
	}
	fmt.Fprintf(c, "%s LOGIN u@example.test \"secret pw\"\r\n", tag("L"))
	if _, err := sc.expect(tag("L "), "OK"); err != nil {
		return fmt.Errorf("LOGIN: %w", err)
	}
	fmt.Fprintf(c, "%s SELECT INBOX\r\n", tag("S"))
	if _, err := sc.expect(tag("S "), "OK"); err != nil {
		return fmt.Errorf("SELECT: %w", err)
	}
	for it := 0; it < rounds; it++ {
		switch rng.IntN(4) {
		case 0: // pipelined NOOPs
			var b strings.Builder
			k := 1 + rng.IntN(300)
			for j := 0; j < k; j++ {
				fmt.Fprintf(&b, "%s NOOP\r\n", tag(fmt.Sprintf("i%dn%d", it, j)))
			}
			werr := make(chan error, 1)
			go func() { werr <- writeSplit(c, rand.New(rand.NewPCG(uint64(ci*1000+it), 1)), b.String()) }()
			for j := 0; j < k; j++ {
				if _, err := sc.expect(tag(fmt.Sprintf("i%dn%d ", it, j)), "OK"); err != nil {
					return fmt.Errorf("round %d: pipelined NOOP %d of %d: %w", it, j, k, err)
				}
			}
			if err := <-werr; err != nil {
				return err
			}
		case 1: // IDLE, then DONE and a command in one write
			id := tag(fmt.Sprintf("i%d", it))
			fmt.Fprintf(c, "%s IDLE\r\n", id)
			if _, err := sc.until("+"); err != nil {
				return err
			}
			if rng.IntN(2) == 0 {
				time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
			}
			if err := writeSplit(c, rng, "DONE\r\n"+id+"n NOOP\r\n"); err != nil {
				return err
			}
			if _, err := sc.expect(id+" ", "OK"); err != nil {
				return fmt.Errorf("IDLE: %w", err)
			}
			if _, err := sc.expect(id+"n ", "OK"); err != nil {
				return fmt.Errorf("NOOP after DONE: %w", err)
			}
		case 2, 3: // APPEND, then the message fetched back
			line := fmt.Sprintf("session %02d round %d\r\n", ci, it)
			body := fmt.Sprintf("Subject: c%02d-%d\r\n\r\n%s\r\n", ci, it, strings.Repeat(line, rng.IntN(500)))
			at := tag(fmt.Sprintf("i%da", it))
			if rng.IntN(2) == 0 {
				fmt.Fprintf(c, "%s APPEND INBOX {%d}\r\n", at, len(body))
				if _, err := sc.until("+"); err != nil {
					return err
				}
				err = writeSplit(c, rng, body+"\r\n")
			} else {
				err = writeSplit(c, rng, fmt.Sprintf("%s APPEND INBOX {%d+}\r\n%s\r\n", at, len(body), body))
			}
			if err != nil {
				return err
			}
			out, err := sc.expect(at+" ", "OK")
			if err != nil {
				return fmt.Errorf("APPEND: %w", err)
			}
			m := appendUIDPattern.FindStringSubmatch(last(out))
			if m == nil {
				return fmt.Errorf("APPEND without APPENDUID: %q", last(out))
			}
			ft := tag(fmt.Sprintf("i%df", it))
			fmt.Fprintf(c, "%s UID FETCH %s BODY.PEEK[]\r\n", ft, m[1])
			// The message's lines are data: no tag check on them.
			var got []string
			for len(got) == 0 || !strings.HasPrefix(last(got), ft+" ") {
				l, err := sc.readLine()
				if err != nil {
					return fmt.Errorf("UID FETCH: %w", err)
				}
				got = append(got, l)
			}
			if l := last(got); !strings.HasPrefix(l, ft+" OK") {
				return fmt.Errorf("UID FETCH %s = %q", m[1], l)
			}
			if all := strings.Join(got, "\r\n"); !strings.Contains(all, body) {
				return fmt.Errorf("UID FETCH %s after APPEND: the message differs or is missing (%d bytes back, sent %d)", m[1], len(all), len(body))
			}
		}
	}
	return nil
}

// TestEndedSessionsLeaveNoGoroutines: sessions that end in IDLE, with or
// without a mailbox selected, by LOGOUT or by the client going away,
// leave no goroutine behind.
func TestEndedSessionsLeaveNoGoroutines(t *testing.T) {
	env := newEnv(t)
	env.deliver(t, testMessage(1, "one"))
	time.Sleep(100 * time.Millisecond)
	base := runtime.NumGoroutine()
	for round := 0; round < 3; round++ {
		var rcs []*rawConn
		for i := 0; i < 20; i++ {
			rc := dialRaw(t, env.addr)
			rc.login()
			if i%2 == 0 {
				rc.cmd("s", "SELECT INBOX")
			}
			rc.send("i IDLE\r\n")
			rc.until("+")
			rcs = append(rcs, rc)
		}
		env.deliver(t, testMessage(round+2, "x"))
		for i, rc := range rcs {
			if i%3 == 0 {
				rc.send("DONE\r\nz LOGOUT\r\n")
			}
			rc.c.Close()
		}
	}
	// A little slack for the runtime's and net's own goroutines.
	deadline := time.Now().Add(waitTimeout)
	for runtime.NumGoroutine() > base+2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base+2 {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after the sessions ended, %d before\n%s", n, base, buf[:runtime.Stack(buf, true)])
	}
}
