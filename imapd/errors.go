package imapd

import (
	"errors"
	"net"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/postern/postern/mailstore"
)

// The tagged NO, BAD and BYE responses sent in more than one place, with
// their response codes (RFC 5530, RFC 9051 7.1). What went wrong inside
// the server is logged, never sent.
var (
	errNonExistent   = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeNonExistent, Text: "No such mailbox"}
	errTryCreate     = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeTryCreate, Text: "No such mailbox"}
	errAlreadyExists = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAlreadyExists, Text: "Mailbox already exists"}
	errInvalidName   = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "Invalid mailbox name"}
	errNoSelect      = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "Mailbox cannot be selected"}
	errInboxDelete   = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "INBOX cannot be deleted"}
	errHasChildren   = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeHasChildren, Text: "Mailbox has children and cannot be selected: delete them first"}
	errBadSpecialUse = &imap.Error{Type: imap.StatusResponseTypeNo, Code: "USEATTR", Text: "Unsupported special-use attribute"}
	errReadOnly      = &imap.Error{Type: imap.StatusResponseTypeNo, Code: "READ-ONLY", Text: "Mailbox is open read-only (EXAMINE)"}
	errMailboxGone   = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeNonExistent, Text: "The selected mailbox was deleted"}
	errBadFlag       = &imap.Error{Type: imap.StatusResponseTypeBad, Code: imap.ResponseCodeClientBug, Text: "Invalid flag or keyword, or too many keywords"}
	errOverQuota     = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeOverQuota, Text: "Mailbox quota exceeded"}
	errEmptyMessage  = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "Cannot store an empty message"}
	errUnknownCTE    = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeUnknownCTE, Text: "Unknown Content-Transfer-Encoding"}
	errTemporary     = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeUnavailable, Text: "Temporary server problem, try again later"}
	errAuthThrottled = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeUnavailable, Text: "Too many failed logins from your address, try again later"}
	errAuthBusy      = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeUnavailable, Text: "Too many logins in progress, try again soon"}
	errNoMemory      = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeUnavailable, Text: "Too many messages in transit, try again soon"}
	errTooBig        = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeTooBig, Text: "Message too big"}
	// errExpungeIssued: a message the client may still address is gone
	// (RFC 2180 4.1.3, RFC 5530 EXPUNGEISSUED).
	errExpungeIssued = &imap.Error{Type: imap.StatusResponseTypeNo, Code: "EXPUNGEISSUED", Text: "Some of the requested messages no longer exist"}
	// errServerBug has a text of its own: clientConn turns imapserver's
	// "Internal server error" into BAD, since imapserver says it for
	// input it rejects.
	errServerBug  = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeServerBug, Text: "Internal error, logged on the server"}
	errAuthFailed = imapserver.ErrAuthFailed

	errTooManyKeywords = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeLimit, Text: "Too many keywords in this mailbox"}
	errTooManySubs     = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeLimit, Text: "Too many subscriptions: unsubscribe some first"}
	errShuttingDown    = &imap.Error{Type: imap.StatusResponseTypeBye, Code: imap.ResponseCodeUnavailable, Text: "Server shutting down"}
)

// storeError turns a mailstore error about a mailbox name into the
// response for it, or returns nil for an error the client should not see.
func storeError(err error) *imap.Error {
	switch {
	case errors.Is(err, mailstore.ErrNotFound):
		return errNonExistent
	case errors.Is(err, mailstore.ErrExists):
		return errAlreadyExists
	case errors.Is(err, mailstore.ErrHasChildren):
		return errHasChildren
	case errors.Is(err, mailstore.ErrNoSelect):
		return errNoSelect
	case errors.Is(err, mailstore.ErrOverQuota):
		return errOverQuota
	case errors.Is(err, mailstore.ErrInvalidName):
		return errInvalidName
	case errors.Is(err, mailstore.ErrLimit):
		return errTooManyKeywords
	}
	return nil
}

// isNetError reports whether err came from the client's connection.
func isNetError(err error) bool {
	var ne net.Error
	return errors.As(err, &ne)
}
