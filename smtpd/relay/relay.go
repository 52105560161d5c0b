// Package relay delivers queued mail to other domains: MX lookup (RFC 5321
// 5.1, null MX RFC 7505), SMTP with opportunistic STARTTLS (RFC 3207),
// retries with backoff, and RFC 3464 reports to the sender.
//
// Implementation notes:
//   - A queue entry leaves the queue only after the remote server's 250 to
//     the message, or after its failure report is stored in the sender's
//     INBOX. A crash in between means a retry: a duplicate is acceptable, a
//     loss is not.
//   - smtpd hands work to the relay only through the mailstore queue;
//     Kick says that there is some.
//   - The queue may be shared by several frontends (lease.go): the relay
//     works only on entries it has leased from the store, renews their
//     leases while it works, and the per-domain connection limit is a set
//     of slots leased in the store, so that it holds across frontends.
//   - One delivery job per destination domain at a time. It looks up the
//     MX hosts once and opens at most Config.MaxConnsPerDomain connections,
//     each carrying several messages, one transaction per message with a
//     RCPT per recipient.
//   - A delivery attempt gives each recipient an error and a permanent flag
//     (attempt); only queue.go decides between retry and report.
//   - The relay never delivers to itself: an MX that is this server ends the
//     list of hosts (RFC 5321 5.1), and an empty list is a loop (5.4.6).
package relay

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/postern/postern/mailstore"
)

// Config is what the relay needs from its surroundings. Zero fields take
// the defaults given.
type Config struct {
	// Hostname is this server's name: the EHLO/HELO argument, the
	// Reporting-MTA of reports, and one way to recognise an MX pointing
	// at ourselves. Default "localhost".
	Hostname string
	// Resolver looks up MX and address records. Default: SystemResolver.
	Resolver Resolver
	// Port is dialled on mail exchangers. Default 25; tests change it.
	Port int
	// Dialer opens connections. Default: net.Dialer.DialContext.
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)
	// Now is the clock for due times, retries and reports. Default time.Now.
	Now func() time.Time
	// Logger gets one line per mail event. Default: discard.
	Logger *slog.Logger
	// Trace logs every SMTP line sent and received (message data as a
	// byte count only).
	Trace bool

	// RetryBase is the wait after the first temporary failure; each
	// further failure doubles it (give or take a jitter of 10%), up to
	// RetryMax. Defaults 5 minutes and 4 hours.
	RetryBase, RetryMax time.Duration
	// GiveUpAfter is how long after its arrival a message that still
	// fails temporarily is given up and reported failed. Default 5 days.
	GiveUpAfter time.Duration
	// DelayWarning is the age at which the sender is told, once, that a
	// message is still being retried. Default 4 hours; negative: never.
	DelayWarning time.Duration

	// TLS is the base client configuration for STARTTLS (RootCAs, client
	// certificates, versions). The relay sets ServerName to the MX host and
	// never refuses a server for its certificate, as SMTP between servers
	// goes (RFC 3207 4.1, RFC 7435): it records whether the certificate
	// verified.
	TLS *tls.Config

	// LocalAddrs are the addresses this server receives mail on (its
	// inbound SMTP listeners; an unspecified IP means every local
	// address). An MX at one of them is this server.
	LocalAddrs []netip.AddrPort
	// IsSelf, when set, replaces the check against Hostname and
	// LocalAddrs: whether the MX host, dialled at addr, is this server.
	IsSelf func(host string, addr netip.AddrPort) bool

	// Timeouts bounds the waits of the SMTP client.
	Timeouts Timeouts
	// MaxConns bounds the connections open at once. Default 20.
	MaxConns int
	// MaxConnsPerDomain bounds the connections open at once to one
	// destination domain, from every frontend of the store together
	// (each connection leases a slot in the store). Default 4.
	MaxConnsPerDomain int
	// MaxMessagesPerConn is how many messages one connection carries
	// before the next one is opened. Default 100.
	MaxMessagesPerConn int
	// PollInterval is how often Run looks for due entries when nobody
	// calls Kick. Default 5 seconds.
	PollInterval time.Duration

	// LeaseOwner names this relay in the leases it takes on queue entries
	// and connection slots; every relay sharing a store needs its own.
	// Default "HOST:PID/RANDOM".
	LeaseOwner string
	// LeaseTTL is how long a lease lasts unless renewed: the relay renews
	// its leases every LeaseTTL/3 while it works, so this is how long the
	// entries and connection slots of a frontend that died (SIGKILL, a
	// lost machine) wait before another frontend takes them. Default 5
	// minutes; at least one second.
	LeaseTTL time.Duration

	// Hold keeps outbound mail in the queue instead of delivering it
	// (hold.go): an entry goes out only once released by QueueRetry.
	// With Hold off, Run first releases what an earlier run held.
	Hold bool

	// MTASTS turns on outbound MTA-STS (RFC 8461, mtasts.go): policies
	// are fetched over HTTPS, cached in the store, and enforced. Zero: off.
	MTASTS bool
	// MTASTSRootCAs verifies the policy servers' certificates. Default
	// (nil): the system's roots; tests give their own CA.
	MTASTSRootCAs *x509.CertPool
	// MTASTSPort is the HTTPS port of policy servers. Default 443; tests
	// change it.
	MTASTSPort int
	// MTASTSTimeout bounds one policy fetch. Default one minute.
	MTASTSTimeout time.Duration
}

