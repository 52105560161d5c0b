package main

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/postern/postern/smtpd"
	"github.com/postern/postern/smtpd/msgauth/msgauthtest"
	"github.com/postern/postern/smtpd/relay"
)

func TestDNSAndChecksConfigErrors(t *testing.T) {
	for _, tt := range []struct{ name, src, want string }{
		{"server without port", "[dns]\nserver = \"127.0.0.1\"\n", `config: t.toml:3: key "dns.server": must be HOST:PORT`},
		{"timeout not a duration", "[dns]\ntimeout = \"5\"\n", `config: t.toml:3: key "dns.timeout": must be a duration`},
		{"timeout too long", "[dns]\ntimeout = \"2m\"\n", `key "dns.timeout": must be more than 0 and at most 1m0s`},
		{"timeout zero", "[dns]\ntimeout = \"0s\"\n", `key "dns.timeout": must be more than 0`},
		{"checks action", "[checks]\ndmarc_reject = \"drop\"\n", `config: t.toml:3: key "checks.dmarc_reject": must be one of accept, junk, reject, defer, not "drop"`},
		{"checks temperror", "[checks]\ntemperror = \"\"\n", `key "checks.temperror": must be one of`},
		{"checks enabled type", "[checks]\nenabled = \"yes\"\n", `key "checks.enabled": must be true or false, not a string`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseConfig("t.toml", []byte("hostname = \"a.example\"\n"+tt.src))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestChecksConfigPolicy(t *testing.T) {
	cfg, err := parseConfig("t.toml", []byte("hostname = \"a.example\"\n[checks]\nspf_fail = \"Reject\"\ntemperror = \"defer\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := smtpd.DefaultCheckPolicy
	want.SPFFail, want.TempError = smtpd.ActionReject, smtpd.ActionDefer
	if got := cfg.checkPolicy(); got != want {
		t.Errorf("policy %+v, want %+v", got, want)
	}
	if !cfg.Checks.Enabled {
		t.Error("checks.enabled defaults to false, want true")
	}
	// The defaults are smtpd's.
	if got := defaultConfig().checkPolicy(); got != smtpd.DefaultCheckPolicy {
		t.Errorf("default policy %+v, want %+v", got, smtpd.DefaultCheckPolicy)
	}
}

// relay.dns still works, as dns.server when that is empty, and config
// check warns about it (exit 0).
func TestRelayDNSIsDeprecatedAlias(t *testing.T) {
	cfg, err := parseConfig("t.toml", []byte("hostname = \"a.example\"\n[relay]\ndns = \"127.0.0.1:5353\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DNS.Server != "127.0.0.1:5353" {
		t.Errorf("dns.server = %q, want relay.dns's 127.0.0.1:5353", cfg.DNS.Server)
	}
	cfg, err = parseConfig("t.toml", []byte("hostname = \"a.example\"\n[relay]\ndns = \"127.0.0.1:5353\"\n[dns]\nserver = \"127.0.0.1:53\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DNS.Server != "127.0.0.1:53" || len(cfg.warnings) != 1 || !strings.Contains(cfg.warnings[0].warningText(), "ignored") {
		t.Errorf("both set: dns.server %q, warnings %v", cfg.DNS.Server, cfg.warnings)
	}

	file := writeFile(t, "old.toml", "hostname = \"a.example\"\n[relay]\ndns = \"127.0.0.1:5353\"\n")
	code, out, errOut := runCmd(t, "config", "check", "-config", file)
	if code != exitOK || !strings.Contains(out, "ok") {
		t.Fatalf("config check: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	want := "postern: config check: warning: " + file + `:3: key "relay.dns": is deprecated: set server in [dns] instead`
	if !strings.Contains(errOut, want) {
		t.Errorf("stderr %q\ndoes not contain %q", errOut, want)
	}
	// Without relay.dns, no warning.
	code, _, errOut = runCmd(t, "config", "check", "-config", writeFile(t, "new.toml", "hostname = \"a.example\"\n[dns]\nserver = \"127.0.0.1:5353\"\ntimeout = \"2s\"\n"))
	if code != exitOK || errOut != "" {
		t.Errorf("config check of [dns]: exit %d, stderr %q", code, errOut)
	}
}

// The relay's lookups through the shared resolver: MX, A and AAAA as
// relay.LookupMX wants them, NXDOMAIN as relay.ErrNXDomain.
func TestRelayResolverAdapter(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	d.Add(t,
		"beta.test. 300 IN MX 10 mx.beta.test.",
		"beta.test. 300 IN MX 20 mx2.beta.test.",
		"mx.beta.test. 300 IN A 127.0.0.2",
		"mx.beta.test. 300 IN AAAA ::1",
		"mx2.beta.test. 300 IN A 127.0.0.3",
		"nomx.test. 300 IN A 127.0.0.4",
	)
	cfg := defaultConfig()
	cfg.DNS.Server = d.Addr
	r, err := newResolver(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	res, err := relay.LookupMX(ctx, relayResolver{r}, "beta.test")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Hosts) != 2 || res.Hosts[0].Host != "mx.beta.test" || len(res.Hosts[0].Addrs) != 2 ||
		res.Hosts[0].Addrs[0].String() != "127.0.0.2" || res.Hosts[0].Addrs[1].String() != "::1" ||
		res.Hosts[1].Host != "mx2.beta.test" || len(res.Hosts[1].Addrs) != 1 {
		t.Errorf("LookupMX beta.test = %+v", res)
	}
	res, err = relay.LookupMX(ctx, relayResolver{r}, "nomx.test")
	if err != nil || !res.Implicit || len(res.Hosts) != 1 || res.Hosts[0].Addrs[0].String() != "127.0.0.4" {
		t.Errorf("LookupMX nomx.test = %+v, %v; want the implicit MX", res, err)
	}
	res, err = relay.LookupMX(ctx, relayResolver{r}, "missing.test")
	if err != nil || !res.NXDomain {
		t.Errorf("LookupMX missing.test = %+v, %v; want NXDOMAIN", res, err)
	}
	d.Fail("fail.test")
	if _, err := (relayResolver{r}).Lookup(ctx, "fail.test", dns.TypeMX); err == nil || errors.Is(err, relay.ErrNXDomain) {
		t.Errorf("SERVFAIL: %v, want a temporary error", err)
	}
	var de *net.DNSError
	if _, err := r.LookupMX(ctx, "fail.test"); !errors.As(err, &de) || !de.IsTemporary {
		t.Errorf("msgauth SERVFAIL: %v", err)
	}
}
