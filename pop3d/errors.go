package pop3d

import (
	"errors"
	"strings"
)

// ErrServerClosed is returned by Serve and ServeTLS after Shutdown.
var ErrServerClosed = errors.New("pop3d: server closed")

// Response codes (RFC 2449 section 8, RFC 3206). A code goes in square
// brackets right after "-ERR".
const (
	codeInUse   = "IN-USE"   // RFC 2449 8.1.2: the maildrop is locked by another session
	codeAuth    = "AUTH"     // RFC 3206 5: the credentials are the problem
	codeSysTemp = "SYS/TEMP" // RFC 3206 4: a temporary server problem; try again later
)

// reply is one status line. It is the only way a handler answers; every
// reply goes out through session.send, which also counts the errors.
type reply struct {
	ok   bool
	code string // response code for -ERR, without brackets, or ""
	text string
	// free is set on -ERR replies that are not the client's fault (a
	// locked maildrop, a store failure): they do not count towards
	// Limits.MaxErrors.
	free bool
}

// String is the status line without CRLF.
func (r reply) String() string {
	var b strings.Builder
	if r.ok {
		b.WriteString("+OK")
	} else {
		b.WriteString("-ERR")
		if r.code != "" {
			b.WriteString(" [")
			b.WriteString(r.code)
			b.WriteString("]")
		}
	}
	if r.text != "" {
		b.WriteString(" ")
		b.WriteString(r.text)
	}
	return b.String()
}

func ok(text string) reply { return reply{ok: true, text: text} }

func errReply(text string) reply { return reply{text: text} }

// The -ERR replies sent in more than one place. What went wrong inside the
// server is logged, never sent.
var (
	errUnknownCommand = errReply("unknown command")
	errWrongState     = errReply("command not valid in this state")
	errSyntax         = errReply("syntax error in arguments")
	errLineTooLong    = errReply("line too long (at most 255 octets)")
	errNoSuchMessage  = errReply("no such message")
	errMessageDeleted = errReply("message is marked as deleted")
	errMessageGone    = errReply("message was removed by another session")
	errNoUser         = errReply("send USER first")
	errAuthFailed     = reply{code: codeAuth, text: "authentication failed"}
	// RFC 2595 section 6: no plaintext passwords on an unprotected
	// connection, unless the administrator allows it.
	errPlaintext    = reply{code: codeAuth, text: "plaintext authentication needs TLS: use STLS first"}
	errAuthCanceled = errReply("authentication canceled")
	errAuthMech     = errReply("unsupported authentication mechanism")
	errAuthSyntax   = errReply("invalid base64 in SASL response")
	errInUse        = reply{code: codeInUse, text: "maildrop is in use by another POP3 session", free: true}
	// The session's lease on the maildrop lapsed: it ends, removing nothing.
	errLeaseLost = reply{code: codeInUse, text: "maildrop lock lost, nothing removed", free: true}
	// RFC 3206 section 4: refusals that pass with time. A blocked address
	// counts as an error (it is still guessing); a busy server does not.
	errBlocked    = reply{code: codeSysTemp, text: "too many failed logins from this address, try again later"}
	errLoginBusy  = reply{code: codeSysTemp, text: "too many logins in progress, try again later", free: true}
	errTemporary  = reply{code: codeSysTemp, text: "temporary server problem, try again later", free: true}
	errNoTLS      = errReply("STLS is not available")
	errAlreadyTLS = errReply("TLS is already active")
	// RFC 1939 section 6: the reply to QUIT when the removals failed.
	errNotRemoved = reply{code: codeSysTemp, text: "some deleted messages not removed", free: true}
)
