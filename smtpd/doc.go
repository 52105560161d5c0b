// Package smtpd receives mail over SMTP (RFC 5321): as the MX of the local domains and as the
// message submission server (RFC 6409, RFC 8314) of local users, on github.com/emersion/go-smtp.
//
// go-smtp speaks the protocol; smtpd is its backend and owns the policy. The extensions offered:
//
//   - PIPELINING (RFC 2920), 8BITMIME (RFC 6152), SIZE (RFC 1870), CHUNKING (RFC 3030)
//   - ENHANCEDSTATUSCODES (RFC 2034, codes of RFC 3463)
//   - SMTPUTF8 (RFC 6531) and DSN (RFC 3461): the DSN parameters go into the outbound queue
//   - STARTTLS (RFC 3207) on the MX and submission ports, implicit TLS (RFC 8314) on ServeSubmissionTLS
//   - AUTH PLAIN (RFC 4616) and LOGIN (RFC 4954), on the submission ports only
//
// # Use
//
//	srv := smtpd.New(smtpd.Config{Hostname: "mail.example.com", TLSConfig: tlsConfig, Logger: log}, store)
//	go srv.ServeMX(ln25)              // inbound mail, port 25
//	go srv.ServeSubmission(ln587)     // submission with STARTTLS, port 587
//	go srv.ServeSubmissionTLS(ln465)  // submission over implicit TLS, port 465
//	...
//	err := srv.Shutdown(ctx)          // stop accepting, let messages in transfer finish until ctx ends
//
// # Policy
//
//   - The MX takes mail for local domains only; aliases expand, also to remote addresses (forwarding).
//     A recipient in another domain from an unauthenticated client is refused with 554 5.7.1:
//     a percent hack, a source route or a quoted "@" never makes a remote address local.
//   - Submission requires AUTH before MAIL (530 5.7.0). AUTH is offered only under TLS, to clients
//     Config.SecureAddr counts as secure (loopback by default, as in Dovecot), or with
//     Config.AllowInsecureAuth. MAIL FROM must be the user's address, an alias that reaches the user,
//     or the null path (MDNs and other notifications use it). Mail for remote recipients goes into
//     the mailstore's outbound queue in the same transaction as the local copies.
//   - Quota is checked at RCPT (552 5.2.2) from the stored usage and the SIZE parameter; the store
//     checks it again at commit. A message is answered with one reply, so when some recipients of a
//     message get it and others fail at commit (a quota reached meanwhile), the reply is 250 and
//     each failed recipient is logged at warning level and reported to the sender in an RFC 3464
//     report stored in the same commit (unless the sender is <> or NOTIFY excludes FAILURE). When no
//     recipient gets it, the reply gives the reason (552 5.2.2, 550 5.1.1).
//   - A message is answered 250 only after mailstore.DeliverEnvelope has committed it durably;
//     a storage failure answers 451 4.3.0 and nothing of the message is stored.
//
// # Message text
//
//   - Bare LF and bare CR become CRLF (RFC 5321 2.3.8), as the mailstore stores them. Only
//     CRLF.CRLF ends DATA (go-smtp), and nothing leaves the store with a bare line end, so a
//     "\n.\n" smuggled in a message stays message text here and on relay (SMTP smuggling).
//   - A NUL octet is refused with 554 5.6.0 (RFC 5322, RFC 6152).
//   - A line longer than 998 octets (RFC 5322 2.1.1, RFC 5321 4.5.3.1.6) is refused with 554 5.6.0,
//     so that whatever is stored can be relayed unchanged. In DATA, go-smtp also ends the connection
//     (500 5.4.0) after a line longer than 2000 octets, its command line limit; BDAT has no such limit.
//   - The header must parse as RFC 5322 header fields (go-message), else 554 5.6.0; more than
//     Config.MaxReceived Received fields is a mail loop, 554 5.4.6 (RFC 5321 6.3).
//   - Received (RFC 5321 4.4) is prepended, and Return-Path when a local mailbox gets the message
//     (final delivery); on submission also Date and Message-ID when missing (RFC 6409 8.2, 8.3).
//     The rest of the message is stored byte for byte. The mailstore keeps one body per message,
//     so when a message has both local and remote recipients the queued copy starts with the
//     Return-Path too, which the relay should drop before sending (RFC 5321 4.4: a system that
//     sends a message should not send one).
//
// # Limits
//
// Admission control is mailstore/limits, shared with the other servers of the process:
//
//   - Connections: the MX listener (Config.Limits) and both submission listeners together
//     (Config.SubmissionLimits) have separate budgets inside the process-wide one
//     (Config.Shared.Conns), overall and per client address (IPv4 address, IPv6 /64): 421 4.7.0.
//   - Every read has a deadline: the wait for a command is LoginTimeout (RFC 5321 4.5.3.2.7: at
//     least 5 minutes on the MX; on submission the wait before AUTH, IdleTimeout after it), and
//     during DATA or BDAT Config.DataBlockTimeout per read (RFC 5321 4.5.3.2.5) within
//     Config.DataTimeout for the whole message, so a large message on a slow link still arrives.
//   - Errors: unknown, malformed and out-of-sequence commands, refused MAIL, failed AUTH and
//     refused recipients beyond the first few of a transaction count; past MaxErrors since the
//     last delivered message the session ends with 421 4.7.0. A session also ends after three
//     failed logins or too many commands without a message.
//   - AUTH goes through Config.Shared.Logins: an address that failed too often on any protocol is
//     refused (454 4.7.0) even with the right password, password checks run a bounded number at
//     a time (454 4.7.0 when the queue is full), and each failure is logged in one form for
//     fail2ban.
//   - Message data goes into a limits.Spool as it arrives: in memory while Config.Shared.Memory
//     allows, then in a private temporary file in Config.Shared.SpoolDir. The whole message is
//     loaded for checking and storing only when the budget gives room for it (452 4.3.1 when it
//     does not in time).

// # Implementation notes
//
//   - go-smtp (v0.26) has no per-connection settings, no connection limit, and sets one read
//     deadline per command line (which would cap a whole DATA transfer). So each accepted
//     connection gets its own smtp.Server, run on a one-connection listener over a net.Conn
//     wrapper (conn.go) that applies per-read deadlines during a message, the trace, and the
//     greeting "220 <hostname> ESMTP Postern" in place of go-smtp's fixed text.
//   - go-smtp's DATA reader refuses a message of exactly MaxMessageBytes octets (it fails the read
//     after the last allowed octet, before it sees the end of data), so during a transaction the
//     connection's limit is one octet higher and Data enforces the real one; EHLO and the MAIL
//     SIZE check see the real limit.
//   - go-smtp calls NewSession at the first HELO/EHLO and again after STARTTLS, so a session
//     never outlives a change of TLS state, and AUTH is dropped by STARTTLS as RFC 3207 requires.
//   - go-smtp passes "RCPT TO:<postmaster>" without a domain (RFC 5321 4.5.1); it stands for
//     postmaster at the host name when that is a local domain with a postmaster, else at the first
//     local domain that has one (550 5.1.1 when none has).
//   - go-smtp cannot tell HELO from EHLO, so Received always says ESMTP (or its TLS, AUTH and
//     UTF8 forms of RFC 3848 and RFC 6531).
package smtpd
