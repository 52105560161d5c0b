package main

// `postern dns DOMAIN`: every record a local domain should publish, in
// zone-file syntax with comments; `postern dns check DOMAIN` looks each up
// through the configured DNS server and says ok, missing or different.
// `postern autoconfig DOMAIN` is its old name.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/postern/postern/cmd/postern/console"
	"github.com/postern/postern/smtpd/msgauth"
)

// recordTTL is the TTL of the records printed: an hour, short enough
// for a change to spread within the day.
const recordTTL = 3600

// maxCheckRecords bounds the records one dns check looks up.
const maxCheckRecords = 100

func cmdDNS(c *cli, args []string) int {
	name := "dns"
	check := len(args) > 0 && args[0] == "check"
	if check {
		name, args = "dns check", args[1:]
	}
	fs := c.flagSet(name, "[-config FILE] DOMAIN")
	path := configFlag(fs)
	if code, ok := c.parse(fs, args); !ok {
		return code
	}
	if fs.NArg() != 1 {
		return c.usageError(fs, "want one DOMAIN")
	}
	domain := strings.ToLower(strings.TrimSuffix(fs.Arg(0), "."))
	if err := checkDNSName(domain); err != nil {
		return c.usageError(fs, "domain %q %v", domain, err)
	}
	file, _ := resolveConfig(*path)
	cfg, err := loadConfig(file)
	if err != nil {
		return c.fail(name, err)
	}
	keys, err := c.activeKeys(cfg, domain, name)
	if err != nil {
		return c.fail(name, err)
	}
	zone := domainZone(cfg, domain, keys)
	if !check {
		if cfg.HTTP.Listen == "" && cfg.HTTP.ListenTLS == "" {
			fmt.Fprintf(c.stderr, "postern: %s: note: http.listen and http.listen_tls are empty; the autoconfig and MTA-STS names need the HTTP listener\n", name)
		}
		fmt.Fprint(c.stdout, zone)
		return exitOK
	}
	ctx, cancel := context.WithTimeout(c.ctx, 2*time.Minute)
	defer cancel()
	resolver, err := newResolver(cfg)
	if err != nil {
		return c.fail(name, err)
	}
	good, err := checkZone(ctx, resolver, zone, c.stdout)
	if err != nil {
		return c.fail(name, err)
	}
	if !good {
		return exitFailure
	}
	return exitOK
}

// activeKeys are the domain's signing keys from the store, if there is a
// store: the command only reads and never creates one.
func (c *cli) activeKeys(cfg *Config, domain, name string) ([]msgauth.Key, error) {
	db, exists, err := storeExists(cfg)
	if err != nil {
		return nil, err
	}
	if !exists {
		fmt.Fprintf(c.stderr, "postern: %s: note: no mailstore at %s, so no DKIM keys to show\n", name, db)
		return nil, nil
	}
	st, err := openStore(cfg)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	local, err := st.IsLocalDomain(c.ctx, domain)
	if err != nil {
		return nil, err
	}
	if !local {
		fmt.Fprintf(c.stderr, "postern: %s: note: %s is not a local domain (postern domain add %s)\n", name, domain, domain)
		return nil, nil
	}
	keys, err := msgauth.StoreKeys{Store: st}.SigningKeys(c.ctx, domain)
	if err != nil {
		return nil, err
	}
	return keys, nil
}

// domainZone is what `postern dns` prints: every record domain should
// publish for this server, as lines of a BIND zone file with comments.
func domainZone(cfg *Config, domain string, keys []msgauth.Key) string {
	var b strings.Builder
	d, h := dns.Fqdn(domain), dns.Fqdn(cfg.Hostname)
	line := func(name, typ, value string) {
		fmt.Fprintf(&b, "%s\t%d\tIN\t%s\t%s\n", name, recordTTL, typ, value)
	}
	fmt.Fprintf(&b, "; DNS records for mail of %s, served by %s (postern dns %s)\n", domain, cfg.Hostname, domain)
	fmt.Fprintln(&b, "; mail for the domain goes to this server (RFC 5321 5.1)")
	line(d, "MX", "10 "+h)
	addrs := hostAddrs(cfg)
	if len(addrs) == 0 {
		fmt.Fprintf(&b, "; %s needs A (and AAAA) records with the server's public addresses;\n", h)
		fmt.Fprintln(&b, "; the listen addresses do not name them (\":25\" listens on all)")
	} else {
		fmt.Fprintln(&b, "; the mail host's addresses, from the listen addresses")
		for _, a := range addrs {
			typ := "A"
			if a.Is6() {
				typ = "AAAA"
			}
			line(h, typ, a.String())
		}
	}
	fmt.Fprintln(&b, "; SPF (RFC 7208): only the domain's MX hosts send its mail")
	line(d, "TXT", `"v=spf1 mx -all"`)
	if len(keys) == 0 {
		fmt.Fprintln(&b, "; DKIM (RFC 6376): no keys yet; postern serve makes them at start (postern dkim list)")
	} else {
		fmt.Fprintln(&b, "; DKIM (RFC 6376, RFC 8463): the public key of each selector that signs")
		for _, k := range keys {
			line(dns.Fqdn(k.DNSName()), "TXT", txtStrings(k.DNSRecord()))
		}
	}
	fmt.Fprintln(&b, "; DMARC (RFC 7489): mail failing SPF and DKIM alignment goes to spam")
	line("_dmarc."+d, "TXT", `"v=DMARC1; p=quarantine; adkim=r; aspf=r"`)
	fmt.Fprintln(&b, "; TLS reporting (RFC 8460): where senders report TLS failures")
	line("_smtp._tls."+d, "TXT", `"v=TLSRPTv1; rua=mailto:postmaster@`+domain+`"`)

	// The client autoconfiguration, MTA-STS and RFC 6186 SRV records,
	// from the configured listeners (a port 0 is only for tests).
	var services []console.Service
	for _, l := range cfg.listeners() {
		port := portNumber(l.Addr)
		if port == 0 {
			continue
		}
		switch l.Proto {
		case "submission", "imap", "pop3":
			services = append(services, console.Service{Proto: l.Proto, Port: port})
		case "submissions", "imaps", "pop3s":
			services = append(services, console.Service{Proto: strings.TrimSuffix(l.Proto, "s"), Port: port, ImplicitTLS: true})
		}
	}
	policy := console.MTASTSPolicy(cfg.HTTP.MTASTSMode, cfg.Hostname, mtaSTSMaxAge)
	b.WriteString(console.Records(domain, cfg.Hostname, services, portNumber(cfg.HTTP.ListenTLS), policy))
	return b.String()
}

