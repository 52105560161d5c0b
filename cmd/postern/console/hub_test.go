package console

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func TestHubFansOutAndForwards(t *testing.T) {
	var out bytes.Buffer
	hub := NewHub(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelWarn}), slog.LevelInfo, 3)
	log := slog.New(hub.Handler())
	sub, recent := hub.Subscribe(10)
	if len(recent) != 0 {
		t.Fatalf("recent before any event: %v", recent)
	}
	sess := log.With("session", "s1").WithGroup("tls")
	sess.Info("handshake", "version", "TLS 1.3", slog.Int("n", 2))
	log.Debug("below the hub's level")
	log.Warn("refused", "reason", "limit")

	e := <-sub.C
	if e.Seq != 1 || e.Msg != "handshake" || e.Get("session") != "s1" || e.Get("tls.version") != "TLS 1.3" || e.Get("tls.n") != "2" {
		t.Fatalf("first event %+v", e)
	}
	if e = <-sub.C; e.Seq != 2 || e.Msg != "refused" || e.Get("reason") != "limit" {
		t.Fatalf("second event %+v", e)
	}
	if got := out.String(); strings.Contains(got, "handshake") || !strings.Contains(got, "reason=limit") {
		t.Fatalf("next handler got %q: want only the warning", got)
	}
	for i := 0; i < 3; i++ {
		log.Info("more")
	}
	if r := hub.Recent(); len(r) != 3 || r[0].Seq != 3 || r[2].Seq != 5 {
		t.Fatalf("ring after 5 events: %+v", r)
	}
	sub.Close()
	sub.Close()
	n := 0
	for range sub.C {
		n++
	}
	if n != 3 || sub.Dropped() {
		t.Fatalf("after Close: %d buffered events (want 3), dropped %v", n, sub.Dropped())
	}
}

func TestHubDropsSlowSubscriber(t *testing.T) {
	hub := NewHub(slog.NewTextHandler(&bytes.Buffer{}, nil), slog.LevelInfo, 0)
	log := slog.New(hub.Handler())
	slow, _ := hub.Subscribe(2)
	fast, _ := hub.Subscribe(100)
	for i := 0; i < 10; i++ {
		log.Info("event", "i", i)
	}
	n := 0
	for range slow.C {
		n++
	}
	if n != 2 || !slow.Dropped() {
		t.Fatalf("slow subscriber got %d events, dropped %v: want 2 and dropped", n, slow.Dropped())
	}
	if len(fast.C) != 10 || fast.Dropped() {
		t.Fatalf("fast subscriber holds %d events, dropped %v", len(fast.C), fast.Dropped())
	}
}

// attrsOf is an event's attributes as "k=v" strings, in order.
func attrsOf(e Event) []string {
	var out []string
	for _, a := range e.AllAttrs() {
		out = append(out, a.Key+"="+a.Value)
	}
	return out
}

// TestHubEventsShareLoggerAttrs: the events of one logger share its
// attributes, and nothing done later (more events, a derived logger, a
// reader appending to what it got) changes an event already made.
func TestHubEventsShareLoggerAttrs(t *testing.T) {
	hub := NewHub(slog.NewTextHandler(io.Discard, nil), slog.LevelInfo, 0)
	sess := slog.New(hub.Handler()).With("session", "s1", "proto", "smtp")
	sess.Info("trace", "dir", "C", "line", "MAIL FROM:<a@b>")
	first := hub.Recent()[0]
	want := []string{"session=s1", "proto=smtp", "dir=C", "line=MAIL FROM:<a@b>"}
	if got := attrsOf(first); !slices.Equal(got, want) {
		t.Fatalf("first event's attrs %q, want %q", got, want)
	}
	sess.Info("trace", "dir", "S", "line", "250 ok")
	sess.With("id", "m1").WithGroup("tls").Info("delivered", "to", "b@c")
	sess.Info("session end")
	r := hub.Recent()
	// A reader appending to an event's slices must not write into
	// another event's attributes (they may share an allocation).
	for _, e := range r {
		_ = append(e.Attrs, Attr{"x", "1"})
		_ = append(e.AllAttrs(), Attr{"y", "2"})
	}
	for i, w := range [][]string{
		want,
		{"session=s1", "proto=smtp", "dir=S", "line=250 ok"},
		{"session=s1", "proto=smtp", "id=m1", "tls.to=b@c"},
		{"session=s1", "proto=smtp"},
	} {
		if got := attrsOf(r[i]); !slices.Equal(got, w) {
			t.Errorf("event %d (%s): attrs %q, want %q", i, r[i].Msg, got, w)
		}
	}
	if got := attrsOf(first); !slices.Equal(got, want) {
		t.Fatalf("first event's attrs changed to %q", got)
	}
	// Get sees the record's own attribute over the logger's.
	sess.Info("again", "proto", "esmtp")
	if e := hub.Recent()[4]; e.Get("proto") != "esmtp" || e.Get("session") != "s1" || e.Get("none") != "" {
		t.Fatalf("Get on %+v", e)
	}
}

