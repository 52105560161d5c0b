package relay

// Outbound MTA-STS (RFC 8461): a destination domain that publishes a
// policy says which of its MX hosts are genuine and that they take mail
// only over TLS with a certificate valid for their name. The relay finds
// the policy through the _mta-sts TXT record, fetches it over HTTPS, keeps
// it in the store until its max_age passes (or the record's id changes),
// and in enforce mode delivers only to matching MX hosts over verified
// TLS, deferring otherwise; testing mode only logs what enforce would
// have refused.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/postern/postern/mailstore"
)

const (
	// maxPolicyBytes bounds a policy file read (RFC 8461 3.3 asks for a
	// limit; 64 KiB is far above any real policy).
	maxPolicyBytes = 64 << 10
	// maxPolicyAge: RFC 8461 3.2, max_age "up to 31557600" seconds.
	maxPolicyAge = 31557600 * time.Second
	// maxPolicyMX bounds the mx patterns kept from one policy.
	maxPolicyMX = 100
	// defaultMTASTSTimeout bounds one policy fetch (RFC 8461 3.3: "a
	// timeout of at least one minute" is suggested for the HTTPS GET; the
	// fetch runs before delivery, so a minute is the bound).
	defaultMTASTSTimeout = time.Minute
	// statusSTS is the code of a delivery deferred by an enforced policy:
	// RFC 3463 X.7.5, cryptographic failure, as Postfix uses for TLS it
	// was required to have.
	statusSTS = "4.7.5"
)

// stsMode is a policy's mode (RFC 8461 5).
type stsMode string

const (
	stsEnforce stsMode = "enforce"
	stsTesting stsMode = "testing"
	stsNone    stsMode = "none"
)

// stsPolicy is a parsed policy file (RFC 8461 3.2).
type stsPolicy struct {
	mode   stsMode
	mx     []string // patterns, lower case, without a trailing dot
	maxAge time.Duration
}

