package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/smtpd/msgauth/msgauthtest"
)

func mxSummary(res MXResult) string {
	var parts []string
	for _, h := range res.Hosts {
		s := fmt.Sprintf("%d %s", h.Preference, h.Host)
		for _, a := range h.Addrs {
			s += " " + a.String()
		}
		if h.Err != nil {
			s += " err"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

func TestLookupMX(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	d.Add(t,
		"beta.test. MX 20 mx2.beta.test.",
		"beta.test. MX 10 mx1.beta.test.",
		"mx1.beta.test. A 127.0.0.1",
		"mx1.beta.test. AAAA ::1",
		"mx2.beta.test. A 127.0.0.2",
		"mx2.beta.test. A 127.0.0.3",
		"implicit.test. A 127.0.0.4",
		"nullmx.test. MX 0 .",
		"dangling.test. MX 10 nowhere.dangling.test.",
		"noaddr.test. MX 10 mx.noaddr.test.",
		"broken.test. MX 10 mx.broken.test.",
	)
	d.Exists("noaddr.test")
	d.Exists("mx.noaddr.test")
	d.Exists("empty.test")
	d.Fail("servfail.test")
	d.Fail("mx.broken.test")
	r := NewResolver(d.Addr)
	ctx := context.Background()

	tests := []struct {
		domain string
		want   string
		flags  string // implicit, null, nx
	}{
		{"beta.test", "10 mx1.beta.test 127.0.0.1 ::1, 20 mx2.beta.test 127.0.0.2 127.0.0.3", ""},
		{"Beta.Test.", "10 mx1.beta.test 127.0.0.1 ::1, 20 mx2.beta.test 127.0.0.2 127.0.0.3", ""},
		{"implicit.test", "0 implicit.test 127.0.0.4", "implicit"},
		{"nullmx.test", "", "null"},
		{"nosuch.test", "", "nx"},
		{"dangling.test", "10 nowhere.dangling.test err", ""},
		{"noaddr.test", "10 mx.noaddr.test err", ""},
		{"broken.test", "10 mx.broken.test err", ""},
		{"empty.test", "0 empty.test err", "implicit"},
	}
	for _, tt := range tests {
		t.Run(tt.domain, func(t *testing.T) {
			res, err := LookupMX(ctx, r, tt.domain)
			if err != nil {
				t.Fatal(err)
			}
			if got := mxSummary(res); got != tt.want {
				t.Errorf("hosts %q, want %q", got, tt.want)
			}
			var flags []string
			if res.Implicit {
				flags = append(flags, "implicit")
			}
			if res.NullMX {
				flags = append(flags, "null")
			}
			if res.NXDomain {
				flags = append(flags, "nx")
			}
			if got := strings.Join(flags, " "); got != tt.flags {
				t.Errorf("flags %q, want %q", got, tt.flags)
			}
		})
	}

	// The errors of hosts say why.
	res, _ := LookupMX(ctx, r, "dangling.test")
	if !errors.Is(res.Hosts[0].Err, ErrNXDomain) {
		t.Errorf("dangling MX host error %v, want NXDOMAIN", res.Hosts[0].Err)
	}
	res, _ = LookupMX(ctx, r, "noaddr.test")
	if !errors.Is(res.Hosts[0].Err, errNoAddress) {
		t.Errorf("MX host without addresses: error %v", res.Hosts[0].Err)
	}
	res, _ = LookupMX(ctx, r, "broken.test")
	if err := res.Hosts[0].Err; err == nil || errors.Is(err, ErrNXDomain) || !strings.Contains(err.Error(), "SERVFAIL") {
		t.Errorf("SERVFAIL MX host error %v", err)
	}

	// SERVFAIL for the domain itself is a temporary error, not a result.
	if _, err := LookupMX(ctx, r, "servfail.test"); err == nil || !strings.Contains(err.Error(), "SERVFAIL") {
		t.Errorf("SERVFAIL domain: %v", err)
	}
	// Nobody answering is temporary too.
	dead := NewResolver(closedUDPAddr(t))
	dead.(*dnsResolver).timeout = 200 * time.Millisecond
	if _, err := LookupMX(ctx, dead, "beta.test"); err == nil {
		t.Error("lookup through a dead DNS server succeeded")
	}
	// A domain we cannot look up.
	if _, err := LookupMX(ctx, r, "bücher.test"); !errors.Is(err, errBadDomain) {
		t.Errorf("non-ASCII domain: %v", err)
	}
}

// RFC 5321 5.1: equal preferences in random order, so that the load is
// spread.
func TestLookupMXEqualPreferenceShuffled(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	d.Add(t,
		"beta.test. MX 10 a.beta.test.",
		"beta.test. MX 10 b.beta.test.",
		"beta.test. MX 5 first.beta.test.",
		"a.beta.test. A 127.0.0.1",
		"b.beta.test. A 127.0.0.2",
		"first.beta.test. A 127.0.0.3",
	)
	r := NewResolver(d.Addr)
	const n = 200
	counts := map[string]int{}
	for range n {
		res, err := LookupMX(context.Background(), r, "beta.test")
		if err != nil {
			t.Fatal(err)
		}
		if res.Hosts[0].Host != "first.beta.test" {
			t.Fatalf("preference 5 is not first: %s", mxSummary(res))
		}
		counts[res.Hosts[1].Host]++
	}
	// Binomial(200, 0.5) has a standard deviation of about 7: 60..140 is
	// more than five of them.
	if a := counts["a.beta.test"]; a < 60 || a > 140 {
		t.Errorf("a.beta.test came first among equals %d times in %d, b.beta.test %d times", a, n, counts["b.beta.test"])
	}
}

func TestResolverFor(t *testing.T) {
	r, err := ResolverFor("127.0.0.1:5353")
	if err != nil {
		t.Fatal(err)
	}
	if got := r.(*dnsResolver).servers; len(got) != 1 || got[0] != "127.0.0.1:5353" {
		t.Errorf("servers %v", got)
	}
	if got := NewResolver("192.0.2.1").(*dnsResolver).servers[0]; got != "192.0.2.1:53" {
		t.Errorf("default port: %s", got)
	}
}

// closedUDPAddr returns a loopback UDP address where nothing answers: a
// socket's, closed.
func closedUDPAddr(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}
