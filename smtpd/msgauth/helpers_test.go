package msgauth

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/smtpd/msgauth/msgauthtest"
)

// The test world: alpha.test signs and publishes SPF for 192.0.2.1;
// the client of most checks is that address.
var (
	alphaIP = netip.MustParseAddr("192.0.2.1")
	otherIP = netip.MustParseAddr("198.51.100.7")
	day     = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
)

// newChecker returns a Checker asking d, with short timeouts.
func newChecker(t testing.TB, addr string) *Checker {
	t.Helper()
	r, err := NewResolver(ResolverConfig{Server: addr, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return &Checker{Resolver: r, Timeout: 3 * time.Second}
}

// publish puts each key's DKIM record in d.
func publish(t testing.TB, d *msgauthtest.DNS, keys ...Key) {
	t.Helper()
	for _, k := range keys {
		d.AddTXT(t, k.DNSName(), k.DNSRecord())
	}
}

// testKeys are generated once: RSA keys take a while.
var testKeys = map[string][]Key{}

func keysFor(t testing.TB, domain string) []Key {
	t.Helper()
	if k, ok := testKeys[domain]; ok {
		return k
	}
	k, err := GenerateKeys(domain, day)
	if err != nil {
		t.Fatal(err)
	}
	testKeys[domain] = k
	return k
}

// message is a plain message from the given author, CRLF line ends.
func message(from string) []byte {
	return []byte(strings.ReplaceAll("From: Alice <"+from+">\n"+
		"To: bob@beta.test\n"+
		"Subject: Lunch\n"+
		"Date: Tue, 01 Dec 2026 10:00:00 +0000\n"+
		"Message-ID: <1@alpha.test>\n"+
		"MIME-Version: 1.0\n"+
		"Content-Type: text/plain; charset=utf-8\n"+
		"\n"+
		"See you at noon.\n"+
		"  Trailing spaces and   runs of them.   \n", "\n", "\r\n"))
}

// signed returns msg with signatures by keys before it.
func signed(t testing.TB, msg []byte, keys ...Key) []byte {
	t.Helper()
	fields, err := Sign(msg, keys, day)
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte(fields), msg...)
}

func check(t testing.TB, c *Checker, in CheckInput) Result {
	t.Helper()
	return c.Check(context.Background(), in)
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
