package smtpd

import (
	"errors"
	"strings"
	"unicode/utf8"

	"github.com/postern/postern/mime"
)

// address is a mailbox from MAIL FROM or RCPT TO, checked and split.
// go-smtp has already taken off the angle brackets and any source route
// (RFC 5321 3.6.1 and appendix C: the route is ignored) and unquoted a
// quoted local part.
type address struct {
	local   string // as given
	domain  string // lower case; an address literal as given
	literal bool   // domain is an address literal such as [192.0.2.1]
}

func (a address) String() string { return a.local + "@" + a.domain }

// Limits from RFC 5321 4.5.3.1.
const (
	maxLocalPart = 64  // RFC 5321 4.5.3.1.1
	maxPath      = 254 // RFC 5321 4.5.3.1.3: 256 octets with the angle brackets
)

var errAddressSyntax = errors.New("bad address syntax")

// parseAddress checks the syntax smtpd relies on: local@domain split at the
// last "@", a local part of at most 64 octets with no control characters,
// and a domain that is a name of letters, digits and hyphens (no trailing
// dot, RFC 5321 4.1.2) or an IPv4 or IPv6 address literal (RFC 5321 4.1.3).
// Non-ASCII is allowed in the local part only (SMTPUTF8): smtpd has no IDNA
// tables, and local domains are ASCII.
func parseAddress(s string) (address, error) {
	if len(s) > maxPath || !utf8.ValidString(s) {
		return address{}, errAddressSyntax
	}
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || at == len(s)-1 {
		return address{}, errAddressSyntax
	}
	local, domain := s[:at], s[at+1:]
	if len(local) > maxLocalPart {
		return address{}, errAddressSyntax
	}
	for _, c := range []byte(local) {
		if c < ' ' || c == 0x7f {
			return address{}, errAddressSyntax
		}
	}
	if domain[0] == '[' {
		if !mime.IsAddressLiteral(domain) {
			return address{}, errAddressSyntax
		}
		return address{local: local, domain: domain, literal: true}, nil
	}
	if !mime.IsDomain(domain) {
		return address{}, errAddressSyntax
	}
	return address{local: local, domain: strings.ToLower(domain)}, nil
}

// isASCII reports whether s has only 7-bit characters: without SMTPUTF8
// an address must (RFC 6531 3.5).
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
