package relay

// The SMTP client side: connect to a domain's MX hosts, greet with our
// host name, opportunistic STARTTLS (RFC 3207), and one transaction per
// message with an outcome per recipient. go-smtp's Client does the
// protocol; this file drives it.
//
// go-smtp facts (still so in v0.26) this file works around:
//   - NewClientStartTLS greets with "EHLO localhost" before the upgrade,
//     and the Client has no exported STARTTLS. So the session says EHLO
//     with Client.Hello(hostname), sends STARTTLS itself on the raw
//     connection, and starts a new Client on the TLS connection, fed a
//     stand-in greeting since a server sends none after STARTTLS.
//   - SendMail stops at the first refused recipient, so Mail, Rcpt and
//     Data are driven here, one outcome per recipient.
//   - Client deadlines cover replies only; writes of the message get
//     theirs from wireConn.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mime"
)

// Timeouts bounds each wait of the SMTP client. Zero fields take the
// defaults, which are RFC 5321 4.5.3.2's.
type Timeouts struct {
	// Connect bounds the TCP connection and the TLS handshake: 30 s (RFC
	// 5321 sets none; 30 s is Postfix's smtp_connect_timeout).
	Connect time.Duration
	// Command bounds the greeting and the replies to EHLO, STARTTLS, MAIL,
	// RCPT and RSET: 5 min (4.5.3.2.1-3).
	Command time.Duration
	// DataInit bounds the reply to DATA: 2 min (4.5.3.2.4).
	DataInit time.Duration
	// DataBlock bounds each write of the message: 3 min (4.5.3.2.5).
	DataBlock time.Duration
	// DataEnd bounds the reply after the final dot: 10 min (4.5.3.2.6).
	DataEnd time.Duration
}

func (t Timeouts) withDefaults() Timeouts {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.Connect, 30*time.Second)  // Postfix's smtp_connect_timeout
	def(&t.Command, 5*time.Minute)   // RFC 5321 4.5.3.2.1-3: greeting, MAIL, RCPT
	def(&t.DataInit, 2*time.Minute)  // RFC 5321 4.5.3.2.4: DATA initiation
	def(&t.DataBlock, 3*time.Minute) // RFC 5321 4.5.3.2.5: data block
	def(&t.DataEnd, 10*time.Minute)  // RFC 5321 4.5.3.2.6: DATA termination
	return t
}

const (
	// maxDialsPerDelivery bounds the connections tried for one domain in
	// one run, over all its MX hosts and addresses.
	maxDialsPerDelivery = 10
	// quitTimeout bounds the polite QUIT at the end of a session.
	quitTimeout = 10 * time.Second
	// tlsRetryAfter is how long an address whose TLS handshake failed is
	// sent mail in plaintext before TLS is tried with it again.
	tlsRetryAfter = time.Hour
	// maxRcptsPerTransaction: RFC 5321 4.5.3.1.8 obliges servers to take
	// at least 100 recipients, so a transaction never has more.
	maxRcptsPerTransaction = 100
)

// transaction is one message for some recipients in one domain: queue
// entries with the same sender, body and submission.
type transaction struct {
	domain  string
	entries []mailstore.QueueEntry
	// started is when the attempt began (connection included), for the
	// duration in the log; zero if it was not made.
	started time.Time
}

func (tx *transaction) first() mailstore.QueueEntry { return tx.entries[0] }

// session is one SMTP connection to a mail exchanger, used for several
// transactions.
type session struct {
	r    *Relay
	id   string
	log  *slog.Logger
	host string         // the MX host name
	addr netip.AddrPort // the address dialled

	conn net.Conn // the TCP connection
	c    *smtp.Client
	wire *wireConn
	stop func() bool // undoes the AfterFunc that closes conn when ctx ends

	tls      bool
	verified bool  // the TLS certificate verified for host
	tlsErr   error // why it did not

	dsn, utf8, eightBit bool  // the server's DSN, SMTPUTF8 and 8BITMIME extensions
	maxSize             int64 // the server's SIZE limit; 0: none given
	sent                int   // transactions done
	broken              bool  // the connection cannot be used any more
	// open: a transaction was left open (no recipient taken, or DATA
	// refused). The next transaction ends it with RSET first; QUIT ends
	// it anyway (RFC 5321 4.1.1.10), and go-smtp's client greets again
	// after RSET, so an RSET just before QUIT would cost an EHLO.
	open bool
}