// Defaults of Config.
const (
	// defaultRetryBase: RFC 5321 4.5.4.1 asks for retries at least 30
	// minutes apart "in general" but welcomes "more sophisticated and
	// variable strategies"; a short first wait with doubling catches the
	// common brief outage (greylisting, a restart) and still reaches hours.
	defaultRetryBase = 5 * time.Minute
	// defaultRetryMax caps the doubling so that a server back after a day
	// gets the message within hours.
	defaultRetryMax = 4 * time.Hour
	// defaultGiveUpAfter: RFC 5321 4.5.4.1, "the give-up time generally
	// needs to be at least 4-5 days".
	defaultGiveUpAfter = 5 * 24 * time.Hour
	// defaultDelayWarning is sendmail's Timeout.queuewarn: long enough to
	// ride out short outages silently.
	defaultDelayWarning = 4 * time.Hour
	// defaultPollInterval is how often Run looks at the queue unkicked:
	// cheap (one indexed query), and what bounds the delay of a retry made
	// due by `postern queue retry` from another process.
	defaultPollInterval = 5 * time.Second
	// defaultMaxConns bounds all outbound connections.
	defaultMaxConns = 20
	// defaultMaxConnsPerDomain keeps the relay polite to one destination
	// (receivers commonly limit connections per client to a few).
	defaultMaxConnsPerDomain = 4
	// defaultMaxMessagesPerConn: reuse a connection for many messages,
	// then open a fresh one, as Postfix's smtp_connection_reuse_count_limit.
	defaultMaxMessagesPerConn = 100
)

const (
	// maxBatch bounds the entries one look at the queue takes.
	maxBatch = 1000
	// storeTimeout bounds the bookkeeping after an attempt; it runs even
	// when the relay is stopping, so that a delivered message is removed.
	storeTimeout = 30 * time.Second
)

// Relay is the outbound queue worker.
type Relay struct {
	cfg      Config
	store    *mailstore.Store
	q        leaseStore // store, for leases, slots and the end of attempts
	log      *slog.Logger
	resolver Resolver
	kick     chan struct{}
	jobEnded chan struct{} // a job ended (RunOnce waits for it)
	slots    chan struct{} // one per open connection, MaxConns in all

	mu     sync.Mutex
	active map[string]bool // domains with a delivery job running
	conns  map[string]int  // connections open (slots held) by the job of each domain
	leased map[int64]bool  // queue entries in running jobs, whose leases are renewed
	// unrecorded are entries delivered (or failed and reported) whose
	// removal from the queue failed: never tried again by this relay,
	// their leases renewed while it runs and their removal retried
	// (renewOnce); after a stop they lapse, and another frontend may
	// deliver them again, a duplicate rather than a loss.
	unrecorded map[int64]bool
	// lostLease are entries of running jobs whose leases renewOnce
	// found lost (a stall outlasted LeaseTTL): another frontend may be
	// trying them, so this one does not start them.
	lostLease map[int64]bool
	slotsHeld map[mailstore.RelaySlot]int // connection slots leased in the store
	tlsFailed map[netip.AddrPort]time.Time
	localIPs  map[netip.Addr]bool // nil until needed
	stsClient *http.Client        // fetches MTA-STS policies
	jobs      sync.WaitGroup
}

