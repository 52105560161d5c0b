package main

// What `postern demo` prints: its own narration, and the log records of the
// real servers and clients it runs (protocol lines with log.trace on, mail
// events), each tagged with the part of the mail system it comes from.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// demoOut prints the demo's events as text or as JSON lines.
type demoOut struct {
	mu   sync.Mutex
	w    io.Writer
	json bool
	step string
	done bool // the demo has stopped: late log records are dropped
	// literals, when set, gives the literals that the trace of
	// literalPart announces, as the demo's client read them.
	literals    <-chan literal
	literalPart string
	// seen counts the mail events emitted, by part and text, for a
	// scenario that waits for a server to finish a session.
	seen map[string]int
	// open counts the sessions of each part that have begun and not yet
	// ended, so that a step's heading waits for the last line of the
	// sessions the step before ran (settle).
	open map[string]int
	// spanning counts the sessions of each part that a scenario keeps
	// open across steps on purpose: settle does not wait for them.
	spanning map[string]int
	// pause, when set, waits for the reader before each step (-step).
	pause func()
}

// settleWait bounds how long a step heading waits for the sessions of
// the step before to log their end.
const settleWait = 3 * time.Second

// sessionStart and sessionEnd tell whether a server event begins or ends
// a session: every server logs "session start" and "session end".
func sessionStart(part, text string) bool {
	return text == "session start"
}

func sessionEnd(text string) bool {
	return text == "session end"
}

// stepPause returns the -step pause: a prompt on w, then a line read
// from r. Once r ends, it no longer pauses.
func stepPause(r io.Reader, w io.Writer) func() {
	br := bufio.NewReader(r)
	ended := false
	return func() {
		if ended {
			return
		}
		fmt.Fprint(w, "-- Enter: next step --")
		if _, err := br.ReadString('\n'); err != nil {
			ended = true
		}
	}
}

// span tells settle that a session of part stays open across steps (n
// 1), or no longer does (n -1).
func (o *demoOut) span(part string, n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.spanning == nil {
		o.spanning = map[string]int{}
	}
	o.spanning[part] += n
}