// errTLSRefused is a STARTTLS refused by the server; the session goes on
// in plaintext.
var errTLSRefused = errors.New("STARTTLS refused")

// errTLSHandshake is a failed TLS handshake; the connection is lost.
var errTLSHandshake = errors.New("TLS handshake failed")

// connect opens a session with the first mail exchanger that answers,
// trying each host's addresses in order. When none does, the attempt says
// why; it is permanent only when every server answered with a 5xx.
//
// With an MTA-STS policy in enforce mode, a server only counts when its
// TLS is verified for its name: no plaintext fallback (RFC 8461 4.2).
func (r *Relay) connect(ctx context.Context, hosts []MXHost, sts *stsPolicy) (*session, attempt) {
	var errs []error
	allPermanent := true
	dials := 0
	for _, h := range hosts {
		for _, a := range h.Addrs {
			if dials >= maxDialsPerDelivery {
				break
			}
			dials++
			addr := netip.AddrPortFrom(a, uint16(r.cfg.Port))
			enforce := sts != nil && sts.mode == stsEnforce
			s, att := r.open(ctx, h.Host, addr, enforce || !r.tlsBroken(addr))
			if !att.failed() {
				if err := stsCheckSession(sts, s); err != nil {
					s.close()
					att = temporary(failure(statusSTS, h.Host, err))
				} else {
					return s, att
				}
			}
			if errors.Is(att.Err, errTLSHandshake) && !enforce {
				// RFC 7435 (opportunistic security): after a failed
				// handshake, the same server in plaintext.
				r.markTLSBroken(addr)
				r.log.Warn("tls handshake", "proto", "relay", "result", "fail", "version", "", "host", h.Host, "addr", addr,
					"err", att.Err, "detail", "retrying without TLS")
				s, att = r.open(ctx, h.Host, addr, false)
				if !att.failed() {
					return s, att
				}
			}
			r.log.Info("mail exchanger unusable", "host", h.Host, "addr", addr, "err", att.Err)
			errs = append(errs, att.Err)
			allPermanent = allPermanent && att.Permanent
			if ctx.Err() != nil {
				return nil, temporary(failure(statusBadConnection, "", ctx.Err()))
			}
		}
	}
	if len(errs) == 0 {
		return nil, temporary(failure(statusNoRoute, "", errors.New("no mail exchanger address to try")))
	}
	// The last server's reason goes in the report; the log has them all.
	last := errs[len(errs)-1]
	if len(errs) > 1 {
		last = fmt.Errorf("%w (and %d other failures)", last, len(errs)-1)
	}
	return nil, attempt{Err: last, Permanent: allPermanent}
}

// open connects to one address of host and greets it, with STARTTLS when
// the server offers it and tryTLS is set.
func (r *Relay) open(ctx context.Context, host string, addr netip.AddrPort, tryTLS bool) (*session, attempt) {
	dctx, cancel := context.WithTimeout(ctx, r.cfg.Timeouts.Connect)
	conn, err := r.cfg.Dialer(dctx, "tcp", addr.String())
	cancel()
	if err != nil {
		return nil, temporary(failure(statusNoAnswer, host, fmt.Errorf("connect to %s: %w", addr, err)))
	}
	s := &session{r: r, id: newID(), host: host, addr: addr, conn: conn}
	s.log = r.log.With("session", s.id, "host", host, "addr", addr.String())
	s.stop = context.AfterFunc(ctx, func() { conn.Close() })
	s.wire = &wireConn{Conn: conn, s: s}
	s.c = s.newClient(s.wire)
	if err := s.c.Hello(r.cfg.Hostname); err != nil {
		s.close()
		return nil, asAttempt(host, "greeting or EHLO", err)
	}
	if ok, _ := s.c.Extension("STARTTLS"); ok && tryTLS {
		err := s.startTLS(ctx)
		switch {
		case errors.Is(err, errTLSRefused):
			s.log.Info("STARTTLS refused, going on without TLS", "err", err)
		case err != nil:
			// The connection is in an unknown state: no QUIT.
			s.broken = true
			s.close()
			return nil, temporary(failure(statusBadConnection, host, err))
		}
	}
	s.dsn, _ = s.c.Extension("DSN")
	s.utf8, _ = s.c.Extension("SMTPUTF8")
	s.eightBit, _ = s.c.Extension("8BITMIME")
	if size, ok := s.c.MaxMessageSize(); ok {
		s.maxSize = int64(size)
	}
	s.log.Info("connected", "tls", s.tls, "tls_verified", s.verified, "dsn", s.dsn, "smtputf8", s.utf8, "8bitmime", s.eightBit, "size", s.maxSize)
	return s, attempt{}
}