// New returns a relay for the queue of store.
func New(cfg Config, store *mailstore.Store) *Relay {
	if cfg.Hostname == "" {
		cfg.Hostname = "localhost"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Port <= 0 || cfg.Port > 65535 {
		if cfg.Port != 0 {
			cfg.Logger.Warn("relay: port out of range, using 25", "port", cfg.Port)
		}
		cfg.Port = 25
	}
	if cfg.Dialer == nil {
		cfg.Dialer = (&net.Dialer{}).DialContext
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.RetryBase, defaultRetryBase)
	def(&cfg.RetryMax, defaultRetryMax)
	def(&cfg.GiveUpAfter, defaultGiveUpAfter)
	def(&cfg.DelayWarning, defaultDelayWarning)
	def(&cfg.PollInterval, defaultPollInterval)
	def(&cfg.LeaseTTL, defaultLeaseTTL)
	cfg.LeaseTTL = max(cfg.LeaseTTL, minLeaseTTL)
	if cfg.LeaseOwner == "" {
		cfg.LeaseOwner = defaultLeaseOwner()
	}
	def(&cfg.MTASTSTimeout, defaultMTASTSTimeout)
	if cfg.MTASTSPort <= 0 || cfg.MTASTSPort > 65535 {
		cfg.MTASTSPort = 443
	}
	cfg.Timeouts = cfg.Timeouts.withDefaults()
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = defaultMaxConns
	}
	if cfg.MaxConnsPerDomain <= 0 {
		cfg.MaxConnsPerDomain = defaultMaxConnsPerDomain
	}
	if cfg.MaxMessagesPerConn <= 0 {
		cfg.MaxMessagesPerConn = defaultMaxMessagesPerConn
	}
	r := &Relay{
		cfg:        cfg,
		store:      store,
		log:        cfg.Logger,
		resolver:   cfg.Resolver,
		kick:       make(chan struct{}, 1),
		jobEnded:   make(chan struct{}, 1),
		conns:      make(map[string]int),
		slots:      make(chan struct{}, cfg.MaxConns),
		active:     make(map[string]bool),
		leased:     make(map[int64]bool),
		unrecorded: make(map[int64]bool),
		lostLease:  make(map[int64]bool),
		slotsHeld:  make(map[mailstore.RelaySlot]int),
		tlsFailed:  make(map[netip.AddrPort]time.Time),
	}
	r.q = store
	if r.resolver == nil {
		res, err := SystemResolver()
		if err != nil {
			cfg.Logger.Error("relay: no DNS resolver; every delivery will be deferred", "err", err)
			res = failingResolver{err}
		}
		r.resolver = res
	}
	r.stsClient = r.newSTSClient()
	return r
}

// failingResolver stands for a system resolver that could not be set up:
// every lookup fails, temporarily, with the reason.
type failingResolver struct{ err error }

func (f failingResolver) Lookup(context.Context, string, uint16) ([]dns.RR, error) { return nil, f.err }

// Kick tells the relay that something was queued, so that Run looks at the
// queue now rather than at its next poll. It never blocks.
func (r *Relay) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run delivers due queue entries until ctx is done, waking every
// PollInterval or on Kick. It then waits for deliveries in progress, which
// ctx aborts, and returns nil.
func (r *Relay) Run(ctx context.Context) error {
	r.log.Info("relay started", "hostname", r.cfg.Hostname, "port", r.cfg.Port, "hold", r.cfg.Hold,
		"lease_owner", r.cfg.LeaseOwner, "lease_ttl", r.cfg.LeaseTTL)
	if !r.cfg.Hold {
		r.releaseHeld(ctx)
	}
	defer r.renewLeases()()
	tick := time.NewTicker(r.cfg.PollInterval)
	defer tick.Stop()
	for {
		if _, _, err := r.dispatch(ctx); err != nil && ctx.Err() == nil {
			r.log.Error("relay: cannot read the queue", "err", err)
		}
		select {
		case <-ctx.Done():
			r.jobs.Wait()
			r.logUnrecorded()
			r.log.Info("relay stopped")
			return nil
		case <-tick.C:
		case <-r.kick:
		}
	}
}

