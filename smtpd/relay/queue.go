package relay

// The queue logic: what becomes of each recipient after an attempt. This
// is the one place that chooses between removal, retry and report.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mime"
)

const (
	// maxLastError bounds the error text kept with an entry.
	maxLastError = 1000
	// maxReturnedMessage is the largest message a failure report returns
	// whole (RET=FULL); a larger one gets its header only, as RFC 3461 4.3
	// allows.
	maxReturnedMessage = 10 << 20
	// maxReturnedHeader bounds the header section a report returns.
	maxReturnedHeader = 1 << 20
	// diagnosticType names the Diagnostic-Code of a failure that is not a
	// remote server's reply (RFC 3464 2.3.6, an X- type).
	diagnosticType = "X-Postern"
)

// outcome is one recipient's attempt with its entry.
type outcome struct {
	e mailstore.QueueEntry
	a attempt
}

// finish records the attempts for tx's entries (s is the session that
// made them, nil if none was opened): delivered entries leave the queue,
// permanent failures and expired ones are reported to the sender and
// leave it, the others wait for their next attempt. It returns the
// entries whose outcome was decided (not those an attempt cut short by a
// stop), and those of them whose bookkeeping failed: they keep their
// leases, and this relay never tries again one that was delivered
// (r.unrecorded).
func (r *Relay) finish(ctx context.Context, tx *transaction, res []attempt, s *session) (settled, kept []int64) {
	stopping := ctx.Err() != nil
	// The bookkeeping runs even when the relay is stopping: a delivered
	// message must leave the queue.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	now := r.cfg.Now()
	var done, failed, deferred []outcome
	for i, e := range tx.entries {
		o := outcome{e, res[i]}
		result := ""
		switch {
		case !o.a.failed():
			done, result = append(done, o), "delivered"
		case o.a.Permanent:
			failed, result = append(failed, o), "bounced"
		case stopping:
			// The attempt was cut short by the stop, not by the server:
			// the entry is tried again at the next start, unpenalised.
			result = "stopped"
		case now.Sub(e.Created) >= r.cfg.GiveUpAfter:
			o.a.Err = fmt.Errorf("gave up after %v: %w", r.cfg.GiveUpAfter, o.a.Err)
			failed, result = append(failed, o), "bounced"
		default:
			deferred, result = append(deferred, o), "deferred"
		}
		r.logAttempt(tx, o, s, result)
		if result != "stopped" {
			settled = append(settled, e.ID)
		}
	}
	if len(done) > 0 {
		kept = append(kept, r.delivered(ctx, tx, done, s)...)
	}
	if len(failed) > 0 {
		kept = append(kept, r.failed(ctx, tx, failed, s)...)
	}
	if len(deferred) > 0 {
		kept = append(kept, r.deferred(ctx, tx, deferred, s)...)
	}
	// Removed or deferred, their leases ended: no more renewals (a
	// renewal would find them lost). One delivered but not removed is
	// renewed as unrecorded until a retry removes it. Those whose
	// bookkeeping failed otherwise keep their leases until the job ends;
	// those cut short by a stop until dispatch gives them back.
	keep := make(map[int64]bool, len(kept))
	for _, id := range kept {
		keep[id] = true
	}
	r.mu.Lock()
	for _, id := range settled {
		if !keep[id] || r.unrecorded[id] {
			delete(r.leased, id)
		}
	}
	r.mu.Unlock()
	return settled, kept
}

// removeDone removes from the queue entries whose attempt is over for
// good (delivered, or failed and reported), and returns those it could
// not remove: they are in r.unrecorded, so that they are not tried again.
func (r *Relay) removeDone(ctx context.Context, outcomes []outcome, what string) (kept []int64) {
	for _, o := range outcomes {
		if err := r.q.QueueRemove(ctx, o.e.ID); err != nil && !errors.Is(err, mailstore.ErrNotFound) {
			// Kept leased and removed later (renewOnce); if this relay
			// stops first, another frontend may try it again: a
			// duplicate, not a loss.
			r.log.Error("cannot remove "+what+" entry from the queue", "queue_id", o.e.ID, "err", err)
			r.mu.Lock()
			r.unrecorded[o.e.ID] = true
			r.mu.Unlock()
			kept = append(kept, o.e.ID)
		}
	}
	return kept
}