// newClient starts a go-smtp Client on conn with our timeouts.
func (s *session) newClient(conn net.Conn) *smtp.Client {
	c := smtp.NewClient(conn)
	c.CommandTimeout = s.r.cfg.Timeouts.Command
	c.SubmissionTimeout = s.r.cfg.Timeouts.DataEnd
	return c
}

// startTLS sends STARTTLS on the connection, after our EHLO, and on a 220
// makes the session a TLS one, greeted again with our host name (RFC 3207
// 4.2: the client must forget what it knew and send EHLO again).
func (s *session) startTLS(ctx context.Context) error {
	cmd := s.r.cfg.Timeouts.Command
	s.conn.SetDeadline(time.Now().Add(cmd))
	if _, err := s.wire.Write([]byte("STARTTLS\r\n")); err != nil {
		return fmt.Errorf("STARTTLS: %w", err)
	}
	// One byte at a time, so that nothing after the reply is read into a
	// buffer: what follows belongs to TLS.
	tr := textproto.NewReader(bufio.NewReaderSize(byteReader{s.wire}, 16))
	code, msg, err := tr.ReadResponse(220)
	s.conn.SetDeadline(time.Time{})
	var pe *textproto.Error
	if errors.As(err, &pe) {
		return fmt.Errorf("%w: %d %s", errTLSRefused, code, strings.Join(strings.Fields(msg), " "))
	}
	if err != nil {
		return fmt.Errorf("STARTTLS: %w", err)
	}
	tc := tls.Client(s.conn, s.tlsConfig())
	hctx, cancel := context.WithTimeout(ctx, s.r.cfg.Timeouts.Connect)
	err = tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		return fmt.Errorf("%w: %w", errTLSHandshake, err)
	}
	s.tls = true
	s.wire = &wireConn{Conn: tc, s: s}
	s.c = s.newClient(&greetedConn{Conn: s.wire, greeting: []byte("220 " + s.host + " TLS\r\n")})
	if err := s.c.Hello(s.r.cfg.Hostname); err != nil {
		return fmt.Errorf("EHLO after STARTTLS: %w", err)
	}
	cs := tc.ConnectionState()
	s.log.Info("tls handshake", "proto", "relay", "result", "ok", "version", tls.VersionName(cs.Version),
		"cipher", tls.CipherSuiteName(cs.CipherSuite), "verified", s.verified, "verify_err", s.tlsErr)
	return nil
}

// tlsConfig is the client's TLS configuration for this host. SMTP between
// servers does not authenticate certificates by default (RFC 3207 4.1,
// RFC 7435): a handshake with any certificate is better than plaintext. So
// the handshake never fails on the certificate; it is verified against
// Config.TLS.RootCAs (nil: the system's) and the MX host name only to
// record whether it would have passed.
func (s *session) tlsConfig() *tls.Config {
	cfg := &tls.Config{}
	if s.r.cfg.TLS != nil {
		cfg = s.r.cfg.TLS.Clone()
	}
	cfg.ServerName = s.host
	roots := cfg.RootCAs
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			s.tlsErr = errors.New("no certificate")
			return nil
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: s.host, Roots: roots, Intermediates: inter})
		s.verified, s.tlsErr = err == nil, err
		return nil
	}
	return cfg
}

// close ends the session: QUIT when the connection is sound, then close.
func (s *session) close() {
	if !s.broken && s.c != nil {
		s.c.CommandTimeout = quitTimeout
		s.c.Quit() // its error does not matter: the mail is already decided
	}
	s.conn.Close()
	s.stop()
}

