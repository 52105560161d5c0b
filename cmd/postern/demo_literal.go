package main

// IMAP literals in the demo's trace. imapd's trace skips literal contents
// (they may be whole messages), so the FETCH of a body part would show
// only "{82}" and ")". The demo's IMAP client reads the server's bytes
// through a literalTap, which hands each literal's beginning to the demo
// output; the trace line announcing the literal then waits for it and
// prints its text, cut when long.

import (
	"bytes"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"
)

const (
	// maxLiteralShown bounds the bytes of one literal the demo prints.
	maxLiteralShown = 600
	// maxLiteralLines bounds its lines.
	maxLiteralLines = 12
	// literalWait bounds how long a trace line announcing a literal waits
	// for the client to have read it.
	literalWait = 5 * time.Second
	// maxTapLine bounds the part of a server line the tap keeps.
	maxTapLine = 4096
	// maxLiteralFull bounds the bytes of one literal shown with
	// -show-body, which prints literals whole.
	maxLiteralFull = 16 << 20
)

// demoLiteralRE finds the literal announced at the end of a server line:
// {n} or ~{n} (RFC 9051 4.3, RFC 3516).
var demoLiteralRE = regexp.MustCompile(`~?\{(\d{1,19})\}$`)

// literal is the beginning of one literal and its full size.
type literal struct {
	head []byte
	size int64
	full bool // -show-body: not cut to a few lines
}

// literalTap passes a connection's reads through and finds the literals
// in what the server sends.
type literalTap struct {
	net.Conn
	found chan<- literal
	full  bool // keep literals whole (-show-body)
	line  []byte
	left  int64 // literal bytes still to come
	cur   literal
}

func (t *literalTap) Read(p []byte) (int, error) {
	n, err := t.Conn.Read(p)
	t.scan(p[:n])
	return n, err
}

func (t *literalTap) scan(p []byte) {
	for len(p) > 0 {
		if t.left > 0 {
			k := int(min(t.left, int64(len(p))))
			limit := maxLiteralShown
			if t.full {
				limit = maxLiteralFull
			}
			if room := limit - len(t.cur.head); room > 0 {
				t.cur.head = append(t.cur.head, p[:min(k, room)]...)
			}
			t.left -= int64(k)
			p = p[k:]
			if t.left == 0 {
				select {
				case t.found <- t.cur:
				default: // nobody is showing literals: drop it
				}
				t.cur = literal{}
			}
			continue
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			t.line = append(t.line, p[:min(len(p), max(0, maxTapLine-len(t.line)))]...)
			return
		}
		t.line = append(t.line, p[:min(i, max(0, maxTapLine-len(t.line)))]...)
		p = p[i+1:]
		line := strings.TrimRight(string(t.line), "\r")
		t.line = t.line[:0]
		if m := demoLiteralRE.FindStringSubmatch(line); m != nil {
			if size, err := strconv.ParseInt(m[1], 10, 64); err == nil && size > 0 {
				t.left, t.cur = size, literal{size: size, full: t.full}
			}
		}
	}
}

// literalLines is what the demo prints of lit: its lines, cut after
// maxLiteralLines or maxLiteralShown bytes with a count of the rest
// (whole with -show-body, up to maxLiteralFull).
func literalLines(lit literal) []string {
	text := strings.ReplaceAll(string(lit.head), "\r\n", "\n")
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	shown := int64(len(lit.head))
	if len(lines) > maxLiteralLines && !lit.full {
		shown = 0
		for _, l := range lines[:maxLiteralLines] {
			shown += int64(len(l)) + 2
		}
		lines = lines[:maxLiteralLines]
	}
	if rest := lit.size - shown; rest > 0 {
		lines = append(lines, fmt.Sprintf("[... %d more bytes of the %d-byte literal]", rest, lit.size))
	}
	return lines
}
