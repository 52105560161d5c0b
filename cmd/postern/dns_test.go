package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/postern/postern/smtpd/msgauth/msgauthtest"
)

// dnsConfig is a configuration with standard listeners (":25"...), a
// store in a temporary directory and the DNS server at dnsAddr.
func dnsConfig(t *testing.T, dnsAddr string) string {
	t.Helper()
	dataDir := filepath.Join(t.TempDir(), "data")
	return writeFile(t, "dns.toml", `hostname = "mail.example.test"
data_dir = "`+dataDir+`"
domains = ["example.test"]
[http]
listen_tls = ":443"
[dns]
server = "`+dnsAddr+`"
timeout = "2s"
`)
}

// parseZone parses what postern dns printed, failing the test when it is
// not a valid zone.
func parseZone(t *testing.T, zone string) []dns.RR {
	t.Helper()
	zp := dns.NewZoneParser(strings.NewReader(zone), "", "")
	var rrs []dns.RR
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		rrs = append(rrs, rr)
	}
	if err := zp.Err(); err != nil {
		t.Fatalf("postern dns output is not a zone: %v\n%s", err, zone)
	}
	return rrs
}

func TestDNSRecords(t *testing.T) {
	t.Setenv(configEnv, "")
	config := dnsConfig(t, "127.0.0.1:1")
	// No store yet: the records without DKIM, and a note.
	code, out, errOut := runCmd(t, "dns", "-config", config, "example.test")
	if code != exitOK || !strings.Contains(errOut, "no mailstore") || !strings.Contains(out, "; DKIM (RFC 6376): no keys yet") {
		t.Fatalf("dns without a store: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	parseZone(t, out)

	if code, out, errOut := runCmd(t, "dkim", "rotate", "-config", config, "example.test"); code != exitOK {
		t.Fatalf("dkim rotate: %d %s %s", code, out, errOut)
	}
	code, out, errOut = runCmd(t, "dns", "-config", config, "example.test")
	if code != exitOK {
		t.Fatalf("dns: exit %d, stderr %q", code, errOut)
	}
	if strings.Contains(out, "PRIVATE KEY") {
		t.Error("dns printed a private key")
	}
	rrs := parseZone(t, out)
	got := map[string]string{} // "name TYPE" -> data of the last one
	var dkim []string
	for _, rr := range rrs {
		k := rr.Header().Name + " " + dns.TypeToString[rr.Header().Rrtype]
		got[k] = rdata(rr)
		if strings.HasSuffix(rr.Header().Name, "._domainkey.example.test.") {
			dkim = append(dkim, rdata(rr))
		}
	}
	for k, want := range map[string]string{
		"example.test. MX":                    "10 mail.example.test.",
		"example.test. TXT":                   `"v=spf1 mx -all"`,
		"_dmarc.example.test. TXT":            `"v=DMARC1; p=quarantine; adkim=r; aspf=r"`,
		"_smtp._tls.example.test. TXT":        `"v=TLSRPTv1; rua=mailto:postmaster@example.test"`,
		"_submission._tcp.example.test. SRV":  "5 1 587 mail.example.test.",
		"_submissions._tcp.example.test. SRV": "0 1 465 mail.example.test.",
		"_imaps._tcp.example.test. SRV":       "0 1 993 mail.example.test.",
		"_pop3s._tcp.example.test. SRV":       "10 1 995 mail.example.test.",
		"mta-sts.example.test. CNAME":         "mail.example.test.",
	} {
		if got[k] != want {
			t.Errorf("%s = %q, want %q", k, got[k], want)
		}
	}
	if !strings.HasPrefix(got["_mta-sts.example.test. TXT"], `"v=STSv1; id=`) {
		t.Errorf("_mta-sts TXT = %q", got["_mta-sts.example.test. TXT"])
	}
	// Both keys, the RSA one split into strings of 255 octets that join
	// into one record.
	if len(dkim) != 2 || !strings.HasPrefix(dkim[0], `"v=DKIM1; k=ed25519; p=`) || !strings.HasPrefix(dkim[1], `"v=DKIM1; k=rsa; p=MII`) {
		t.Errorf("DKIM records %q", dkim)
	}
	// ":25" names no address: a comment says what to add.
	if !strings.Contains(out, "; mail.example.test. needs A (and AAAA) records") {
		t.Errorf("no comment about the host's addresses:\n%s", out)
	}
	// A specific listen address is the A record.
	cfg := defaultConfig()
	cfg.SMTP.Listen = "192.0.2.25:25"
	if z := domainZone(cfg, "localhost", nil); !strings.Contains(z, "localhost.\t3600\tIN\tA\t192.0.2.25\n") {
		t.Errorf("zone for 192.0.2.25 has no A record:\n%s", z)
	}
	// autoconfig is the old name.
	if code, out2, _ := runCmd(t, "autoconfig", "-config", config, "example.test"); code != exitOK || out2 != out {
		t.Errorf("autoconfig: exit %d, output differs from dns:\n%s", code, out2)
	}
}

// dns check against a DNS server on loopback that publishes all but the
// DMARC record, and an SPF record that differs.
func TestDNSCheck(t *testing.T) {
	t.Setenv(configEnv, "")
	d := msgauthtest.NewDNS(t)
	config := dnsConfig(t, d.Addr)
	if code, out, errOut := runCmd(t, "dkim", "rotate", "-config", config, "example.test"); code != exitOK {
		t.Fatalf("dkim rotate: %d %s %s", code, out, errOut)
	}
	_, zone, _ := runCmd(t, "dns", "-config", config, "example.test")
	for _, rr := range parseZone(t, zone) {
		switch name := rr.Header().Name; {
		case name == "_dmarc.example.test.":
			continue
		case name == "example.test." && rr.Header().Rrtype == dns.TypeTXT:
			d.Add(t, `example.test. 3600 IN TXT "v=spf1 a -all"`)
			continue
		}
		d.Add(t, rr.String())
	}
	// Another TXT record at the domain is not the SPF record.
	d.Add(t, `example.test. 3600 IN TXT "site-verification=abc"`)

	code, out, errOut := runCmd(t, "dns", "check", "-config", config, "example.test")
	if code != exitFailure {
		t.Errorf("dns check: exit %d, want 1 (records missing); stderr %q", code, errOut)
	}
	for _, w := range []string{
		"ok        example.test. MX 10 mail.example.test.\n",
		`different example.test. TXT "v=spf1 mx -all"; found: "v=spf1 a -all"` + "\n",
		`missing   _dmarc.example.test. TXT "v=DMARC1; p=quarantine; adkim=r; aspf=r"` + "\n",
		"ok        _imaps._tcp.example.test. SRV 0 1 993 mail.example.test.\n",
		`ok        _smtp._tls.example.test. TXT`,
	} {
		if !strings.Contains(out, w) {
			t.Errorf("dns check output does not contain %q:\n%s", w, out)
		}
	}
	if n := strings.Count(out, "\nok        p"); n != 2 {
		t.Errorf("%d DKIM records ok, want 2:\n%s", n, out)
	}
	if strings.Count(out, "\n") != len(parseZone(t, zone)) {
		t.Errorf("dns check printed %d lines for %d records:\n%s", strings.Count(out, "\n"), len(parseZone(t, zone)), out)
	}
}
