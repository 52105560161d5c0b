package smtpd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/mailstore"
)

// consoleIP is the client address of a Submit session: the message comes
// from this process (the web console), as if from loopback.
var consoleIP = netip.AddrFrom4([4]byte{127, 0, 0, 1})

// ErrShuttingDown is Submit's error once Shutdown has begun.
var ErrShuttingDown = errors.New("smtpd: shutting down")

// Submit sends msg as the user (an address of the mailstore) with envelope
// sender from to rcpts through the submission pipeline of port 587,
// without a network connection: a session of the submission listener,
// logged in as user from the start, runs over an in-process pipe, so the
// message meets exactly what a mail client meets after AUTH: the sender
// and From policy, the size and recipient limits, the memory budget, the
// trace fields, DKIM signing, local delivery or the queue, and the logs
// and trace (listener "submission", remote "console"). A refusal is
// returned as the server's *smtp.SMTPError, wrapped. msg may use LF or
// CRLF line ends; dot-stuffing is done here.
func (s *Server) Submit(ctx context.Context, user, from string, rcpts []string, msg io.Reader) error {
	u, err := s.store.UserByAddress(ctx, user)
	if err != nil {
		return fmt.Errorf("submit as %s: %w", user, err)
	}
	if u.Disabled {
		return fmt.Errorf("submit as %s: user disabled: %w", user, mailstore.ErrAuthFailed)
	}
	if len(rcpts) == 0 {
		return fmt.Errorf("submit as %s: no recipients", user)
	}
	// The submission listener's connection budget, as for a client
	// connecting to it (released after the session below has ended).
	conns, _ := s.group(listenSubmission)
	release, err := conns.Acquire(consoleIP)
	if err != nil {
		return fmt.Errorf("submit as %s: %w", user, err)
	}
	defer release()
	srvEnd, cliEnd := net.Pipe()
	s.mu.Lock()
	if s.shutting {
		s.mu.Unlock()
		return ErrShuttingDown
	}
	s.wg.Add(1)
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer s.wg.Done()
		defer close(done)
		s.handle(consoleConn{srvEnd}, listenSubmission, consoleIP, &u)
	}()
	defer func() {
		cliEnd.Close()
		<-done
	}()
	// The context bounds the whole exchange: ending it fails the client's
	// next read or write.
	if d, ok := ctx.Deadline(); ok {
		cliEnd.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { cliEnd.SetDeadline(aLongTimeAgo) })
	defer stop()

	c := smtp.NewClient(consoleConn{cliEnd})
	defer c.Close()
	if err := c.Hello(s.cfg.Hostname); err != nil {
		return fmt.Errorf("submit: EHLO: %w", err)
	}
	opts := &smtp.MailOptions{}
	if !isASCII(from + strings.Join(rcpts, "")) {
		opts.UTF8 = true // RFC 6531 3.4
	}
	if err := c.Mail(from, opts); err != nil {
		return fmt.Errorf("submit: MAIL FROM:<%s>: %w", from, err)
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			return fmt.Errorf("submit: RCPT TO:<%s>: %w", r, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("submit: DATA: %w", err)
	}
	if _, err := io.Copy(w, msg); err != nil {
		w.Close()
		return fmt.Errorf("submit: message data: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("submit: end of data: %w", err)
	}
	c.Quit()
	return nil
}

// consoleConn is one end of Submit's pipe, named "console" in the logs.
// A pipe closed on this side answers io.ErrClosedPipe where a socket says
// net.ErrClosed, which is what go-smtp takes for the end of a session
// after QUIT (anything else it logs as an error).
type consoleConn struct{ net.Conn }

func socketError(err error) error {
	if errors.Is(err, io.ErrClosedPipe) {
		return net.ErrClosed
	}
	return err
}

func (c consoleConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	return n, socketError(err)
}

func (c consoleConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	return n, socketError(err)
}

func (c consoleConn) SetDeadline(t time.Time) error { return socketError(c.Conn.SetDeadline(t)) }
func (c consoleConn) SetReadDeadline(t time.Time) error {
	return socketError(c.Conn.SetReadDeadline(t))
}
func (c consoleConn) SetWriteDeadline(t time.Time) error {
	return socketError(c.Conn.SetWriteDeadline(t))
}

type consoleAddr struct{}

func (consoleAddr) Network() string { return "console" }
func (consoleAddr) String() string  { return "console" }

func (consoleConn) RemoteAddr() net.Addr { return consoleAddr{} }
func (consoleConn) LocalAddr() net.Addr  { return consoleAddr{} }
