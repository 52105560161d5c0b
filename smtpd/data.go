package smtpd

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"

	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
	"github.com/postern/postern/mime"
)

const (
	// headroom is room kept before the message when it is loaded, for the
	// trace fields to be prepended without copying the message.
	headroom = 2048
	// readChunk is the buffer message data is read through into the
	// spool: the size of the spool's first memory chunk, so that a usual
	// message is one read and one write. The pool refills it after each
	// garbage collection for every session then reading: small keeps
	// that cheap.
	readChunk = 8 << 10
	// loadFactor is the memory, in message sizes, that checking and
	// storing a loaded message may take: the message, the copy
	// mime.CanonicalText makes of a message with bare line ends, and the
	// store's work.
	loadFactor = 3
)

// Data reads the message (DATA or BDAT) into a spool, which keeps it in
// memory while the process's budget allows and in a private temporary
// file beyond; then, once the budget has room for it, checks it, adds the
// trace fields and stores it. go-smtp answers 250 when it returns nil,
// after the store's commit.
func (s *session) Data(r io.Reader) error {
	s.cl.conn.beginData()
	defer s.cl.conn.endData()
	tx := s.transaction()
	if tx == nil {
		return errTemporaryFailure // go-smtp calls Data only after RCPT
	}
	sh := s.cl.srv.sh
	sp := sh.Memory.NewSpool(sh.SpoolDir, s.cl.srv.cfg.MaxMessageBytes+1)
	defer func() {
		if err := sp.Close(); err != nil {
			s.log.Warn("spool not removed", "id", tx.id, "err", err)
		}
	}()
	if err := s.readMessage(r, tx, sp); err != nil {
		return err
	}
	buf, err := sp.Load(s.cl.srv.ctx, headroom, loadFactor)
	switch {
	case errors.Is(err, limits.ErrNoMemory):
		return s.refuse(tx, errNoMemory, err)
	case err != nil:
		s.log.Error("message not loaded", "id", tx.id, "size", sp.Size(), "on_disk", sp.OnDisk(), "err", err)
		return errTemporaryFailure
	}
	body := buf[headroom:]
	msg, err := mime.CanonicalText(body)
	switch {
	case errors.Is(err, mime.ErrNUL):
		return s.refuse(tx, errNUL, err)
	case errors.Is(err, mime.ErrLineTooLong):
		return s.refuse(tx, errLineTooLong, err)
	case err != nil:
		return s.refuse(tx, errMalformed, err)
	}
	h, err := mime.ReadHeader(msg)
	if err != nil {
		return s.refuse(tx, errMalformed, err)
	}
	// RFC 5321 6.3: a message that has passed through too many hops is in
	// a loop.
	if n := mime.CountReceived(h); n > s.cl.srv.cfg.MaxReceived {
		return s.refuse(tx, errMailLoop, fmt.Errorf("%d Received fields", n))
	}
	if s.cl.kind.submission() && s.user != nil {
		if err := s.checkAuthors(tx, h); err != nil {
			return err
		}
	}
	msg, arField, junk, err := s.checkInbound(tx, h, msg)
	if err != nil {
		return err
	}
	tx.junk = junk
	prefix, err := s.traceFields(tx, h)
	if err != nil {
		s.log.Error("message refused", "id", tx.id, "err", err)
		return errTemporaryFailure
	}
	if s.cl.kind.submission() && s.user != nil {
		// Signed as it will be stored or queued, trace fields included
		// (they are not signed, but Date and Message-ID added here are).
		sig, err := s.sign(tx, h, append([]byte(prefix), msg...))
		if err != nil {
			s.log.Error("message not signed", "id", tx.id, "err", err)
			return errTemporaryFailure
		}
		prefix = sig + prefix
	}
	// RFC 5321 4.4: Return-Path is the first field at final delivery.
	prefix = arField + prefix
	if tx.local {
		prefix = mime.ReturnPath(tx.from) + prefix
	}
	var full []byte
	if len(prefix) <= headroom && len(msg) > 0 && len(msg) == len(body) && &msg[0] == &body[0] {
		// CanonicalText did not copy the message: put the fields in front.
		full = buf[headroom-len(prefix):]
		copy(full, prefix)
	} else {
		full = append([]byte(prefix), msg...)
	}
	return s.deliver(tx, full)
}

