package msgauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Resolver defaults for zero fields of ResolverConfig.
const (
	// DefaultLookupTimeout bounds one DNS lookup, as resolv.conf's
	// default "timeout:5".
	DefaultLookupTimeout = 5 * time.Second
	// DefaultCacheEntries bounds the answers kept.
	DefaultCacheEntries = 10000
	// DefaultMaxTTL caps how long an answer is kept whatever its TTL.
	DefaultMaxTTL = time.Hour
	// negativeTTL is how long "no such name" or "no such records" is kept
	// when the answer carries no SOA to say (RFC 2308 5).
	negativeTTL = time.Minute
	// udpSize is the EDNS0 buffer size advertised (DNS flag day 2020).
	udpSize = 1232
	// resolvConf is where the system's DNS servers are named.
	resolvConf = "/etc/resolv.conf"
)

// ResolverConfig says which DNS server a Resolver asks and how.
type ResolverConfig struct {
	// Server is "HOST:PORT" ([dns] server); empty means the servers named
	// in /etc/resolv.conf, in order.
	Server string
	// Timeout bounds each lookup (DefaultLookupTimeout when zero).
	Timeout time.Duration
	// CacheEntries bounds the cache (DefaultCacheEntries when zero;
	// negative: no cache).
	CacheEntries int
	// MaxTTL caps the time an answer is cached (DefaultMaxTTL when zero).
	MaxTTL time.Duration
	// Now is the clock of the cache; nil means time.Now.
	Now func() time.Time
	// Logger gets one "dns lookup" line per lookup sent to a server
	// (answers from the cache are not logged); nil: none.
	Logger *slog.Logger
}

// Resolver is a DNS client for the lookups of SPF, DKIM and DMARC. Its
// methods have the shapes the libraries want: LookupTXT, LookupMX,
// LookupIPAddr and LookupAddr are spf.DNSResolver (and *net.Resolver's),
// TXTFunc is for dkim.VerifyOptions and dmarc.LookupOptions. Errors are
// *net.DNSError, which both libraries read: IsNotFound for NXDOMAIN,
// IsTemporary or IsTimeout for a failure worth retrying. A name that
// exists without records of the type asked gives none and no error.
// Answers are cached for their TTL; failures are not.
type Resolver struct {
	servers []string
	timeout time.Duration
	maxTTL  time.Duration
	max     int
	now     func() time.Time
	log     *slog.Logger

	mu    sync.Mutex
	cache map[cacheKey]cacheEntry
}

type cacheKey struct {
	name  string
	qtype uint16
}

type cacheEntry struct {
	rrs      []dns.RR
	nxdomain bool
	expires  time.Time
}

// NewResolver returns a Resolver for cfg. It fails only when cfg.Server
// is empty and /etc/resolv.conf names no server.
func NewResolver(cfg ResolverConfig) (*Resolver, error) {
	r := &Resolver{timeout: cfg.Timeout, maxTTL: cfg.MaxTTL, max: cfg.CacheEntries, now: cfg.Now,
		log: cfg.Logger, cache: make(map[cacheKey]cacheEntry)}
	if r.timeout <= 0 {
		r.timeout = DefaultLookupTimeout
	}
	if r.maxTTL <= 0 {
		r.maxTTL = DefaultMaxTTL
	}
	if r.max == 0 {
		r.max = DefaultCacheEntries
	}
	if r.now == nil {
		r.now = time.Now
	}
	if cfg.Server != "" {
		a := cfg.Server
		if _, _, err := net.SplitHostPort(a); err != nil {
			a = net.JoinHostPort(a, "53")
		}
		r.servers = []string{a}
		return r, nil
	}
	cc, err := dns.ClientConfigFromFile(resolvConf)
	if err != nil {
		return nil, fmt.Errorf("system resolver: %w", err)
	}
	if len(cc.Servers) == 0 {
		return nil, fmt.Errorf("system resolver: no nameserver in %s", resolvConf)
	}
	for _, s := range cc.Servers {
		r.servers = append(r.servers, net.JoinHostPort(s, cc.Port))
	}
	return r, nil
}

