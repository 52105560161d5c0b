package imapd

import (
	"bytes"
	"log/slog"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/postern/postern/mailstore/limits"
)

const (
	// maxTraceLine bounds one logged protocol line.
	maxTraceLine = 512
	// maxTraceBuffer bounds the part of a line kept while waiting for its
	// end.
	maxTraceBuffer = 4096
)

// traceWriter logs one connection's protocol lines (Config.Trace). It is
// imapserver's DebugWriter, which receives the client's bytes (through
// io.TeeReader) and the server's (through io.MultiWriter) on the same
// Write method; the caller's frame tells which is which. Literal contents
// are skipped, and so is everything the client sends for a LOGIN or
// AUTHENTICATE until the server's tagged answer.
type traceWriter struct {
	log *slog.Logger

	mu     sync.Mutex
	dirs   [2]traceDir // client, server
	secret string      // tag of the LOGIN or AUTHENTICATE in progress
}

type traceDir struct {
	line    []byte
	literal int64 // literal bytes still to skip
}

const (
	fromClient = 0
	fromServer = 1
)

func newTraceWriter(log *slog.Logger) *traceWriter { return &traceWriter{log: log} }

// direction tells whether Write was called by the io.TeeReader on the
// connection's reads (client data) or by the io.MultiWriter on its writes.
func direction() int {
	var pcs [8]uintptr
	n := runtime.Callers(3, pcs[:])
	frames := runtime.CallersFrames(pcs[:n])
	for {
		f, more := frames.Next()
		if strings.HasPrefix(f.Function, "io.(*teeReader)") {
			return fromClient
		}
		if strings.HasPrefix(f.Function, "io.(*multiWriter)") || !more {
			return fromServer
		}
	}
}

func (t *traceWriter) Write(p []byte) (int, error) {
	n := len(p)
	dir := direction()
	t.mu.Lock()
	defer t.mu.Unlock()
	d := &t.dirs[dir]
	for len(p) > 0 {
		if d.literal > 0 {
			k := int(min(d.literal, int64(len(p))))
			d.literal -= int64(k)
			p = p[k:]
			continue
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			if len(d.line) < maxTraceBuffer {
				d.line = append(d.line, p[:min(len(p), maxTraceBuffer-len(d.line))]...)
			}
			break
		}
		if len(d.line) < maxTraceBuffer {
			d.line = append(d.line, p[:min(i, maxTraceBuffer-len(d.line))]...)
		}
		p = p[i+1:]
		t.emit(dir, strings.TrimRight(string(d.line), "\r"))
		d.line = d.line[:0]
	}
	return n, nil
}

// literalRE finds the literal announced at the end of a line: {n}, {n+},
// {n-} or ~{n} (RFC 3501 4.3, RFC 7888, RFC 3516).
var literalRE = regexp.MustCompile(`~?\{(\d{1,19})[+-]?\}$`)

func (t *traceWriter) emit(dir int, line string) {
	if m := literalRE.FindStringSubmatch(line); m != nil {
		if size, err := strconv.ParseInt(m[1], 10, 64); err == nil {
			t.dirs[dir].literal = size
		}
	}
	if dir == fromServer {
		if t.secret != "" && strings.HasPrefix(line, t.secret+" ") {
			t.secret = ""
		}
		t.line("S", clip(line))
		return
	}
	if t.secret != "" {
		t.line("C", "***")
		return
	}
	// On any white space, as the line may come: a client that separates
	// LOGIN's arguments with tabs must not have its password logged.
	fields := strings.Fields(line)
	if len(fields) >= 2 {
		switch strings.ToUpper(fields[1]) {
		case "LOGIN":
			t.secret = fields[0]
			t.line("C", clip(fields[0]+" "+fields[1]+" ***"))
			return
		case "AUTHENTICATE":
			t.secret = fields[0]
			shown := fields[0] + " " + fields[1]
			switch {
			case len(fields) >= 3 && !limits.KnownMechanism(fields[2]):
				shown += " ***" // credentials in the mechanism's place
			case len(fields) >= 3:
				shown += " " + fields[2]
				if len(fields) >= 4 {
					shown += " ***"
				}
			}
			t.line("C", clip(shown))
			return
		}
	}
	t.line("C", clip(line))
}

func clip(s string) string {
	if len(s) > maxTraceLine {
		return s[:maxTraceLine] + "..."
	}
	return s
}

// line logs one protocol line as every Postern server does: message
// "trace", with its direction (C: from the client, S: from the server).
func (t *traceWriter) line(dir, text string) {
	t.log.Info("trace", "dir", dir, "line", text)
}
