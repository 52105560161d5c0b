package mime

// Delivery status notifications: RFC 3464 reports, with RFC 3463 status
// codes, sent back to a message's sender by the relay.

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
)

// DSNAction is the Action field of one recipient's report (RFC 3464 2.3.3).
type DSNAction string

// The actions of RFC 3464 2.3.3.
const (
	ActionFailed    DSNAction = "failed"    // not delivered, not to be retried
	ActionDelayed   DSNAction = "delayed"   // not delivered yet, still being retried
	ActionDelivered DSNAction = "delivered" // delivered to the recipient's mailbox
	ActionRelayed   DSNAction = "relayed"   // passed to a server that sends no DSN
	ActionExpanded  DSNAction = "expanded"  // delivered, and forwarded to several addresses
)

// DSN is a delivery status notification to compose: a report on some of the
// recipients of one message, for its sender.
type DSN struct {
	// ReportingMTA is this server's host name: the Reporting-MTA field,
	// the domain of the From address and of the Message-ID.
	ReportingMTA string
	// Sender is the original message's envelope sender, who gets the
	// report (its To field). It must not be empty: RFC 3464 4 forbids a
	// report on a message whose reverse-path was null.
	Sender string
	// EnvID is the ENVID given with MAIL FROM (RFC 3461 4.4), if any.
	EnvID string
	// Arrival is when the message was received (Arrival-Date); optional.
	Arrival time.Time
	// Date is the report's Date field; zero means now.
	Date time.Time
	// Recipients are the recipients reported on, at least one.
	Recipients []DSNRecipient
	// Original is the original message, as stored.
	Original []byte
	// ReturnFull includes the whole original message (RET=FULL, as
	// message/rfc822); otherwise only its header section is returned
	// (RET=HDRS, or no RET: text/rfc822-headers), RFC 3461 4.3.
	ReturnFull bool
}

// DSNRecipient is the report on one recipient (RFC 3464 2.3).
type DSNRecipient struct {
	// Recipient is the address delivery was attempted to (Final-Recipient).
	Recipient string
	// OriginalRecipient is the ORCPT given with RCPT TO, as "type;address"
	// (RFC 3461 4.2), if any.
	OriginalRecipient string
	Action            DSNAction
	// Status is the RFC 3463 code, such as "5.1.1". Its class must agree
	// with Action: 2 for delivered, relayed and expanded, 4 for delayed,
	// 4 or 5 for failed.
	Status string
	// RemoteMTA is the host name of the server that gave Diagnostic, if any.
	RemoteMTA string
	// Diagnostic is that server's SMTP reply, such as
	// "550 5.1.1 No such user", or the reporting MTA's own explanation
	// (see DiagnosticType); optional.
	Diagnostic string
	// DiagnosticType is the Diagnostic-Code's type (RFC 3464 2.3.6):
	// empty for "smtp", a server's reply; an "X-" name such as
	// "X-Postern" for an explanation that is not a reply.
	DiagnosticType string
	// LastAttempt is when delivery was last attempted; optional.
	LastAttempt time.Time
	// WillRetryUntil is when retries stop, for a delayed recipient; optional.
	WillRetryUntil time.Time
}

// dsnStatusRE matches an RFC 3463 status code: class.subject.detail.
var dsnStatusRE = regexp.MustCompile(`^[245]\.[0-9]{1,3}\.[0-9]{1,3}$`)

// dsnMaxLine is where report fields are folded: RFC 5322 2.1.1 asks for
// lines of at most 78 characters.
const dsnMaxLine = 78

// dsnDateLayout is the RFC 5322 3.3 date-time used in every date field.
const dsnDateLayout = "Mon, 02 Jan 2006 15:04:05 -0700"