// TestEventJSON: an event's JSON holds all its attributes in order, the
// logger's first, and reads back; the flow stream's form adds "flow".
func TestEventJSON(t *testing.T) {
	hub := NewHub(slog.NewTextHandler(io.Discard, nil), slog.LevelInfo, 0)
	slog.New(hub.Handler()).With("session", "s1").Info("trace", "dir", "C", "line", "DATA")
	slog.New(hub.Handler()).Info("bare")
	r := hub.Recent()
	b, err := json.Marshal(r[0])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"seq":1,`) || !strings.Contains(string(b), `"msg":"trace","attrs":[{"k":"session","v":"s1"},{"k":"dir","v":"C"},{"k":"line","v":"DATA"}]}`) {
		t.Fatalf("JSON %s", b)
	}
	var back Event
	if err := json.Unmarshal(b, &back); err != nil || back.Seq != 1 || !back.Time.Equal(r[0].Time) ||
		!slices.Equal(attrsOf(back), attrsOf(r[0])) {
		t.Fatalf("read back %+v, %v", back, err)
	}
	if b, err := json.Marshal(r[1]); err != nil || !strings.HasSuffix(string(b), `"msg":"bare","attrs":[]}`) {
		t.Fatalf("event without attributes: %s %v", b, err)
	}
	b, err = json.Marshal(flowEvent{Event: r[0], Flow: flowOf(r[0])})
	if err != nil || !strings.Contains(string(b), `{"k":"line","v":"DATA"}],"flow":{"session":"s1","kind":"line","dir":"C","line":"DATA"}}`) {
		t.Fatalf("flow event JSON %s %v", b, err)
	}
	var fe flowEvent
	if err := json.Unmarshal(b, &fe); err != nil || fe.Flow.Kind != "line" || fe.Get("session") != "s1" {
		t.Fatalf("flow event read back %+v, %v", fe, err)
	}
}

// TestHubConcurrentLoggers: loggers made from one another in several
// goroutines log at once while a subscriber and Recent read; under -race
// this checks the sharing, and every event must carry its own writer's
// attributes.
func TestHubConcurrentLoggers(t *testing.T) {
	hub := NewHub(TraceFilter(slog.NewTextHandler(io.Discard, nil), false), slog.LevelInfo, 64)
	sub, _ := hub.Subscribe(10000)
	base := slog.New(hub.Handler()).With("proto", "smtp")
	const writers, each = 8, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			log := base.With("session", strconv.Itoa(w))
			for i := range each {
				log.Info("trace", "dir", "C", "line", strconv.Itoa(w)+"/"+strconv.Itoa(i))
				if i%50 == 0 {
					log.With("id", strconv.Itoa(i)).Info("message accepted", "bytes", i)
					hub.Recent()
				}
			}
		})
	}
	wg.Wait()
	sub.Close()
	n := 0
	for e := range sub.C {
		n++
		w := e.Get("session")
		if e.Get("proto") != "smtp" || w == "" {
			t.Fatalf("event %+v without the logger's attributes", e)
		}
		if e.Msg == "trace" && !strings.HasPrefix(e.Get("line"), w+"/") {
			t.Fatalf("event %+v carries another writer's line", e)
		}
	}
	if want := writers * (each + each/50); n != want || sub.Dropped() {
		t.Fatalf("subscriber got %d events (dropped %v), want %d", n, sub.Dropped(), want)
	}
}

// TestHubSkipsTraceFilterForTrace: with a TraceFilter behind the hub the
// trace records never reach the log output, the others do, and with
// log.trace on (no filter) the trace records do too.
func TestHubSkipsTraceFilterForTrace(t *testing.T) {
	for _, trace := range []bool{false, true} {
		var b bytes.Buffer
		hub := NewHub(TraceFilter(slog.NewTextHandler(&b, nil), trace), slog.LevelInfo, 0)
		log := slog.New(hub.Handler()).With("session", "s1")
		log.Info("trace", "dir", "C", "line", "NOOP")
		log.Info("session end")
		if got := b.String(); strings.Contains(got, "NOOP") != trace || !strings.Contains(got, "session end") {
			t.Errorf("log.trace=%v: output %q", trace, got)
		}
		if len(hub.Recent()) != 2 {
			t.Errorf("log.trace=%v: hub holds %d events, want 2", trace, len(hub.Recent()))
		}
	}
}