// hostAddrs are the specific addresses the mail listeners are bound to:
// the mail host's A and AAAA records when they are public. None when a
// listener takes every address.
func hostAddrs(cfg *Config) []netip.Addr {
	var out []netip.Addr
	for _, l := range cfg.listeners() {
		host, _, err := net.SplitHostPort(l.Addr)
		if err != nil {
			continue
		}
		a, err := netip.ParseAddr(host)
		if err != nil || a.IsUnspecified() {
			if l.Proto == "smtp" {
				return nil
			}
			continue
		}
		if a = a.Unmap(); !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// txtStrings quotes a TXT value as strings of at most 255 octets (RFC 1035
// 3.3.14), the form a DKIM RSA key needs.
func txtStrings(v string) string {
	var parts []string
	for len(v) > 255 {
		parts = append(parts, `"`+v[:255]+`"`)
		v = v[255:]
	}
	return strings.Join(append(parts, `"`+v+`"`), " ")
}

// isNoSuchName reports whether err says the name does not exist.
func isNoSuchName(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// checkZone looks up every record of zone and writes a line for each:
// "ok", "missing" or "different" with what was found. good is false when
// any record is not ok.
func checkZone(ctx context.Context, q *msgauth.Resolver, zone string, out interface{ Write([]byte) (int, error) }) (good bool, err error) {
	zp := dns.NewZoneParser(strings.NewReader(zone), "", "")
	var want []dns.RR
	for rr, ok := zp.Next(); ok && len(want) < maxCheckRecords; rr, ok = zp.Next() {
		want = append(want, rr)
	}
	if err := zp.Err(); err != nil {
		return false, fmt.Errorf("records: %w", err)
	}
	good = true
	type key struct {
		name  string
		qtype uint16
	}
	found := map[key][]dns.RR{}
	for _, w := range want {
		h := w.Header()
		k := key{strings.ToLower(h.Name), h.Rrtype}
		got, seen := found[k]
		if !seen {
			got, err = q.Lookup(ctx, h.Name, h.Rrtype)
			if err != nil && !isNoSuchName(err) {
				fmt.Fprintf(out, "error     %s: %v\n", rrText(w), err)
				good = false
				continue
			}
			found[k] = got
		}
		status, detail := compareRR(w, got)
		if status != "ok" {
			good = false
		}
		fmt.Fprintf(out, "%-9s %s%s\n", status, rrText(w), detail)
	}
	return good, nil
}

// compareRR says whether want is among got. TXT records are told apart by
// their version tag ("v=spf1", "v=DKIM1"...): other TXT records at the same
// name (site verifications) are not "different".
func compareRR(want dns.RR, got []dns.RR) (status, detail string) {
	var same []dns.RR
	if t, ok := want.(*dns.TXT); ok {
		tag := txtTag(strings.Join(t.Txt, ""))
		for _, g := range got {
			if gt, ok := g.(*dns.TXT); ok && strings.EqualFold(txtTag(strings.Join(gt.Txt, "")), tag) {
				same = append(same, g)
			}
		}
	} else {
		same = got
	}
	if len(same) == 0 {
		return "missing", ""
	}
	var found []string
	for _, g := range same {
		if rdata(g) == rdata(want) {
			return "ok", ""
		}
		found = append(found, rdata(g))
	}
	return "different", "; found: " + strings.Join(found, ", ")
}

// txtTag is the first "tag=value" of a TXT record such as "v=spf1".
func txtTag(v string) string {
	tag, _, _ := strings.Cut(v, ";")
	tag, _, _ = strings.Cut(strings.TrimSpace(tag), " ")
	return tag
}

// rdata is a record's data as text, TXT strings joined, names lower-case.
func rdata(rr dns.RR) string {
	if t, ok := rr.(*dns.TXT); ok {
		return `"` + strings.Join(t.Txt, "") + `"`
	}
	s := strings.TrimPrefix(rr.String(), rr.Header().String())
	return strings.ToLower(s)
}

// rrText is a record as one line: name, type, data.
func rrText(rr dns.RR) string {
	return rr.Header().Name + " " + dns.TypeToString[rr.Header().Rrtype] + " " + rdata(rr)
}
