package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-smtp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrapeMetrics reads /metrics from base and parses it with Prometheus's
// text parser.
func scrapeMetrics(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return mf
}

// metricValue sums the samples of family name whose labels include the
// label=value pairs of want (a histogram counts its observations).
func metricValue(mf map[string]*dto.MetricFamily, name string, want ...string) float64 {
	f := mf[name]
	if f == nil {
		return 0
	}
	sum := 0.0
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(want); i += 2 {
			found := false
			for _, l := range m.Label {
				found = found || l.GetName() == want[i] && l.GetValue() == want[i+1]
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum
}

// TestServeMetrics: real SMTP, POP3 and IMAP sessions against serve move
// the counters of /metrics.
func TestServeMetrics(t *testing.T) {
	r := startServe(t, "[http]\nlisten = \"127.0.0.1:0\"\n")
	base := "http://" + r.addrs["http"]
	if r.addrs["http"] == "" {
		t.Fatalf("no HTTP listener:\n%s", r.stdout.String())
	}
	r.addUser(t, "bob@example.test", "bob's password")

	// SMTP: one message in over the MX, one relay refused.
	msg := "From: carol@remote.test\r\nTo: bob@example.test\r\nSubject: counted\r\n\r\nhello\r\n"
	if err := sendPlain(r.addrs["smtp"], "carol@remote.test", "bob@example.test", msg); err != nil {
		t.Fatalf("MX delivery: %v", err)
	}
	var smtpErr *smtp.SMTPError
	if err := sendPlain(r.addrs["smtp"], "carol@remote.test", "x@far.test", msg); !errors.As(err, &smtpErr) {
		t.Fatalf("relay through the MX: %v", err)
	}

	// POP3: a wrong password, then the right one.
	conn, err := net.DialTimeout("tcp", r.addrs["pop3"], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := textproto.NewConn(conn)
	if line, err := c.ReadLine(); err != nil || !strings.HasPrefix(line, "+OK") {
		t.Fatalf("greeting %q %v", line, err)
	}
	pop3Cmd(t, c, "USER bob@example.test", true)
	pop3Cmd(t, c, "PASS wrong", false)
	pop3Cmd(t, c, "USER bob@example.test", true)
	pop3Cmd(t, c, "PASS bob's password", true)
	pop3Cmd(t, c, "QUIT", true)
	c.Close()

	// IMAP over implicit TLS.
	ic, err := imapclient.DialTLS(r.addrs["imaps"], &imapclient.Options{TLSConfig: &tls.Config{InsecureSkipVerify: true}})
	if err != nil {
		t.Fatal(err)
	}
	if err := ic.Login("bob@example.test", "bob's password").Wait(); err != nil {
		t.Fatal(err)
	}
	if err := ic.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	ic.Close()

	want := []struct {
		name   string
		labels []string
		min    float64
	}{
		{"postern_sessions_total", []string{"proto", "smtp", "listener", "smtp"}, 2},
		{"postern_sessions_total", []string{"proto", "pop3", "listener", "pop3"}, 1},
		{"postern_sessions_total", []string{"proto", "imap", "listener", "imaps"}, 1},
		{"postern_session_duration_seconds", []string{"proto", "imap"}, 1},
		{"postern_messages_accepted_total", []string{"proto", "smtp"}, 1},
		{"postern_messages_accepted_bytes_total", []string{"proto", "smtp"}, float64(len(msg))},
		{"postern_deliveries_total", []string{"kind", "local"}, 1},
		{"postern_refusals_total", []string{"what", "recipient", "reason", "policy"}, 1},
		{"postern_auth_total", []string{"proto", "pop3", "result", "fail"}, 1},
		{"postern_auth_total", []string{"proto", "pop3", "result", "ok"}, 1},
		{"postern_auth_total", []string{"proto", "imap", "result", "ok"}, 1},
		{"postern_tls_handshakes_total", []string{"proto", "imap", "result", "ok"}, 1},
		// dns.server refuses every query: the MX's SPF check fails.
		{"postern_dns_lookups_total", []string{"result", "fail"}, 1},
		// The store's group commits (mailstore.Options.OnCommit): at
		// least the delivery's.
		{"postern_store_commit_duration_seconds", nil, 1},
		{"postern_store_commit_requests", nil, 1},
	}
	var mf map[string]*dto.MetricFamily
	deadline := time.Now().Add(15 * time.Second)
	for {
		mf = scrapeMetrics(t, base)
		missing := ""
		for _, w := range want {
			if got := metricValue(mf, w.name, w.labels...); got < w.min {
				missing += fmt.Sprintf("\n  %s%v = %v, want at least %v", w.name, w.labels, got, w.min)
			}
		}
		// Every session has ended.
		if open := metricValue(mf, "postern_sessions_open"); open != 0 {
			missing += fmt.Sprintf("\n  postern_sessions_open = %v, want 0", open)
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics did not move:%s", missing)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := metricValue(mf, "postern_auth_total", "proto", "pop3", "result", "fail"); got != 1 {
		t.Errorf("POP3 failed logins %v, want 1", got)
	}
	if mf["postern_queue_length"] == nil || metricValue(mf, "postern_queue_scrape_error") != 0 {
		t.Errorf("queue metrics missing or failing")
	}
	if mf["postern_connections_max"] == nil || metricValue(mf, "postern_message_memory_max_bytes") <= 0 {
		t.Errorf("connection or memory budget metrics missing")
	}
	if mf["go_goroutines"] == nil || mf["process_resident_memory_bytes"] == nil {
		t.Errorf("Go runtime or process metrics missing")
	}
}

// http.metrics_networks takes prefixes and single addresses; anything
// else is refused with the key named.
func TestMetricsNetworksConfig(t *testing.T) {
	cfg, err := parseConfig("t.toml", []byte("hostname = \"mx.example.org\"\n[http]\nmetrics_networks = [\"10.1.2.3/8\", \"192.0.2.10\", \"2001:db8::/32\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	nets, err := cfg.HTTP.metricsNetworks()
	if err != nil || fmt.Sprint(nets) != "[10.0.0.0/8 192.0.2.10/32 2001:db8::/32]" {
		t.Errorf("networks %v, %v", nets, err)
	}
	_, err = parseConfig("t.toml", []byte("hostname = \"mx.example.org\"\n[http]\nmetrics_networks = [\"10.0.0.0/33\"]\n"))
	if err == nil || !strings.Contains(err.Error(), "http.metrics_networks") {
		t.Errorf("bad network: %v", err)
	}
}
