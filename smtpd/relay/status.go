package relay

// Why a delivery failed, with the RFC 3463 status code and the remote
// server's reply that a failure report shows.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/emersion/go-smtp"
)

// RFC 3463 status codes the relay reports for failures of its own (a
// remote server's reply carries its own code).
const (
	statusNXDomain      = "5.1.2"  // RFC 3463 3.2 X.1.2: bad destination system address
	statusNullMX        = "5.1.10" // RFC 7505 4.2: recipient address has null MX
	statusMessageTooBig = "5.3.4"  // RFC 3463 3.4 X.3.4: message too big for system (RFC 1870 SIZE)
	statusNoRoute       = "5.4.4"  // RFC 3463 3.5 X.4.4: unable to route
	statusLoop          = "5.4.6"  // RFC 3463 3.5 X.4.6: routing loop detected
	statusNeeds8Bit     = "5.6.3"  // RFC 3463 3.7 X.6.3: conversion required but not supported (RFC 6152 3)
	statusNeedsUTF8     = "5.6.7"  // RFC 6531 3.6.1 X.6.7: non-ASCII addresses not permitted
	statusNeedsUTF8Head = "5.6.9"  // RFC 6531 3.6.1 X.6.9: UTF-8 header message cannot be transferred
	statusNoAnswer      = "4.4.1"  // RFC 3463 3.5 X.4.1: no answer from host
	statusBadConnection = "4.4.2"  // RFC 3463 3.5 X.4.2: bad connection
	statusDNSFailure    = "4.4.3"  // RFC 3463 3.5 X.4.3: directory server failure
	statusExpired       = "4.4.7"  // RFC 3463 3.5 X.4.7: delivery time expired
	statusLocal         = "4.3.0"  // RFC 3463 3.4 X.3.0: other mail system problem (ours)
)

// attempt is the outcome of one delivery attempt for one recipient: a nil
// Err means the remote server took the message (250 after DATA).
// Permanent says that trying again cannot help. Only the queue logic
// (queue.go) decides between a retry and a failure report.
type attempt struct {
	Err       error
	Permanent bool
}

func success() attempt            { return attempt{} } // the server took the message
func temporary(err error) attempt { return attempt{Err: err} }
func permanent(err error) attempt { return attempt{Err: err, Permanent: true} }
func (a attempt) failed() bool    { return a.Err != nil }
func (a attempt) String() string  { return fmt.Sprintf("%v (permanent %v)", a.Err, a.Permanent) }
func allSame(n int, a attempt) []attempt {
	out := make([]attempt, n)
	for i := range out {
		out[i] = a
	}
	return out
}

// deliveryError is a failure with what a failure report needs.
type deliveryError struct {
	Status string // RFC 3463 code, such as "5.1.1"
	Host   string // the remote server concerned, if any
	Reply  string // that server's reply, such as "550 5.1.1 No such user", if it gave one
	Stage  string // what the reply answered, such as "RCPT TO"
	Err    error  // the cause
}

func (e *deliveryError) Error() string {
	if e.Reply != "" {
		return fmt.Sprintf("%s said: %s (in reply to %s)", e.Host, e.Reply, e.Stage)
	}
	if e.Host != "" {
		return fmt.Sprintf("%s: %v", e.Host, e.Err)
	}
	return e.Err.Error()
}

func (e *deliveryError) Unwrap() error { return e.Err }

// failure makes a deliveryError with our own status code.
func failure(status, host string, err error) *deliveryError {
	return &deliveryError{Status: status, Host: host, Err: err}
}

// replyAttempt turns a remote server's refusal in stage ("MAIL FROM",
// "RCPT TO", "DATA", "end of data", "greeting") into an attempt: 4xx is
// temporary, 5xx permanent (RFC 5321 4.2.1).
func replyAttempt(host, stage string, e *smtp.SMTPError) attempt {
	de := &deliveryError{
		Status: replyStatus(e),
		Host:   host,
		Reply:  replyText(e),
		Stage:  stage,
		Err:    e,
	}
	// RFC 5321 4.5.3.1.10: a 552 to RCPT is the old way of saying "too
	// many recipients" and is to be taken as temporary.
	if e.Code == 552 && stage == "RCPT TO" {
		return temporary(de)
	}
	if e.Code >= 500 {
		return permanent(de)
	}
	return temporary(de)
}

// replyStatus is the enhanced status code of a reply (RFC 2034), or one
// made from its class (RFC 3463 2: X.0.0) when it has none or a
// contradictory one.
func replyStatus(e *smtp.SMTPError) string {
	class := e.Code / 100
	if class != 4 && class != 5 {
		// A reply outside the 4xx/5xx classes where an error was due
		// (go-smtp reports an unexpected 2xx/3xx the same way).
		class = 4
	}
	ec := e.EnhancedCode
	if ec != smtp.NoEnhancedCode && ec[0] == class && ec[1] >= 0 && ec[2] >= 0 {
		return fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
	}
	return fmt.Sprintf("%d.0.0", class)
}

// replyText is the reply as the server sent it, lines joined.
func replyText(e *smtp.SMTPError) string {
	msg := strings.Join(strings.Fields(e.Message), " ")
	if e.EnhancedCode != smtp.NoEnhancedCode && e.EnhancedCode != (smtp.EnhancedCode{}) {
		return fmt.Sprintf("%d %d.%d.%d %s", e.Code, e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2], msg)
	}
	return fmt.Sprintf("%d %s", e.Code, msg)
}

// netAttempt classifies an error that is not an SMTP reply: a broken or
// timed-out connection. It is always temporary.
func netAttempt(host, stage string, err error) attempt {
	status := statusBadConnection
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("timeout: %w", err)
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		status = statusNoAnswer
	}
	return temporary(failure(status, host, fmt.Errorf("%s: %w", stage, err)))
}

// asAttempt classifies any error from the SMTP client.
func asAttempt(host, stage string, err error) attempt {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return replyAttempt(host, stage, se)
	}
	return netAttempt(host, stage, err)
}

// statusOf is the RFC 3463 code for a failed attempt.
func statusOf(a attempt) string {
	var de *deliveryError
	if errors.As(a.Err, &de) && de.Status != "" {
		return de.Status
	}
	if a.Permanent {
		return "5.0.0"
	}
	return "4.0.0"
}
