package pop3d

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	benchMessages    = 1000
	benchMessageSize = 4 << 10
)

// BenchmarkRETR retrieves a maildrop of 1000 messages of 4 KiB, one RETR
// at a time as fetchers do, and reports messages/s and MB/s:
//   - store: the bodies read straight from the mailstore, no POP3: the
//     floor under any server on this store;
//   - go-client: the Go test client over TCP (the Go baseline);
//   - poplib: python3's poplib over TCP, the client Dovecot's figures
//     were measured with (skipped without python3);
//   - poplib-other: the same against another server given in
//     POSTERN_BENCH_POP3 (Dovecot, for the target on this machine);
//   - poplib-canned: the same against a stub that answers from memory,
//     the most poplib can fetch on this machine.
//
// Only the RETR loop is timed, not the login.
func BenchmarkRETR(b *testing.B) {
	st := openStore(b)
	msgs := make([][]byte, benchMessages)
	for i := range msgs {
		msgs[i] = makeMessage(i, benchMessageSize)[:benchMessageSize]
		copy(msgs[i][benchMessageSize-2:], "\r\n")
	}
	appendMessages(b, st, alice, msgs)
	stored, bodies := storedMessages(b, st, alice)
	var octets int64
	for _, m := range stored {
		octets += m.Size
	}
	ts := startServer(b, st, nil)

	report := func(b *testing.B, elapsed time.Duration, rounds int) {
		reportRate(b, elapsed, rounds, len(stored), octets)
	}

	b.Run("store", func(b *testing.B) {
		buf := make([]byte, bodyBufferSize)
		ctx := context.Background()
		start := time.Now()
		for b.Loop() {
			for _, m := range stored {
				body, err := st.OpenBody(ctx, m.BodyID)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.CopyBuffer(io.Discard, body, buf); err != nil {
					b.Fatal(err)
				}
				body.Close()
			}
		}
		report(b, time.Since(start), b.N)
	})

	b.Run("go-client", func(b *testing.B) {
		start := time.Now()
		for b.Loop() {
			c := dial(b, ts.addr)
			c.login(alice, alicePass)
			for i := range stored {
				c.send("RETR " + strconv.Itoa(i+1))
				if st := c.status(); !strings.HasPrefix(st, "+OK") {
					b.Fatal(st)
				}
				if got := c.body(); int64(len(got)) != stored[i].Size {
					b.Fatalf("RETR %d: %d octets, want %d", i+1, len(got), stored[i].Size)
				}
			}
			c.ok("QUIT")
			c.conn.Close()
		}
		report(b, time.Since(start), b.N)
	})

	b.Run("poplib", func(b *testing.B) {
		benchPoplib(b, ts.addr, len(stored), octets)
	})

	// The same client against another POP3 server, such as Dovecot, whose
	// maildrop holds the same 1000 messages:
	// POSTERN_BENCH_POP3="127.0.0.1:11110 user password".
	b.Run("poplib-other", func(b *testing.B) {
		other := os.Getenv("POSTERN_BENCH_POP3")
		f := strings.SplitN(other, " ", 3)
		if len(f) != 3 {
			b.Skip(`set POSTERN_BENCH_POP3="host:port user password" to compare with another server`)
		}
		benchPoplibAs(b, f[0], f[1], f[2], len(stored), octets)
	})

	// The same client against a canned server that answers from memory:
	// the most poplib can fetch on this machine, whatever the server.
	b.Run("poplib-canned", func(b *testing.B) {
		addr := cannedServer(b, bodies)
		benchPoplib(b, addr, len(stored), octets)
	})
}

// cannedServer answers the commands of poplibBenchScript from memory.
func cannedServer(b *testing.B, bodies [][]byte) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	retr := make([][]byte, len(bodies))
	var total int
	for i, body := range bodies {
		var buf bytes.Buffer
		fmt.Fprintf(&buf, "+OK %d octets\r\n", len(body))
		dw := textproto.NewWriter(bufio.NewWriter(&buf)).DotWriter()
		dw.Write(body)
		dw.Close()
		retr[i] = buf.Bytes()
		total += len(body)
	}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				r := bufio.NewReader(conn)
				io.WriteString(conn, "+OK canned\r\n")
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					f := strings.Fields(line)
					switch {
					case len(f) == 2 && f[0] == "RETR":
						n, _ := strconv.Atoi(f[1])
						conn.Write(retr[n-1])
					case len(f) > 0 && f[0] == "STAT":
						fmt.Fprintf(conn, "+OK %d %d\r\n", len(bodies), total)
					case len(f) > 0 && f[0] == "QUIT":
						io.WriteString(conn, "+OK\r\n")
						return
					default:
						io.WriteString(conn, "+OK\r\n")
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func benchPoplib(b *testing.B, addr string, messages int, octets int64) {
	benchPoplibAs(b, addr, alice, alicePass, messages, octets)
}

func benchPoplibAs(b *testing.B, addr, user, pass string, messages int, octets int64) {
	python, err := exec.LookPath("python3")
	if err != nil {
		b.Skip("python3 not installed")
	}
	host, port, _ := strings.Cut(addr, ":")
	var elapsed time.Duration
	for b.Loop() {
		out, err := exec.Command(python, "-c", poplibBenchScript, host, port, user, pass).CombinedOutput()
		if err != nil {
			b.Fatalf("poplib: %v\n%s", err, out)
		}
		var n int
		var secs float64
		if _, err := fmt.Sscanf(string(out), "%d %g", &n, &secs); err != nil || n != messages {
			b.Fatalf("poplib output %q: %v", out, err)
		}
		elapsed += time.Duration(secs * float64(time.Second))
	}
	reportRate(b, elapsed, b.N, messages, octets)
}

func reportRate(b *testing.B, elapsed time.Duration, rounds, messages int, octets int64) {
	secs := elapsed.Seconds()
	b.ReportMetric(float64(rounds*messages)/secs, "msgs/s")
	b.ReportMetric(float64(rounds)*float64(octets)/secs/1e6, "MB/s")
	b.ReportMetric(0, "ns/op")
}

// poplibBenchScript logs in and times the RETR of every message.
const poplibBenchScript = `
import poplib, sys, time
host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
p = poplib.POP3(host, port)
p.user(user)
p.pass_(password)
count, _ = p.stat()
start = time.perf_counter()
for i in range(1, count + 1):
    p.retr(i)
elapsed = time.perf_counter() - start
p.quit()
print(count, elapsed)
`
