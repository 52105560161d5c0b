package console

// Metrics: /metrics in the Prometheus text format, fed by the Hub.
//
// # The log vocabulary
//
// The servers' log records are the event stream of the metrics below and
// of the web console's live view; these messages and attribute keys are
// the contract between the servers and their consumers. A session's
// records carry its logger's attributes: session (an id), proto (smtp,
// submission, pop3, imap), listener (the configuration's listener name:
// smtp, submission, submissions, pop3, pop3s, imap, imaps) and remote
// (ip:port), and once logged in, for IMAP, user.
//
//	session start     local, tls ("TLS 1.3" or "")
//	session end       tls, duration; smtp adds messages, pop3 state, errors,
//	                  user, retrieved, deleted, and quit=false when the client
//	                  left without QUIT
//	tls handshake     result (ok|fail), version ("" on fail), cipher or err;
//	                  the relay's carry proto=relay, host
//	auth              result (ok|fail|blocked|busy|error), user, mechanism
//	                  (beside "login failed", limits.LogFailure's fail2ban
//	                  line, whose reason "wrong credentials, address now
//	                  blocked" counts postern_addresses_blocked_total)
//	refused           what (connection|session), reason, detail; a refused
//	                  connection has no session and names proto (http too),
//	                  listener and remote on the line
//	sender refused    from, reason, detail          (smtp)
//	recipient refused to, reason, detail            (smtp)
//	message refused   id, reason, detail, code      (smtp)
//	message accepted  id, from, to, bytes (= size), recipients, stored, queued
//	queued            id, queue_id, to              (one per queue entry)
//	relay attempt     result (delivered|deferred|bounced|stopped), queue_id,
//	                  domain, mx ("" when no connection was made), duration,
//	                  status on failure                       (part=relay)
//	delivered         queue_id, from, to, host, tls, attempts, latency
//	                  (from queueing to delivery)             (part=relay)
//	dns lookup        type (MX, A, AAAA, TXT, PTR...), name, result
//	                  (ok|nxdomain|fail), answers, duration; one per lookup
//	                  sent to a server, never for a cached answer
//
// A refusal's reason is one of: limits (a connection, size or memory
// budget), auth (blocked after failed logins), errors (too many protocol
// errors), policy (relay denied, not the user's address, SPF, DKIM,
// DMARC), syntax, unknown (no such user), quota. Durations are Go
// durations ("1.5s") in the text form the Hub hands out.

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/postern/postern/mailstore/limits"
)

// QueueStats is the outbound queue as /metrics shows it.
type QueueStats struct {
	// Length is the number of entries, at most the bound the function
	// was given; Capped is set when there are more.
	Length int
	Capped bool
	// Oldest is when the oldest entry seen was queued; zero when none.
	Oldest time.Time
}

// MetricsConfig is what NewMetrics counts from and reads on scrape.
type MetricsConfig struct {
	// Hub is the event source; Run subscribes to it.
	Hub *Hub
	// Queue reads the outbound queue on scrape, at most limit entries;
	// nil: no queue metrics.
	Queue func(ctx context.Context, limit int) (QueueStats, error)
	// DomainClass puts a relay recipient domain in a class (a label of
	// few values: "local", "remote"...); nil: every domain is "remote".
	DomainClass func(domain string) string
	// Conns (the process-wide connection budget) and Memory (the
	// in-flight message budget) are read on scrape; nil: not shown.
	Conns  *limits.Conns
	Memory *limits.Budget
	// Logins (the shared record of failed logins) gives the number of
	// client addresses blocked now, read on scrape; nil: not shown.
	Logins *limits.Logins
	// Logger gets scrape errors; nil discards.
	Logger *slog.Logger
}

const (
	// metricsBuffer is the subscription's room for events.
	metricsBuffer = 4096
	// queueScrapeLimit bounds the queue entries a scrape reads.
	queueScrapeLimit = 10000
	// queueScrapeTimeout bounds the queue read of a scrape.
	queueScrapeTimeout = 2 * time.Second
	// maxTrackedSessions bounds the open sessions the gauge follows.
	maxTrackedSessions = 1 << 17
)

