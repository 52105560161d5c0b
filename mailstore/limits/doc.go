// Package limits is the admission control that every Postern server
// shares: connection budgets, the record of failed logins with the gate in
// front of password hashing, and the budget of message bytes held in
// memory. One Postern process makes one Conns (all protocols), one Logins
// and one Budget, and hands them to smtpd, pop3d and imapd, so that an
// attacker who spreads over protocols meets the same limits as one who
// does not:
//
//   - Conns counts connections in all and per client address (an IPv4
//     address, or an IPv6 /64: one site's allocation, RFC 6177). Each
//     listener group (MX, submission, POP3, IMAP) has its own Conns whose
//     parent is the process-wide one, so a flood on port 25 cannot take
//     the connections that submission users need.
//   - Logins counts failed logins per client address across all
//     protocols and refuses an address for a while after too many, even
//     with the right password; it bounds how many password checks run at
//     once (each argon2id check holds about 19 MiB), lets the rest wait in
//     a bounded queue for a bounded time, and serves addresses without
//     recent failures first. Every failed login is logged in one form for
//     fail2ban (see LogFailure).
//   - Budget bounds the message bytes held in memory by all sessions
//     together; a Spool keeps a message in memory while the budget allows
//     and in a private temporary file beyond it.
//
// Protocol packages may depend only on mailstore and mime (DESIGN.md), so
// this package lives under mailstore; it depends on nothing of Postern's.
package limits
