package msgauth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"blitiri.com.ar/go/spf"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-msgauth/dmarc"
	"golang.org/x/net/publicsuffix"
)

// Checker defaults.
const (
	// DefaultCheckTimeout bounds one message's checks, all lookups
	// together: SPF alone may make 10 lookups plus the void ones (RFC
	// 7208 4.6.4), each bounded by the Resolver's timeout.
	DefaultCheckTimeout = 20 * time.Second
	// DefaultMaxSignatures bounds the DKIM signatures verified per message.
	DefaultMaxSignatures = 5
	// maxHeaderFields bounds the header fields looked at for From and
	// DKIM-Signature.
	maxHeaderFields = 1000
)

// Checker runs the inbound checks: SPF, DKIM and DMARC.
type Checker struct {
	// Resolver does every lookup; required.
	Resolver *Resolver
	// Timeout bounds all lookups of one message (DefaultCheckTimeout when
	// zero); a lookup past it is a temperror.
	Timeout time.Duration
	// MaxSignatures bounds the DKIM signatures verified
	// (DefaultMaxSignatures when zero); the others are ignored.
	MaxSignatures int
}

// CheckInput is what Check looks at: the client, its envelope, the message.
type CheckInput struct {
	IP       netip.Addr // the client's address
	HELO     string     // the name it gave in HELO/EHLO
	MailFrom string     // the reverse-path; "" for <>
	Message  []byte     // header and body, CRLF line ends
}

// Result is what the checks found.
type Result struct {
	SPF   SPFResult
	DKIM  []DKIMResult // one per signature verified, in header order
	DMARC DMARCResult
}

// SPFResult is the SPF check of the MAIL FROM domain, or of the HELO name
// when MAIL FROM is <> (RFC 7208 2.4).
type SPFResult struct {
	Value  authres.ResultValue // none, neutral, pass, fail, softfail, temperror, permerror
	Domain string              // the domain checked
	HELO   bool                // Domain is the HELO name
	Err    error               // why, for logs (may be set on pass)
}

// DKIMResult is the verification of one DKIM-Signature field.
type DKIMResult struct {
	Value      authres.ResultValue // pass, fail, neutral, temperror, permerror
	Domain     string              // d=
	Identifier string              // i=, "@" + d= when absent
	Selector   string              // s=
	Algorithm  string              // a=
	Err        error
}

// DMARCResult is the DMARC evaluation of the header From's domain.
type DMARCResult struct {
	Value  authres.ResultValue // none, pass, fail, temperror, permerror
	From   string              // the header From's domain
	Policy dmarc.Policy        // what the domain asks for this message (p=, or sp= for a subdomain); "" without a record
	Err    error
}

// Check runs SPF, DKIM and DMARC for a message received from in.IP. It
// always returns within the Checker's timeout; DNS failures give
// temperror.
func (c *Checker) Check(ctx context.Context, in CheckInput) Result {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultCheckTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var res Result
	spfDone := make(chan SPFResult, 1)
	go func() { spfDone <- c.checkSPF(ctx, in) }()
	res.DKIM = c.checkDKIM(ctx, in.Message)
	res.SPF = <-spfDone
	res.DMARC = c.checkDMARC(ctx, in.Message, res)
	return res
}

func (c *Checker) checkSPF(ctx context.Context, in CheckInput) SPFResult {
	sender, helo := in.MailFrom, strings.TrimSuffix(in.HELO, ".")
	r := SPFResult{}
	if sender == "" {
		// RFC 7208 2.4: with a null reverse-path, the HELO identity is
		// checked as "postmaster@" it.
		r.HELO, r.Domain = true, strings.ToLower(helo)
		if _, err := netip.ParseAddr(strings.Trim(helo, "[]")); err == nil || !strings.Contains(helo, ".") {
			r.Value, r.Err = authres.ResultNone, fmt.Errorf("HELO %q is not a domain", helo)
			return r
		}
		sender = "postmaster@" + helo
	} else {
		at := strings.LastIndexByte(sender, '@')
		r.Domain = strings.ToLower(sender[at+1:])
		if strings.HasPrefix(r.Domain, "[") {
			r.Value, r.Err = authres.ResultNone, fmt.Errorf("MAIL FROM %q has an address literal", sender)
			return r
		}
	}
	v, err := spf.CheckHostWithSender(net.IP(in.IP.Unmap().AsSlice()), helo, sender,
		spf.WithContext(ctx), spf.WithResolver(c.Resolver))
	r.Value, r.Err = authres.ResultValue(v), err
	if r.Value == "" {
		r.Value = authres.ResultPermError
	}
	return r
}

