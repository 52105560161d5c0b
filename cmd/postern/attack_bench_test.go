package main

// Benchmarks of memory under attack: each runs `postern serve` as a child
// process (this test binary, re-executed) so that its peak resident set
// (VmHWM in /proc/PID/status) measures the server alone, then attacks it
// over loopback from many 127.x source addresses.

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// startChild writes a configuration with every listener on 127.0.0.1 and
// a system-chosen port (extra is appended to it), adds user@example.test
// with password "right-password", and starts serve in a child process.
func startChild(tb testing.TB, extra string) *child {
	tb.Helper()
	config := serveConfig{extra: extra}.write(tb)
	var out, errOut strings.Builder
	if code := run([]string{"user", "add", "-config", config, "user@example.test"}, strings.NewReader("right-password\n"), &out, &errOut); code != exitOK {
		tb.Fatalf("user add: %d %s %s", code, out.String(), errOut.String())
	}
	return spawnServe(tb, config)
}

// peakRSS is the child's VmHWM in bytes.
func (c *child) peakRSS(tb testing.TB) int64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.Pid()))
	if err != nil {
		tb.Skipf("no /proc status for the child: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				tb.Fatalf("VmHWM %q: %v", v, err)
			}
			return kb << 10
		}
	}
	tb.Fatal("no VmHWM in /proc status")
	return 0
}

// dialFrom connects to addr from the loopback address 127.0.a.b.
func dialFrom(a, b byte, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, a, b)}, Timeout: 10 * time.Second}
	return d.Dial("tcp", addr)
}

// loginProto speaks one protocol's login over a connection: greet reads
// the greeting and prepares; login tries one user and password and
// reports whether it succeeded and whether the connection is still usable.
type loginProto struct {
	service string
	greet   func(*bufio.Reader, net.Conn) error
	login   func(r *bufio.Reader, w net.Conn, user, pass string) (ok, more bool, err error)
}

// readReply reads one SMTP reply, all its lines, and returns the last.
func readSMTPReply(r *bufio.Reader) (string, error) {
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		if len(line) < 4 || line[3] != '-' {
			return line, nil
		}
	}
}

var loginProtos = []loginProto{
	{
		service: "submission",
		greet: func(r *bufio.Reader, w net.Conn) error {
			if _, err := readSMTPReply(r); err != nil {
				return err
			}
			fmt.Fprintf(w, "EHLO bench.example.test\r\n")
			_, err := readSMTPReply(r)
			return err
		},
		login: func(r *bufio.Reader, w net.Conn, user, pass string) (bool, bool, error) {
			fmt.Fprintf(w, "AUTH PLAIN %s\r\n", base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass)))
			line, err := readSMTPReply(r)
			if err != nil {
				return false, false, err
			}
			return strings.HasPrefix(line, "235"), !strings.HasPrefix(line, "421"), nil
		},
	},
	{
		service: "pop3",
		greet: func(r *bufio.Reader, w net.Conn) error {
			_, err := r.ReadString('\n')
			return err
		},
		login: func(r *bufio.Reader, w net.Conn, user, pass string) (bool, bool, error) {
			fmt.Fprintf(w, "USER %s\r\n", user)
			if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
				return false, false, err
			}
			fmt.Fprintf(w, "PASS %s\r\n", pass)
			line, err := r.ReadString('\n')
			if err != nil {
				return false, false, err
			}
			return strings.HasPrefix(line, "+OK"), !strings.HasPrefix(line, "+OK"), nil
		},
	},
	{
		service: "imap",
		greet: func(r *bufio.Reader, w net.Conn) error {
			_, err := r.ReadString('\n')
			return err
		},
		login: func(r *bufio.Reader, w net.Conn, user, pass string) (bool, bool, error) {
			fmt.Fprintf(w, "a LOGIN %q %q\r\n", user, pass)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return false, false, err
				}
				if strings.HasPrefix(line, "* BYE") {
					return false, false, nil
				}
				if strings.HasPrefix(line, "a ") {
					return strings.HasPrefix(line, "a OK"), !strings.HasPrefix(line, "a OK"), nil
				}
			}
		},
	},
}