// delivered removes delivered entries, after a "relayed" report to senders
// who asked for success reports from a server that does not send them
// (RFC 3461 4.1).
func (r *Relay) delivered(ctx context.Context, tx *transaction, done []outcome, s *session) (kept []int64) {
	var relayed []mime.DSNRecipient
	for _, o := range done {
		r.log.Info("delivered", "queue_id", o.e.ID, "from", o.e.Sender, "to", o.e.Recipient,
			"host", s.host, "tls", s.tls, "attempts", o.e.Attempts+1, "session", s.id,
			"latency", r.cfg.Now().Sub(o.e.Created).Round(time.Millisecond))
		if parseNotify(o.e.Notify).success && !s.dsn && o.e.Sender != "" {
			relayed = append(relayed, r.dsnRecipient(o, mime.ActionRelayed, s))
		}
	}
	if len(relayed) > 0 {
		// A report that cannot be stored is not worth a second delivery.
		r.sendReport(ctx, tx, relayed, "relayed")
	}
	return r.removeDone(ctx, done, "delivered")
}

// failed reports failed recipients to the sender in one report, then
// removes their entries. Without a stored report the entries stay, so
// that a failure is never silent, unless no report can ever be delivered.
// It returns the entries whose bookkeeping failed.
func (r *Relay) failed(ctx context.Context, tx *transaction, failed []outcome, s *session) (kept []int64) {
	var report []mime.DSNRecipient
	for _, o := range failed {
		r.log.Info("failed", "queue_id", o.e.ID, "from", o.e.Sender, "to", o.e.Recipient,
			"status", statusOf(o.a), "err", o.a.Err, "attempts", o.e.Attempts+1)
		switch {
		case o.e.Sender == "":
			// RFC 5321 6.1 / RFC 3464 4: never report on a report.
			r.log.Info("no report: null sender", "queue_id", o.e.ID)
		case !parseNotify(o.e.Notify).wantsFailure():
			r.log.Info("no report: NOTIFY", "queue_id", o.e.ID, "notify", o.e.Notify)
		default:
			report = append(report, r.dsnRecipient(o, mime.ActionFailed, s))
		}
	}
	if len(report) > 0 {
		// A report that cannot be stored for now (the sender's mailbox is
		// full, the store is busy) is tried again, also for an entry that
		// failed because it expired: for as long again as delivery was.
		if err := r.sendReport(ctx, tx, report, "failed"); err != nil && !lostForGood(err) &&
			r.cfg.Now().Sub(tx.first().Created) < 2*r.cfg.GiveUpAfter {
			// Keep the entries and try again later: the delivery is
			// attempted again, and fails again, and then the report.
			next := r.cfg.Now().Add(r.cfg.RetryBase)
			for _, o := range failed {
				msg := lastError(fmt.Errorf("failure report not stored (%v) for: %w", err, o.a.Err))
				if err := r.q.QueueDefer(ctx, o.e.ID, next, msg, false); err != nil {
					r.log.Error("cannot defer queue entry", "queue_id", o.e.ID, "err", err)
					kept = append(kept, o.e.ID)
				}
			}
			return kept
		}
	}
	return r.removeDone(ctx, failed, "failed")
}

// lostForGood reports whether a report failed to be stored for a reason
// that retrying cannot mend: no such sender, or an address that is none.
func lostForGood(err error) bool {
	return errors.Is(err, mailstore.ErrNoSuchUser) || errors.Is(err, mailstore.ErrInvalidAddress) ||
		errors.Is(err, errCompose)
}

// errCompose marks a report that could not be composed.
var errCompose = errors.New("compose report")