// LookupTXT returns the TXT records of name, each record's strings joined
// (as net.LookupTXT does; RFC 7208 3.3 and RFC 6376 3.6.2.2 read them so).
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	rrs, err := r.lookup(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range rrs {
		if t, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(t.Txt, ""))
		}
	}
	return out, nil
}

// LookupMX returns the MX records of name.
func (r *Resolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	rrs, err := r.lookup(ctx, name, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	var out []*net.MX
	for _, rr := range rrs {
		if m, ok := rr.(*dns.MX); ok {
			out = append(out, &net.MX{Host: m.Mx, Pref: m.Preference})
		}
	}
	return out, nil
}

// LookupIPAddr returns the A and AAAA records of host. NXDOMAIN on both
// is an error; one type missing is not.
func (r *Resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	var out []net.IPAddr
	var errs []error
	for _, t := range []uint16{dns.TypeA, dns.TypeAAAA} {
		rrs, err := r.lookup(ctx, host, t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, rr := range rrs {
			switch a := rr.(type) {
			case *dns.A:
				out = append(out, net.IPAddr{IP: a.A})
			case *dns.AAAA:
				out = append(out, net.IPAddr{IP: a.AAAA})
			}
		}
	}
	if len(out) == 0 && len(errs) > 0 {
		return nil, errs[0]
	}
	return out, nil
}

// LookupAddr returns the names of addr from its PTR records.
func (r *Resolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	rev, err := dns.ReverseAddr(addr)
	if err != nil {
		return nil, &net.DNSError{Err: err.Error(), Name: addr}
	}
	rrs, err := r.lookup(ctx, rev, dns.TypePTR)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range rrs {
		if p, ok := rr.(*dns.PTR); ok {
			out = append(out, p.Ptr)
		}
	}
	return out, nil
}

// TXTFunc returns LookupTXT bound to ctx, the shape of
// dkim.VerifyOptions.LookupTXT and dmarc.LookupOptions.LookupTXT.
func (r *Resolver) TXTFunc(ctx context.Context) func(domain string) ([]string, error) {
	return func(domain string) ([]string, error) { return r.LookupTXT(ctx, domain) }
}

// SetLogger sets ResolverConfig.Logger; call it before the first lookup.
func (r *Resolver) SetLogger(l *slog.Logger) { r.log = l }

// logLookup writes the "dns lookup" line of the log vocabulary
// (cmd/postern/console/metrics.go): result is ok, nxdomain or fail.
func (r *Resolver) logLookup(name string, qtype uint16, result string, answers int, start time.Time, err error) {
	if r.log == nil {
		return
	}
	attrs := []any{"type", dns.TypeToString[qtype], "name", name, "result", result, "answers", answers,
		"duration", time.Since(start).Round(time.Microsecond)}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	r.log.Info("dns lookup", attrs...)
}

// Lookup returns the records of qtype at name, from the cache or the
// servers: none when the name has none of that type, a *net.DNSError with
// IsNotFound when the name does not exist. It is the one DNS client for
// every record type (the relay's MX and address lookups, postern dns
// check's CNAME and SRV).
func (r *Resolver) Lookup(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	return r.lookup(ctx, name, qtype)
}

// lookup answers from the cache or asks the servers in turn.
func (r *Resolver) lookup(ctx context.Context, name string, qtype uint16) (rrs []dns.RR, err error) {
	fqdn := dns.Fqdn(strings.ToLower(name))
	if _, ok := dns.IsDomainName(fqdn); !ok || len(fqdn) > 255 {
		return nil, &net.DNSError{Err: "invalid domain name", Name: name}
	}
	key := cacheKey{fqdn, qtype}
	if e, ok := r.cached(key); ok {
		if e.nxdomain {
			return nil, notFound(name, "cache")
		}
		return e.rrs, nil
	}
	start := time.Now()
	defer func() {
		var dnsErr *net.DNSError
		switch {
		case err == nil:
			r.logLookup(fqdn, qtype, "ok", len(rrs), start, nil)
		case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
			r.logLookup(fqdn, qtype, "nxdomain", 0, start, nil)
		default:
			r.logLookup(fqdn, qtype, "fail", 0, start, err)
		}
	}()
	m := new(dns.Msg)
	m.SetQuestion(fqdn, qtype)
	m.SetEdns0(udpSize, false)
	var last *net.DNSError
	for _, server := range r.servers {
		resp, err := r.exchange(ctx, m, server)
		if err != nil {
			var ne net.Error
			timeout := errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded)
			last = &net.DNSError{Err: err.Error(), Name: name, Server: server, IsTimeout: timeout, IsTemporary: true}
			if ctx.Err() != nil {
				break
			}
			continue
		}
		switch resp.Rcode {
		case dns.RcodeSuccess:
			var out []dns.RR
			for _, rr := range resp.Answer {
				// The answer may hold a CNAME chain before the records.
				if rr.Header().Rrtype == qtype {
					out = append(out, rr)
				}
			}
			r.store(key, cacheEntry{rrs: out}, ttlOf(resp, out))
			return out, nil
		case dns.RcodeNameError:
			r.store(key, cacheEntry{nxdomain: true}, ttlOf(resp, nil))
			return nil, notFound(name, server)
		default:
			// SERVFAIL, REFUSED...: another server may do better.
			last = &net.DNSError{Err: "server answered " + dns.RcodeToString[resp.Rcode], Name: name,
				Server: server, IsTemporary: true}
		}
	}
	if last == nil {
		last = &net.DNSError{Err: "no DNS server configured", Name: name, IsTemporary: true}
	}
	return nil, last
}

func notFound(name, server string) *net.DNSError {
	return &net.DNSError{Err: "no such domain (NXDOMAIN)", Name: name, Server: server, IsNotFound: true}
}

// exchange sends m over UDP and again over TCP when the answer was
// truncated (RFC 7766), within the lookup timeout.
func (r *Resolver) exchange(ctx context.Context, m *dns.Msg, server string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	c := &dns.Client{Net: "udp", Timeout: r.timeout, UDPSize: udpSize}
	resp, _, err := c.ExchangeContext(ctx, m, server)
	if err == nil && resp.Truncated {
		c.Net = "tcp"
		resp, _, err = c.ExchangeContext(ctx, m, server)
	}
	return resp, err
}

// ttlOf is how long an answer may be kept: the least TTL of its records,
// or for a negative answer the SOA's (RFC 2308 5), else negativeTTL.
func ttlOf(resp *dns.Msg, rrs []dns.RR) time.Duration {
	if len(rrs) > 0 {
		least := rrs[0].Header().Ttl
		for _, rr := range rrs[1:] {
			least = min(least, rr.Header().Ttl)
		}
		return time.Duration(least) * time.Second
	}
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
		}
	}
	return negativeTTL
}

func (r *Resolver) cached(k cacheKey) (cacheEntry, bool) {
	if r.max < 0 {
		return cacheEntry{}, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.cache[k]
	if !ok {
		return cacheEntry{}, false
	}
	if !r.now().Before(e.expires) {
		delete(r.cache, k)
		return cacheEntry{}, false
	}
	return e, true
}

// store keeps an answer for ttl (capped by MaxTTL). A full cache first
// drops what has expired, then entries at random (map order).
func (r *Resolver) store(k cacheKey, e cacheEntry, ttl time.Duration) {
	if r.max < 0 || ttl <= 0 {
		return
	}
	now := r.now()
	e.expires = now.Add(min(ttl, r.maxTTL))
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.cache[k]; !ok && len(r.cache) >= r.max {
		for ck, ce := range r.cache {
			if !now.Before(ce.expires) {
				delete(r.cache, ck)
			}
		}
		for ck := range r.cache {
			if len(r.cache) < r.max {
				break
			}
			delete(r.cache, ck)
		}
	}
	r.cache[k] = e
}

// CacheLen is the number of answers cached, for tests and metrics.
func (r *Resolver) CacheLen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.cache)
}