// send runs one transaction and returns an attempt per entry of tx.
// Afterwards s.broken tells whether the connection can take another.
func (s *session) send(ctx context.Context, tx *transaction) []attempt {
	s.sent++
	e := tx.first()
	n := len(tx.entries)
	if reason := s.refuse(ctx, tx); reason.failed() {
		return allSame(n, reason)
	}
	opts := &smtp.MailOptions{Size: e.Size, UTF8: s.utf8 && s.needsUTF8(ctx, tx)}
	if s.dsn {
		// RFC 3461 4: the DSN parameters go on to a server that has DSN.
		switch strings.ToUpper(e.Ret) {
		case "FULL":
			opts.Return = smtp.DSNReturnFull
		case "HDRS":
			opts.Return = smtp.DSNReturnHeaders
		}
		if printableASCII(e.EnvID) {
			opts.EnvelopeID = e.EnvID
		}
	}
	if s.open {
		if err := s.c.Reset(); err != nil {
			// A server that will not end a transaction has said nothing
			// about these recipients: try them again later, elsewhere.
			s.broken = true
			a := asAttempt(s.host, "RSET", err)
			a.Permanent = false
			return allSame(n, a)
		}
		s.open = false
	}
	if err := s.c.Mail(smtpPath(e.Sender), opts); err != nil {
		return allSame(n, s.fail("MAIL FROM", err))
	}
	out := make([]attempt, n)
	var accepted []int
	for i, qe := range tx.entries {
		if err := s.c.Rcpt(smtpPath(qe.Recipient), s.rcptOptions(qe)); err != nil {
			out[i] = s.fail("RCPT TO", err)
			if s.broken {
				for j := i + 1; j < n; j++ {
					out[j] = out[i]
				}
				return out
			}
			continue
		}
		accepted = append(accepted, i)
	}
	if len(accepted) == 0 {
		// The transaction is open with no recipient: the next one, if
		// any, ends it.
		s.open = true
		return out
	}
	setAll := func(a attempt) []attempt {
		for _, i := range accepted {
			out[i] = a
		}
		return out
	}
	s.c.CommandTimeout = s.r.cfg.Timeouts.DataInit
	w, err := s.c.Data()
	s.c.CommandTimeout = s.r.cfg.Timeouts.Command
	if err != nil {
		a := s.fail("DATA", err)
		if !s.broken {
			s.open = true // the transaction may still be open
		}
		return setAll(a)
	}
	body, err := s.r.store.OpenBody(ctx, e.BodyID)
	if err != nil {
		// The server waits for data we cannot send: drop the connection
		// rather than end the message with a dot.
		s.broken = true
		return setAll(temporary(failure(statusLocal, "", fmt.Errorf("read queued message: %w", err))))
	}
	s.wire.inData = true
	_, err = io.Copy(w, withoutReturnPath(body))
	body.Close()
	if err != nil {
		s.wire.endData()
		s.broken = true
		return setAll(netAttempt(s.host, "message data", err))
	}
	_, err = w.CloseWithResponse()
	s.wire.endData()
	if err != nil {
		return setAll(s.fail("end of data", err))
	}
	return setAll(success())
}

// fail turns an error from the client in stage into an attempt, and marks
// the session broken when the connection is lost or closing (421).
func (s *session) fail(stage string, err error) attempt {
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code == 421 {
		s.broken = true
	}
	return asAttempt(s.host, stage, err)
}

// refuse checks what the server said it takes before MAIL FROM: a reason
// to fail every recipient, or no failure.
func (s *session) refuse(ctx context.Context, tx *transaction) attempt {
	e := tx.first()
	// RFC 1870 6: a message larger than the server's fixed maximum would
	// be refused with 552; say so now.
	if s.maxSize > 0 && e.Size > s.maxSize {
		return permanent(failure(statusMessageTooBig, s.host,
			fmt.Errorf("message of %d bytes exceeds the server's maximum size of %d bytes (SIZE)", e.Size, s.maxSize)))
	}
	if !s.utf8 {
		// RFC 6531 3.2: non-ASCII addresses need SMTPUTF8.
		if !isASCII(e.Sender) || !allRecipientsASCII(tx) {
			return permanent(failure(statusNeedsUTF8, s.host,
				errors.New("non-ASCII address, and the server does not offer SMTPUTF8")))
		}
	}
	if s.utf8 && s.eightBit {
		return attempt{}
	}
	scan, err := scanBody(ctx, s.r.store, e.BodyID, !s.eightBit)
	if err != nil {
		return temporary(failure(statusLocal, "", fmt.Errorf("read queued message: %w", err)))
	}
	if !s.utf8 && scan.headerUTF8 {
		return permanent(failure(statusNeedsUTF8Head, s.host,
			errors.New("the message header is not ASCII, and the server does not offer SMTPUTF8")))
	}
	// RFC 6152 3: 8-bit data goes only to a server with 8BITMIME; this
	// relay does not convert to 7 bits.
	if !s.eightBit && scan.body8bit {
		return permanent(failure(statusNeeds8Bit, s.host,
			errors.New("the message has 8-bit data, and the server does not offer 8BITMIME")))
	}
	return attempt{}
}