// parseSTSPolicy parses a policy file: "key: value" lines ending in CRLF
// or LF; unknown keys are ignored; version, mode and max_age are required,
// and mx too unless the mode is none.
func parseSTSPolicy(body []byte) (*stsPolicy, error) {
	p := &stsPolicy{}
	var version string
	haveAge := false
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 1024), maxPolicyBytes)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("policy line %q: no colon", line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "version":
			version = v
		case "mode":
			p.mode = stsMode(v)
		case "max_age":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil || len(v) > 10 {
				return nil, fmt.Errorf("policy max_age %q: not a number of seconds", v)
			}
			p.maxAge = time.Duration(min(n, uint64(maxPolicyAge/time.Second))) * time.Second
			haveAge = true
		case "mx":
			if len(p.mx) < maxPolicyMX {
				p.mx = append(p.mx, strings.TrimSuffix(strings.ToLower(v), "."))
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if version != "STSv1" {
		return nil, fmt.Errorf("policy version %q, want STSv1", version)
	}
	switch p.mode {
	case stsEnforce, stsTesting, stsNone:
	default:
		return nil, fmt.Errorf("policy mode %q, want enforce, testing or none", p.mode)
	}
	if !haveAge {
		return nil, errors.New("policy has no max_age")
	}
	if p.mode != stsNone && len(p.mx) == 0 {
		return nil, errors.New("policy has no mx")
	}
	return p, nil
}

// matches reports whether an MX host is one the policy names. RFC 8461
// 4.1: a pattern "*.example.com" stands for exactly one leftmost label.
func (p *stsPolicy) matches(host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	for _, pat := range p.mx {
		if rest, ok := strings.CutPrefix(pat, "*."); ok {
			label, parent, found := strings.Cut(host, ".")
			if found && label != "" && parent == rest {
				return true
			}
			continue
		}
		if host == pat {
			return true
		}
	}
	return false
}

// stsRecordID looks up _mta-sts.DOMAIN and returns the id of its one
// "v=STSv1" record; "" when there is none or more than one (RFC 8461 3.1:
// then no policy is published).
func stsRecordID(ctx context.Context, r Resolver, domain string) (string, error) {
	rrs, err := r.Lookup(ctx, "_mta-sts."+domain, dns.TypeTXT)
	if errors.Is(err, ErrNXDomain) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	var ids []string
	for _, rr := range rrs {
		txt, ok := rr.(*dns.TXT)
		if !ok {
			continue
		}
		v := strings.Join(txt.Txt, "")
		if !strings.HasPrefix(v, "v=STSv1") {
			continue
		}
		id := ""
		for _, f := range strings.Split(v, ";") {
			if k, val, ok := strings.Cut(strings.TrimSpace(f), "="); ok && strings.TrimSpace(k) == "id" {
				id = strings.TrimSpace(val)
			}
		}
		ids = append(ids, id)
	}
	if len(ids) != 1 || !validSTSID(ids[0]) {
		return "", nil
	}
	return ids[0], nil
}

// validSTSID: RFC 8461 3.1, id is 1 to 32 letters and digits.
func validSTSID(id string) bool {
	if id == "" || len(id) > 32 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// stsPolicyFor returns the policy that applies to mail for domain, or nil
// when none does (no policy, mode none, or MTA-STS off). RFC 8461 5.1: a
// cached policy is used while it is fresh and the record's id is the one
// it was fetched under; a new id or an expired policy means a fetch; when
// the record or the fetch fails, a cached policy not yet expired still
// applies.
func (r *Relay) stsPolicyFor(ctx context.Context, domain string) *stsPolicy {
	if !r.cfg.MTASTS {
		return nil
	}
	now := r.cfg.Now()
	log := r.log.With("domain", domain)
	var cached *stsPolicy
	stored, err := r.store.MTASTSPolicyOf(ctx, domain)
	switch {
	case err == nil && now.Before(stored.Expires):
		if p, perr := parseSTSPolicy(stored.Policy); perr == nil {
			cached = p
		}
	case err != nil && !errors.Is(err, mailstore.ErrNotFound):
		log.Warn("MTA-STS: reading the cached policy failed", "err", err)
	}
	id, err := stsRecordID(ctx, r.resolver, domain)
	if err != nil {
		log.Info("MTA-STS: TXT lookup failed", "err", err, "cached", cached != nil)
		return active(cached)
	}
	if id == "" {
		return active(cached)
	}
	if cached != nil && stored.ID == id {
		return active(cached)
	}
	body, p, err := r.fetchSTSPolicy(ctx, domain)
	if err != nil {
		log.Warn("MTA-STS: policy fetch failed", "id", id, "err", err, "cached", cached != nil)
		return active(cached)
	}
	log.Info("MTA-STS: policy fetched", "id", id, "mode", string(p.mode), "mx", strings.Join(p.mx, ","), "max_age", p.maxAge)
	err = r.store.PutMTASTSPolicy(ctx, mailstore.MTASTSPolicy{Domain: domain, ID: id, Policy: body, Fetched: now, Expires: now.Add(p.maxAge)})
	if err != nil {
		log.Warn("MTA-STS: caching the policy failed", "err", err)
	}
	return active(p)
}

func active(p *stsPolicy) *stsPolicy {
	if p == nil || p.mode == stsNone {
		return nil
	}
	return p
}

// fetchSTSPolicy fetches and parses https://mta-sts.DOMAIN/.well-known/mta-sts.txt
// (RFC 8461 3.3): certificate verified for that name, no redirects, a 200
// with text/plain, at most maxPolicyBytes.
func (r *Relay) fetchSTSPolicy(ctx context.Context, domain string) ([]byte, *stsPolicy, error) {
	url := "https://mta-sts." + domain + "/.well-known/mta-sts.txt"
	ctx, cancel := context.WithTimeout(ctx, r.cfg.MTASTSTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("fetch %s: %w", url, err)
	}
	resp, err := r.stsClient.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("fetch %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("fetch %s: HTTP status %s", url, resp.Status)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "text/plain" {
		return nil, nil, fmt.Errorf("fetch %s: content type %q, want text/plain", url, resp.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxPolicyBytes+1))
	if err != nil {
		return nil, nil, fmt.Errorf("fetch %s: %w", url, err)
	}
	if len(body) > maxPolicyBytes {
		return nil, nil, fmt.Errorf("fetch %s: policy larger than %d bytes", url, maxPolicyBytes)
	}
	p, err := parseSTSPolicy(body)
	if err != nil {
		return nil, nil, fmt.Errorf("fetch %s: %w", url, err)
	}
	return body, p, nil
}

// newSTSClient is the HTTPS client for policy fetches: names resolved by
// the relay's resolver, connections opened by its dialer on
// Config.MTASTSPort, certificates verified against Config.MTASTSRootCAs,
// no proxy, no redirects (RFC 8461 3.3: "HTTP 3xx redirects MUST NOT be
// followed").
func (r *Relay) newSTSClient() *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		ips, err := lookupAddrs(ctx, r.resolver, host)
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", host, err)
		}
		var errs []error
		for i, ip := range ips {
			if i == maxAddrsPerHost {
				break
			}
			c, err := r.cfg.Dialer(ctx, "tcp", netip.AddrPortFrom(ip, uint16(r.cfg.MTASTSPort)).String())
			if err == nil {
				return c, nil
			}
			errs = append(errs, err)
		}
		if len(errs) == 0 {
			return nil, fmt.Errorf("resolve %s: no address", host)
		}
		return nil, errors.Join(errs...)
	}
	tr := &http.Transport{
		Proxy:                  nil,
		DialContext:            dial,
		TLSClientConfig:        &tls.Config{RootCAs: r.cfg.MTASTSRootCAs, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:    r.cfg.Timeouts.Connect,
		ResponseHeaderTimeout:  r.cfg.MTASTSTimeout,
		MaxResponseHeaderBytes: 16 << 10,
		DisableKeepAlives:      true,
		ForceAttemptHTTP2:      false,
	}
	return &http.Client{
		Transport:     tr,
		Timeout:       r.cfg.MTASTSTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// stsHosts applies a policy to the MX hosts of domain: in enforce mode
// only matching hosts remain, and none is a deferral; in testing mode all
// remain and the log says which enforce would drop.
func (r *Relay) stsHosts(domain string, p *stsPolicy, hosts []MXHost) ([]MXHost, attempt) {
	if p == nil {
		return hosts, attempt{}
	}
	var keep []MXHost
	for _, h := range hosts {
		if p.matches(h.Host) {
			keep = append(keep, h)
			continue
		}
		if p.mode == stsTesting {
			r.log.Warn("MTA-STS testing: MX does not match the policy, enforce would skip it", "domain", domain, "host", h.Host, "mx", strings.Join(p.mx, ","))
			keep = append(keep, h)
		} else {
			r.log.Warn("MTA-STS: MX does not match the policy, skipped", "domain", domain, "host", h.Host, "mx", strings.Join(p.mx, ","))
		}
	}
	if len(keep) == 0 {
		return nil, temporary(failure(statusSTS, "", fmt.Errorf("MTA-STS policy of %s (enforce) names none of its MX hosts (policy mx %s)", domain, strings.Join(p.mx, ", "))))
	}
	return keep, attempt{}
}

// stsCheckSession decides whether an open session meets the policy: in
// enforce mode TLS verified for the MX name is required (RFC 8461 4.2),
// else an error; in testing mode the lack is logged.
func stsCheckSession(p *stsPolicy, s *session) error {
	if p == nil || (s.tls && s.verified) {
		return nil
	}
	why := "no TLS"
	if s.tls {
		why = fmt.Sprintf("certificate not valid for %s: %v", s.host, s.tlsErr)
	}
	if p.mode == stsTesting {
		s.log.Warn("MTA-STS testing: enforce would refuse this MX", "reason", why)
		return nil
	}
	s.log.Warn("MTA-STS: MX refused", "reason", why)
	return fmt.Errorf("MTA-STS policy requires verified TLS: %s", why)
}