// Serve is Run, so that a Relay is one of cmd/postern's servers.
func (r *Relay) Serve(ctx context.Context) error { return r.Run(ctx) }

// RunOnce starts delivery of the entries due now and waits until every
// delivery job has finished. Tests drive the relay with it. Like Run, it
// takes at most as many domains at a time as it has free connections,
// and takes more as jobs end, until a look at the queue finds fewer
// domains than it asked for or only domains it took before (a domain
// deferred and due again at once is not taken round and round).
func (r *Relay) RunOnce(ctx context.Context) error {
	stop := r.renewLeases()
	defer stop()
	seen := make(map[string]bool)
	var err error
	for {
		var more bool
		var domains []string
		more, domains, err = r.dispatch(ctx)
		fresh := false
		for _, d := range domains {
			if !seen[d] {
				seen[d], fresh = true, true
			}
		}
		if err != nil || !more || !fresh || ctx.Err() != nil {
			break
		}
		// Wait for a free connection: a job's end (a stale signal of
		// an earlier job's end only makes this look sooner).
		r.mu.Lock()
		running := len(r.active)
		r.mu.Unlock()
		if running > 0 {
			select {
			case <-r.jobEnded:
			case <-ctx.Done():
			}
		}
	}
	r.jobs.Wait()
	if ctx.Err() != nil {
		r.logUnrecorded()
	}
	return err
}

// freeConns is how many more domains dispatch takes now: MaxConns less
// what the running jobs use (the connections each has open, and one for
// a job with none, waiting for a slot or resolving its route), and at
// least one, so that a look at the queue always makes progress (a relay
// whose connections are all busy takes one domain a look, whose job
// waits for a connection). The domains of entries delivered but not
// removed (unrecorded) come on top: they are leased again, never tried,
// and must not crowd out the others.
func (r *Relay) freeConns() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	busy := 0
	for d := range r.active {
		busy += max(1, r.conns[d])
	}
	// One per unrecorded entry: at least one per domain of theirs.
	return max(1, r.cfg.MaxConns-busy) + len(r.unrecorded)
}