// readBuffers are the buffers readMessage reads through: one per message
// being read, reused, so that a small message does not cost a new
// readChunk-sized allocation (and its garbage collection) each time.
var readBuffers = sync.Pool{New: func() any {
	b := make([]byte, readChunk)
	return &b
}}

// readMessage copies the message into sp. The reader is go-smtp's: it
// stops DATA with ErrDataTooLarge past the limit (one octet above ours
// during a transaction).
func (s *session) readMessage(r io.Reader, tx *transaction, sp *limits.Spool) error {
	limit := s.cl.srv.cfg.MaxMessageBytes
	bp := readBuffers.Get().(*[]byte)
	defer readBuffers.Put(bp)
	buf := *bp
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := sp.Write(buf[:n]); werr != nil {
				if errors.Is(werr, limits.ErrTooLarge) {
					return s.refuse(tx, errMessageTooBig, werr)
				}
				if errors.Is(werr, limits.ErrSpoolFull) {
					return s.refuse(tx, errNoMemory, werr)
				}
				s.log.Error("message not spooled", "id", tx.id, "octets", sp.Size(), "err", werr)
				return errTemporaryFailure
			}
			if sp.Size() > limit {
				return s.refuse(tx, errMessageTooBig, errors.New("over the limit"))
			}
		}
		switch {
		case err == nil:
			continue
		case err == io.EOF:
			return nil
		case errors.Is(err, smtp.ErrDataTooLarge):
			return s.refuse(tx, errMessageTooBig, err)
		case errors.Is(err, smtp.ErrTooLongLine):
			// go-smtp ends the connection after this reply.
			return s.refuse(tx, errLineTooLong, err)
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			s.log.Info("message transfer timed out", "id", tx.id, "octets", sp.Size())
		} else {
			s.log.Info("message transfer aborted", "id", tx.id, "octets", sp.Size(), "err", err)
		}
		return errDataAborted
	}
}

// checkAuthors allows a submitted message only when every address in its
// From fields (RFC 5322 3.6.2: the authors) and Sender fields (the one who
// sent it) is one the logged-in user may send as: their own address or an
// alias that resolves to them. The display name plays no part: in
// "alice@example.test" <bob@example.test> the address is bob's. A From or
// Sender that does not parse as addresses is refused too, so that no
// reader can be shown an author the check did not see. A message with no
// From is left alone.
func (s *session) checkAuthors(tx *transaction, h textproto.Header) error {
	const maxAuthors = 100 // bounds the store lookups of one message
	checked := 0
	for _, field := range []string{"From", "Sender"} {
		for _, v := range h.Values(field) {
			list, err := mail.ParseAddressList(unfold(v))
			if err == nil && len(list) == 0 {
				err = errors.New("no address")
			}
			if err != nil {
				return s.refuse(tx, errAuthorUnreadable, fmt.Errorf("%s field: %w", field, err))
			}
			for _, a := range list {
				if checked++; checked > maxAuthors {
					return s.refuse(tx, errAuthorUnreadable, fmt.Errorf("over %d addresses in From and Sender", maxAuthors))
				}
				ok, err := s.mayUse(a.Address)
				if err != nil {
					s.log.Error("author check failed", "id", tx.id, "address", printable(a.Address), "err", err)
					return errTemporaryFailure
				}
				if !ok {
					s.log.Info("message refused", "id", tx.id, "user", s.user.Address, "field", field,
						"address", printable(a.Address), "reason", "policy", "detail", "not the user's address")
					return errAuthorNotOwned
				}
			}
		}
	}
	return nil
}

// unfold undoes header folding (RFC 5322 2.2.3).
func unfold(v string) string {
	return strings.NewReplacer("\r\n", "", "\n", "").Replace(v)
}

// refuse logs why a message is refused and returns the reply.
func (s *session) refuse(tx *transaction, reply *smtp.SMTPError, cause error) *smtp.SMTPError {
	s.log.Info("message refused", "id", tx.id, "from", tx.from, "code", reply.Code, "reason", refusalClass(reply), "detail", cause.Error())
	return reply
}

