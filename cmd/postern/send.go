package main

// `postern send`: a submission client that composes a MIME message and
// sends it, optionally printing the SMTP dialogue.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/term"

	"github.com/postern/postern/mime"
)

const (
	// sendTimeout bounds the whole submission.
	sendTimeout = 5 * time.Minute
	// maxSendBody bounds the body read from standard input.
	maxSendBody = 64 << 20
)

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func cmdSend(c *cli, args []string) int {
	const name = "send"
	fs := c.flagSet(name, "[flags] (the body is read from standard input)")
	server := fs.String("server", "127.0.0.1:5870", "submission server `HOST:PORT`")
	implicitTLS := fs.Bool("tls", false, "implicit TLS (port 465 style) instead of STARTTLS")
	noTLS := fs.Bool("plain", false, "no TLS at all (only sensible on loopback)")
	insecure := fs.Bool("insecure", false, "do not verify the server's certificate (self-signed test servers)")
	caFile := fs.String("cafile", "", "trust the certificate in `FILE` (such as data_dir/tls-cert.pem)")
	user := fs.String("user", "", "log in as `ADDRESS`; the password is asked for, or is the first line of standard input")
	from := fs.String("from", "", "sender `ADDRESS` (default: -user)")
	subject := fs.String("subject", "", "subject (any UTF-8)")
	helo := fs.String("helo", "localhost", "name to give in EHLO")
	verbose := fs.Bool("v", false, "print the SMTP dialogue (passwords redacted)")
	var to, cc, attach listFlag
	fs.Var(&to, "to", "recipient `ADDRESS` (repeatable)")
	fs.Var(&cc, "cc", "copy recipient `ADDRESS` (repeatable)")
	fs.Var(&attach, "attach", "attach `FILE` (repeatable)")
	if code, ok := c.parse(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return c.usageError(fs, "unexpected argument %q", fs.Arg(0))
	}
	if len(to)+len(cc) == 0 {
		return c.usageError(fs, "at least one -to or -cc is required")
	}
	if *from == "" {
		*from = *user
	}
	if *from == "" {
		return c.usageError(fs, "-from or -user is required")
	}
	if *implicitTLS && *noTLS {
		return c.usageError(fs, "-tls and -plain exclude each other")
	}

	in := bufio.NewReader(c.stdin)
	password := ""
	if *user != "" {
		var err error
		if password, err = c.sendPassword(in, *user); err != nil {
			return c.fail(name, err)
		}
	}
	text, err := io.ReadAll(io.LimitReader(in, maxSendBody+1))
	if err != nil {
		return c.fail(name, fmt.Errorf("read body: %w", err))
	}
	if len(text) > maxSendBody {
		return c.fail(name, fmt.Errorf("body on standard input is over %d bytes", maxSendBody))
	}
	draft := mime.Draft{From: *from, To: to, Cc: cc, Subject: *subject, Text: string(text), Hostname: *helo}
	for _, f := range attach {
		data, err := os.ReadFile(f)
		if err != nil {
			return c.fail(name, fmt.Errorf("attachment: %w", err))
		}
		draft.Attachments = append(draft.Attachments, mime.Attachment{Filename: f, Data: data})
	}
	msg, err := mime.Compose(draft)
	if err != nil {
		return c.fail(name, err)
	}

	tlsConfig := &tls.Config{InsecureSkipVerify: *insecure, MinVersion: tls.VersionTLS12}
	if host, _, err := net.SplitHostPort(*server); err == nil {
		tlsConfig.ServerName = host
	}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return c.fail(name, fmt.Errorf("cafile: %w", err))
		}
		tlsConfig.RootCAs = x509.NewCertPool()
		if !tlsConfig.RootCAs.AppendCertsFromPEM(pem) {
			return c.fail(name, fmt.Errorf("cafile %s: no certificate in it", *caFile))
		}
	}
	mode := tlsStartTLS
	switch {
	case *implicitTLS:
		mode = tlsImplicit
	case *noTLS:
		mode = tlsNone
	}
	var trace io.Writer
	if *verbose {
		trace = c.stdout
	}
	ctx, cancel := context.WithTimeout(c.ctx, sendTimeout)
	defer cancel()
	sender := addressOnly(*from)
	rcpts := make([]string, 0, len(to)+len(cc))
	for _, a := range append(append([]string{}, to...), cc...) {
		rcpts = append(rcpts, addressOnly(a))
	}
	reply, err := submit(ctx, submission{
		addr: *server, mode: mode, tls: tlsConfig, helo: *helo,
		user: *user, password: password, from: sender, to: rcpts, msg: msg, trace: trace,
	})
	if err != nil {
		return c.fail(name, err)
	}
	fmt.Fprintf(c.stdout, "sent %d bytes to %s: %s\n", len(msg), strings.Join(rcpts, ", "), reply)
	return exitOK
}