// dispatch starts one delivery job per domain that has due entries and no
// job running. It leases the entries from the store, leaving out the
// domains whose jobs run: their new entries are for another frontend to
// take now, or for this one when the job ends. It takes the entries of at
// most freeConns domains, oldest due first, so that the frontends of one
// store share a backlog of many domains: the others take the rest at
// their next look, and this one again as its jobs end (each job's end
// kicks Run). It reports the domains leased, and whether more may be
// due: it took as many domains (or entries) as it asked for.
func (r *Relay) dispatch(ctx context.Context) (more bool, leasedDomains []string, err error) {
	// Before leasing: the entries leased below are renewed only once a
	// job holds them, so they wait for no retry.
	r.retryUnrecorded(ctx)
	want := r.freeConns()
	entries, err := r.q.QueueLeaseDomains(ctx, r.cfg.Now(), maxBatch, want, r.cfg.LeaseOwner, r.cfg.LeaseTTL, r.skipDomains()...)
	if err != nil {
		return false, nil, fmt.Errorf("relay: %w", err)
	}
	for _, e := range entries {
		if !slices.Contains(leasedDomains, e.Domain) {
			leasedDomains = append(leasedDomains, e.Domain)
		}
	}
	more = len(leasedDomains) >= want || len(entries) >= maxBatch
	var skipped []int64 // leased now for a domain whose job runs: for the others
	r.mu.Lock()
	entries = slices.DeleteFunc(entries, func(e mailstore.QueueEntry) bool {
		switch {
		case r.unrecorded[e.ID]:
			// Delivered (or reported) but not removed: never tried
			// again; it keeps its lease and renewOnce retries the
			// removal.
			return true
		case r.active[e.Domain]:
			// Its domain was left out of the lease (skipDomains): a
			// job for it started meanwhile (RunOnce beside Run). The
			// job's own entries stay with it, the others go.
			if !r.leased[e.ID] {
				skipped = append(skipped, e.ID)
			}
			return true
		}
		return false
	})
	r.mu.Unlock()
	if r.cfg.Hold {
		entries = r.holdEntries(ctx, entries)
	}
	byDomain := make(map[string][]mailstore.QueueEntry)
	var domains []string
	r.mu.Lock()
	for _, e := range entries {
		if r.active[e.Domain] {
			// A job started since the lease.
			if !r.leased[e.ID] {
				skipped = append(skipped, e.ID)
			}
			continue
		}
		if _, ok := byDomain[e.Domain]; !ok {
			domains = append(domains, e.Domain)
		}
		byDomain[e.Domain] = append(byDomain[e.Domain], e)
	}
	for _, d := range domains {
		r.active[d] = true
		for _, e := range byDomain[d] {
			r.leased[e.ID] = true
		}
	}
	r.mu.Unlock()
	// Another frontend may take them now; this one looks again when the
	// domain's job ends.
	r.releaseLeases(ctx, skipped)
	for _, d := range domains {
		r.jobs.Add(1)
		go func(domain string, entries []mailstore.QueueEntry) {
			defer r.jobs.Done()
			res := r.deliverDomain(ctx, domain, entries)
			// Entries not tried (the relay is stopping, or a worker left
			// them) are free for the others at once. Those tried were
			// removed or deferred, which ended their leases; or their
			// bookkeeping failed, and they keep their leases: released,
			// one delivered but not removed would be sent again at once.
			var untried []int64
			for _, e := range entries {
				if !res.settled[e.ID] {
					untried = append(untried, e.ID)
				}
			}
			if len(untried) > 0 && ctx.Err() == nil {
				r.log.Error("relay: queue entries of a job left untried; given back", "domain", domain, "entries", len(untried))
			}
			r.releaseLeases(ctx, untried)
			if len(res.kept) > 0 {
				r.log.Warn("relay: queue bookkeeping failed; the entries keep their leases", "domain", domain,
					"entries", len(res.kept), "lease_ttl", r.cfg.LeaseTTL)
			}
			r.mu.Lock()
			delete(r.active, domain)
			delete(r.conns, domain)
			for _, e := range entries {
				delete(r.leased, e.ID)
				delete(r.lostLease, e.ID)
			}
			r.mu.Unlock()
			// Entries for the domain queued meanwhile are due; but when
			// the bookkeeping failed, the same entries would be: wait.
			if len(res.kept) == 0 {
				r.Kick()
			}
			select {
			case r.jobEnded <- struct{}{}:
			default:
			}
		}(d, byDomain[d])
	}
	return more, leasedDomains, nil
}

// connOpened and connClosed count a job's connections (each holds one
// of r.slots) for freeConns.
func (r *Relay) connOpened(domain string) {
	r.mu.Lock()
	r.conns[domain]++
	r.mu.Unlock()
}

func (r *Relay) connClosed(domain string) {
	r.mu.Lock()
	if r.conns[domain]--; r.conns[domain] <= 0 {
		delete(r.conns, domain)
	}
	r.mu.Unlock()
}

// retryUnrecorded retries the removal of the entries that were
// delivered but not removed, for at most a third of LeaseTTL, as
// renewOnce does between renewals.
func (r *Relay) retryUnrecorded(ctx context.Context) {
	r.mu.Lock()
	ids := make([]int64, 0, len(r.unrecorded))
	for id := range r.unrecorded {
		ids = append(ids, id)
	}
	r.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, min(storeTimeout, r.cfg.LeaseTTL/3))
	defer cancel()
	r.retryRemovals(ctx, ids)
}

// retryRemovals removes from the queue entries of r.unrecorded, one by
// one until ctx ends: the store may be slow, and the caller has other
// work. Those left are tried again later (the ids come from a map, so
// in another order each time).
func (r *Relay) retryRemovals(ctx context.Context, ids []int64) {
	for _, id := range ids {
		if ctx.Err() != nil {
			return
		}
		err := r.q.QueueRemove(ctx, id)
		if err != nil && !errors.Is(err, mailstore.ErrNotFound) {
			if ctx.Err() == nil {
				r.log.Warn("relay: cannot remove a finished entry from the queue; retrying later", "queue_id", id, "err", err)
			}
			continue
		}
		r.mu.Lock()
		was := r.unrecorded[id] // not yet removed by the other retrier (dispatch, renewOnce)
		delete(r.unrecorded, id)
		r.mu.Unlock()
		if was {
			r.log.Info("relay: finished entry removed from the queue at last", "queue_id", id)
		}
	}
}