// needsUTF8 tells whether MAIL FROM needs the SMTPUTF8 parameter (RFC
// 6531 3.4): non-ASCII addresses or header fields.
func (s *session) needsUTF8(ctx context.Context, tx *transaction) bool {
	if !isASCII(tx.first().Sender) || !allRecipientsASCII(tx) {
		return true
	}
	scan, err := scanBody(ctx, s.r.store, tx.first().BodyID, false)
	return err == nil && scan.headerUTF8
}

func allRecipientsASCII(tx *transaction) bool {
	for _, e := range tx.entries {
		if !isASCII(e.Recipient) {
			return false
		}
	}
	return true
}

// rcptOptions passes NOTIFY and ORCPT on to a server with DSN (RFC 3461
// 4), skipping values go-smtp would refuse.
func (s *session) rcptOptions(e mailstore.QueueEntry) *smtp.RcptOptions {
	if !s.dsn {
		return nil
	}
	opts := &smtp.RcptOptions{}
	if n := parseNotify(e.Notify); n.given {
		switch {
		case n.never:
			opts.Notify = []smtp.DSNNotify{smtp.DSNNotifyNever}
		default:
			if n.success {
				opts.Notify = append(opts.Notify, smtp.DSNNotifySuccess)
			}
			if n.failure {
				opts.Notify = append(opts.Notify, smtp.DSNNotifyFailure)
			}
			if n.delay {
				opts.Notify = append(opts.Notify, smtp.DSNNotifyDelayed)
			}
		}
	}
	if typ, addr, ok := parseORcpt(e.ORcpt); ok && strings.EqualFold(typ, "rfc822") && printableASCII(addr) {
		opts.OriginalRecipientType = smtp.DSNAddressTypeRFC822
		opts.OriginalRecipient = addr
	}
	return opts
}

// bodyScan is what the relay needs to know about a message's bytes.
type bodyScan struct {
	headerUTF8 bool // the header section has non-ASCII bytes
	body8bit   bool // the body has non-ASCII bytes
}

// scanBody reads a stored message, its header only unless whole is set.
func scanBody(ctx context.Context, st *mailstore.Store, bodyID int64, whole bool) (bodyScan, error) {
	var res bodyScan
	b, err := st.OpenBody(ctx, bodyID)
	if err != nil {
		return res, err
	}
	defer b.Close()
	br := bufio.NewReader(b)
	inHeader := true
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			if inHeader {
				if !isASCII(string(line)) {
					res.headerUTF8 = true
				}
				if len(line) <= 2 && strings.TrimRight(string(line), "\r\n") == "" {
					inHeader = false
					if !whole {
						return res, nil
					}
				}
			} else if !res.body8bit && !isASCII(string(line)) {
				res.body8bit = true
				return res, nil
			}
		}
		switch {
		case err == io.EOF:
			return res, nil
		case errors.Is(err, bufio.ErrBufferFull):
		case err != nil:
			return res, err
		}
	}
}

// byteReader reads one byte at a time, so that a bufio.Reader over it
// never reads ahead of the line it returns.
type byteReader struct{ r io.Reader }

func (b byteReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return b.r.Read(p)
}

// greetedConn replays a greeting before what the connection reads: go-smtp's
// Client waits for a 220 first, which a server does not send after STARTTLS.
type greetedConn struct {
	net.Conn
	greeting []byte
}