// ComposeDSN builds a delivery status notification (RFC 3464): a
// multipart/report; report-type=delivery-status (RFC 6522) with a
// human-readable explanation, the message/delivery-status part, and the
// original message or its header section. It is marked Auto-Submitted
// (RFC 3834 5) so that responders leave it alone. Line ends are CRLF.
func ComposeDSN(d DSN) ([]byte, error) {
	if err := d.check(); err != nil {
		return nil, fmt.Errorf("compose DSN: %w", err)
	}
	date := d.Date
	if date.IsZero() {
		date = time.Now()
	}

	// go-message writes fields in the reverse order of setting them:
	// the content fields are set first so that they come last.
	var h mail.Header
	// RFC 6522 3: multipart/report with the report-type parameter.
	h.SetContentType("multipart/report", map[string]string{"report-type": "delivery-status"})
	h.Set("MIME-Version", "1.0")
	header, _ := dsnSplitHeader(d.Original)
	if id := dsnMessageID(header); id != "" {
		h.Set("References", id)
		h.Set("In-Reply-To", id)
	}
	// RFC 3834 5: a DSN is an automatic response.
	h.Set("Auto-Submitted", "auto-replied")
	if err := h.GenerateMessageIDWithHostname(d.ReportingMTA); err != nil {
		return nil, fmt.Errorf("compose DSN: Message-ID: %w", err)
	}
	h.SetDate(date)
	h.SetSubject(d.subject())
	if _, err := mail.ParseAddress("<" + d.Sender + ">"); err == nil {
		h.SetAddressList("To", []*mail.Address{{Address: d.Sender}})
	} else {
		// An address the parser refuses (an unusual quoted local part)
		// still goes back as it was given.
		h.Set("To", "<"+dsnSanitize(d.Sender)+">")
	}
	h.SetAddressList("From", []*mail.Address{{Name: "Mail Delivery System", Address: "MAILER-DAEMON@" + d.ReportingMTA}})

	var buf bytes.Buffer
	w, err := message.CreateWriter(&buf, h.Header)
	if err != nil {
		return nil, fmt.Errorf("compose DSN: %w", err)
	}
	// RFC 6522 3: the first part is for people.
	text := d.humanText()
	var th message.Header
	th.SetContentType("text/plain", map[string]string{"charset": "utf-8"})
	if !dsnIsASCII(text) {
		th.Set("Content-Transfer-Encoding", "quoted-printable")
	}
	th.Set("Content-Description", "Notification")
	if err := dsnWritePart(w, th, []byte(text)); err != nil {
		return nil, fmt.Errorf("compose DSN: %w", err)
	}
	// RFC 3464 2: the machine-readable part.
	var sh message.Header
	sh.SetContentType("message/delivery-status", nil)
	sh.Set("Content-Description", "Delivery report")
	if err := dsnWritePart(w, sh, d.statusFields()); err != nil {
		return nil, fmt.Errorf("compose DSN: %w", err)
	}
	// RFC 3464 2 / RFC 3461 4.3: the returned content.
	var oh message.Header
	returned := header
	if d.ReturnFull {
		oh.SetContentType("message/rfc822", nil)
		oh.Set("Content-Description", "Undelivered message")
		returned = d.Original
	} else {
		oh.SetContentType("text/rfc822-headers", nil)
		oh.Set("Content-Description", "Undelivered message headers")
	}
	if !dsnIsASCIIBytes(returned) {
		// RFC 2046 5.2.1: message/rfc822 may only be 7bit, 8bit or binary.
		oh.Set("Content-Transfer-Encoding", "8bit")
	}
	if err := dsnWritePart(w, oh, dsnCRLF(returned)); err != nil {
		return nil, fmt.Errorf("compose DSN: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("compose DSN: %w", err)
	}
	return buf.Bytes(), nil
}

// check reports the first thing that makes d impossible to compose.
func (d *DSN) check() error {
	if d.ReportingMTA == "" {
		return errors.New("no reporting MTA")
	}
	if d.Sender == "" {
		// RFC 3464 4 / RFC 5321 6.1: never report on a message from <>.
		return errors.New("the message has a null sender: no report may be sent")
	}
	if len(d.Recipients) == 0 {
		return errors.New("no recipients")
	}
	for _, r := range d.Recipients {
		if r.Recipient == "" {
			return errors.New("a recipient without an address")
		}
		if !dsnStatusRE.MatchString(r.Status) {
			return fmt.Errorf("recipient %s: status %q is not an RFC 3463 code", r.Recipient, r.Status)
		}
		class := r.Status[0]
		switch r.Action {
		case ActionFailed:
			if class == '2' {
				return fmt.Errorf("recipient %s: action failed with success status %s", r.Recipient, r.Status)
			}
		case ActionDelayed:
			if class != '4' {
				return fmt.Errorf("recipient %s: action delayed needs a 4.x.x status, not %s", r.Recipient, r.Status)
			}
		case ActionDelivered, ActionRelayed, ActionExpanded:
			if class != '2' {
				return fmt.Errorf("recipient %s: action %s needs a 2.x.x status, not %s", r.Recipient, r.Action, r.Status)
			}
		default:
			return fmt.Errorf("recipient %s: unknown action %q", r.Recipient, r.Action)
		}
	}
	return nil
}

// worst is the most serious action among the recipients: failed, then
// delayed, then the successful ones.
func (d *DSN) worst() DSNAction {
	worst := ActionDelivered
	for _, r := range d.Recipients {
		switch {
		case r.Action == ActionFailed:
			return ActionFailed
		case r.Action == ActionDelayed:
			worst = ActionDelayed
		case r.Action == ActionRelayed && worst == ActionDelivered:
			worst = ActionRelayed
		}
	}
	return worst
}

func (d *DSN) subject() string {
	switch d.worst() {
	case ActionFailed:
		return "Undelivered Mail Returned to Sender"
	case ActionDelayed:
		return "Delayed Mail (still being retried)"
	}
	return "Successful Mail Delivery Report"
}

// humanText is the first part: what happened, in words, then one line per
// recipient.
func (d *DSN) humanText() string {
	var b strings.Builder
	fmt.Fprintf(&b, "This is the mail system at host %s.\r\n\r\n", d.ReportingMTA)
	groups := []struct {
		actions []DSNAction
		intro   string
	}{
		{[]DSNAction{ActionFailed}, "Your message could not be delivered to the recipients below. This is a\r\n" +
			"permanent failure: the message will not be tried again.\r\n"},
		{[]DSNAction{ActionDelayed}, "Your message has not been delivered yet to the recipients below. Delivery\r\n" +
			"will be tried again; you do not need to send the message again.\r\n"},
		{[]DSNAction{ActionDelivered, ActionExpanded}, "Your message was delivered to the recipients below.\r\n"},
		{[]DSNAction{ActionRelayed}, "Your message was passed on to the mail servers of the recipients below,\r\n" +
			"which may not send further delivery reports.\r\n"},
	}
	for _, g := range groups {
		var lines []string
		for _, r := range d.Recipients {
			for _, a := range g.actions {
				if r.Action != a {
					continue
				}
				line := "<" + r.Recipient + ">"
				if r.Diagnostic != "" {
					line += ": " + dsnDiagnostic(r.Diagnostic)
				}
				if r.RemoteMTA != "" {
					line += " (" + r.RemoteMTA + ")"
				}
				if !r.WillRetryUntil.IsZero() {
					line += "; retried until " + r.WillRetryUntil.UTC().Format(dsnDateLayout)
				}
				lines = append(lines, line)
			}
		}
		if len(lines) == 0 {
			continue
		}
		b.WriteString(g.intro)
		b.WriteString("\r\n")
		for _, l := range lines {
			b.WriteString("    " + l + "\r\n")
		}
		b.WriteString("\r\n")
	}
	if d.ReturnFull {
		b.WriteString("The message is attached.\r\n")
	} else {
		b.WriteString("The header of the message is attached.\r\n")
	}
	return b.String()
}

// statusFields is the body of the message/delivery-status part: the
// per-message fields, then one group per recipient, each group preceded by
// a blank line (RFC 3464 2.1).
func (d *DSN) statusFields() []byte {
	var b bytes.Buffer
	if d.EnvID != "" {
		dsnWriteField(&b, "Original-Envelope-Id", dsnSanitize(d.EnvID))
	}
	dsnWriteField(&b, "Reporting-MTA", "dns; "+dsnSanitize(d.ReportingMTA))
	if !d.Arrival.IsZero() {
		dsnWriteField(&b, "Arrival-Date", d.Arrival.Format(dsnDateLayout))
	}
	for _, r := range d.Recipients {
		b.WriteString("\r\n")
		if r.OriginalRecipient != "" {
			typ, addr, ok := strings.Cut(r.OriginalRecipient, ";")
			if !ok {
				typ, addr = "rfc822", r.OriginalRecipient
			}
			dsnWriteField(&b, "Original-Recipient", dsnAddress(typ, addr))
		}
		dsnWriteField(&b, "Final-Recipient", dsnAddress("rfc822", r.Recipient))
		dsnWriteField(&b, "Action", string(r.Action))
		dsnWriteField(&b, "Status", r.Status)
		if r.RemoteMTA != "" {
			dsnWriteField(&b, "Remote-MTA", "dns; "+dsnSanitize(r.RemoteMTA))
		}
		if r.Diagnostic != "" {
			typ := "smtp"
			if r.DiagnosticType != "" {
				typ = dsnSanitize(r.DiagnosticType)
			}
			dsnWriteField(&b, "Diagnostic-Code", typ+"; "+dsnDiagnostic(r.Diagnostic))
		}
		if !r.LastAttempt.IsZero() {
			dsnWriteField(&b, "Last-Attempt-Date", r.LastAttempt.Format(dsnDateLayout))
		}
		if r.Action == ActionDelayed && !r.WillRetryUntil.IsZero() {
			dsnWriteField(&b, "Will-Retry-Until", r.WillRetryUntil.Format(dsnDateLayout))
		}
	}
	return b.Bytes()
}

// dsnAddress formats an address-type;address value (RFC 3464 2.3.2). An
// address that is not ASCII becomes utf-8-addr-xtext (RFC 6533 3), so that
// the part stays ASCII as RFC 3464 requires.
func dsnAddress(typ, addr string) string {
	typ = strings.TrimSpace(typ)
	addr = strings.TrimSpace(addr)
	if dsnIsASCII(addr) {
		return typ + ";" + dsnSanitize(addr)
	}
	var b strings.Builder
	for _, r := range addr {
		if r < 0x21 || r > 0x7e || r == '+' || r == '=' || r == '\\' || r == utf8.RuneError {
			fmt.Fprintf(&b, `\x{%X}`, r)
			continue
		}
		b.WriteRune(r)
	}
	return "utf-8;" + b.String()
}

// dsnWriteField writes "Name: value" with CRLF, folding value at spaces so that
// lines stay within dsnMaxLine where the words allow.
func dsnWriteField(b *bytes.Buffer, name, value string) {
	line := name + ":"
	for i, word := range strings.Fields(value) {
		if i > 0 && len(line)+1+len(word) > dsnMaxLine {
			b.WriteString(line + "\r\n")
			line = "" // the next line starts with the space: folding (RFC 5322 2.2.3)
		}
		line += " " + word
	}
	b.WriteString(line + "\r\n")
}

// dsnSanitize makes s fit in one ASCII field value: line ends and
// controls become spaces, other non-ASCII characters '?'.
func dsnSanitize(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r < 0x20 || r == 0x7f:
			b.WriteByte(' ')
		case r > 0x7e:
			b.WriteByte('?')
		default:
			b.WriteRune(r)
		}
	}
	return strings.Join(strings.Fields(b.String()), " ")
}

