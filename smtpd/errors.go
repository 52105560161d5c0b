package smtpd

import "github.com/emersion/go-smtp"

// The replies smtpd gives when it refuses something, each with its RFC 3463
// enhanced status code. go-smtp sends a *smtp.SMTPError returned by a
// Session method as it is, but anything else (a wrapped SMTPError too) from
// Data as "554 5.0.0" with the error's text, so session methods return these
// values unwrapped and log the cause.
var (
	// Connection

	errTooManyConns      = reply(421, 4, 7, 0, "Too many connections, try again later")
	errTooManyConnsForIP = reply(421, 4, 7, 0, "Too many connections from your address, try again later")
	errTooManyErrors     = reply(421, 4, 7, 0, "Too many errors, closing connection")

	// AUTH (RFC 4954)

	errAuthNotOffered    = reply(502, 5, 5, 1, "AUTH is not offered on this port; submit mail on the submission port")
	errEncryptionNeeded  = reply(538, 5, 7, 11, "Encryption required for requested authentication mechanism; use STARTTLS")
	errAuthMechanism     = reply(504, 5, 5, 4, "Unrecognized authentication mechanism")
	errAuthMalformed     = reply(501, 5, 5, 2, "Cannot decode the authentication response")
	errAuthFailed        = reply(535, 5, 7, 8, "Authentication credentials invalid")
	errAuthTooManyFailed = reply(454, 4, 7, 0, "Too many failed logins from your address, try again later")
	errAuthTemporary     = reply(454, 4, 7, 0, "Temporary authentication failure, try again later")
	errAuthBusy          = reply(454, 4, 7, 0, "Too many logins in progress, try again later")

	// MAIL

	errAuthRequired     = reply(530, 5, 7, 0, "Authentication required")
	errSenderNotOwned   = reply(553, 5, 7, 1, "Sender address is not yours: use your own address or one of its aliases")
	errBadSender        = reply(553, 5, 1, 7, "Bad sender address syntax")
	errSizeExceeded     = reply(552, 5, 3, 4, "Message size exceeds the fixed maximum message size")
	errNeedSMTPUTF8     = reply(553, 5, 6, 7, "Non-ASCII address requires the SMTPUTF8 parameter")
	errTemporaryFailure = reply(451, 4, 3, 0, "Temporary local problem, try again later")

	// RCPT

	errNoSuchUser         = reply(550, 5, 1, 1, "No such user here")
	errBadRecipient       = reply(501, 5, 1, 3, "Bad recipient address syntax")
	errUnsupportedAddress = reply(553, 5, 1, 3, "Recipient address not supported here")
	errRelayDenied        = reply(554, 5, 7, 1, "Relay access denied: this server takes mail only for its own domains")
	errTooManyRecipients  = reply(452, 4, 5, 3, "Too many recipients, send the rest in another transaction")
	errMailboxFull        = reply(552, 5, 2, 2, "Mailbox full")

	// DATA and BDAT

	errMessageTooBig    = reply(552, 5, 3, 4, "Message exceeds the maximum message size")
	errNUL              = reply(554, 5, 6, 0, "Message contains a NUL octet")
	errLineTooLong      = reply(554, 5, 6, 0, "Message has a line longer than 998 octets (RFC 5322 2.1.1)")
	errMalformed        = reply(554, 5, 6, 0, "Message is not an RFC 5322 message: malformed header")
	errMailLoop         = reply(554, 5, 4, 6, "Too many Received header fields: mail loop")
	errAuthorNotOwned   = reply(553, 5, 7, 1, "From or Sender names an address that is not yours: use your own address or one of its aliases")
	errAuthorUnreadable = reply(553, 5, 7, 1, "From or Sender header field cannot be read as addresses")
	errNoMemory         = reply(452, 4, 3, 1, "Insufficient system storage: too many messages in transfer, try again later")
	errStoreFailed      = reply(451, 4, 3, 0, "Temporary storage failure, nothing was stored: try again later")
	errDataAborted      = reply(451, 4, 4, 2, "Message transfer interrupted, nothing was stored")
	errNothingStored    = reply(554, 5, 0, 0, "No recipient could take the message")
)

func reply(code, class, subject, detail int, text string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{class, subject, detail}, Message: text}
}