// Metrics is Postern's registry: counters fed by the Hub's events, and
// collectors that read on scrape. Safe for concurrent use.
type Metrics struct {
	cfg MetricsConfig
	reg *prometheus.Registry
	log *slog.Logger

	sessionsOpen     *prometheus.GaugeVec
	sessionsTotal    *prometheus.CounterVec
	sessionDuration  *prometheus.HistogramVec
	refusals         *prometheus.CounterVec
	auths            *prometheus.CounterVec
	blocked          prometheus.Counter
	accepted         *prometheus.CounterVec
	acceptedBytes    *prometheus.CounterVec
	acceptedRcpts    *prometheus.CounterVec
	queued           prometheus.Counter
	deliveries       *prometheus.CounterVec
	deliveryLatency  prometheus.Histogram
	relayAttempts    *prometheus.CounterVec
	relayDuration    *prometheus.HistogramVec
	tlsHandshakes    *prometheus.CounterVec
	dnsLookups       *prometheus.CounterVec
	dropped          prometheus.Counter
	commitDuration   prometheus.Histogram
	commitSize       prometheus.Histogram
	commitErrors     prometheus.Counter
	queueLength      *prometheus.Desc
	queueCapped      *prometheus.Desc
	queueOldest      *prometheus.Desc
	queueScrapeError *prometheus.Desc

	mu       sync.Mutex
	lastSeq  uint64
	sessions map[string][2]string // proto+" "+session -> proto, listener
}

