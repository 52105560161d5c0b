package console

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/postern/postern/mailstore/limits"
)

// ParseMetrics parses a /metrics answer with Prometheus's text parser.
func parseMetrics(t *testing.T, body io.Reader) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return mf
}

// value returns the value of the sample of family name whose labels
// include want (label=value pairs); -1 when there is none.
func value(mf map[string]*dto.MetricFamily, name string, want ...string) float64 {
	f := mf[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(want); i += 2 {
			found := false
			for _, l := range m.Label {
				if l.GetName() == want[i] && l.GetValue() == want[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
}

func scrape(t *testing.T, s *Server, remote string) (int, string) {
	t.Helper()
	r := httptest.NewRequest("GET", "/metrics", nil)
	r.RemoteAddr = remote
	w := httptest.NewRecorder()
	s.Handler().ServeHTTP(w, r)
	return w.Code, w.Body.String()
}

func TestMetricsAllowed(t *testing.T) {
	nets := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}
	for _, tc := range []struct {
		remote string
		want   bool
	}{
		{"127.0.0.1:4000", true},
		{"127.8.9.10:4000", true},
		{"[::1]:4000", true},
		{"[::ffff:127.0.0.1]:4000", true},
		{"10.1.2.3:4000", true},
		{"[::ffff:10.1.2.3]:4000", true},
		{"[2001:db8::5]:4000", true},
		{"192.0.2.1:4000", false},
		{"11.0.0.1:4000", false},
		{"[2001:db9::5]:4000", false},
		{"[fe80::1%eth0]:4000", false},
		{"garbage", false},
		{"", false},
	} {
		if got := MetricsAllowed(tc.remote, nets); got != tc.want {
			t.Errorf("MetricsAllowed(%q) = %v, want %v", tc.remote, got, tc.want)
		}
	}
	if MetricsAllowed("10.1.2.3:4000", nil) {
		t.Error("10.1.2.3 allowed with no networks configured")
	}
}

func TestMetricsForbiddenOutsideNetworks(t *testing.T) {
	m := NewMetrics(MetricsConfig{})
	s := New(Config{Metrics: m, MetricsNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	if code, body := scrape(t, s, "192.0.2.7:5555"); code != http.StatusForbidden || strings.Contains(body, "postern_") {
		t.Errorf("from 192.0.2.7: %d %q", code, body)
	}
	for _, remote := range []string{"127.0.0.1:5555", "10.9.9.9:5555"} {
		code, body := scrape(t, s, remote)
		if code != http.StatusOK {
			t.Fatalf("from %s: %d %q", remote, code, body)
		}
		mf := parseMetrics(t, strings.NewReader(body))
		if value(mf, "postern_events_dropped_total") != 0 || mf["go_goroutines"] == nil || mf["process_open_fds"] == nil {
			t.Errorf("from %s: runtime or own metrics missing:\n%s", remote, body)
		}
	}
	// Without metrics, the endpoint does not exist.
	if code, _ := scrape(t, New(Config{}), "127.0.0.1:1"); code != http.StatusNotFound {
		t.Errorf("without Metrics: %d", code)
	}
}

func TestReadyzHidesCauseFromRemoteClients(t *testing.T) {
	s := New(Config{Ready: func(context.Context) error { return errors.New("mailstore /var/lib/postern/db: closed") }})
	for _, tc := range []struct{ remote, want string }{
		{"192.0.2.1:1234", "not ready\n"},
		{"127.0.0.1:1234", "not ready: mailstore /var/lib/postern/db: closed\n"},
	} {
		r := httptest.NewRequest("GET", "/readyz", nil)
		r.RemoteAddr = tc.remote
		w := httptest.NewRecorder()
		s.Handler().ServeHTTP(w, r)
		if w.Code != http.StatusServiceUnavailable || w.Body.String() != tc.want {
			t.Errorf("/readyz from %s: %d %q, want 503 %q", tc.remote, w.Code, w.Body.String(), tc.want)
		}
	}
}

// TestMetricsFromEvents logs the vocabulary through a Hub and reads the
// counters back from /metrics.
func TestMetricsFromEvents(t *testing.T) {
	hub := NewHub(slog.DiscardHandler, slog.LevelInfo, 64)
	log := slog.New(hub.Handler())
	queued := time.Now().Add(-time.Minute)
	conns := limits.NewConns(10, 5, nil)
	release, err := conns.Acquire(netip.MustParseAddr("192.0.2.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	logins := limits.NewLogins(limits.LoginPolicy{MaxFailures: 1, FailureDelay: -1})
	for _, ip := range []string{"192.0.2.2", "192.0.2.3"} {
		logins.Check(context.Background(), limits.Attempt{Protocol: "imap", Remote: netip.MustParseAddr(ip), User: "u"},
			func(context.Context) (bool, error) { return false, nil })
	}
	m := NewMetrics(MetricsConfig{Hub: hub, Conns: conns, Memory: limits.NewBudget(1000, 0), Logins: logins,
		Queue: func(ctx context.Context, limit int) (QueueStats, error) {
			return QueueStats{Length: 3, Oldest: queued}, nil
		},
		DomainClass: func(d string) string {
			if d == "example.test" {
				return "local"
			}
			return "remote"
		}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitSubscribed(t, hub)

	s1 := log.With("session", "a1", "proto", "smtp", "listener", "smtp", "remote", "192.0.2.1:1000")
	s1.Info("session start", "local", "127.0.0.1:25", "tls", "")
	s1.Info("tls handshake", "result", "ok", "version", "TLS 1.3", "cipher", "TLS_AES_128_GCM_SHA256")
	s1.Info("recipient refused", "to", "x@other.test", "reason", "policy", "detail", "relay denied")
	s1.Info("message accepted", "id", "a1-1", "bytes", 1200, "size", 1200, "recipients", 2, "stored", 1, "queued", 1)
	s1.Info("queued", "id", "a1-1", "queue_id", 7, "to", "bob@remote.test")
	s2 := log.With("session", "b2", "proto", "imap", "listener", "imaps", "remote", "192.0.2.2:1000")
	s2.Info("session start", "local", "127.0.0.1:993", "tls", "TLS 1.3")
	s2.Warn("login failed", "protocol", "imap", "remote", "192.0.2.2", "user", "u", "mechanism", "PLAIN", "reason", "wrong credentials, address now blocked")
	s2.Info("auth", "result", "fail", "user", "u", "mechanism", "PLAIN")
	s2.Info("auth", "result", "strange value")
	s1.Info("session end", "tls", "", "duration", 1500*time.Millisecond, "messages", 1)
	log.Warn("refused", "what", "connection", "proto", "pop3", "listener", "pop3", "reason", "limits", "detail", "too many")
	relay := log.With("part", "relay")
	relay.Info("relay attempt", "result", "delivered", "queue_id", 7, "domain", "remote.test", "mx", "mx.remote.test", "duration", 80*time.Millisecond)
	relay.Info("relay attempt", "result", "deferred", "queue_id", 8, "domain", "example.test", "mx", "", "duration", time.Duration(0))
	relay.Info("delivered", "queue_id", 7, "latency", 2*time.Second)
	log.Info("dns lookup", "type", "MX", "name", "remote.test.", "result", "ok", "answers", 1)
	log.Info("dns lookup", "type", "TXT", "name", "nx.test.", "result", "nxdomain", "answers", 0)
	m.ObserveCommit(4, 3*time.Millisecond, nil)
	m.ObserveCommit(1, time.Millisecond, errors.New("disk full"))
	log.Info("sentinel")
	waitSeq(t, m, hub)

	s := New(Config{Metrics: m})
	code, body := scrape(t, s, "127.0.0.1:1")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	mf := parseMetrics(t, strings.NewReader(body))
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"postern_sessions_total", []string{"proto", "smtp", "listener", "smtp"}, 1},
		{"postern_sessions_total", []string{"proto", "imap", "listener", "imaps"}, 1},
		{"postern_sessions_open", []string{"proto", "smtp", "listener", "smtp"}, 0},
		{"postern_sessions_open", []string{"proto", "imap", "listener", "imaps"}, 1},
		{"postern_session_duration_seconds", []string{"proto", "smtp"}, 1},
		{"postern_tls_handshakes_total", []string{"proto", "smtp", "version", "TLS 1.3", "result", "ok"}, 1},
		{"postern_refusals_total", []string{"what", "recipient", "reason", "policy"}, 1},
		{"postern_refusals_total", []string{"what", "connection", "reason", "limits"}, 1},
		{"postern_messages_accepted_total", []string{"proto", "smtp"}, 1},
		{"postern_messages_accepted_bytes_total", []string{"proto", "smtp"}, 1200},
		{"postern_messages_accepted_recipients_total", []string{"proto", "smtp"}, 2},
		{"postern_queued_total", nil, 1},
		{"postern_deliveries_total", []string{"kind", "local"}, 1},
		{"postern_deliveries_total", []string{"kind", "remote"}, 1},
		{"postern_delivery_latency_seconds", nil, 1},
		{"postern_auth_total", []string{"proto", "imap", "result", "fail"}, 1},
		{"postern_auth_total", []string{"proto", "imap", "result", "other"}, 1},
		{"postern_addresses_blocked_total", nil, 1},
		{"postern_addresses_blocked", nil, 2},
		{"postern_relay_attempts_total", []string{"result", "delivered", "class", "remote"}, 1},
		{"postern_relay_attempts_total", []string{"result", "deferred", "class", "local"}, 1},
		{"postern_relay_attempt_duration_seconds", []string{"result", "delivered"}, 1},
		{"postern_dns_lookups_total", []string{"type", "MX", "result", "ok"}, 1},
		{"postern_dns_lookups_total", []string{"type", "TXT", "result", "nxdomain"}, 1},
		{"postern_store_commit_duration_seconds", nil, 2},
		{"postern_store_commit_requests", nil, 2},
		{"postern_store_commit_errors_total", nil, 1},
		{"postern_queue_length", nil, 3},
		{"postern_queue_scrape_error", nil, 0},
		{"postern_events_dropped_total", nil, 0},
		{"postern_connections_open", nil, 1},
		{"postern_connections_max", nil, 10},
		{"postern_message_memory_bytes", nil, 0},
		{"postern_message_memory_max_bytes", nil, 1000},
	} {
		if got := value(mf, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if age := value(mf, "postern_queue_oldest_age_seconds"); age < 59 || age > 3600 {
		t.Errorf("queue oldest age %v, want about 60", age)
	}
	if f := mf["postern_store_commit_requests"]; f == nil || f.Metric[0].Histogram.GetSampleSum() != 5 {
		t.Errorf("group commit sizes: %v", f)
	}
}

// TestMetricsDroppedAndCaughtUp: a subscriber that falls behind is
// dropped by the hub; Run subscribes again, counts what the ring still
// holds, and counts the rest as dropped.
func TestMetricsDroppedAndCaughtUp(t *testing.T) {
	hub := NewHub(slog.DiscardHandler, slog.LevelInfo, 8)
	log := slog.New(hub.Handler())
	m := NewMetrics(MetricsConfig{Hub: hub})
	log.Info("before metrics")
	// Subscribe by hand with a buffer of 1, as Run would, to force a
	// drop: apply the first event, then let 20 pass unread.
	sub, recent := hub.Subscribe(1)
	m.catchUp(recent)
	log.Info("queued")
	m.Apply(<-sub.C)
	for range 20 {
		log.Info("queued")
	}
	if !sub.Dropped() {
		t.Fatal("subscription not dropped")
	}
	// Run's resubscription: the ring holds the last 8 of the 20.
	_, recent = hub.Subscribe(1)
	m.catchUp(recent)
	mf := gather(t, m)
	if got := value(mf, "postern_queued_total"); got != 1+8 {
		t.Errorf("queued %v, want 9 (1 read, 8 from the ring)", got)
	}
	if got := value(mf, "postern_events_dropped_total"); got != 12 {
		t.Errorf("dropped %v, want 12", got)
	}
}

func gather(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]*dto.MetricFamily)
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// waitSubscribed waits until Run has subscribed to hub.
func waitSubscribed(t *testing.T, hub *Hub) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		hub.mu.Lock()
		n := len(hub.subs)
		hub.mu.Unlock()
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("metrics did not subscribe")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitSeq waits until m has applied every event hub has published.
func waitSeq(t *testing.T, m *Metrics, hub *Hub) {
	t.Helper()
	hub.mu.Lock()
	want := hub.seq
	hub.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for {
		m.mu.Lock()
		got := m.lastSeq
		m.mu.Unlock()
		if got >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics applied events up to %d, want %d", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkMetricsApply is the cost of counting one event: the metrics
// subscriber must keep up with the servers' log records.
func BenchmarkMetricsApply(b *testing.B) {
	m := NewMetrics(MetricsConfig{})
	events := []Event{
		{Msg: "trace", Attrs: []Attr{{"session", "a"}, {"proto", "smtp"}, {"dir", "C"}, {"line", "RCPT TO:<a@b>"}}},
		{Msg: "session start", Attrs: []Attr{{"session", "a"}, {"proto", "smtp"}, {"listener", "smtp"}}},
		{Msg: "message accepted", Attrs: []Attr{{"session", "a"}, {"proto", "smtp"}, {"bytes", "4096"}, {"recipients", "2"}, {"stored", "2"}}},
		{Msg: "session end", Attrs: []Attr{{"session", "a"}, {"proto", "smtp"}, {"duration", "1.5s"}}},
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		e := events[i%len(events)]
		e.Seq = uint64(i + 1)
		m.Apply(e)
	}
}
