package main

// The greylist scenario. Postern's MX has no greylisting, so the demo puts
// a small greylisting front on beta's MX address, as postgrey sits beside
// Postfix: a client address it has not seen is told 451 4.7.1 at RCPT
// (RFC 6647 2.1) and remembered; once the client comes back after the
// greylisting delay, its connection is passed through, byte for byte, to
// beta's real MX, from the client's own address so that the MX sees the
// real client. A real relay retries after minutes: the demo's clock jumps
// instead.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
)

const (
	// greylistDelay is how long a greylisted client must wait before its
	// retry is let through (postgrey's default is 5 minutes; the relay's
	// first retry comes after about 5, give or take its jitter).
	greylistDelay = time.Minute
	// greylistSession bounds one connection to the front, refused or
	// passed through.
	greylistSession = 2 * time.Minute
	// greylistMaxCommands bounds the commands of a refusal session.
	greylistMaxCommands = 20
	// greylistMaxLine bounds a command line (RFC 5321 4.5.3.1.4: 512).
	greylistMaxLine = 1000
)

// greylistFront answers on an MX address in front of the real MX.
type greylistFront struct {
	ln      net.Listener
	backend string // the real MX
	host    string
	now     func() time.Time
	log     *slog.Logger

	mu     sync.Mutex
	seen   map[string]time.Time // client address -> first refusal
	conns  map[net.Conn]bool    // open client connections
	closed bool
	wg     sync.WaitGroup
}

func (g *greylistFront) serve() {
	for {
		conn, err := g.ln.Accept()
		if err != nil {
			return
		}
		g.mu.Lock()
		if g.closed {
			g.mu.Unlock()
			conn.Close()
			return
		}
		if g.conns == nil {
			g.conns = map[net.Conn]bool{}
		}
		g.conns[conn] = true
		g.wg.Add(1)
		g.mu.Unlock()
		go func() {
			defer g.wg.Done()
			defer func() {
				conn.Close()
				g.mu.Lock()
				delete(g.conns, conn)
				g.mu.Unlock()
			}()
			conn.SetDeadline(time.Now().Add(greylistSession))
			ip := hostOf(conn.RemoteAddr().String())
			g.mu.Lock()
			first, known := g.seen[ip]
			g.mu.Unlock()
			if known && g.now().Sub(first) >= greylistDelay {
				g.log.Info("greylist passed", "client", ip, "waited", g.now().Sub(first).Round(time.Second).String(), "to", g.backend)
				g.pass(conn, ip)
				return
			}
			g.refuse(conn, ip)
		}()
	}
}

// pass connects to the real MX from the client's address and copies
// bytes both ways until either side closes.
func (g *greylistFront) pass(conn net.Conn, ip string) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	mx, err := d.Dial("tcp", g.backend)
	if err != nil {
		g.log.Error("greylist front: connect to the MX", "to", g.backend, "err", err)
		return
	}
	defer mx.Close()
	mx.SetDeadline(time.Now().Add(greylistSession))
	done := make(chan struct{}, 2)
	for _, p := range [][2]net.Conn{{mx, conn}, {conn, mx}} {
		go func() {
			io.Copy(p[0], p[1])
			// Either side closing ends the connection.
			p[0].Close()
			p[1].Close()
			done <- struct{}{}
		}()
	}
	<-done
	<-done
}

// refuse speaks just enough SMTP to refuse every recipient with 451 4.7.1
// and remembers the client.
func (g *greylistFront) refuse(conn net.Conn, ip string) {
	r := bufio.NewReaderSize(conn, greylistMaxLine)
	reply := func(s string) bool {
		_, err := io.WriteString(conn, s+"\r\n")
		return err == nil
	}
	if !reply("220 " + g.host + " ESMTP (greylisting front)") {
		return
	}
	var from string
	for i := 0; i < greylistMaxCommands; i++ {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		cmd := strings.TrimRight(string(line), "\r\n")
		verb, arg, _ := strings.Cut(cmd, " ")
		var ok bool
		switch strings.ToUpper(verb) {
		case "EHLO", "HELO":
			ok = reply("250 " + g.host)
		case "MAIL":
			from = arg
			ok = reply("250 2.1.0 OK")
		case "RCPT":
			g.mu.Lock()
			if _, known := g.seen[ip]; !known {
				g.seen[ip] = g.now()
			}
			first := g.seen[ip]
			g.mu.Unlock()
			g.log.Info("greylisted", "client", ip, "from", strings.TrimPrefix(from, "FROM:"), "rcpt", strings.TrimPrefix(arg, "TO:"),
				"retry_after", first.Add(greylistDelay).Format(time.TimeOnly))
			// RFC 6647 2.1: a temporary failure, 4.7.1 (RFC 3463: delivery
			// not authorized, for now).
			ok = reply("451 4.7.1 Greylisted: please try again later")
		case "RSET", "NOOP":
			ok = reply("250 2.0.0 OK")
		case "QUIT":
			reply("221 2.0.0 Bye")
			return
		case "DATA":
			ok = reply("554 5.5.1 No valid recipients")
		default:
			ok = reply("502 5.5.2 Command not implemented")
		}
		if !ok {
			return
		}
	}
	reply("421 4.7.0 Too many commands")
}

