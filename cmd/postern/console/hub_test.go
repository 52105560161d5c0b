package console

import (
	"bytes"
	"log/slog"
	"strings"
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
