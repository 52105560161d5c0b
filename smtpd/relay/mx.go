package relay

// Finding where a domain's mail goes: MX records (RFC 5321 5.1), the
// implicit MX, null MX (RFC 7505), with DNS lookups by github.com/miekg/dns
// so that "no such domain" and "no MX records" can be told apart.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

const (
	// maxMXHosts bounds the MX hosts looked up and tried for one domain,
	// so that a domain with hundreds of MX records cannot keep the relay
	// busy (chasquid tries 5, Postfix's smtp_mx_address_limit is 5).
	maxMXHosts = 10
	// maxAddrsPerHost bounds the addresses tried for one MX host.
	maxAddrsPerHost = 4
	// dnsTimeout is how long one DNS query may take, as resolv.conf's
	// default "timeout:5".
	dnsTimeout = 5 * time.Second
	// dnsUDPSize is the EDNS0 buffer size advertised (the DNS flag day
	// 2020 value, which avoids IP fragmentation).
	dnsUDPSize = 1232
)

// ErrNXDomain is wrapped by Resolver errors for a name that does not exist.
var ErrNXDomain = errors.New("no such domain (NXDOMAIN)")

// Resolver looks up DNS records. Its errors are temporary (SERVFAIL, a
// timeout, an unreachable server) except for those wrapping ErrNXDomain.
type Resolver interface {
	// Lookup returns the records of type qtype (dns.TypeMX, dns.TypeA or
	// dns.TypeAAAA) in the answer for name. A name that exists without such
	// records gives no records and no error.
	Lookup(ctx context.Context, name string, qtype uint16) ([]dns.RR, error)
}

// dnsResolver asks DNS servers directly with miekg/dns: the first server
// first, the next one when it fails.
type dnsResolver struct {
	servers []string // host:port
	timeout time.Duration
}

// NewResolver returns a Resolver that asks the DNS servers at addrs
// ("host:port", or a host for port 53), in order.
func NewResolver(addrs ...string) Resolver {
	r := &dnsResolver{timeout: dnsTimeout}
	for _, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			a = net.JoinHostPort(a, "53")
		}
		r.servers = append(r.servers, a)
	}
	return r
}

// resolvConf is where SystemResolver finds the system's DNS servers.
const resolvConf = "/etc/resolv.conf"

// SystemResolver returns a Resolver that asks the servers named in
// /etc/resolv.conf.
func SystemResolver() (Resolver, error) {
	cc, err := dns.ClientConfigFromFile(resolvConf)
	if err != nil {
		return nil, fmt.Errorf("system resolver: %w", err)
	}
	if len(cc.Servers) == 0 {
		return nil, fmt.Errorf("system resolver: no nameserver in %s", resolvConf)
	}
	r := &dnsResolver{timeout: dnsTimeout}
	if cc.Timeout > 0 {
		r.timeout = time.Duration(cc.Timeout) * time.Second
	}
	for _, s := range cc.Servers {
		r.servers = append(r.servers, net.JoinHostPort(s, cc.Port))
	}
	return r, nil
}

// ResolverFor returns the Resolver for the relay.dns setting: the system
// resolver for "", else the DNS server at addr (HOST:PORT).
func ResolverFor(addr string) (Resolver, error) {
	if addr == "" {
		return SystemResolver()
	}
	return NewResolver(addr), nil
}

func (r *dnsResolver) Lookup(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(dnsUDPSize, false)
	what := fmt.Sprintf("%s %s", dns.TypeToString[qtype], strings.TrimSuffix(dns.Fqdn(name), "."))
	var errs []error
	for _, server := range r.servers {
		resp, err := r.exchange(ctx, m, server)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", server, err))
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
			return out, nil
		case dns.RcodeNameError:
			return nil, fmt.Errorf("lookup %s: %w", what, ErrNXDomain)
		default:
			// SERVFAIL, REFUSED...: another server may do better.
			errs = append(errs, fmt.Errorf("%s: %s", server, dns.RcodeToString[resp.Rcode]))
		}
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("lookup %s: no DNS server configured", what)
	}
	return nil, fmt.Errorf("lookup %s: %w", what, errors.Join(errs...))
}

// exchange sends m over UDP and again over TCP when the answer was
// truncated (RFC 7766).
func (r *dnsResolver) exchange(ctx context.Context, m *dns.Msg, server string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	c := &dns.Client{Net: "udp", Timeout: r.timeout, UDPSize: dnsUDPSize}
	resp, _, err := c.ExchangeContext(ctx, m, server)
	if err == nil && resp.Truncated {
		c.Net = "tcp"
		resp, _, err = c.ExchangeContext(ctx, m, server)
	}
	return resp, err
}

