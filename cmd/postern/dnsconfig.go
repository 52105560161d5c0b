package main

// The [dns] and [checks] sections: the one DNS resolver of serve (relay MX
// lookups, SPF, DKIM, DMARC) and what the inbound checks do with their
// results.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/postern/postern/smtpd"
	"github.com/postern/postern/smtpd/msgauth"
	"github.com/postern/postern/smtpd/relay"
)

// DNSConfig is the [dns] section.
type DNSConfig struct {
	// Server is the DNS server ("HOST:PORT") every lookup asks; empty
	// means the servers of /etc/resolv.conf. relay.dns is its deprecated
	// alias.
	Server string `toml:"server"`
	// Timeout bounds one lookup, such as "5s" (time.ParseDuration).
	Timeout string `toml:"timeout"`
}

// maxDNSTimeout bounds dns.timeout: a lookup must never hold an SMTP
// session near its own 5-minute timeouts (RFC 5321 4.5.3.2).
const maxDNSTimeout = time.Minute

func defaultDNS() DNSConfig {
	return DNSConfig{Timeout: msgauth.DefaultLookupTimeout.String()}
}

// ChecksConfig is the [checks] section: SPF, DKIM and DMARC on mail
// received on the MX listener (never on submission), and what each result
// does: accept, junk, reject or defer (smtpd.CheckPolicy).
type ChecksConfig struct {
	Enabled         bool   `toml:"enabled"`
	DMARCReject     string `toml:"dmarc_reject"`     // DMARC fails, the domain says p=reject
	DMARCQuarantine string `toml:"dmarc_quarantine"` // DMARC fails, the domain says p=quarantine
	SPFFail         string `toml:"spf_fail"`         // SPF fails and DMARC gives no policy
	TempError       string `toml:"temperror"`        // a lookup failed for a temporary reason
}

func defaultChecks() ChecksConfig {
	p := smtpd.DefaultCheckPolicy
	return ChecksConfig{Enabled: true, DMARCReject: string(p.DMARCReject),
		DMARCQuarantine: string(p.DMARCQuarantine), SPFFail: string(p.SPFFail), TempError: string(p.TempError)}
}

// checkActions are the values of the [checks] policy keys.
var checkActions = []string{string(smtpd.ActionAccept), string(smtpd.ActionJunk), string(smtpd.ActionReject), string(smtpd.ActionDefer)}

// validateDNS checks [dns] and resolves the relay.dns alias into
// dns.server, noting the deprecation as a warning.
func (c *Config) validateDNS(bad func(key, format string, args ...any), badErr func(string, error)) {
	if c.DNS.Server != "" {
		if err := checkHostPort(c.DNS.Server, 1); err != nil {
			badErr("dns.server", err)
		}
	}
	if c.Relay.DNS != "" {
		msg := `is deprecated: set server in [dns] instead (it is used for every lookup)`
		switch {
		case c.DNS.Server == "":
			c.DNS.Server = c.Relay.DNS
		case c.DNS.Server != c.Relay.DNS:
			msg = fmt.Sprintf("is deprecated and ignored: dns.server (%s) is set", c.DNS.Server)
		}
		c.warnings = append(c.warnings, &configError{Key: "relay.dns", Msg: msg})
	}
	d, err := time.ParseDuration(c.DNS.Timeout)
	switch {
	case err != nil:
		bad("dns.timeout", "must be a duration such as \"5s\": %v", err)
	case d <= 0 || d > maxDNSTimeout:
		bad("dns.timeout", "must be more than 0 and at most %v", maxDNSTimeout)
	}
}

// validateChecks checks the [checks] policy values.
func (c *Config) validateChecks(bad func(key, format string, args ...any)) {
	for _, f := range []struct {
		key string
		v   *string
	}{
		{"checks.dmarc_reject", &c.Checks.DMARCReject},
		{"checks.dmarc_quarantine", &c.Checks.DMARCQuarantine},
		{"checks.spf_fail", &c.Checks.SPFFail},
		{"checks.temperror", &c.Checks.TempError},
	} {
		*f.v = strings.ToLower(strings.TrimSpace(*f.v))
		if !slices.Contains(checkActions, *f.v) {
			bad(f.key, "must be one of %s, not %q", strings.Join(checkActions, ", "), *f.v)
		}
	}
}

// checkPolicy is [checks] as smtpd takes it; validate has checked it.
func (c *Config) checkPolicy() smtpd.CheckPolicy {
	return smtpd.CheckPolicy{
		DMARCReject:     smtpd.CheckAction(c.Checks.DMARCReject),
		DMARCQuarantine: smtpd.CheckAction(c.Checks.DMARCQuarantine),
		SPFFail:         smtpd.CheckAction(c.Checks.SPFFail),
		TempError:       smtpd.CheckAction(c.Checks.TempError),
	}
}

// warningText is a warning as config check prints it:
// "FILE:LINE: key "relay.dns": is deprecated ...".
func (e *configError) warningText() string {
	return strings.TrimPrefix(e.Error(), "config: ")
}

// newResolver is the Resolver of [dns]: the one serve uses for every
// lookup, and the commands that look things up (postern dns check).
func newResolver(cfg *Config) (*msgauth.Resolver, error) {
	timeout, err := time.ParseDuration(cfg.DNS.Timeout)
	if err != nil {
		return nil, fmt.Errorf("dns.timeout: %w", err)
	}
	r, err := msgauth.NewResolver(msgauth.ResolverConfig{Server: cfg.DNS.Server, Timeout: timeout})
	if err != nil {
		return nil, fmt.Errorf("dns: %w", err)
	}
	return r, nil
}

// relayResolver lets the relay look up MX and address records through the
// shared msgauth.Resolver, with its cache, instead of a client of its own.
type relayResolver struct{ r *msgauth.Resolver }

var _ relay.Resolver = relayResolver{}

// Lookup implements relay.Resolver: the shared resolver's records, with
// NXDOMAIN wrapping relay.ErrNXDomain and other failures temporary, as
// the relay expects.
func (a relayResolver) Lookup(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	rrs, err := a.r.Lookup(ctx, name, qtype)
	if err != nil {
		return nil, relayError(name, qtype, err)
	}
	return rrs, nil
}

// relayError wraps relay.ErrNXDomain for a name that does not exist.
func relayError(name string, qtype uint16, err error) error {
	var de *net.DNSError
	if errors.As(err, &de) && de.IsNotFound {
		return fmt.Errorf("%s %s: %w", dns.TypeToString[qtype], name, relay.ErrNXDomain)
	}
	return fmt.Errorf("%s %s: %w", dns.TypeToString[qtype], name, err)
}