func (g *greetedConn) Read(p []byte) (int, error) {
	if len(g.greeting) > 0 {
		n := copy(p, g.greeting)
		g.greeting = g.greeting[n:]
		return n, nil
	}
	return g.Conn.Read(p)
}

// wireConn is the connection as the SMTP client sees it: each write gets a
// deadline (RFC 5321 4.5.3.2.5, "Data Block: 3 minutes", which covers
// commands too), and with Config.Trace each line is logged, the message
// data as a byte count only.
type wireConn struct {
	net.Conn
	s      *session
	inData bool
	data   int64  // bytes of message data written
	rbuf   []byte // partial line read, for the trace
	reply  int    // bytes read since the last write: one reply's size
}

// maxReply bounds one reply: go-smtp bounds its lines but not how many
// continuation lines it keeps, and a hostile server could send them for
// minutes.
const maxReply = 64 << 10

var errReplyTooLong = fmt.Errorf("reply longer than %d octets", maxReply)

func (w *wireConn) Write(p []byte) (int, error) {
	w.reply = 0
	w.Conn.SetWriteDeadline(time.Now().Add(w.s.r.cfg.Timeouts.DataBlock))
	n, err := w.Conn.Write(p)
	if w.s.r.cfg.Trace {
		if w.inData {
			w.data += int64(n)
		} else {
			for _, line := range strings.SplitAfter(string(p[:n]), "\n") {
				if line != "" {
					w.s.trace("C", line)
				}
			}
		}
	}
	return n, err
}

func (w *wireConn) Read(p []byte) (int, error) {
	if w.reply >= maxReply {
		return 0, errReplyTooLong
	}
	n, err := w.Conn.Read(p[:min(len(p), maxReply-w.reply)])
	w.reply += n
	if w.s.r.cfg.Trace && n > 0 {
		w.flushData()
		w.rbuf = append(w.rbuf, p[:n]...)
		for {
			i := strings.IndexByte(string(w.rbuf), '\n')
			if i < 0 {
				break
			}
			w.s.trace("S", string(w.rbuf[:i+1]))
			w.rbuf = w.rbuf[i+1:]
		}
	}
	return n, err
}

// flushData traces the message data written so far, as a byte count.
func (w *wireConn) flushData() {
	if w.data > 0 {
		w.s.trace("C", fmt.Sprintf("<%d octets of message data>", w.data))
		w.data = 0
	}
}

// endData ends the message data.
func (w *wireConn) endData() {
	if w.s.r.cfg.Trace {
		w.flushData()
	}
	w.inData, w.data = false, 0
}

// trace logs one protocol line when Config.Trace is set.
func (s *session) trace(dir, line string) {
	s.log.Info("trace", "dir", dir, "line", strings.TrimRight(line, "\r\n"))
}

// printableASCII reports whether s is non-empty printable ASCII, as
// ENVID and ORCPT values must be before xtext encoding (RFC 3461 4).
func printableASCII(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// withoutReturnPath drops a leading Return-Path field from a stored
// message. It is added at final delivery, and a message stored for local
// recipients and queued for remote ones shares one body; RFC 5321 4.4 says
// a relay should not send one on.
func withoutReturnPath(r io.Reader) io.Reader {
	br := bufio.NewReader(r)
	line, err := br.ReadSlice('\n')
	if err != nil || len(line) < len("Return-Path:") || !strings.EqualFold(string(line[:len("Return-Path:")]), "Return-Path:") {
		return io.MultiReader(bytes.NewReader(append([]byte(nil), line...)), br)
	}
	// Skip the field's continuation lines, if it was folded.
	for {
		next, err := br.Peek(1)
		if err != nil || (next[0] != ' ' && next[0] != '\t') {
			return br
		}
		if _, err := br.ReadSlice('\n'); err != nil {
			return br
		}
	}
}

// smtpPath is an address as MAIL FROM and RCPT TO carry it, without the
// angle brackets go-smtp adds: the local part quoted when it is not a
// dot-atom (go-smtp's server hands it to us unquoted). An address that
// cannot be written is passed as it is, for the server to refuse.
func smtpPath(addr string) string {
	if p, ok := mime.Path(addr); ok {
		return p[1 : len(p)-1]
	}
	return addr
}