// BenchmarkLoginFloodPeakRSS: 200 clients from 200 addresses try wrong
// passwords as fast as the server answers them for a few seconds, on one
// protocol at a time; 100 ms in, a client from an untouched address logs
// in with the right password. Reported: the server's peak RSS (target
// under 200 MB) and how long the good login took (target under 1 s).
func BenchmarkLoginFloodPeakRSS(b *testing.B) {
	const attackers = 200
	const burst = 4 * time.Second
	for _, p := range loginProtos {
		b.Run(p.service, func(b *testing.B) {
			var peak int64
			var good time.Duration
			for range b.N {
				c := startChild(b, "")
				addr := c.addrs[p.service]
				if addr == "" {
					b.Fatalf("no %s listener in %v", p.service, c.addrs)
				}
				var stop atomic.Bool
				var tries, wrongOK atomic.Int64
				var wg sync.WaitGroup
				for i := range attackers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for !stop.Load() {
							conn, err := dialFrom(1, byte(1+i), addr)
							if err != nil {
								time.Sleep(10 * time.Millisecond)
								continue
							}
							conn.SetDeadline(time.Now().Add(burst + 10*time.Second))
							r := bufio.NewReader(conn)
							if p.greet(r, conn) == nil {
								for !stop.Load() {
									ok, more, err := p.login(r, conn, "user@example.test", fmt.Sprintf("wrong%d", i))
									tries.Add(1)
									if ok {
										wrongOK.Add(1)
									}
									if err != nil || !more {
										break
									}
								}
							}
							conn.Close()
						}
					}()
				}
				time.Sleep(100 * time.Millisecond)
				start := time.Now()
				for {
					conn, err := dialFrom(2, 1, addr)
					if err != nil {
						b.Fatal(err)
					}
					conn.SetDeadline(time.Now().Add(burst))
					r := bufio.NewReader(conn)
					ok := false
					if err := p.greet(r, conn); err == nil {
						ok, _, _ = p.login(r, conn, "user@example.test", "right-password")
					}
					conn.Close()
					if ok {
						break
					}
					if time.Since(start) > burst {
						b.Errorf("the good login did not succeed within %v", burst)
						break
					}
				}
				good = time.Since(start)
				time.Sleep(burst - time.Since(start))
				stop.Store(true)
				wg.Wait()
				peak = c.peakRSS(b)
				c.stop()
				if wrongOK.Load() > 0 {
					b.Fatalf("%d wrong passwords were accepted", wrongOK.Load())
				}
				b.Logf("%s: %d wrong logins answered; peak RSS %d MB; good login after %v", p.service, tries.Load(), peak>>20, good.Round(time.Millisecond))
			}
			b.ReportMetric(float64(peak)/(1<<20), "peak-MB")
			b.ReportMetric(float64(good.Milliseconds()), "good-login-ms")
			if peak > 200<<20 {
				b.Errorf("peak RSS %d MB, target under 200 MB", peak>>20)
			}
			if good > time.Second {
				b.Errorf("good login took %v, target under 1s", good)
			}
		})
	}
}

// BenchmarkUnfinishedDataPeakRSS: 60 clients from 60 addresses each send
// 33 MB of DATA to the MX without the final dot; then every client
// finishes its message with a few more lines and the final dot, and each
// must be stored. Reported: the server's peak RSS over it all (target
// under 300 MB).
func BenchmarkUnfinishedDataPeakRSS(b *testing.B) {
	const clients = 60
	const size = 33_000_000
	line := strings.Repeat("abcdefghij", 7) + "\r\n" // 72 octets
	block := []byte(strings.Repeat(line, 65536/len(line)))
	var peak int64
	for range b.N {
		c := startChild(b, "")
		addr := c.addrs["smtp"]
		if addr == "" {
			b.Fatalf("no smtp listener in %v", c.addrs)
		}
		conns := make([]net.Conn, clients)
		readers := make([]*bufio.Reader, clients)
		var wg sync.WaitGroup
		errs := make(chan error, clients)
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn, err := dialFrom(3, byte(1+i), addr)
				if err != nil {
					errs <- err
					return
				}
				conn.SetDeadline(time.Now().Add(5 * time.Minute))
				conns[i], readers[i] = conn, bufio.NewReader(conn)
				r := readers[i]
				for _, cmd := range []string{"", "EHLO bench.example.test", "MAIL FROM:<sender@remote.test>", "RCPT TO:<user@example.test>", "DATA"} {
					if cmd != "" {
						fmt.Fprintf(conn, "%s\r\n", cmd)
					}
					reply, err := readSMTPReply(r)
					if err != nil || reply[0] == '4' || reply[0] == '5' {
						errs <- fmt.Errorf("client %d: %q: %q %v", i, cmd, reply, err)
						return
					}
				}
				fmt.Fprintf(conn, "Subject: big %d\r\n\r\n", i)
				for sent := 0; sent+len(block) <= size; sent += len(block) {
					if _, err := conn.Write(block); err != nil {
						errs <- fmt.Errorf("client %d: %w", i, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond) // let the server read what is in flight
		unfinished := c.peakRSS(b)
		stored := 0
		for i, conn := range conns {
			fmt.Fprintf(conn, "end\r\n.\r\n")
			if reply, err := readSMTPReply(readers[i]); err == nil && strings.HasPrefix(reply, "250") {
				stored++
			} else {
				b.Logf("client %d: %q %v", i, reply, err)
			}
			conn.Close()
		}
		peak = c.peakRSS(b) // the high-water mark, storing included
		c.stop()
		b.Logf("peak RSS %d MB with %d unfinished messages, %d MB after storing %d of them", unfinished>>20, clients, peak>>20, stored)
		if stored != clients {
			b.Errorf("%d of %d messages stored", stored, clients)
		}
	}
	b.ReportMetric(float64(peak)/(1<<20), "peak-MB")
	if peak > 300<<20 {
		b.Errorf("peak RSS %d MB, target under 300 MB", peak>>20)
	}
}