func (c *Checker) checkDKIM(ctx context.Context, msg []byte) []DKIMResult {
	max := c.MaxSignatures
	if max <= 0 {
		max = DefaultMaxSignatures
	}
	verifs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{
		LookupTXT: c.Resolver.TXTFunc(ctx), MaxVerifications: max})
	if err != nil && !errors.Is(err, dkim.ErrTooManySignatures) {
		// The header could not be read: nothing to report per signature.
		return nil
	}
	tags := signatureTags(msg, len(verifs))
	out := make([]DKIMResult, 0, len(verifs))
	for i, v := range verifs {
		r := DKIMResult{Domain: strings.ToLower(v.Domain), Identifier: v.Identifier, Err: v.Err}
		if i < len(tags) {
			r.Selector, r.Algorithm = tags[i]["s"], tags[i]["a"]
		}
		switch {
		case v.Err == nil:
			r.Value = authres.ResultPass
		case dkim.IsTempFail(v.Err):
			r.Value = authres.ResultTempError
		case strings.Contains(v.Err.Error(), "key is too short"):
			// RFC 8301 3.2: a signature by an RSA key under 1024 bits is
			// not valid; we call it a failure, not a key error.
			r.Value = authres.ResultFail
		case dkim.IsPermFail(v.Err):
			r.Value = authres.ResultPermError
		default:
			r.Value = authres.ResultFail // the body hash or signature did not verify
		}
		out = append(out, r)
	}
	return out
}

// signatureTags returns the s= and a= tags of the first n DKIM-Signature
// fields, which go-msgauth does not report.
func signatureTags(msg []byte, n int) []map[string]string {
	var out []map[string]string
	seen := 0
	forEachField(msg, func(name string, field []byte) bool {
		if seen++; seen > maxHeaderFields || len(out) >= n {
			return false
		}
		if !strings.EqualFold(name, "DKIM-Signature") {
			return true
		}
		_, v, _ := bytes.Cut(field, []byte(":"))
		tags := map[string]string{}
		for _, t := range strings.Split(unfoldValue(v), ";") {
			k, val, ok := strings.Cut(t, "=")
			if k = strings.TrimSpace(k); ok && (k == "s" || k == "a") {
				tags[k] = strings.Join(strings.Fields(val), "")
			}
		}
		out = append(out, tags)
		return true
	})
	return out
}