// dsnMaxDiagnostic bounds a diagnostic in a report: a server's reply may
// run to kilobytes, and a report line must stay under 998 octets (RFC
// 5322 2.1.1) or the next server refuses the report, which nobody hears of.
const dsnMaxDiagnostic = 500

// dsnDiagnostic is a diagnostic as a report shows it: printable ASCII on
// one line, shortened to dsnMaxDiagnostic.
func dsnDiagnostic(s string) string {
	d := dsnSanitize(s)
	if len(d) > dsnMaxDiagnostic {
		d = d[:dsnMaxDiagnostic-3] + "..."
	}
	return d
}

// dsnSplitHeader returns the header section of msg, up to and including the
// blank line that ends it (or all of msg when there is no body), and the body.
func dsnSplitHeader(msg []byte) (header, body []byte) {
	for _, sep := range [][]byte{[]byte("\r\n\r\n"), []byte("\n\n")} {
		if i := bytes.Index(msg, sep); i >= 0 {
			return msg[:i+len(sep)], msg[i+len(sep):]
		}
	}
	// Headers only; the part still needs its last line ended.
	if len(msg) > 0 && msg[len(msg)-1] != '\n' {
		return append(bytes.Clone(msg), '\r', '\n'), nil
	}
	return msg, nil
}

// dsnMessageID returns the Message-ID field of a header section, or "".
func dsnMessageID(header []byte) string {
	for _, line := range bytes.Split(header, []byte("\n")) {
		name, value, ok := bytes.Cut(line, []byte(":"))
		if ok && strings.EqualFold(string(bytes.TrimSpace(name)), "Message-ID") {
			id := dsnSanitize(string(value))
			if strings.HasPrefix(id, "<") && strings.HasSuffix(id, ">") && !strings.Contains(id, " ") {
				return id
			}
			return ""
		}
	}
	return ""
}

func dsnWritePart(w *message.Writer, h message.Header, body []byte) error {
	pw, err := w.CreatePart(h)
	if err != nil {
		return err
	}
	if _, err := pw.Write(body); err != nil {
		return err
	}
	return pw.Close()
}

func dsnIsASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func dsnIsASCIIBytes(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// dsnCRLF gives every line of b a CRLF end.
func dsnCRLF(b []byte) []byte {
	if !bytes.Contains(b, []byte("\n")) || bytes.Count(b, []byte("\n")) == bytes.Count(b, []byte("\r\n")) {
		return b
	}
	b = bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n"))
	return bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n"))
}