// refusalClass is the reason of a "message refused" line in the log
// vocabulary (cmd/postern/console/metrics.go).
func refusalClass(reply *smtp.SMTPError) string {
	switch reply {
	case errNoMemory, errMessageTooBig, errLineTooLong:
		return "limits"
	case errMailboxFull:
		return "quota"
	case errNoSuchUser:
		return "unknown"
	case errNUL, errMalformed, errAuthorUnreadable, errNothingStored:
		return "syntax"
	}
	return "policy"
}

// traceFields returns Received (RFC 5321 4.4), and on submission Date and
// Message-ID when the header lacks them (RFC 6409 8.2, 8.3). Data puts
// them after Return-Path, which is for final delivery only, so a message
// for remote recipients alone does not get one; the mailstore keeps one
// body for all recipients, so when a message has both, the queued copy
// has it too (see doc.go). DKIM-Signature (submission) or
// Authentication-Results (MX) go between the two.
func (s *session) traceFields(tx *transaction, h textproto.Header) (string, error) {
	var b strings.Builder
	rec := mime.Received{
		Helo:     s.c.Hostname(),
		ClientIP: s.cl.ip,
		By:       s.cl.srv.cfg.Hostname,
		With:     s.protocol(tx),
		ID:       tx.id,
		Date:     s.cl.srv.now(),
	}
	if s.tls != nil {
		rec.TLS = strings.ReplaceAll(tls.VersionName(s.tls.Version), " ", "") + " " + tls.CipherSuiteName(s.tls.CipherSuite)
	}
	if len(tx.rcpts) == 1 {
		rec.For = tx.rcpts[0].Address
	}
	field := rec.Field()
	if s.user != nil {
		field = withAuthenticatedSender(field, s.user.Address)
	}
	b.WriteString(field)
	if s.cl.kind.submission() {
		add, err := mime.SubmissionFields(h, s.cl.srv.cfg.Hostname, rec.Date)
		if err != nil {
			return "", err
		}
		b.WriteString(add)
	}
	return b.String(), nil
}

// withAuthenticatedSender adds to a Received field, after its "from"
// clause, the comment that names the user who logged in, as Postfix
// writes it: "(Authenticated sender: alice@example.com)". Parentheses and
// backslashes in the address are quoted (RFC 5322 3.2.2: quoted-pair in a
// comment).
func withAuthenticatedSender(field, user string) string {
	first, rest, ok := strings.Cut(field, "\r\n")
	if !ok {
		return field
	}
	quoted := strings.NewReplacer("\\", "\\\\", "(", "\\(", ")", "\\)").Replace(user)
	return first + "\r\n\t(Authenticated sender: " + quoted + ")\r\n" + rest
}

// protocol names the "with" of Received from the RFC 3848 and RFC 6531
// registry: ESMTP, then S for TLS and A for AUTH; UTF8SMTP for SMTPUTF8.
func (s *session) protocol(tx *transaction) string {
	p := "ESMTP"
	if tx.utf8 {
		p = "UTF8SMTP"
	}
	if s.tls != nil {
		p += "S"
	}
	if s.user != nil {
		p += "A"
	}
	return p
}