// NewMetrics makes the registry. Counting starts with Run.
func NewMetrics(cfg MetricsConfig) *Metrics {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Metrics{cfg: cfg, reg: prometheus.NewRegistry(), log: log, sessions: make(map[string][2]string)}
	durations := prometheus.ExponentialBuckets(0.001, 4, 10) // 1ms .. 4.4 min
	m.sessionsOpen = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "postern_sessions_open",
		Help: "Sessions open now, by protocol and listener."}, []string{"proto", "listener"})
	m.sessionsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postern_sessions_total",
		Help: "Sessions started, by protocol and listener."}, []string{"proto", "listener"})
	m.sessionDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "postern_session_duration_seconds",
		Help: "Length of ended sessions, by protocol.", Buckets: durations}, []string{"proto"})
	m.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postern_refusals_total",
		Help: "Connections, sessions, senders, recipients and messages refused, by what and reason."},
		[]string{"what", "reason"})
	m.auths = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postern_auth_total",
		Help: "Login attempts by protocol and result (ok, fail, blocked, busy, error)."}, []string{"proto", "result"})
	m.blocked = prometheus.NewCounter(prometheus.CounterOpts{Name: "postern_addresses_blocked_total",
		Help: "Client addresses blocked after too many failed logins."})
	m.accepted = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postern_messages_accepted_total",
		Help: "Messages accepted over SMTP, by protocol (smtp, submission)."}, []string{"proto"})
	m.acceptedBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postern_messages_accepted_bytes_total",
		Help: "Bytes of the messages accepted, by protocol."}, []string{"proto"})
	m.acceptedRcpts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postern_messages_accepted_recipients_total",
		Help: "Recipients of the messages accepted, by protocol."}, []string{"proto"})
	m.queued = prometheus.NewCounter(prometheus.CounterOpts{Name: "postern_queued_total",
		Help: "Recipients put in the outbound queue."})
	m.deliveries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postern_deliveries_total",
		Help: "Deliveries: local (stored in a mailbox) and remote (relayed to an MX)."}, []string{"kind"})
	m.deliveryLatency = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "postern_delivery_latency_seconds",
		Help: "Time from queueing to remote delivery.", Buckets: prometheus.ExponentialBuckets(0.01, 4, 12)})
	m.relayAttempts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postern_relay_attempts_total",
		Help: "Relay attempts per recipient, by result and recipient domain class."}, []string{"result", "class"})
	m.relayDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "postern_relay_attempt_duration_seconds",
		Help: "Duration of relay attempts (connection included), by result.", Buckets: durations}, []string{"result"})
	m.tlsHandshakes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postern_tls_handshakes_total",
		Help: "TLS handshakes by protocol, version and result."}, []string{"proto", "version", "result"})
	m.dnsLookups = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postern_dns_lookups_total",
		Help: "DNS lookups sent to a server, by type and result (ok, nxdomain, fail)."}, []string{"type", "result"})
	m.dropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "postern_events_dropped_total",
		Help: "Log events the metrics missed because they fell behind."})
	m.commitDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "postern_store_commit_duration_seconds",
		Help: "Mailstore commit latency (one group commit).", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)})
	m.commitSize = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "postern_store_commit_requests",
		Help: "Requests per mailstore group commit.", Buckets: prometheus.ExponentialBuckets(1, 2, 10)})
	m.commitErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "postern_store_commit_errors_total",
		Help: "Mailstore commits that failed."})
	m.reg.MustRegister(m.sessionsOpen, m.sessionsTotal, m.sessionDuration, m.refusals, m.auths, m.blocked,
		m.accepted, m.acceptedBytes, m.acceptedRcpts, m.queued, m.deliveries, m.deliveryLatency,
		m.relayAttempts, m.relayDuration, m.tlsHandshakes, m.dnsLookups, m.dropped,
		m.commitDuration, m.commitSize, m.commitErrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if cfg.Queue != nil {
		m.queueLength = prometheus.NewDesc("postern_queue_length",
			"Entries in the outbound queue (at most the scrape's bound, see postern_queue_length_capped).", nil, nil)
		m.queueCapped = prometheus.NewDesc("postern_queue_length_capped",
			"1 when the queue holds more entries than a scrape reads.", nil, nil)
		m.queueOldest = prometheus.NewDesc("postern_queue_oldest_age_seconds",
			"Age of the oldest queue entry read; 0 when the queue is empty.", nil, nil)
		m.queueScrapeError = prometheus.NewDesc("postern_queue_scrape_error",
			"1 when the queue could not be read for this scrape.", nil, nil)
		m.reg.MustRegister(queueCollector{m})
	}
	if c := cfg.Conns; c != nil {
		m.reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "postern_connections_open",
				Help: "Connections held in the process-wide budget now (all listeners)."},
				func() float64 { return float64(c.Open()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "postern_connections_max",
				Help: "The process-wide connection budget (0: none)."},
				func() float64 { return float64(c.Max()) }))
	}
	if l := cfg.Logins; l != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "postern_addresses_blocked",
			Help: "Client addresses (IPv4, or IPv6 /64) refused logins now after too many failures."},
			func() float64 { _, n := l.BlockedList(1); return float64(n) }))
	}
	if b := cfg.Memory; b != nil {
		m.reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "postern_message_memory_bytes",
				Help: "Message bytes held in memory by all sessions now."},
				func() float64 { return float64(b.Used()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "postern_message_memory_max_bytes",
				Help: "The in-flight message memory budget (limits.in_flight_bytes)."},
				func() float64 { return float64(b.Max()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "postern_spool_disk_bytes",
				Help: "Message bytes spooled to disk beyond the memory budget now."},
				func() float64 { return float64(b.DiskUsed()) }))
	}
	return m
}

// Registry is the registry /metrics serves (not the global default).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ObserveCommit records one mailstore commit: the requests it carried
// (group commit), how long it took and whether it failed. It fits
// mailstore.Options.OnCommit.
func (m *Metrics) ObserveCommit(requests int, d time.Duration, err error) {
	m.commitDuration.Observe(d.Seconds())
	m.commitSize.Observe(float64(requests))
	if err != nil {
		m.commitErrors.Inc()
	}
}