// MXResult is where mail for a domain goes.
type MXResult struct {
	Domain string
	// Hosts are the mail exchangers, lowest preference first, those of
	// equal preference in random order (RFC 5321 5.1), at most maxMXHosts.
	// For an implicit MX it is the domain itself.
	Hosts []MXHost
	// Implicit is set when the domain has no MX records, so that its own
	// address records receive its mail (RFC 5321 5.1).
	Implicit bool
	// NullMX is set when the domain says it accepts no mail with the
	// single record "MX 0 ." (RFC 7505); Hosts is then empty.
	NullMX bool
	// NXDomain is set when the domain does not exist; Hosts is empty.
	NXDomain bool
}

// MXHost is one mail exchanger and its addresses.
type MXHost struct {
	Host       string // without the trailing dot
	Preference uint16
	// Addrs are the host's addresses, IPv4 first: many machines have no
	// IPv6 route, and an unreachable address costs a connect timeout. At
	// most maxAddrsPerHost of each family.
	Addrs []netip.Addr
	// Err is why the addresses could not be looked up, if they could not.
	Err error
}

// LookupMX finds where mail for domain goes, with the addresses of each
// host. NXDOMAIN and null MX are results, not errors; the error is for
// lookups that failed and may succeed later (SERVFAIL, timeouts).
func LookupMX(ctx context.Context, r Resolver, domain string) (MXResult, error) {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	res := MXResult{Domain: domain}
	if domain == "" || !isASCII(domain) {
		// Internationalised domains would need IDNA A-labels (RFC 5890);
		// this relay sends to ASCII domains only.
		return res, fmt.Errorf("MX lookup for %q: %w", domain, errBadDomain)
	}
	rrs, err := r.Lookup(ctx, domain, dns.TypeMX)
	if errors.Is(err, ErrNXDomain) {
		res.NXDomain = true
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("MX lookup for %s: %w", domain, err)
	}
	var nullMX bool
	for _, rr := range rrs {
		mx, ok := rr.(*dns.MX)
		if !ok {
			continue
		}
		host := strings.ToLower(strings.TrimSuffix(mx.Mx, "."))
		if host == "" {
			// RFC 7505 3: "MX 0 ." says the domain accepts no mail. A
			// domain must not publish it beside other MX records; if it
			// does, the real hosts are used.
			nullMX = true
			continue
		}
		res.Hosts = append(res.Hosts, MXHost{Host: host, Preference: mx.Preference})
	}
	switch {
	case len(res.Hosts) == 0 && nullMX:
		res.NullMX = true
		return res, nil
	case len(res.Hosts) == 0:
		// RFC 5321 5.1: no MX records, so the domain itself is the
		// mail exchanger, with preference 0.
		res.Implicit = true
		res.Hosts = []MXHost{{Host: domain}}
	}
	// RFC 5321 5.1: lowest preference first; equal preferences in random
	// order, to spread the load.
	rand.Shuffle(len(res.Hosts), func(i, j int) { res.Hosts[i], res.Hosts[j] = res.Hosts[j], res.Hosts[i] })
	slices.SortStableFunc(res.Hosts, func(a, b MXHost) int { return cmp.Compare(a.Preference, b.Preference) })
	if len(res.Hosts) > maxMXHosts {
		res.Hosts = res.Hosts[:maxMXHosts]
	}
	for i := range res.Hosts {
		h := &res.Hosts[i]
		h.Addrs, h.Err = lookupAddrs(ctx, r, h.Host)
		if ctx.Err() != nil {
			return res, fmt.Errorf("MX lookup for %s: %w", domain, ctx.Err())
		}
	}
	return res, nil
}

// lookupAddrs returns the A then AAAA addresses of host. The error is set
// only when there is no address: NXDOMAIN, or both lookups failing.
func lookupAddrs(ctx context.Context, r Resolver, host string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		// RFC 5321 5.1 wants names in MX records; addresses are
		// refused, as Postfix does.
		return nil, fmt.Errorf("MX host %s is an address, not a name: %w", ip, errBadDomain)
	}
	var addrs []netip.Addr
	var errs []error
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		rrs, err := r.Lookup(ctx, host, qtype)
		if errors.Is(err, ErrNXDomain) {
			return nil, err
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		n := 0
		for _, rr := range rrs {
			var ip net.IP
			switch rr := rr.(type) {
			case *dns.A:
				ip = rr.A
			case *dns.AAAA:
				ip = rr.AAAA
			}
			a, ok := netip.AddrFromSlice(ip)
			if !ok || n >= maxAddrsPerHost {
				continue
			}
			n++
			addrs = append(addrs, a.Unmap())
		}
	}
	if len(addrs) > 0 {
		return addrs, nil
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return nil, fmt.Errorf("%s has no address records: %w", host, errNoAddress)
}

var (
	// errBadDomain is a domain or MX host this relay cannot use.
	errBadDomain = errors.New("unusable domain name")
	// errNoAddress is a host name that exists without addresses.
	errNoAddress = errors.New("no address")
)

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
