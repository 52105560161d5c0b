package smtpd

import (
	"io"
	"net"
	"strings"
	"time"
)

// observer is go-smtp's Debug writer, which gets a copy of every read and
// write in plaintext, also under TLS. It counts the errors go-smtp answers
// by itself (unknown commands, bad syntax, commands out of sequence:
// enhanced codes 5.5.x, RFC 3463 3.6) as the session's errors, notices
// STARTTLS, and hands everything to the tracer when tracing.
type observer struct {
	cl    *client
	trace *tracer // nil: not tracing

	out        []byte // a partial reply line
	tlsStarted bool   // go-smtp answered STARTTLS with 220
}

func (o *observer) Write(p []byte) (int, error) {
	if !o.cl.conn.wroteSinceLast() {
		if o.trace != nil {
			o.trace.client(p)
		}
		return len(p), nil
	}
	if o.trace != nil {
		o.trace.server(p)
	}
	o.out = appendLines(o.out, p, o.reply)
	return len(p), nil
}

// reply looks at one line the server wrote.
func (o *observer) reply(line string) {
	switch {
	case strings.HasPrefix(line, "220 2.0.0 "):
		// The one 220 with an enhanced code: "Ready to start TLS".
		o.tlsStarted = true
	case len(line) >= 9 && line[0] == '5' && line[3] == ' ' && line[4:8] == "5.5.":
		o.cl.protocolError("command refused: " + printable(line))
	}
}

// protocolError counts one error of the session (Limits.MaxErrors); past
// the bound it ends the session with 421 4.7.0. It runs in the goroutine
// that serves commands, as go-smtp's writes do.
func (cl *client) protocolError(reason string) {
	if !cl.conn.countError() {
		return
	}
	cl.log.Warn("refused", "what", "session", "reason", "errors", "detail", "too many errors", "max_errors", cl.lim.MaxErrors, "last", reason)
	line := "421 4.7.0 " + cl.srv.cfg.Hostname + " Too many errors, closing connection"
	var w io.Writer
	if pc := cl.plaintext(); pc != nil {
		pc.SetWriteDeadline(time.Now().Add(cl.srv.cfg.WriteTimeout))
		w = pc
		if cl.obs.trace != nil {
			cl.obs.trace.emit("S", line)
		}
	}
	cl.conn.end(w, line+"\r\n")
}

// plaintext is the connection go-smtp writes its replies to, under TLS if
// there is TLS; nil when it cannot be known (STARTTLS before the first
// EHLO), and then the session ends without a last reply.
func (cl *client) plaintext() net.Conn {
	switch {
	case cl.smtpConn != nil:
		return cl.smtpConn.Conn()
	case cl.implicitTLS != nil:
		return cl.implicitTLS
	case cl.obs.tlsStarted:
		return nil
	}
	return cl.conn
}
