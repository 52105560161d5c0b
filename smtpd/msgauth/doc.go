// Package msgauth is Postern's message authentication: DKIM signing and
// verification (RFC 6376, Ed25519 keys per RFC 8463), SPF (RFC 7208),
// DMARC (RFC 7489) and the Authentication-Results field (RFC 8601).
//
// The protocols themselves come from libraries: github.com/emersion/go-msgauth
// (dkim for signing and verifying, dmarc for the policy record, authres
// for the result field) and blitiri.com.ar/go/spf (SPF evaluation). The
// organisational domain of DMARC alignment comes from the Public Suffix
// List of golang.org/x/net/publicsuffix. What is ours is around them:
//
//   - Resolver, one DNS client (github.com/miekg/dns against a configured
//     server or the system's) with a timeout per lookup and a bounded
//     cache that keeps answers for their TTL, shaped for both libraries;
//   - Key, GenerateKeys and KeyStore: the DKIM keys of a local domain, an
//     Ed25519 and an RSA-2048 one with selectors derived from the date;
//   - Sign and Signer: the DKIM-Signature fields for a submitted message;
//   - Checker: SPF, DKIM and DMARC for an inbound message, as one Result
//     that renders an Authentication-Results field;
//   - RemoveAuthResults: drops the Authentication-Results fields that
//     claim our authserv-id before we add ours (RFC 8601 5).
//
// smtpd uses it for inbound checks on port 25 and signing at submission;
// the relay may use its Resolver. It depends on no other Postern package.
package msgauth