func (c *Checker) checkDMARC(ctx context.Context, msg []byte, res Result) DMARCResult {
	from, err := headerFromDomain(msg)
	if err != nil {
		// RFC 7489 6.6.1: no single author domain, nothing to evaluate.
		return DMARCResult{Value: authres.ResultNone, Err: err}
	}
	r := DMARCResult{From: from}
	opts := &dmarc.LookupOptions{LookupTXT: c.Resolver.TXTFunc(ctx)}
	// RFC 7489 6.6.3: the author domain's record, else its
	// organisational domain's, whose sp= applies to subdomains.
	rec, err := dmarc.LookupWithOptions(from, opts)
	sub := false
	if errors.Is(err, dmarc.ErrNoPolicy) {
		if org := OrganizationalDomain(from); org != from {
			rec, err = dmarc.LookupWithOptions(org, opts)
			sub = true
		}
	}
	switch {
	case errors.Is(err, dmarc.ErrNoPolicy):
		r.Value, r.Err = authres.ResultNone, err
		return r
	case dmarc.IsTempFail(err):
		r.Value, r.Err = authres.ResultTempError, err
		return r
	case err != nil:
		r.Value, r.Err = authres.ResultPermError, err
		return r
	}
	r.Policy = rec.Policy
	if sub && rec.SubdomainPolicy != "" {
		r.Policy = rec.SubdomainPolicy
	}
	// RFC 7489 3.1: an identifier authenticated by SPF or DKIM that is
	// aligned with the author domain.
	if res.SPF.Value == authres.ResultPass && Aligned(res.SPF.Domain, from, rec.SPFAlignment == dmarc.AlignmentStrict) {
		r.Value = authres.ResultPass
		return r
	}
	for _, d := range res.DKIM {
		if d.Value == authres.ResultPass && Aligned(d.Domain, from, rec.DKIMAlignment == dmarc.AlignmentStrict) {
			r.Value = authres.ResultPass
			return r
		}
	}
	r.Value = authres.ResultFail
	r.Err = errors.New("no aligned SPF or DKIM pass")
	// RFC 7489 6.6.2: if an identifier could not be checked for a
	// temporary reason, the outcome is not known yet.
	if res.SPF.Value == authres.ResultTempError {
		r.Value, r.Err = authres.ResultTempError, fmt.Errorf("SPF: %w", res.SPF.Err)
	}
	for _, d := range res.DKIM {
		if d.Value == authres.ResultTempError {
			r.Value, r.Err = authres.ResultTempError, fmt.Errorf("DKIM: %w", d.Err)
		}
	}
	return r
}

// OrganizationalDomain is domain's registered domain by the Public Suffix
// List (RFC 7489 3.2): mail.example.co.uk -> example.co.uk. A public
// suffix itself is its own.
func OrganizationalDomain(domain string) string {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	org, err := publicsuffix.EffectiveTLDPlusOne(domain)
	if err != nil {
		return domain
	}
	return org
}

// Aligned reports whether two domains are in DMARC alignment (RFC 7489
// 3.1): the same domain when strict, the same organisational domain when
// relaxed.
func Aligned(a, b string, strict bool) bool {
	a, b = strings.ToLower(strings.TrimSuffix(a, ".")), strings.ToLower(strings.TrimSuffix(b, "."))
	if a == "" || b == "" {
		return false
	}
	if strict {
		return a == b
	}
	return OrganizationalDomain(a) == OrganizationalDomain(b)
}

// Authenticates reports whether SPF or DKIM passed for a domain aligned
// (relaxed) with domain: whether the message may speak for it.
func (r Result) Authenticates(domain string) bool {
	if r.SPF.Value == authres.ResultPass && Aligned(r.SPF.Domain, domain, false) {
		return true
	}
	for _, d := range r.DKIM {
		if d.Value == authres.ResultPass && Aligned(d.Domain, domain, false) {
			return true
		}
	}
	return false
}

// TempError reports whether some check could not finish for a temporary
// reason (DNS failure or timeout).
func (r Result) TempError() bool {
	if r.SPF.Value == authres.ResultTempError || r.DMARC.Value == authres.ResultTempError {
		return true
	}
	for _, d := range r.DKIM {
		if d.Value == authres.ResultTempError {
			return true
		}
	}
	return false
}

// HeaderFrom returns the domain of the message's author: the one address
// of its one From field.
func HeaderFrom(msg []byte) (string, error) { return headerFromDomain(msg) }