// logUnrecorded says, as the relay stops, which delivered entries are
// still queued: their leases lapse after LeaseTTL, and then another
// frontend may send them again.
func (r *Relay) logUnrecorded() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id := range r.unrecorded {
		r.log.Error("relay: stopping with a delivered or reported entry still queued; another frontend may try it again after its lease",
			"queue_id", id, "lease_ttl", r.cfg.LeaseTTL)
	}
}

// transactions groups a domain's entries into transactions: one per
// message (sender, body and submission), at most maxRcptsPerTransaction
// recipients each, and no recipient twice in one.
func transactions(domain string, entries []mailstore.QueueEntry) []*transaction {
	type key struct {
		sender      string
		body        int64
		created     int64
		envID, ret  string
		destination string
	}
	var out []*transaction
	open := make(map[key][]*transaction)
	for _, e := range entries {
		k := key{e.Sender, e.BodyID, e.Created.UnixNano(), e.EnvID, e.Ret, domain}
		var tx *transaction
		for _, t := range open[k] {
			if len(t.entries) < maxRcptsPerTransaction && !slices.ContainsFunc(t.entries, func(o mailstore.QueueEntry) bool {
				return strings.EqualFold(o.Recipient, e.Recipient)
			}) {
				tx = t
				break
			}
		}
		if tx == nil {
			tx = &transaction{domain: domain}
			open[k] = append(open[k], tx)
			out = append(out, tx)
		}
		tx.entries = append(tx.entries, e)
	}
	return out
}

// workList is a domain job's transactions, shared by its connections.
type workList struct {
	domain string
	mu     sync.Mutex
	txs    []*transaction
	live   int        // sessions open
	down   *attempt   // why no connection could be opened, once that happened
	sts    *stsPolicy // the domain's MTA-STS policy; nil: none
	res    jobResult
}

// jobResult is what became of a job's entries.
type jobResult struct {
	settled map[int64]bool // tried: an outcome was decided (the others are given back)
	kept    []int64        // settled, but their bookkeeping failed: they keep their leases
}

// next takes the next transaction, nil when there are none. A worker
// with a session open (live) that finds none stops counting as live in
// the same step, so that handBack never gives a transaction to a worker
// that has already left.
func (w *workList) next(live bool) *transaction {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.txs) == 0 {
		if live {
			w.live--
		}
		return nil
	}
	tx := w.txs[0]
	w.txs = w.txs[1:]
	return tx
}

// handBack puts tx back for a connection of the job that is open, and
// reports whether there is one; if not, the caller keeps tx.
func (w *workList) handBack(tx *transaction) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.live == 0 {
		return false
	}
	w.txs = append(w.txs, tx)
	return true
}

// deliverDomain delivers the due entries of one domain, and says which it
// tried and which of those kept their leases.
func (r *Relay) deliverDomain(ctx context.Context, domain string, entries []mailstore.QueueEntry) jobResult {
	w := &workList{domain: domain, txs: transactions(domain, entries), res: jobResult{settled: make(map[int64]bool)}}
	hosts, route := r.route(ctx, domain)
	if !route.failed() {
		w.sts = r.stsPolicyFor(ctx, domain)
		hosts, route = r.stsHosts(domain, w.sts, hosts)
	}
	if route.failed() {
		r.log.Info("no route", "domain", domain, "err", route.Err, "permanent", route.Permanent)
		for _, tx := range w.txs {
			r.record(ctx, w, tx, allSame(len(tx.entries), route), nil)
		}
		return w.res
	}
	var wg sync.WaitGroup
	for range min(r.cfg.MaxConnsPerDomain, len(w.txs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.worker(ctx, hosts, w)
		}()
	}
	wg.Wait()
	return w.res
}