// Run counts the hub's events until ctx is done. When the hub drops the
// subscription because Run fell behind, it subscribes again, counts the
// events it missed from the hub's ring, and adds those the ring no longer
// holds to postern_events_dropped_total.
func (m *Metrics) Run(ctx context.Context) {
	if m.cfg.Hub == nil {
		return
	}
	for {
		sub, recent := m.cfg.Hub.Subscribe(metricsBuffer)
		m.catchUp(recent)
		stop := context.AfterFunc(ctx, sub.Close)
		for e := range sub.C {
			m.Apply(e)
		}
		stop()
		if ctx.Err() != nil || !sub.Dropped() {
			return
		}
	}
}

// catchUp applies the events of recent that came after the last one
// applied, and counts a gap before them as dropped.
func (m *Metrics) catchUp(recent []Event) {
	m.mu.Lock()
	last := m.lastSeq
	m.mu.Unlock()
	if last == 0 {
		// The first subscription: what happened before is not counted
		// (the process has just started).
		if n := len(recent); n > 0 {
			m.mu.Lock()
			m.lastSeq = recent[n-1].Seq
			m.mu.Unlock()
		}
		return
	}
	for _, e := range recent {
		if e.Seq > last {
			m.Apply(e)
		}
	}
}

// Apply counts one event. Run calls it; tests may too.
func (m *Metrics) Apply(e Event) {
	m.mu.Lock()
	if e.Seq != 0 {
		if e.Seq <= m.lastSeq {
			m.mu.Unlock()
			return
		}
		if m.lastSeq != 0 && e.Seq > m.lastSeq+1 {
			m.dropped.Add(float64(e.Seq - m.lastSeq - 1))
		}
		m.lastSeq = e.Seq
	}
	m.mu.Unlock()

	proto := e.Get("proto")
	switch e.Msg {
	case "session start":
		listener := e.Get("listener")
		m.sessionsTotal.WithLabelValues(proto, listener).Inc()
		m.mu.Lock()
		key := proto + " " + e.Get("session")
		if _, ok := m.sessions[key]; !ok && len(m.sessions) < maxTrackedSessions {
			m.sessions[key] = [2]string{proto, listener}
			m.sessionsOpen.WithLabelValues(proto, listener).Inc()
		}
		m.mu.Unlock()
	case "session end":
		m.mu.Lock()
		key := proto + " " + e.Get("session")
		if l, ok := m.sessions[key]; ok {
			delete(m.sessions, key)
			m.sessionsOpen.WithLabelValues(l[0], l[1]).Dec()
		}
		m.mu.Unlock()
		if d, err := time.ParseDuration(e.Get("duration")); err == nil {
			m.sessionDuration.WithLabelValues(proto).Observe(d.Seconds())
		}
	case "refused":
		m.refusals.WithLabelValues(oneOf(e.Get("what"), "connection", "session"), refusalReason(e.Get("reason"))).Inc()
	case "sender refused", "recipient refused", "message refused":
		what := e.Msg[:len(e.Msg)-len(" refused")]
		m.refusals.WithLabelValues(what, refusalReason(e.Get("reason"))).Inc()
	case "auth":
		m.auths.WithLabelValues(proto, oneOf(e.Get("result"), "ok", "fail", "blocked", "busy", "error")).Inc()
	case "login failed":
		// limits.LogFailure's line: the failure that blocks an address.
		if e.Get("reason") == "wrong credentials, address now blocked" {
			m.blocked.Inc()
		}
	case "message accepted":
		m.accepted.WithLabelValues(proto).Inc()
		m.acceptedBytes.WithLabelValues(proto).Add(number(e.Get("bytes")))
		m.acceptedRcpts.WithLabelValues(proto).Add(number(e.Get("recipients")))
		if n := number(e.Get("stored")); n > 0 {
			m.deliveries.WithLabelValues("local").Add(n)
		}
	case "queued":
		m.queued.Inc()
	case "delivered":
		m.deliveries.WithLabelValues("remote").Inc()
		if d, err := time.ParseDuration(e.Get("latency")); err == nil {
			m.deliveryLatency.Observe(d.Seconds())
		}
	case "relay attempt":
		result := oneOf(e.Get("result"), "delivered", "deferred", "bounced", "stopped")
		class := "remote"
		if m.cfg.DomainClass != nil {
			class = m.cfg.DomainClass(e.Get("domain"))
		}
		m.relayAttempts.WithLabelValues(result, class).Inc()
		if d, err := time.ParseDuration(e.Get("duration")); err == nil {
			m.relayDuration.WithLabelValues(result).Observe(d.Seconds())
		}
	case "tls handshake":
		version := e.Get("version")
		if version != "" {
			version = oneOf(version, "TLS 1.0", "TLS 1.1", "TLS 1.2", "TLS 1.3")
		}
		m.tlsHandshakes.WithLabelValues(proto, version, oneOf(e.Get("result"), "ok", "fail")).Inc()
	case "dns lookup":
		m.dnsLookups.WithLabelValues(oneOf(e.Get("type"), "A", "AAAA", "MX", "TXT", "PTR", "CNAME", "TLSA"),
			oneOf(e.Get("result"), "ok", "nxdomain", "fail")).Inc()
	}
}

