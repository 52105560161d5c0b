package smtpd

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/cmd/postern/console"
	"github.com/postern/postern/mailstore"
)

func TestTrace(t *testing.T) {
	e := newTestEnv(t, insecureEverywhere, func(c *Config) { c.Trace = true })
	c := e.dial(t, e.sub)
	c.cmd("EHLO client.example.test", "250")
	c.startTLS(e.clientTLS)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("AUTH LOGIN", "334 ")
	c.cmd(base64Std(alice), "334 ")
	c.cmd(base64Std(alicePassword), "235 ")
	c.cmd("MAIL FROM:<"+alice+">", "250 ")
	c.cmd("RCPT TO:<"+bob+">", "250 ")
	msg := simpleMessage("traced") + "secret body line\r\n"
	c.data(msg)
	c.send("MAIL FROM:<"+alice+">", "RCPT TO:<"+bob+">", "BDAT 7 LAST")
	c.conn.Write([]byte("x: y\r\n\r\n"[:7]))
	c.expect("250 ")
	c.expect("250 ")
	c.expect("250 ")
	c.cmd("AUTH PLAIN "+plainAuth(alice, alicePassword), "503 ")
	c.cmd("QUIT", "221 ")
	e.srv.Shutdown(t.Context())

	logs := e.logs.String()
	var trace []string
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "msg=trace") {
			if !regexp.MustCompile(`session=[a-z2-7]{10} proto=\w+ listener=\w+ remote=\S+ dir=[CS] line=`).MatchString(line) {
				t.Errorf("trace line without session or direction: %s", line)
			}
			_, l, _ := strings.Cut(line, " dir=")
			trace = append(trace, l)
		}
	}
	got := strings.Join(trace, "\n")
	for _, want := range []string{
		`S line="220 mx.example.test ESMTP Postern"`,
		`C line="EHLO client.example.test"`,
		`C line=STARTTLS`,
		`S line="220 2.0.0 Ready to start TLS"`,
		`C line="AUTH LOGIN"`,
		`S line="334 VXNlcm5hbWU6"`,
		`C line=[redacted]`,
		`S line="235 2.0.0 Authentication succeeded"`,
		`C line="MAIL FROM:<alice@example.test>"`,
		`S line="354 Go ahead. End your data with <CR><LF>.<CR><LF>"`,
		`C line="[` + itoa(len(msg)) + ` octets of message data]"`,
		`C line=.`,
		`C line="BDAT 7 LAST"`,
		`C line="[7 octets of BDAT chunk]"`,
		`C line="AUTH PLAIN [redacted]"`,
		`C line=QUIT`,
		`S line="221 2.0.0 Bye"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("trace lacks %s", want)
		}
	}
	// Both EHLOs, before and after STARTTLS.
	if n := strings.Count(got, `C line="EHLO client.example.test"`); n != 2 {
		t.Errorf("%d EHLO lines traced, want 2", n)
	}
	for _, secret := range []string{base64Std(alicePassword), plainAuth(alice, alicePassword), alicePassword, "secret body line"} {
		if strings.Contains(logs, secret) {
			t.Errorf("log shows %q", secret)
		}
	}
	if t.Failed() {
		t.Logf("trace:\n%s", got)
	}
}

// traceOf feeds a tracer with (direction, data) pairs and returns the
// traced lines.
func traceOf(steps ...string) string {
	var buf bytes.Buffer
	c := &conn{}
	tr := newTracer(slog.New(slog.NewTextHandler(&buf, nil)), c, "mx.example.test")
	for i := 0; i+1 < len(steps); i += 2 {
		c.lastWrite = steps[i] == "S"
		c.writes = map[bool]int{false: 0, true: 1}[c.lastWrite]
		tr.Write([]byte(steps[i+1]))
	}
	var out []string
	for _, line := range strings.Split(buf.String(), "\n") {
		if _, l, ok := strings.Cut(line, " dir="); ok {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestTracerUnits(t *testing.T) {
	tests := []struct {
		name  string
		steps []string
		want  string
	}{
		{"greeting replaced", []string{"S", "220 mx.example.test ESMTP Service Ready\r\n"},
			`S line="220 mx.example.test ESMTP Postern"`},
		{"pipelined commands in one read", []string{"C", "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDA", "C", "TA\r\n"},
			"C line=\"MAIL FROM:<a@b>\"\nC line=\"RCPT TO:<c@d>\"\nC line=DATA"},
		{"data then command in one read", []string{"S", "354 go\r\n", "C", "a\r\n..b\r\n.\r\nQUIT\r\n"},
			"S line=\"354 go\"\nC line=\"[8 octets of message data]\"\nC line=.\nC line=QUIT"},
		{"smuggled end is data", []string{"S", "354 go\r\n", "C", "a\n.\nMAIL FROM:<x@y>\r\n.\r\n"},
			"S line=\"354 go\"\nC line=\"[21 octets of message data]\"\nC line=."},
		{"bdat chunk across reads", []string{"C", "BDAT 10\r\n12345", "C", "67890NOOP\r\n"},
			"C line=\"BDAT 10\"\nC line=\"[10 octets of BDAT chunk]\"\nC line=NOOP"},
		{"bdat with a bad argument is a command", []string{"C", "BDAT 3 FOO\r\nabc\r\n"},
			"C line=\"BDAT 3 FOO\"\nC line=abc"},
		{"auth plain", []string{"C", "auth plain AGFAYgBj\r\n"}, `C line="auth plain [redacted]"`},
		{"credentials in the mechanism's place", []string{"C", "AUTH AGFAYgBjZA==\r\n"}, `C line="AUTH [redacted]"`},
		{"a password in the mechanism's place", []string{"C", "AUTH hunter2\r\n"}, `C line="AUTH [redacted]"`},
		{"base64 without padding in the mechanism's place", []string{"C", "AUTH AGJvYgBodW50ZXIyeHl6\r\n"}, `C line="AUTH [redacted]"`},
		{"auth continuation", []string{"C", "AUTH PLAIN\r\n", "S", "334 \r\n", "C", "AGFAYgBj\r\n", "S", "235 ok\r\n", "C", "NOOP\r\n"},
			"C line=\"AUTH PLAIN\"\nS line=\"334 \"\nC line=[redacted]\nS line=\"235 ok\"\nC line=NOOP"},
		{"auth secrets seen as replies stay redacted", []string{"C", "AUTH LOGIN\r\n", "S", "334 VXNlcm5hbWU6\r\n", "S", "YWxpY2U=\r\n"},
			"C line=\"AUTH LOGIN\"\nS line=\"334 VXNlcm5hbWU6\"\nS line=[redacted]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := traceOf(tt.steps...); got != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

// FuzzTracer feeds the tracer what a client may send: it must not panic,
// keep unbounded state, or show the data of an AUTH command.
func FuzzTracer(f *testing.F) {
	f.Add([]byte("EHLO x\r\nAUTH PLAIN c2VjcmV0\r\nBDAT 3\r\nabcQUIT\r\n"), []byte("354 go\r\n"))
	f.Add([]byte("a\r\n.\r\n"), []byte("334 \r\n"))
	f.Fuzz(func(t *testing.T, client, server []byte) {
		lines := &lineRecorder{}
		c := &conn{}
		tr := newTracer(slog.New(lines), c, "mx")
		for i := 0; i < len(client); i += 7 {
			c.lastWrite, c.writes = false, 0
			tr.Write(client[i:min(i+7, len(client))])
			c.lastWrite, c.writes = true, 1
			tr.Write(server)
			if len(tr.in) > maxTraceLine || len(tr.out) > maxTraceLine {
				t.Fatal("partial line over the bound")
			}
		}
		for i, l := range lines.lines {
			if lines.dirs[i] != "C" {
				continue // the server's lines: go-smtp never writes AUTH data
			}
			if f := strings.Fields(l); len(f) > 2 && strings.EqualFold(f[0], "AUTH") && f[2] != "[redacted]" {
				t.Fatalf("AUTH data traced: %q", l)
			}
		}
	})
}

// lineRecorder is a slog handler that keeps the "line" attributes, and
// the "dir" of each.
type lineRecorder struct{ lines, dirs []string }

func (r *lineRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *lineRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *lineRecorder) WithGroup(string) slog.Handler            { return r }
func (r *lineRecorder) Handle(_ context.Context, rec slog.Record) error {
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == "line" {
			r.lines = append(r.lines, a.Value.String())
		}
		if a.Key == "dir" {
			r.dirs = append(r.dirs, a.Value.String())
		}
		return true
	})
	return nil
}

// scanDataByOctet is the tracer's DATA scan one octet at a time: the
// reference that scanData's skipping must match.
func scanDataByOctet(t *tracer, p []byte) []byte {
	for i, b := range p {
		if t.step(b) {
			return p[i+1:]
		}
	}
	return nil
}

// FuzzScanData feeds the same data, cut into the same pieces, to scanData
// and to the octet-by-octet reference: the rest returned, the octets
// counted, the state left and the lines traced must be the same.
func FuzzScanData(f *testing.F) {
	f.Add([]byte("a\r\n.\r\nMAIL"), uint8(3))
	f.Add([]byte(".\r\n"), uint8(1))
	f.Add([]byte("x\r\n..\r\n.\r\r\n\r\n.\r\n"), uint8(2))
	f.Add([]byte("\r\n\r\n.x\r\n.\r"), uint8(5))
	f.Fuzz(func(t *testing.T, data []byte, cut uint8) {
		n := int(cut)%9 + 1
		fast, slow := &lineRecorder{}, &lineRecorder{}
		a := &tracer{log: fast, mode: traceData, bol: true}
		b := &tracer{log: slow, mode: traceData, bol: true}
		for i := 0; i < len(data); i += n {
			piece := data[i:min(i+n, len(data))]
			for a.mode == traceData && b.mode == traceData && len(piece) > 0 {
				ra, rb := a.scanData(piece), scanDataByOctet(b, piece)
				if !bytes.Equal(ra, rb) || a.dataSize != b.dataSize || a.bol != b.bol ||
					a.prevCR != b.prevCR || a.dotLine != b.dotLine || a.mode != b.mode {
					t.Fatalf("after %q: scanData left %q %+v, the reference %q %+v", data[:i], ra, *a, rb, *b)
				}
				if a.mode != traceData {
					// The end line: start the next message after it.
					a.mode, b.mode = traceData, traceData
					a.bol, b.bol, a.prevCR, b.prevCR, a.dataSize, b.dataSize = true, true, false, false, 0, 0
				}
				piece = ra
			}
		}
		if strings.Join(fast.lines, "\n") != strings.Join(slow.lines, "\n") {
			t.Fatalf("traced %q, the reference %q", fast.lines, slow.lines)
		}
	})
}

// BenchmarkTraceData traces the DATA of a 4 KiB message: the tracer's
// cost per message, beside what the log handler does with its lines.
func BenchmarkTraceData(b *testing.B) {
	data := []byte(benchMessage() + ".\r\n")
	tr := newTracer(slog.New(&lineRecorder{}), &conn{}, "mx")
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		tr.mode, tr.bol, tr.prevCR, tr.dataSize, tr.dotLine = traceData, true, false, 0, 0
		for p := data; len(p) > 0; p = p[min(len(p), 1024):] {
			tr.client(p[:min(len(p), 1024)])
		}
	}
}

// BenchmarkTraceMessage is what the protocol trace costs one message of
// BenchmarkSMTPIngestTraceHub, without the network and the store: the
// lines of one MAIL, RCPT, DATA transaction fed to a tracer whose logger
// is built as serve builds it with the console on (console.Hub in front
// of console.TraceFilter, the session's attributes added by With).
func BenchmarkTraceMessage(b *testing.B) {
	hub := console.NewHub(console.TraceFilter(slog.NewTextHandler(io.Discard, nil), false), slog.LevelInfo, 0)
	log := slog.New(hub.Handler()).With("session", "abcdefghij", "proto", "smtp", "listener", "smtp", "remote", "127.0.0.1:40000")
	tr := newTracer(log, nil, "mx.example.test")
	data := []byte(benchMessage() + ".\r\n")
	session := [][]byte{ // client and server in turn
		[]byte("MAIL FROM:<s@elsewhere.test> BODY=8BITMIME\r\n"),
		[]byte("250 2.0.0 Roger, accepting mail from <s@elsewhere.test>\r\n"),
		[]byte("RCPT TO:<alice@example.test>\r\n"),
		[]byte("250 2.0.0 I'll make sure <alice@example.test> gets this\r\n"),
		[]byte("DATA\r\n"),
		[]byte("354 Go ahead. End your data with <CR><LF>.<CR><LF>\r\n"),
		data,
		[]byte("250 2.0.0 OK: queued\r\n"),
	}
	b.ReportAllocs()
	for b.Loop() {
		for i, p := range session {
			if i%2 == 0 {
				tr.client(p)
			} else {
				tr.server(p)
			}
		}
	}
	b.StopTimer()
	if e := hub.Recent(); len(e) == 0 || e[len(e)-1].Get("line") != "250 2.0.0 OK: queued" || e[len(e)-1].Get("session") != "abcdefghij" {
		b.Fatalf("last traced event %+v", e[len(e)-1])
	}
}

// FuzzFirstFields: firstFields agrees with strings.Fields on the first
// three fields and on the count, up to four.
func FuzzFirstFields(f *testing.F) {
	for _, s := range []string{"", "AUTH", "AUTH PLAIN", " auth  plain\tsecret ", "BDAT 7 LAST", "BDAT 7 LAST x y", "a\u00a0b\u2003c", "\xff\xfe x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		want := strings.Fields(line)
		got, n := firstFields(line)
		if n != min(len(want), 4) {
			t.Fatalf("firstFields(%q) counts %d, strings.Fields %d", line, n, len(want))
		}
		for i := range min(n, 3) {
			if got[i] != want[i] {
				t.Fatalf("firstFields(%q)[%d] = %q, want %q", line, i, got[i], want[i])
			}
		}
	})
}

// TestLineStringCommon: a common line comes back as the shared string,
// any other as a copy, both without the line end.
func TestLineStringCommon(t *testing.T) {
	buf := []byte("DATA\r\n")
	if s := lineString(buf); s != "DATA" {
		t.Fatalf("lineString = %q", s)
	}
	buf = []byte("MAIL FROM:<a@b>\r\n")
	s := lineString(buf)
	copy(buf, "XXXX")
	if s != "MAIL FROM:<a@b>" {
		t.Fatalf("lineString = %q after the buffer changed: not a copy", s)
	}
	if a := testing.AllocsPerRun(100, func() { lineString([]byte("354 Go ahead. End your data with <CR><LF>.<CR><LF>\r\n")) }); a != 0 {
		t.Fatalf("a common line costs %v allocations", a)
	}
}

// BenchmarkSMTPIngestTraceCost puts what the console costs ingest into
// one figure: the MX as BenchmarkSMTPIngest runs it (plain) and as
// BenchmarkSMTPIngestTraceHub runs it (traced: trace on, logger on the
// console's Hub with its TraceFilter), 32 clients each, in alternating
// rounds in one process, so that both see the same disk, the same
// neighbours and the same garbage, which two benchmarks run one after
// the other do not (the later one pays for the earlier's). It reports
// traced/plain, which is the TraceHub ratio over the plain one.
func BenchmarkSMTPIngestTraceCost(b *testing.B) {
	const clients, rounds = 32, 16
	msg := benchMessage()
	plain := newTestEnv(b, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil)) })
	hub := console.NewHub(console.TraceFilter(slog.NewTextHandler(io.Discard, nil), false), slog.LevelInfo, 0)
	traced := newTestEnv(b, func(c *Config) {
		c.Logger = slog.New(hub.Handler())
		c.Trace = true
	})
	sendParallel(b, plain.mx, "s@elsewhere.test", msg, 1, 1)
	sendParallel(b, traced.mx, "s@elsewhere.test", msg, 1, 1)
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	var t, cpu [2]time.Duration
	var ratios []float64
	envs := [2]*testEnv{plain, traced}
	for i := range rounds {
		n := roundShare(b.N, rounds, i)
		if n == 0 {
			continue
		}
		var round [2]time.Duration
		for k := range 2 {
			side := (i + k) % 2 // each side first in every other round
			c0 := mailstore.ProcessCPU()
			round[side] = sendParallel(b, envs[side].mx, "s@elsewhere.test", msg, clients, n)
			cpu[side] += mailstore.ProcessCPU() - c0
			t[side] += round[side]
			waitIndexed(b, envs[side].store)
		}
		ratios = append(ratios, round[0].Seconds()/round[1].Seconds())
	}
	b.StopTimer()
	recent, lines := hub.Recent(), 0
	for _, e := range recent {
		if e.Msg == "trace" {
			lines++
		}
	}
	if lines < len(recent)/2 {
		b.Fatalf("%d of the hub's %d recent events are trace lines", lines, len(recent))
	}
	b.ReportMetric(t[0].Seconds()/t[1].Seconds(), "traced/plain")
	slices.Sort(ratios)
	b.ReportMetric(ratios[len(ratios)/2], "traced/plain-median")
	b.ReportMetric(float64(cpu[0].Microseconds())/float64(b.N), "plain-cpu-us/msg")
	b.ReportMetric(float64(cpu[1].Microseconds())/float64(b.N), "traced-cpu-us/msg")
}