// sendPassword asks for the password on the terminal, or takes the first
// line of standard input.
func (c *cli) sendPassword(in *bufio.Reader, user string) (string, error) {
	if f, ok := c.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprintf(c.stderr, "Password for %s: ", user)
		p, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(c.stderr)
		if err != nil {
			return "", fmt.Errorf("read password: %w", err)
		}
		return string(p), nil
	}
	line, err := in.ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read password: %w", err)
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("no password: give it as the first line of standard input")
	}
	return line, nil
}

// addressOnly takes the address out of "Name <address>".
func addressOnly(a string) string {
	if i, j := strings.LastIndexByte(a, '<'), strings.LastIndexByte(a, '>'); i >= 0 && j > i {
		return a[i+1 : j]
	}
	return strings.TrimSpace(a)
}

type tlsMode int

const (
	tlsStartTLS tlsMode = iota
	tlsImplicit
	tlsNone
)

// submission is one message to submit.
type submission struct {
	addr           string
	mode           tlsMode
	tls            *tls.Config
	helo           string
	user, password string
	from           string
	to             []string
	msg            []byte
	trace          io.Writer // nil: no trace
	// local is the address to connect from; nil lets the system choose.
	local net.Addr
}

// submit sends s and returns the server's final reply text.
func submit(ctx context.Context, s submission) (string, error) {
	d := net.Dialer{LocalAddr: s.local}
	raw, err := d.DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return "", fmt.Errorf("connect to %s: %w", s.addr, err)
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	tr := newSMTPTrace(s.trace)
	var conn net.Conn = raw
	if s.mode == tlsImplicit {
		tc := tls.Client(raw, s.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			return "", fmt.Errorf("TLS with %s: %w", s.addr, err)
		}
		tr.note("TLS established (%s)", tls.VersionName(tc.ConnectionState().Version))
		conn = tc
	}
	c := smtp.NewClient(tr.wrap(conn))
	if err := c.Hello(s.helo); err != nil {
		return "", fmt.Errorf("EHLO: %w", err)
	}
	if s.mode == tlsStartTLS {
		if ok, _ := c.Extension("STARTTLS"); !ok {
			return "", fmt.Errorf("%s does not offer STARTTLS (use -plain on loopback)", s.addr)
		}
		// go-smtp's client cannot upgrade an open session under a traced
		// connection, so STARTTLS is spoken here and a new client takes
		// over the TLS stream after a greeting it is handed locally.
		if err := tr.command(conn, "STARTTLS"); err != nil {
			return "", fmt.Errorf("STARTTLS: %w", err)
		}
		tc := tls.Client(raw, s.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			return "", fmt.Errorf("TLS with %s: %w", s.addr, err)
		}
		tr.note("TLS established (%s)", tls.VersionName(tc.ConnectionState().Version))
		c = smtp.NewClient(&greetedConn{Conn: tr.wrap(tc), greeting: strings.NewReader("220 after STARTTLS\r\n")})
		if err := c.Hello(s.helo); err != nil {
			return "", fmt.Errorf("EHLO after STARTTLS: %w", err)
		}
	}
	if s.user != "" {
		if err := c.Auth(sasl.NewPlainClient("", s.user, s.password)); err != nil {
			return "", fmt.Errorf("AUTH as %s: %w", s.user, err)
		}
	}
	opts := &smtp.MailOptions{Size: int64(len(s.msg))}
	if ok, _ := c.Extension("8BITMIME"); ok {
		opts.Body = smtp.Body8BitMIME
	}
	if err := c.Mail(s.from, opts); err != nil {
		return "", fmt.Errorf("MAIL FROM:<%s>: %w", s.from, err)
	}
	for _, r := range s.to {
		if err := c.Rcpt(r, nil); err != nil {
			return "", fmt.Errorf("RCPT TO:<%s>: %w", r, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", fmt.Errorf("DATA: %w", err)
	}
	if _, err := w.Write(s.msg); err != nil {
		return "", fmt.Errorf("send message: %w", err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", fmt.Errorf("end of data: %w", err)
	}
	c.Quit()
	return resp.StatusText, nil
}

// greetedConn hands a client a greeting that was not read from the wire:
// after STARTTLS the server sends none, but go-smtp's client expects one.
type greetedConn struct {
	net.Conn
	greeting *strings.Reader
}

func (g *greetedConn) Read(p []byte) (int, error) {
	if g.greeting.Len() > 0 {
		return g.greeting.Read(p)
	}
	return g.Conn.Read(p)
}

// smtpTrace prints an SMTP dialogue line by line, "C:" for what the client
// sends and "S:" for what the server answers. AUTH secrets are redacted and
// the message itself is shown as its header and a byte count.
type smtpTrace struct {
	w       io.Writer
	mu      sync.Mutex
	partial [2][]byte // per direction: bytes of a line not yet ended
	inData  bool      // the client is sending the message
	header  bool      // ... and is still in its header
	body    int
	authOn  bool // the server asked for an AUTH continuation
}

func newSMTPTrace(w io.Writer) *smtpTrace { return &smtpTrace{w: w} }

func (t *smtpTrace) note(format string, args ...any) {
	if t.w != nil {
		fmt.Fprintf(t.w, "-- "+format+"\n", args...)
	}
}

// command sends one command directly on conn and reads the one-line reply.
func (t *smtpTrace) command(conn net.Conn, cmd string) error {
	c := t.wrap(conn)
	if _, err := io.WriteString(c, cmd+"\r\n"); err != nil {
		return err
	}
	// Read the reply byte by byte so that nothing after it is consumed.
	var line []byte
	b := make([]byte, 1)
	for len(line) < 1000 {
		if _, err := c.Read(b); err != nil {
			return err
		}
		line = append(line, b[0])
		if b[0] == '\n' {
			break
		}
	}
	if !bytes.HasPrefix(line, []byte("220")) {
		return fmt.Errorf("server answered %q", bytes.TrimSpace(line))
	}
	return nil
}

func (t *smtpTrace) wrap(c net.Conn) net.Conn {
	if t.w == nil {
		return c
	}
	return &tracedConn{Conn: c, t: t}
}

type tracedConn struct {
	net.Conn
	t *smtpTrace
}

func (c *tracedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.t.feed(1, p[:n])
	return n, err
}

func (c *tracedConn) Write(p []byte) (int, error) {
	c.t.feed(0, p)
	return c.Conn.Write(p)
}

func (t *smtpTrace) feed(dir int, p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.partial[dir] = append(t.partial[dir], p...)
	for {
		i := bytes.IndexByte(t.partial[dir], '\n')
		if i < 0 {
			return
		}
		line := string(bytes.TrimRight(t.partial[dir][:i], "\r"))
		t.partial[dir] = t.partial[dir][i+1:]
		t.line(dir, line)
	}
}

func (t *smtpTrace) line(dir int, line string) {
	if dir == 1 {
		fmt.Fprintf(t.w, "S: %s\n", line)
		t.authOn = strings.HasPrefix(line, "334 ")
		return
	}
	switch {
	case t.inData && line == ".":
		if t.body > 0 {
			fmt.Fprintf(t.w, "C: [message body: %d bytes]\n", t.body)
		}
		fmt.Fprintln(t.w, "C: .")
		t.inData = false
	case t.inData && t.header && line == "":
		fmt.Fprintln(t.w, "C:")
		t.header = false
	case t.inData && t.header:
		fmt.Fprintf(t.w, "C: %s\n", line)
	case t.inData:
		t.body += len(line) + 2
	case t.authOn:
		fmt.Fprintln(t.w, "C: [credentials redacted]")
		t.authOn = false
	case strings.HasPrefix(strings.ToUpper(line), "AUTH "):
		f := strings.Fields(line)
		if len(f) > 2 {
			line = f[0] + " " + f[1] + " [credentials redacted]"
		}
		fmt.Fprintf(t.w, "C: %s\n", line)
	default:
		fmt.Fprintf(t.w, "C: %s\n", line)
		if strings.EqualFold(line, "DATA") {
			t.inData, t.header, t.body = true, true, 0
		}
	}
}