// deferred schedules the next attempt of entries that failed temporarily,
// and warns their sender once when they have waited DelayWarning. It
// returns the entries it could not defer.
func (r *Relay) deferred(ctx context.Context, tx *transaction, deferred []outcome, s *session) (kept []int64) {
	now := r.cfg.Now()
	var warn []mime.DSNRecipient
	warned := make(map[int64]bool)
	for _, o := range deferred {
		if r.cfg.DelayWarning > 0 && now.Sub(o.e.Created) >= r.cfg.DelayWarning && o.e.Sender != "" &&
			!o.e.DelayWarned && parseNotify(o.e.Notify).wantsDelay() {
			d := r.dsnRecipient(o, mime.ActionDelayed, s)
			d.WillRetryUntil = o.e.Created.Add(r.cfg.GiveUpAfter)
			if !strings.HasPrefix(d.Status, "4.") {
				d.Status = "4.0.0"
			}
			warn = append(warn, d)
			warned[o.e.ID] = true
		}
	}
	if len(warn) > 0 {
		if err := r.sendReport(ctx, tx, warn, "delayed"); err != nil {
			warned = nil // told next time
		}
	}
	for _, o := range deferred {
		next := r.nextAttempt(o.e, now)
		msg := lastError(o.a.Err)
		if err := r.q.QueueDefer(ctx, o.e.ID, next, msg, warned[o.e.ID]); err != nil && !errors.Is(err, mailstore.ErrNotFound) {
			r.log.Error("cannot defer queue entry", "queue_id", o.e.ID, "err", err)
			kept = append(kept, o.e.ID)
			continue
		}
		r.log.Info("deferred", "queue_id", o.e.ID, "from", o.e.Sender, "to", o.e.Recipient,
			"status", statusOf(o.a), "err", o.a.Err, "attempts", o.e.Attempts+1, "next", next)
	}
	return kept
}

// logAttempt writes the "relay attempt" line of the log vocabulary
// (cmd/postern/console/metrics.go) for one recipient: result is
// delivered, deferred, bounced or stopped (cut short by a stop).
func (r *Relay) logAttempt(tx *transaction, o outcome, s *session, result string) {
	mx, session := "", ""
	if s != nil {
		mx, session = s.host, s.id
	}
	var d time.Duration
	if !tx.started.IsZero() {
		d = time.Since(tx.started).Round(time.Millisecond)
	}
	attrs := []any{"result", result, "queue_id", o.e.ID, "domain", tx.domain, "mx", mx, "duration", d}
	if session != "" {
		attrs = append(attrs, "session", session)
	}
	if o.a.failed() {
		attrs = append(attrs, "status", statusOf(o.a))
	}
	r.log.Info("relay attempt", attrs...)
}

// lastError is the text kept with an entry after a failed attempt.
func lastError(err error) string {
	msg := strings.Join(strings.Fields(err.Error()), " ")
	if len(msg) > maxLastError {
		msg = msg[:maxLastError]
	}
	return msg
}

// nextAttempt is when an entry that has just failed for the
// (e.Attempts+1)th time is tried again: RetryBase doubled per earlier
// failure, at most RetryMax, with a jitter of 10% so that entries that
// failed together spread out; and no later than when it is given up, so
// that it gets a last attempt then.
func (r *Relay) nextAttempt(e mailstore.QueueEntry, now time.Time) time.Time {
	d := r.cfg.RetryBase
	for i := 0; i < e.Attempts && d < r.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, r.cfg.RetryMax)
	d = time.Duration(float64(d) * (0.9 + 0.2*rand.Float64()))
	next := now.Add(d)
	if giveUp := e.Created.Add(r.cfg.GiveUpAfter); next.After(giveUp) && now.Before(giveUp) {
		next = giveUp
	}
	return next
}