// deliver stores the message for local recipients and queues it for
// remote ones, in one transaction, and answers for the whole message.
func (s *session) deliver(tx *transaction, msg []byte) error {
	env := mailstore.Envelope{Sender: tx.from, Recipients: tx.rcpts, EnvID: tx.envID, Ret: tx.ret,
		Report: func(failed []mailstore.RecipientError) []byte { return s.failureReport(tx, failed, msg) }}
	if tx.junk {
		// The local recipients get it in their Junk mailbox (RFC 6154
		// \Junk), created when missing; remote ones are queued as usual.
		env.SpecialUse = `\Junk`
	}
	// A client that did not authenticate may only reach local domains:
	// RCPT checked that, and the store checks it again at delivery, in
	// case a domain was removed meanwhile.
	env.LocalOnly = s.user == nil
	d, err := s.cl.srv.store.DeliverEnvelope(s.cl.srv.ctx, env, msg)
	if err != nil {
		// The error names a recipient's failure only when nobody got the
		// message; otherwise it is the store's and nothing was committed.
		switch {
		case errors.Is(err, mailstore.ErrOverQuota):
			return s.refuse(tx, errMailboxFull, err)
		case errors.Is(err, mailstore.ErrNoSuchUser):
			return s.refuse(tx, errNoSuchUser, err)
		case errors.Is(err, mailstore.ErrInvalidAddress):
			return s.refuse(tx, errNothingStored, err)
		case errors.Is(err, mailstore.ErrNotLocal):
			return s.refuse(tx, errRelayDenied, err)
		}
		s.log.Error("message not stored", "id", tx.id, "from", tx.from, "err", err)
		return errStoreFailed
	}
	s.cl.delivered++
	s.cl.conn.delivered()
	attrs := []any{"id", tx.id, "from", tx.from, "to", recipientList(tx.rcpts),
		"size", len(msg), "bytes", len(msg), "recipients", len(tx.rcpts), "stored", len(d.Stored), "queued", len(d.Queued)}
	if tx.junk {
		attrs = append(attrs, "junk", true)
		if len(d.Stored) > 0 {
			attrs = append(attrs, "mailbox", d.Stored[0].Mailbox)
		}
	}
	s.log.Info("message accepted", attrs...)
	for _, q := range d.Queued {
		s.log.Info("queued", "id", tx.id, "queue_id", q.QueueID, "to", q.Address)
	}
	for _, f := range d.Failed {
		// One reply answers for all recipients: the others have the message.
		s.log.Warn("recipient did not get the message", "id", tx.id, "to", f.Recipient, "err", f.Err)
	}
	if d.Reported {
		s.log.Info("failure report stored", "id", tx.id, "to", tx.from, "failed", len(d.Failed))
	}
	if len(d.Queued) > 0 || d.ReportQueued {
		s.queued()
	}
	return nil
}

// queued tells the relay, if anyone listens, that there is work.
func (s *session) queued() {
	if f := s.cl.srv.cfg.Queued; f != nil {
		f()
	}
}

// failureReport is the RFC 3464 report for the recipients that got
// nothing although the message was accepted for the others (found only at
// commit, such as a quota filled meanwhile): the 250 answers for everyone,
// so this is how the sender learns of them. The mailstore stores it in the
// same commit as the message. nil means no report: the sender is <>, or
// NOTIFY leaves out FAILURE.
func (s *session) failureReport(tx *transaction, failed []mailstore.RecipientError, msg []byte) []byte {
	if tx.from == "" {
		return nil // RFC 3464 4: never report on a report
	}
	var recipients []mime.DSNRecipient
	for _, f := range failed {
		notify := ""
		for _, r := range tx.rcpts {
			if r.Address == f.Recipient {
				notify = strings.ToUpper(r.Notify)
			}
		}
		if notify != "" && !strings.Contains(notify, "FAILURE") {
			continue // RFC 3461 4.1: NOTIFY without FAILURE, or NEVER
		}
		status, why := "5.1.1", "no such mailbox"
		if errors.Is(f.Err, mailstore.ErrOverQuota) {
			status, why = "5.2.2", "mailbox full"
		}
		recipients = append(recipients, mime.DSNRecipient{
			Recipient: f.Recipient, Action: mime.ActionFailed, Status: status,
			Diagnostic: why, DiagnosticType: "X-Postern", LastAttempt: s.cl.srv.now(),
		})
	}
	if len(recipients) == 0 {
		return nil
	}
	report, err := mime.ComposeDSN(mime.DSN{
		ReportingMTA: s.cl.srv.cfg.Hostname, Sender: tx.from, EnvID: tx.envID,
		Arrival: s.cl.srv.now(), Recipients: recipients, Original: msg,
	})
	if err != nil {
		s.log.Error("failure report not composed", "id", tx.id, "to", tx.from, "err", err)
		return nil
	}
	return report
}

// recipientList names the first recipients of a message for its log line.
func recipientList(rcpts []mailstore.Recipient) string {
	const max = 10
	names := make([]string, 0, min(len(rcpts), max))
	for _, r := range rcpts[:min(len(rcpts), max)] {
		names = append(names, r.Address)
	}
	list := strings.Join(names, ",")
	if len(rcpts) > max {
		list += ",... (" + strconv.Itoa(len(rcpts)) + " in all)"
	}
	return list
}
