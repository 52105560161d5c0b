package smtpd

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mime"
)

func TestParseAddress(t *testing.T) {
	tests := []struct {
		in      string
		ok      bool
		domain  string
		literal bool
	}{
		{"alice@example.test", true, "example.test", false},
		{"Alice@EXAMPLE.Test", true, "example.test", false},
		{"a.b+tag@sub.example.test", true, "sub.example.test", false},
		{"user%remote.test@example.test", true, "example.test", false},
		{"carol@remote.test@example.test", true, "example.test", false},
		{"josé@example.test", true, "example.test", false},
		{"a@localhost", true, "localhost", false},
		{"a@[192.0.2.1]", true, "[192.0.2.1]", true},
		{"a@[IPv6:2001:db8::1]", true, "[IPv6:2001:db8::1]", true},
		{"a@[2001:db8::1]", false, "", false},
		{"a@[IPv6:192.0.2.1]", false, "", false},
		{"a@[999.0.2.1]", false, "", false},
		{"a@[tag:content]", false, "", false},
		{"a@[IPv6:fe80::1%eth0]", false, "", false},
		{"a@example.test.", false, "", false},
		{"a@.example.test", false, "", false},
		{"a@example..test", false, "", false},
		{"a@-example.test", false, "", false},
		{"a@example-.test", false, "", false},
		{"a@exa_mple.test", false, "", false},
		{"a@example.test:25", false, "", false},
		{"a@bücher.test", false, "", false},
		{"a@" + strings.Repeat("x", 64) + ".test", false, "", false},
		{strings.Repeat("x", 65) + "@example.test", false, "", false},
		{strings.Repeat("x", 64) + "@example.test", true, "example.test", false},
		{"a@" + strings.Repeat("abcdefghi.", 25) + "test", false, "", false}, // over 254 in all
		{"@example.test", false, "", false},
		{"a@", false, "", false},
		{"noat", false, "", false},
		{"a\x00b@example.test", false, "", false},
		{"a\tb@example.test", false, "", false},
		{"a b@example.test", true, "example.test", false}, // from a quoted local part
		{"\xff@example.test", false, "", false},
	}
	for _, tt := range tests {
		a, err := parseAddress(tt.in)
		if tt.ok != (err == nil) {
			t.Errorf("parseAddress(%q): %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if err == nil && (a.domain != tt.domain || a.literal != tt.literal) {
			t.Errorf("parseAddress(%q) = %+v, want domain %q literal %v", tt.in, a, tt.domain, tt.literal)
		}
	}
}

// FuzzParseAddress checks the address rules whatever the input: an
// accepted address has a valid split, and a domain that is either a
// literal or a name that both smtpd and the mailstore take.
func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{"alice@example.test", "a%b@c", "\"q\"@x", "a@[IPv6:::1]", "a@[1.2.3.4]", "a@b.", "x@y@z", "josé@e.test"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := parseAddress(s)
		if err != nil {
			return
		}
		if a.String() != s[:strings.LastIndexByte(s, '@')+1]+a.domain || !utf8.ValidString(a.local) {
			t.Fatalf("%q split as %+v", s, a)
		}
		if len(a.local) == 0 || len(a.local) > maxLocalPart || len(s) > maxPath {
			t.Fatalf("%q: lengths not enforced", s)
		}
		if strings.ContainsAny(a.local, "\x00\r\n") {
			t.Fatalf("%q: control character accepted", s)
		}
		if a.literal {
			if !mime.IsAddressLiteral(a.domain) {
				t.Fatalf("%q: bad literal accepted", s)
			}
			return
		}
		if a.domain != strings.ToLower(a.domain) || strings.HasSuffix(a.domain, ".") {
			t.Fatalf("%q: domain %q not canonical", s, a.domain)
		}
		if d, err := mailstore.NormalizeDomain(a.domain); err != nil || d != a.domain {
			t.Fatalf("%q: the mailstore reads domain %q as %q, %v", s, a.domain, d, err)
		}
	})
}
