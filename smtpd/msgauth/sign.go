package msgauth

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/emersion/go-msgauth/dkim"
)

// signedFields are the header fields a signature covers when present
// (RFC 6376 5.4.1 recommends them), in this order.
var signedFields = []string{
	"From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To",
	"In-Reply-To", "References", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
}

// Sign returns one DKIM-Signature field per key (each ending in CRLF) to
// put before msg: relaxed/relaxed canonicalisation, SHA-256, timestamp
// now, over the fields of signedFields that msg has, with From listed
// once more than it occurs (over-signing, RFC 6376 8.15) so that a From
// added on the way breaks the signature. msg must have CRLF line ends.
//
// now chooses the keys: one Created after now is not used yet (it was
// made to be published ahead of a rotation). The t= tag is go-msgauth's
// clock, which cannot be set.
func Sign(msg []byte, keys []Key, now time.Time) (string, error) {
	present := presentFields(msg)
	var hk []string
	for _, f := range signedFields {
		for range present[strings.ToLower(f)] {
			hk = append(hk, f)
		}
	}
	hk = append(hk, "From")
	var out strings.Builder
	for _, k := range keys {
		if k.Created.After(now) {
			continue
		}
		s, err := dkim.NewSigner(&dkim.SignOptions{
			Domain: k.Domain, Selector: k.Selector, Signer: k.Private,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed,
			BodyCanonicalization:   dkim.CanonicalizationRelaxed,
			HeaderKeys:             hk,
		})
		if err != nil {
			return "", fmt.Errorf("dkim sign with %s: %w", k.DNSName(), err)
		}
		if _, err := s.Write(msg); err != nil {
			s.Close()
			return "", fmt.Errorf("dkim sign with %s: %w", k.DNSName(), err)
		}
		if err := s.Close(); err != nil {
			return "", fmt.Errorf("dkim sign with %s: %w", k.DNSName(), err)
		}
		out.WriteString(s.Signature())
	}
	return out.String(), nil
}

// presentFields counts the header fields of msg by lower-case name.
func presentFields(msg []byte) map[string]int {
	n := map[string]int{}
	forEachField(msg, func(name string, _ []byte) bool {
		n[strings.ToLower(name)]++
		return true
	})
	return n
}

// forEachField calls f with each header field of msg (name, and the whole
// field with its continuation lines and line end) until f returns false or
// the header ends. Lines end in CRLF or LF.
func forEachField(msg []byte, f func(name string, field []byte) bool) {
	rest := msg
	for len(rest) > 0 {
		end := lineEnd(rest)
		line := rest[:end]
		if isBlank(line) {
			return
		}
		// A field's continuation lines begin with white space (RFC 5322 2.2.3).
		for end < len(rest) && (rest[end] == ' ' || rest[end] == '\t') {
			end += lineEnd(rest[end:])
		}
		field := rest[:end]
		name, _, ok := bytes.Cut(line, []byte(":"))
		if ok && !f(string(bytes.TrimRight(name, " \t")), field) {
			return
		}
		rest = rest[end:]
	}
}

// lineEnd is the length of b's first line with its LF.
func lineEnd(b []byte) int {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		return i + 1
	}
	return len(b)
}

func isBlank(line []byte) bool {
	return len(bytes.TrimRight(line, "\r\n")) == 0
}

// Signer signs submitted messages with the keys of a KeyStore.
type Signer struct {
	Keys KeyStore
	// Now is the clock for signatures; nil means time.Now.
	Now func() time.Time
}

// Sign returns the DKIM-Signature fields for msg, written by domain (the
// domain of its From): "" when the domain has no keys.
func (s *Signer) Sign(ctx context.Context, domain string, msg []byte) (string, error) {
	keys, err := s.Keys.SigningKeys(ctx, domain)
	if err != nil {
		return "", fmt.Errorf("dkim keys of %s: %w", domain, err)
	}
	if len(keys) == 0 {
		return "", nil
	}
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	return Sign(msg, keys, now())
}