// worker is one connection of a domain job: it takes transactions from w
// until there are none, opening connections as needed. Each transaction
// it takes is tried, or handed back to another open connection of the
// job, or (when the relay stops) dropped untried for dispatch to give
// back.
func (r *Relay) worker(ctx context.Context, hosts []MXHost, w *workList) {
	var s *session
	var slot int // the domain's connection slot s holds
	// closeSession ends s; counted: it still counts in w.live.
	closeSession := func(counted bool) {
		s.close()
		<-r.slots
		r.connClosed(w.domain)
		r.releaseSlot(ctx, w.domain, slot)
		if counted {
			w.mu.Lock()
			w.live--
			w.mu.Unlock()
		}
		s = nil
	}
	defer func() {
		if s != nil {
			closeSession(true)
		}
	}()
	for {
		tx := w.next(s != nil)
		if tx == nil {
			if s != nil {
				closeSession(false) // next stopped counting it
			}
			return
		}
		if tx = r.withoutLostLeases(w, tx); tx == nil {
			continue
		}
		tx.started = time.Now()
		if ctx.Err() != nil {
			// Stopping: the entry stays due and is tried at the next start.
			continue
		}
		if s != nil && (s.broken || s.sent >= r.cfg.MaxMessagesPerConn) {
			closeSession(true)
		}
		if s == nil {
			w.mu.Lock()
			down := w.down
			w.mu.Unlock()
			if down != nil {
				r.record(ctx, w, tx, allSame(len(tx.entries), *down), nil)
				continue
			}
			var got bool
			for {
				if slot, got = r.acquireSlot(ctx, w); got || ctx.Err() != nil {
					break
				}
				// Another connection of this job works (and the slots of
				// the domain are taken, or the store failed): it takes
				// this one too. If it has just left, try again.
				if w.handBack(tx) {
					return
				}
			}
			if !got {
				continue
			}
			select {
			case r.slots <- struct{}{}:
				r.connOpened(w.domain)
			case <-ctx.Done():
				r.releaseSlot(ctx, w.domain, slot)
				continue
			}
			var att attempt
			s, att = r.connect(ctx, hosts, w.sts)
			if att.failed() {
				s = nil
				<-r.slots
				r.connClosed(w.domain)
				r.releaseSlot(ctx, w.domain, slot)
				w.mu.Lock()
				if w.live > 0 {
					// Another connection works: it takes this one too
					// (the server may limit connections per client).
					w.txs = append(w.txs, tx)
					w.mu.Unlock()
					return
				}
				w.down = &att
				w.mu.Unlock()
				r.record(ctx, w, tx, allSame(len(tx.entries), att), nil)
				continue
			}
			w.mu.Lock()
			w.live++
			w.mu.Unlock()
		}
		r.record(ctx, w, tx, s.send(ctx, tx), s)
	}
}

// withoutLostLeases drops from tx the entries whose leases were lost,
// which another frontend may be delivering, and returns what is left of
// it (nil: nothing). They count as settled: they are not this relay's to
// give back.
func (r *Relay) withoutLostLeases(w *workList, tx *transaction) *transaction {
	r.mu.Lock()
	var lost []mailstore.QueueEntry
	if len(r.lostLease) > 0 {
		kept := tx.entries[:0:0]
		for _, e := range tx.entries {
			if r.lostLease[e.ID] {
				lost = append(lost, e)
			} else {
				kept = append(kept, e)
			}
		}
		tx.entries = kept
	}
	r.mu.Unlock()
	if len(lost) == 0 {
		return tx
	}
	w.mu.Lock()
	for _, e := range lost {
		w.res.settled[e.ID] = true
	}
	w.mu.Unlock()
	for _, e := range lost {
		r.log.Warn("relay: not trying a queue entry whose lease was lost", "queue_id", e.ID, "domain", w.domain)
	}
	if len(tx.entries) == 0 {
		return nil
	}
	return tx
}

func (r *Relay) record(ctx context.Context, w *workList, tx *transaction, res []attempt, s *session) {
	settled, kept := r.finish(ctx, tx, res, s)
	w.mu.Lock()
	for _, id := range settled {
		w.res.settled[id] = true
	}
	w.res.kept = append(w.res.kept, kept...)
	w.mu.Unlock()
}