func headerFromDomain(msg []byte) (string, error) {
	var values []string
	seen := 0
	forEachField(msg, func(name string, field []byte) bool {
		if seen++; seen > maxHeaderFields {
			return false
		}
		if strings.EqualFold(name, "From") {
			_, v, _ := bytes.Cut(field, []byte(":"))
			values = append(values, unfoldValue(v))
		}
		return true
	})
	if len(values) != 1 {
		return "", fmt.Errorf("header has %d From fields", len(values))
	}
	list, err := mail.ParseAddressList(values[0])
	if err != nil {
		return "", fmt.Errorf("header From %q: %w", values[0], err)
	}
	domain := ""
	for _, a := range list {
		at := strings.LastIndexByte(a.Address, '@')
		d := strings.ToLower(a.Address[at+1:])
		if at < 0 || d == "" || domain != "" && d != domain {
			return "", fmt.Errorf("header From %q does not name one domain", values[0])
		}
		domain = d
	}
	if domain == "" {
		return "", fmt.Errorf("header From %q has no address", values[0])
	}
	return domain, nil
}

// unfoldValue undoes header folding (RFC 5322 2.2.3) and trims.
func unfoldValue(v []byte) string {
	return strings.TrimSpace(strings.NewReplacer("\r\n", "", "\n", "").Replace(string(v)))
}

// Field renders the results as one Authentication-Results field (RFC
// 8601 2.2) with authservID, folded one method a line, ending in CRLF.
func (r Result) Field(authservID string) string {
	var results []authres.Result
	spfRes := &authres.SPFResult{Value: r.SPF.Value}
	if r.SPF.HELO {
		spfRes.Helo = r.SPF.Domain
	} else {
		spfRes.From = r.SPF.Domain
	}
	if spfRes.Value == "" {
		spfRes.Value = authres.ResultNone
	}
	results = append(results, spfRes)
	if len(r.DKIM) == 0 {
		results = append(results, &authres.DKIMResult{Value: authres.ResultNone})
	}
	for _, d := range r.DKIM {
		results = append(results, &authres.GenericResult{Method: "dkim", Value: d.Value, Params: map[string]string{
			"header.d": d.Domain, "header.i": d.Identifier, "header.s": d.Selector, "header.a": d.Algorithm}})
	}
	dm := &authres.DMARCResult{Value: r.DMARC.Value, From: r.DMARC.From}
	if dm.Value == "" {
		dm.Value = authres.ResultNone
	}
	results = append(results, dm)
	var b strings.Builder
	b.WriteString("Authentication-Results: ")
	b.WriteString(authservID)
	for _, res := range results {
		// Formatted one by one so that each goes on its own line.
		s := authres.Format(authservID, []authres.Result{res})
		b.WriteString(";\r\n\t")
		b.WriteString(strings.TrimSpace(strings.TrimPrefix(s, authservID+"; ")))
	}
	b.WriteString("\r\n")
	return b.String()
}

// RemoveAuthResults returns msg without the Authentication-Results fields
// whose authserv-id is authservID (case-insensitive): RFC 8601 5 has a
// border MTA remove such fields, which no one outside may write. msg is
// returned as is when it has none.
func RemoveAuthResults(msg []byte, authservID string) []byte {
	var drop [][2]int // offsets of fields to drop
	off := 0
	forEachField(msg, func(name string, field []byte) bool {
		if strings.EqualFold(name, "Authentication-Results") {
			_, v, _ := bytes.Cut(field, []byte(":"))
			if strings.EqualFold(authservIDOf(unfoldValue(v)), authservID) {
				drop = append(drop, [2]int{off, off + len(field)})
			}
		}
		off += len(field)
		return true
	})
	if len(drop) == 0 {
		return msg
	}
	out := make([]byte, 0, len(msg))
	prev := 0
	for _, d := range drop {
		out = append(out, msg[prev:d[0]]...)
		prev = d[1]
	}
	return append(out, msg[prev:]...)
}

// authservIDOf is the authserv-id at the start of an
// Authentication-Results value (RFC 8601 2.2), after any comments.
func authservIDOf(v string) string {
	for i := 0; i < 10 && strings.HasPrefix(v, "("); i++ {
		end := strings.IndexByte(v, ')')
		if end < 0 {
			return ""
		}
		v = strings.TrimSpace(v[end+1:])
	}
	if end := strings.IndexAny(v, "; \t("); end >= 0 {
		v = v[:end]
	}
	return strings.Trim(v, `"`)
}