// close stops the front and ends its connections.
func (g *greylistFront) close() {
	g.ln.Close()
	g.mu.Lock()
	g.closed = true
	for c := range g.conns {
		c.Close()
	}
	g.mu.Unlock()
	g.wg.Wait()
}

// greylist: alpha's relay meets beta's greylisting, keeps the message in
// its queue, and delivers it on its retry.
func (d *demo) greylist(ctx context.Context) error {
	a, b := d.alpha, d.beta
	d.intro()
	d.out.note("beta's MX address %s is answered by a greylisting front (as postgrey beside Postfix); it passes a client it has seen %s earlier through to beta's real MX at %s", b.mx, greylistDelay, d.front.backend)
	d.out.beginStep("2. alice writes to bob")
	if err := d.submitPlain(ctx, b.user, "Greetings through the greylist"); err != nil {
		return fmt.Errorf("step 2, submission: %w", err)
	}
	d.out.beginStep("3. alpha's relay tries beta's MX: greylisted, 451 4.7.1 (a temporary failure, RFC 6647)")
	if err := a.relay.RunOnce(ctx); err != nil {
		return fmt.Errorf("step 3, relay: %w", err)
	}
	q, err := a.store.Queue(ctx, time.Time{}, 0)
	if err != nil || len(q) != 1 {
		return fmt.Errorf("step 3, queue: %d entries (%v), want 1", len(q), err)
	}
	e := q[0]
	if e.Attempts != 1 || !strings.Contains(e.LastError, "451") {
		return fmt.Errorf("step 3: queue entry after the first attempt: attempts %d, last error %q", e.Attempts, e.LastError)
	}
	wait := e.NextAttempt.Sub(d.now())
	d.out.note("queue entry %d: to <%s>, attempts %d, last error %q", e.ID, e.Recipient, e.Attempts, e.LastError)
	d.out.note("next attempt %s, in %s: a 4xx reply keeps the message queued (RFC 5321 4.2.5), and each further failure doubles the wait", e.NextAttempt.Format(time.TimeOnly), wait.Round(time.Second))
	d.out.note("(a spam sender that never retries is gone now; a real mail server comes back)")

	d.out.beginStep("4. The retry: the demo's clock jumps to the next attempt, and the relay tries again")
	d.advance(wait + time.Second)
	d.out.note("demo clock now %s (%s later)", d.now().Format(time.TimeOnly), (wait + time.Second).Round(time.Second))
	if err := a.relay.RunOnce(ctx); err != nil {
		return fmt.Errorf("step 4, relay: %w", err)
	}
	if q, err := a.store.Queue(ctx, time.Time{}, 0); err != nil || len(q) != 0 {
		last := ""
		if len(q) > 0 {
			last = q[0].LastError
		}
		return fmt.Errorf("step 4: the message is still queued (%v): %s", err, last)
	}
	d.out.beginStep("5. The message in bob's INBOX, on the second attempt")
	stored, err := inboxMessage(ctx, b)
	if err != nil {
		return fmt.Errorf("step 5: %w", err)
	}
	d.out.note("Subject: %s | %s", headerValue(stored, "Subject"), firstReceived(stored))
	d.out.emit(event{Kind: "result", Text: "OK: greylisted with 451 4.7.1, kept in the queue, and delivered on the retry."})
	return nil
}

// firstReceived is the newest Received field of msg, unfolded.
func firstReceived(msg []byte) string {
	for _, f := range headerFields(msg) {
		if strings.EqualFold(f.name, "Received") {
			return f.text
		}
	}
	return ""
}

// startGreylist puts a greylisting front on mx, dom's MX listener, and
// returns the listener the real MX is to serve.
func (d *demo) startGreylist(dom *demoDomain, mx net.Listener) (net.Listener, error) {
	real, err := demoListen("tcp", dom.ip+":0")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dom.name, err)
	}
	d.front = &greylistFront{ln: mx, backend: real.Addr().String(), host: "mx." + dom.name, now: d.now,
		log: d.out.logger(strings.TrimSuffix(dom.name, ".test") + " greylist"), seen: map[string]time.Time{}}
	go d.front.serve()
	return real, nil
}
