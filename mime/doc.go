// Package mime parses and composes Internet messages (RFC 5322) and their
// MIME structure (RFC 2045-2049, RFC 2047 encoded words) for Postern's
// servers: header checks, trace fields, IMAP's ENVELOPE and BODYSTRUCTURE,
// delivery status reports (RFC 3464) and new messages. It knows nothing of
// SMTP, POP3 or IMAP sessions.
package mime
