// Package pop3d serves mailboxes over POP3 (RFC 1939), with CAPA and
// response codes (RFC 2449, RFC 3206), STLS (RFC 2595) and SASL (RFC 5034).
//
// A session goes through the three states of RFC 1939 in order:
// AUTHORIZATION (USER/PASS or AUTH PLAIN, STLS, CAPA), TRANSACTION (STAT,
// LIST, RETR, DELE, NOOP, RSET, TOP, UIDL, CAPA) and UPDATE, entered only
// by QUIT from TRANSACTION. The maildrop is the user's INBOX as it was at
// login, and message numbers stay the same for the whole session. DELE
// only marks a message; the marked messages are removed in one mailstore
// transaction at QUIT, which publishes the removals on the change feed so
// that open IMAP sessions see them. A connection that ends any other way
// removes nothing.
//
// Capabilities (CAPA):
//   - TOP, UIDL, USER, PIPELINING, RESP-CODES, AUTH-RESP-CODE, IMPLEMENTATION (RFC 2449, RFC 3206)
//   - SASL PLAIN (RFC 5034, RFC 4616), through github.com/emersion/go-sasl
//   - STLS (RFC 2595), when Config.TLSConfig is set
//
// Response codes, in brackets after -ERR: IN-USE when another POP3 session
// holds the maildrop, AUTH for refused credentials or a plaintext login
// without TLS, SYS/TEMP when the mailstore fails, when a connection is over
// the connection limits (the line is sent in place of the greeting and the
// connection closed), and when a login is refused for the client address
// (too many failed logins) or because too many password checks are waiting.
//
// # Use
//
// cmd/postern makes one Server per configuration and gives it its
// listeners:
//
//	srv := pop3d.New(pop3d.Config{
//		Hostname:          cfg.Hostname,
//		TLSConfig:         tlsConfig,                // nil: no STLS, no ServeTLS
//		AllowInsecureAuth: cfg.Auth.AllowInsecure,
//		Logger:            log.With("server", "pop3"),
//		Trace:             cfg.Log.Trace,
//		Limits:            cfg.Limits.POP3,          // limits.Protocol; zero fields: DefaultLimits
//		Shared:            shared,                   // limits.Shared of the whole process
//	}, store)
//	go srv.Serve(ln)       // pop3.listen: STLS offered when TLSConfig != nil
//	go srv.ServeTLS(tlsLn) // pop3.listen_tls: TLS from the first byte
//	...
//	err := srv.Shutdown(ctx) // stop accepting, let sessions end until ctx is done, then close them
//
// Serve and ServeTLS block until Shutdown, then return ErrServerClosed;
// any other error means the listener failed. The store must stay open
// until Shutdown has returned.
//
// # Implementation notes
//
//   - Plaintext logins (USER/PASS, AUTH PLAIN) are accepted only on a
//     connection that counts as secure: TLS (implicit or after STLS); one
//     for which Config.Secure says so, by default a connection from a
//     loopback address, as in Dovecot; or any connection when
//     Config.AllowInsecureAuth is set. Elsewhere CAPA does not offer them.
//   - One POP3 session per maildrop: a map of user IDs inside the Server
//     answers sessions of one process, and the store's lease
//     (mailstore.Store.LockMaildrop, Config.MaildropLease) holds across
//     the frontends of a shared store. The store renews that lease in
//     place every third of its length and tells the session when it is
//     lost (a renewal found it taken, or none got through before it
//     expired: mailstore.MaildropLease.Lost); such a session answers its
//     next command -ERR [IN-USE] and ends without UPDATE. UPDATE's
//     removal is fenced by the lease in the store's own transaction
//     (mailstore.Store.DeleteMessagesLeased), so a lease lost after the
//     last check removes nothing either. IMAP sessions are not locked
//     out.
//   - UIDL values are "<UIDVALIDITY>.<UID>" of the INBOX: unique, and the
//     same across sessions and restarts for as long as the mailbox keeps
//     its UIDVALIDITY.
//   - Sizes in STAT and LIST are the stored sizes: the mailstore keeps
//     bodies with CRLF line ends, so they are exactly what RETR sends
//     before byte-stuffing (RFC 1939 section 11). The exception is a body
//     whose last line has no line end (SMTP always ends it, IMAP APPEND
//     may not): RETR adds CRLF before the terminator, 2 octets more than
//     LIST said.
//   - Bodies are streamed from the mailstore in chunks. RETR reads the
//     next message's body (up to 256 KiB) ahead while the client handles
//     the current one. Replies are buffered and flushed once per response,
//     or once per batch of pipelined commands.
//   - Connections are counted in a budget of their own (all, and per
//     client address: an IPv4 address or an IPv6 /64) inside the
//     process-wide one of Config.Shared; one over it gets -ERR [SYS/TEMP]
//     from a bounded set of goroutines and is closed, and the accept loop
//     goes on at once.
//   - Every read and every write has a deadline: Limits.LoginTimeout (1
//     minute by default) until login, then Limits.IdleTimeout (10 minutes,
//     RFC 1939 section 3); command lines are limited to 255 octets (RFC
//     2449 section 4); a session ends after Limits.MaxErrors errors
//     (unknown commands, bad arguments, failed logins). No input makes the
//     server panic (FuzzSession).
//   - Every login (USER/PASS, AUTH PLAIN, a malformed PLAIN response too)
//     goes through the Logins of Config.Shared, which all of the process's
//     servers share: password checks wait there for a slot, failures are
//     counted per client address across protocols, and logged in the one
//     form fail2ban reads; a failed login is answered after the policy's
//     FailureDelay.
//   - Passwords and SASL data never reach the log, traced or not.
package pop3d