// settle waits, boundedly, until every session that has begun has logged
// its end, so that its last line lands in the step that ran it.
func (o *demoOut) settle() {
	deadline := time.Now().Add(settleWait)
	for time.Now().Before(deadline) {
		o.mu.Lock()
		busy := false
		for part, n := range o.open {
			if n > o.spanning[part] {
				busy = true
			}
		}
		o.mu.Unlock()
		if !busy {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// seenCount is how many events of part with text were emitted (or,
// for text "S: * ...", untagged server lines of part's trace).
func (o *demoOut) seenCount(part, text string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.seen[part+"\x00"+text]
}

// showLiterals makes the trace of part print the literals read from ch;
// a nil ch stops it.
func (o *demoOut) showLiterals(part string, ch <-chan literal) {
	o.mu.Lock()
	o.literals, o.literalPart = ch, part
	o.mu.Unlock()
}

// literalAfter prints the text of the literal that a trace line of part
// announces, once the client has read it.
func (o *demoOut) literalAfter(part, dir, line string) {
	if dir != "S" {
		return
	}
	if m := demoLiteralRE.FindStringSubmatch(line); m == nil || m[1] == "0" {
		return
	}
	o.mu.Lock()
	ch := o.literals
	if o.literalPart != part {
		ch = nil
	}
	o.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case lit := <-ch:
		for _, l := range literalLines(lit) {
			o.emit(event{Kind: "trace", Part: part, Dir: "S", Text: l})
		}
	case <-time.After(literalWait):
	}
}

// stop drops whatever the servers still log after the demo is over.
func (o *demoOut) stop() {
	o.mu.Lock()
	o.done = true
	o.mu.Unlock()
}

// event is one JSON line of `postern demo -json`.
type event struct {
	Time  time.Time         `json:"time"`
	Step  string            `json:"step"`
	Kind  string            `json:"kind"` // step, note, trace, event, result
	Part  string            `json:"part,omitempty"`
	Dir   string            `json:"dir,omitempty"` // C (client to server) or S
	Text  string            `json:"text"`
	Attrs map[string]string `json:"attrs,omitempty"`
}

func (o *demoOut) emit(e event) {
	if e.Kind == "result" {
		o.settle()
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.done {
		return
	}
	e.Time = time.Now().UTC()
	if e.Kind == "trace" && e.Dir == "S" && strings.HasPrefix(e.Text, "* ") {
		// Untagged server lines, for a scenario that waits until one
		// has been shown (IDLE).
		if o.seen == nil {
			o.seen = map[string]int{}
		}
		o.seen[e.Part+"\x00S: "+e.Text]++
	}
	if e.Kind == "event" {
		if o.seen == nil {
			o.seen = map[string]int{}
		}
		o.seen[e.Part+"\x00"+e.Text]++
		if o.open == nil {
			o.open = map[string]int{}
		}
		switch {
		case sessionStart(e.Part, e.Text):
			o.open[e.Part]++
		case sessionEnd(e.Text) && o.open[e.Part] > 0:
			o.open[e.Part]--
		}
	}
	if e.Step == "" {
		e.Step = o.step
	}
	if o.json {
		b, _ := json.Marshal(e)
		fmt.Fprintf(o.w, "%s\n", b)
		return
	}
	writeEventText(o.w, e)
}

// writeEventText prints e as a line of the demo's text output. The text and
// JSON outputs are the same stream of events, so that a JSON line rendered
// here gives exactly the text line.
func writeEventText(w io.Writer, e event) {
	switch e.Kind {
	case "step":
		fmt.Fprintf(w, "\n== %s\n", e.Text)
	case "note":
		fmt.Fprintf(w, "   %s\n", e.Text)
	case "trace":
		fmt.Fprintf(w, "   %-16s %s: %s\n", "["+e.Part+"]", e.Dir, e.Text)
	case "event":
		var kv []string
		for k, v := range e.Attrs {
			kv = append(kv, k+"="+v)
		}
		sortStrings(kv)
		fmt.Fprintf(w, "   %-16s (%s) %s\n", "["+e.Part+"]", e.Text, strings.Join(kv, " "))
	case "result":
		fmt.Fprintf(w, "\n%s\n", e.Text)
	}
}

// beginStep starts a numbered section.
func (o *demoOut) beginStep(title string) {
	o.settle()
	if o.pause != nil && o.step != "" {
		o.pause()
	}
	o.mu.Lock()
	o.step = title
	o.mu.Unlock()
	o.emit(event{Kind: "step", Text: title})
}

func (o *demoOut) note(format string, args ...any) {
	o.emit(event{Kind: "note", Text: fmt.Sprintf(format, args...)})
}

// logger returns a logger whose records the demo prints, tagged part.
func (o *demoOut) logger(part string) *slog.Logger {
	return slog.New(&demoHandler{out: o, part: part})
}

// demoHandler turns log records into demo events: "trace" records into
// protocol lines, the others into mail events. Debug records other than
// traces are dropped.
type demoHandler struct {
	out   *demoOut
	part  string
	attrs []slog.Attr
}

func (h *demoHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *demoHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level < slog.LevelInfo && r.Message != "trace" {
		return nil
	}
	attrs := map[string]string{}
	add := func(a slog.Attr) bool {
		if a.Key != "" {
			attrs[a.Key] = a.Value.Resolve().String()
		}
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	if r.Message == "listening" {
		// Servers start listening on their own goroutines, so their
		// "listening" records would land anywhere in the output; the
		// demo prints every listener, labelled with its service, in
		// step 1 instead (demo.intro).
		return nil
	}
	if r.Message == "trace" {
		h.out.emit(event{Kind: "trace", Part: h.part, Dir: attrs["dir"], Text: attrs["line"]})
		h.out.literalAfter(h.part, attrs["dir"], attrs["line"])
		return nil
	}
	for _, k := range []string{"session", "part", "proto", "listener", "remote"} {
		delete(attrs, k)
	}
	h.out.emit(event{Kind: "event", Part: h.part, Text: r.Message, Attrs: attrs})
	return nil
}

func (h *demoHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &demoHandler{out: h.out, part: h.part, attrs: append(append([]slog.Attr{}, h.attrs...), as...)}
}

func (h *demoHandler) WithGroup(string) slog.Handler { return h }

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}
