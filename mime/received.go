package mime

import (
	"net/netip"
	"strings"
	"time"
)

// DateLayout is the RFC 5322 3.3 date-time form of the fields this package
// writes (the one go-message uses).
const DateLayout = "Mon, 02 Jan 2006 15:04:05 -0700"

// Received describes one hop for a Received trace field (RFC 5321 4.4).
type Received struct {
	Helo     string     // the name the client gave in HELO/EHLO
	ClientIP netip.Addr // the client's address
	By       string     // this server's host name
	With     string     // protocol, from the RFC 3848 / RFC 6531 registry: ESMTP, ESMTPS, ESMTPSA, UTF8SMTPS...
	TLS      string     // optional comment after With, such as "TLS1.3 TLS_AES_128_GCM_SHA256"
	ID       string     // this server's identifier of the message
	For      string     // the one recipient, or "" (several recipients are not named, RFC 5321 7.2)
	Date     time.Time
}

// Field formats the Received field, folded, ending with CRLF:
//
//	Received: from client.example ([192.0.2.1])
//		by mx.example.com with ESMTPS (TLS1.3 TLS_AES_128_GCM_SHA256) id 4XK2J9
//		for <user@example.com>; Tue, 24 Nov 2026 10:00:00 +0000
//
// A HELO name that is neither a domain nor an address literal is not
// copied into the Extended-Domain: the client's address literal takes its
// place and the name, stripped to safe characters, goes in the comment.
func (r Received) Field() string {
	var b strings.Builder
	b.WriteString("Received: from ")
	lit := traceLiteral(r.ClientIP)
	helo := r.Helo
	switch {
	case IsDomain(helo) || IsAddressLiteral(helo):
		b.WriteString(helo)
		b.WriteString(" (" + lit + ")")
	default:
		b.WriteString(lit)
		b.WriteString(" (" + lit)
		if s := traceComment(helo, 64, false); s != "" {
			b.WriteString(" helo=" + s)
		}
		b.WriteString(")")
	}
	b.WriteString("\r\n\tby ")
	b.WriteString(traceAtom(r.By, "localhost"))
	if r.With != "" {
		b.WriteString(" with " + traceAtom(r.With, "SMTP"))
	}
	if s := traceComment(r.TLS, 100, true); s != "" {
		b.WriteString(" (" + s + ")")
	}
	if r.ID != "" {
		b.WriteString(" id " + traceAtom(r.ID, "unknown"))
	}
	if p, ok := Path(r.For); ok && r.For != "" {
		b.WriteString("\r\n\tfor " + p)
	}
	b.WriteString("; ")
	b.WriteString(r.Date.Format(DateLayout))
	b.WriteString("\r\n")
	return b.String()
}

// ReturnPath formats the Return-Path field that final delivery puts first
// (RFC 5321 4.4, RFC 5322 3.6.7), ending with CRLF. The null reverse-path
// gives "Return-Path: <>". An address no header can carry (control
// characters, longer than MaxPathLength) gives "".
func ReturnPath(reversePath string) string {
	p, ok := Path(reversePath)
	if !ok {
		return ""
	}
	return "Return-Path: " + p + "\r\n"
}

// MaxPathLength is the longest address RFC 5321 4.5.3.1.3 allows in a
// path: 256 octets with the angle brackets.
const MaxPathLength = 254

// Path writes an address as an RFC 5321 Path ("<local@domain>", "<>" for
// the null path), quoting the local part when it is not a dot-atom. It
// fails for addresses with control characters, which no header or command
// may carry, and for overlong ones.
func Path(addr string) (string, bool) {
	if addr == "" {
		return "<>", true
	}
	if len(addr) > MaxPathLength {
		return "", false
	}
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return "", false
	}
	for _, c := range []byte(addr) {
		if c < ' ' || c == 0x7f {
			return "", false
		}
	}
	local, domain := addr[:at], addr[at+1:]
	if strings.ContainsAny(domain, " \t\"\\<>()") {
		return "", false
	}
	if !traceDotAtom(local) {
		local = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(local) + `"`
	}
	return "<" + local + "@" + domain + ">", true
}

// traceDotAtom reports whether s is an RFC 5322 dot-atom-text, with UTF-8
// allowed as RFC 6532 3.2 does.
func traceDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for _, c := range []byte(s) {
		if c != '.' && !traceAtext(c) {
			return false
		}
	}
	return true
}

// traceAtext reports whether c is RFC 5322 atext, or a byte of a UTF-8
// sequence (RFC 6532 3.2).
func traceAtext(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c >= 0x80:
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// traceAtom returns s when it is a non-empty run of atext and dots (a
// domain, a protocol name, an ID), else def.
func traceAtom(s, def string) string {
	if s == "" || len(s) > 255 {
		return def
	}
	for _, c := range []byte(s) {
		if c != '.' && (!traceAtext(c) || c >= 0x80) {
			return def
		}
	}
	return s
}

// traceComment keeps at most max of the characters of s that may stand in
// a comment without quoting: printable ASCII other than parentheses and
// backslash, and with spaces true single spaces between words.
func traceComment(s string, max int, spaces bool) string {
	var b strings.Builder
	space := false
	for _, c := range []byte(s) {
		if b.Len() >= max {
			break
		}
		switch {
		case c == ' ' && spaces:
			space = b.Len() > 0
		case c > ' ' && c < 0x7f && c != '(' && c != ')' && c != '\\':
			if space {
				b.WriteByte(' ')
				space = false
			}
			b.WriteByte(c)
		}
	}
	return b.String()
}

// traceLiteral writes ip as an RFC 5321 4.1.3 address literal.
func traceLiteral(ip netip.Addr) string {
	ip = ip.Unmap()
	switch {
	case !ip.IsValid():
		return "[unknown]"
	case ip.Is4():
		return "[" + ip.String() + "]"
	default:
		return "[IPv6:" + ip.WithZone("").String() + "]"
	}
}

// IsDomain reports whether s is an RFC 5321 Domain: dot-separated labels
// of letters, digits and hyphens, not starting or ending with a hyphen, at
// most 255 octets in all (RFC 5321 4.5.3.1.2).
func IsDomain(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// IsAddressLiteral reports whether s is an RFC 5321 4.1.3 address literal
// of an IPv4 or IPv6 address ("[192.0.2.1]", "[IPv6:2001:db8::1]");
// general address literals are not supported.
func IsAddressLiteral(s string) bool {
	if len(s) < 2 || s[0] != '[' || s[len(s)-1] != ']' {
		return false
	}
	inner := s[1 : len(s)-1]
	if v6, ok := strings.CutPrefix(inner, "IPv6:"); ok {
		ip, err := netip.ParseAddr(v6)
		return err == nil && ip.Is6() && ip.Zone() == ""
	}
	ip, err := netip.ParseAddr(inner)
	return err == nil && ip.Is4()
}