// route returns the mail exchangers to try for domain, in order, without
// this server and those it must not use; or why there are none.
func (r *Relay) route(ctx context.Context, domain string) ([]MXHost, attempt) {
	res, err := LookupMX(ctx, r.resolver, domain)
	switch {
	case errors.Is(err, errBadDomain):
		return nil, permanent(failure(statusNXDomain, "", err))
	case err != nil:
		return nil, temporary(failure(statusDNSFailure, "", err))
	case res.NXDomain:
		// RFC 3463 X.1.2: the destination system does not exist.
		return nil, permanent(failure(statusNXDomain, "", fmt.Errorf("domain %s does not exist (NXDOMAIN)", domain)))
	case res.NullMX:
		// RFC 7505 3: a null MX means the domain takes no mail.
		return nil, permanent(failure(statusNullMX, "", fmt.Errorf("domain %s accepts no mail (null MX, RFC 7505)", domain)))
	}
	hosts := res.Hosts
	// RFC 5321 5.1: "If it determines that it should relay the message
	// without rewriting the address, it MUST sort the MX records to
	// determine candidates for delivery ... if the domain name of the SMTP
	// client is found ... all MX records at that preference level and
	// higher are discarded".
	for _, h := range hosts {
		if r.hostIsSelf(h) {
			hosts = slices.DeleteFunc(slices.Clone(hosts), func(o MXHost) bool { return o.Preference >= h.Preference })
			if len(hosts) == 0 {
				return nil, permanent(failure(statusLoop, h.Host,
					fmt.Errorf("mail for %s loops back to this server (MX %s)", domain, h.Host)))
			}
			break
		}
	}
	var usable []MXHost
	var errs []error
	temp := false
	for _, h := range hosts {
		if len(h.Addrs) > 0 {
			usable = append(usable, h)
			continue
		}
		errs = append(errs, fmt.Errorf("%s: %w", h.Host, h.Err))
		if !errors.Is(h.Err, ErrNXDomain) && !errors.Is(h.Err, errNoAddress) && !errors.Is(h.Err, errBadDomain) {
			temp = true
		}
	}
	if len(usable) == 0 {
		err := fmt.Errorf("no mail exchanger of %s has an address: %w", domain, errors.Join(errs...))
		if temp {
			return nil, temporary(failure(statusDNSFailure, "", err))
		}
		// RFC 3463 X.4.4: unable to route.
		return nil, permanent(failure(statusNoRoute, "", err))
	}
	return usable, attempt{}
}

// hostIsSelf reports whether an MX host is this server, by name or at any
// of its addresses.
func (r *Relay) hostIsSelf(h MXHost) bool {
	if r.cfg.IsSelf == nil && strings.EqualFold(h.Host, r.cfg.Hostname) {
		return true
	}
	for _, a := range h.Addrs {
		if r.isSelf(h.Host, netip.AddrPortFrom(a, uint16(r.cfg.Port))) {
			return true
		}
	}
	return false
}

func (r *Relay) isSelf(host string, addr netip.AddrPort) bool {
	if r.cfg.IsSelf != nil {
		return r.cfg.IsSelf(host, addr)
	}
	for _, la := range r.cfg.LocalAddrs {
		if la.Port() != addr.Port() {
			continue
		}
		if la.Addr() == addr.Addr() {
			return true
		}
		if la.Addr().IsUnspecified() && r.isLocalIP(addr.Addr()) {
			return true
		}
	}
	return false
}

// isLocalIP reports whether ip belongs to this machine.
func (r *Relay) isLocalIP(ip netip.Addr) bool {
	if ip.IsLoopback() || ip.IsUnspecified() {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.localIPs == nil {
		r.localIPs = make(map[netip.Addr]bool)
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			r.log.Warn("cannot list local addresses for loop detection", "err", err)
		}
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				r.localIPs[p.Addr().Unmap()] = true
			}
		}
	}
	return r.localIPs[ip.Unmap()]
}

func (r *Relay) tlsBroken(addr netip.AddrPort) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.tlsFailed[addr]
	if ok && time.Since(t) > tlsRetryAfter {
		delete(r.tlsFailed, addr)
		return false
	}
	return ok
}

func (r *Relay) markTLSBroken(addr netip.AddrPort) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tlsFailed[addr] = time.Now()
}

// newID returns a short random identifier for a session's log lines.
func newID() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