// dsnRecipient is the report on one recipient.
func (r *Relay) dsnRecipient(o outcome, action mime.DSNAction, s *session) mime.DSNRecipient {
	d := mime.DSNRecipient{
		Recipient:   o.e.Recipient,
		Action:      action,
		LastAttempt: r.cfg.Now(),
	}
	if typ, addr, ok := parseORcpt(o.e.ORcpt); ok {
		d.OriginalRecipient = typ + ";" + addr
	}
	if action == mime.ActionRelayed || action == mime.ActionDelivered {
		d.Status = "2.0.0"
		if s != nil {
			d.RemoteMTA = s.host
		}
		return d
	}
	d.Status = statusOf(o.a)
	var de *deliveryError
	if errors.As(o.a.Err, &de) && de.Reply != "" {
		d.RemoteMTA = de.Host
		d.Diagnostic = de.Reply
	} else {
		d.Diagnostic = o.a.Err.Error()
		d.DiagnosticType = diagnosticType
	}
	if action == mime.ActionFailed && !o.a.Permanent && d.Status == "4.0.0" {
		d.Status = statusExpired
	}
	return d
}

// sendReport composes a report on some recipients of tx's message and
// stores it for the sender, from the null reverse-path (RFC 3461 6.1).
// kind is for the log.
func (r *Relay) sendReport(ctx context.Context, tx *transaction, recipients []mime.DSNRecipient, kind string) error {
	e := tx.first()
	err := func() error {
		full := strings.EqualFold(e.Ret, "FULL") && e.Size <= maxReturnedMessage
		original, err := r.readOriginal(ctx, e.BodyID, full)
		if err != nil {
			return err
		}
		msg, err := mime.ComposeDSN(mime.DSN{
			ReportingMTA: r.cfg.Hostname,
			Sender:       e.Sender,
			EnvID:        e.EnvID,
			Arrival:      e.Created,
			Date:         r.cfg.Now(),
			Recipients:   recipients,
			Original:     original,
			ReturnFull:   full,
		})
		if err != nil {
			return fmt.Errorf("%w: %w", errCompose, err)
		}
		d, err := r.store.Deliver(ctx, "", []string{e.Sender}, msg)
		if err != nil {
			return err
		}
		if len(d.Failed) > 0 {
			return d.Failed[0].Err
		}
		return nil
	}()
	if err != nil {
		r.log.Error("report not stored", "kind", kind, "to", e.Sender, "recipients", len(recipients), "err", err)
		return err
	}
	r.log.Info("report stored", "kind", kind, "to", e.Sender, "recipients", len(recipients))
	return nil
}

// readOriginal reads a queued message for a report: whole, or its header
// section only.
func (r *Relay) readOriginal(ctx context.Context, bodyID int64, whole bool) ([]byte, error) {
	if whole {
		return r.store.ReadBody(ctx, bodyID)
	}
	b, err := r.store.OpenBody(ctx, bodyID)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	br := bufio.NewReader(io.LimitReader(b, maxReturnedHeader))
	var out []byte
	for {
		line, err := br.ReadBytes('\n')
		out = append(out, line...)
		if string(line) == "\r\n" || string(line) == "\n" || err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// notify is a recipient's NOTIFY parameter (RFC 3461 4.1).
type notify struct {
	given, never, success, failure, delay bool
}

// parseNotify reads NOTIFY as stored: comma-separated keywords.
func parseNotify(s string) notify {
	var n notify
	for _, k := range strings.Split(s, ",") {
		switch strings.ToUpper(strings.TrimSpace(k)) {
		case "NEVER":
			n.never, n.given = true, true
		case "SUCCESS":
			n.success, n.given = true, true
		case "FAILURE":
			n.failure, n.given = true, true
		case "DELAY":
			n.delay, n.given = true, true
		}
	}
	if n.never {
		n.success, n.failure, n.delay = false, false, false
	}
	return n
}

// wantsFailure: RFC 3461 4.1, without NOTIFY a failure is reported.
func (n notify) wantsFailure() bool { return !n.given || n.failure }

// wantsDelay: without NOTIFY the MTA may report delays; it does.
func (n notify) wantsDelay() bool { return !n.given || n.delay }

// parseORcpt splits ORCPT as stored, "type;address" with the address
// decoded (as go-smtp's RcptOptions give it), into its parts.
func parseORcpt(s string) (typ, addr string, ok bool) {
	typ, addr, ok = strings.Cut(s, ";")
	typ, addr = strings.TrimSpace(typ), strings.TrimSpace(addr)
	if !ok || typ == "" || addr == "" {
		return "", "", false
	}
	return typ, addr, true
}