// refusalReason bounds a refusal's reason label to the vocabulary's.
func refusalReason(r string) string {
	return oneOf(r, "limits", "auth", "errors", "policy", "syntax", "unknown", "quota")
}

// oneOf returns v if it is one of allowed, else "other": label values
// from events never grow the series beyond a fixed set.
func oneOf(v string, allowed ...string) string {
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	return "other"
}

// number reads an event's integer attribute; 0 if it is not one.
func number(s string) float64 {
	var n float64
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + float64(c-'0')
	}
	return n
}

// queueCollector reads the outbound queue on scrape.
type queueCollector struct{ m *Metrics }

func (c queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.m.queueLength
	ch <- c.m.queueCapped
	ch <- c.m.queueOldest
	ch <- c.m.queueScrapeError
}

func (c queueCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	ctx, cancel := context.WithTimeout(context.Background(), queueScrapeTimeout)
	defer cancel()
	st, err := m.cfg.Queue(ctx, queueScrapeLimit)
	if err != nil {
		m.log.Warn("metrics: cannot read the queue", "err", err)
		ch <- prometheus.MustNewConstMetric(m.queueScrapeError, prometheus.GaugeValue, 1)
		return
	}
	ch <- prometheus.MustNewConstMetric(m.queueScrapeError, prometheus.GaugeValue, 0)
	ch <- prometheus.MustNewConstMetric(m.queueLength, prometheus.GaugeValue, float64(st.Length))
	capped := 0.0
	if st.Capped {
		capped = 1
	}
	ch <- prometheus.MustNewConstMetric(m.queueCapped, prometheus.GaugeValue, capped)
	age := 0.0
	if !st.Oldest.IsZero() {
		age = max(time.Since(st.Oldest).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(m.queueOldest, prometheus.GaugeValue, age)
}

// MetricsAllowed reports whether a client at remoteAddr (ip:port, as
// http.Request.RemoteAddr) may read /metrics: from loopback, or from one
// of networks ([http] metrics_networks).
func MetricsAllowed(remoteAddr string, networks []netip.Prefix) bool {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	ip = ip.Unmap().WithZone("")
	if ip.IsLoopback() {
		return true
	}
	for _, n := range networks {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// metrics serves /metrics to allowed clients.
func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Metrics == nil {
		text(w, http.StatusNotFound, "not found\n")
		return
	}
	if !MetricsAllowed(r.RemoteAddr, s.cfg.MetricsNetworks) {
		text(w, http.StatusForbidden, "forbidden\n")
		return
	}
	s.metricsHandler.ServeHTTP(w, r)
}

// newMetricsHandler is promhttp's handler for m, errors to log.
func newMetricsHandler(m *Metrics, log *slog.Logger) http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             readyTimeout * 5,
	})
}
