package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/storetest"
)

// running is a `postern serve` started by a test.
type running struct {
	config  string
	dataDir string
	addrs   map[string]string // protocol name -> bound address
	stdout  *storetest.SyncBuffer
	stderr  *storetest.SyncBuffer
	stop    func() int // cancels serve and returns its exit code
}

// startServe runs `postern serve` in-process on a temporary configuration
// whose listeners are all on 127.0.0.1 with ports chosen by the system,
// and returns the addresses it printed. extra is appended to the
// configuration; if it starts with an [smtp] table, that table's keys go
// into the one the listener is in.
func startServe(t *testing.T, extra string) *running {
	t.Helper()
	return startServeDNS(t, "127.0.0.1:1", extra)
}

// startServeDNS is startServe with dns.server set to dnsAddr (startServe
// gives an address that refuses every query).
func startServeDNS(t *testing.T, dnsAddr, extra string) *running {
	t.Helper()
	smtpKeys := ""
	if rest, ok := strings.CutPrefix(extra, "[smtp]\n"); ok {
		if i := strings.Index(rest, "\n["); i >= 0 {
			smtpKeys, extra = rest[:i+1], rest[i+1:]
		} else {
			smtpKeys, extra = rest, ""
		}
	}
	r := &running{dataDir: filepath.Join(t.TempDir(), "data")}
	r.config = serveConfig{dataDir: r.dataDir, tls: true, smtp: smtpKeys, dns: dnsAddr, extra: "[relay]\n" + extra}.write(t)
	return startServeConfig(t, r)
}

// waitLog waits up to timeout for serve to log substr and fails the test,
// showing the log, if it does not.
func (r *running) waitLog(t *testing.T, substr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(r.stderr.String(), substr) {
		if time.Now().After(deadline) {
			t.Fatalf("serve did not log %q within %v:\n%s", substr, timeout, r.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startServeConfig runs serve on r.config, which keeps its data in
// r.dataDir, and fills in r.
func startServeConfig(t *testing.T, r *running) *running {
	t.Helper()
	r.stdout, r.stderr = &storetest.SyncBuffer{}, &storetest.SyncBuffer{}
	r.addrs = map[string]string{}
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan int, 1)
	go func() {
		exited <- runContext(ctx, []string{"serve", "-config", r.config}, strings.NewReader(""), r.stdout, r.stderr)
	}()
	var once sync.Once
	code := -1
	r.stop = func() int {
		once.Do(func() {
			cancel()
			select {
			case code = <-exited:
			case <-time.After(shutdownGrace + shutdownMargin + 5*time.Second):
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Errorf("serve did not stop:\n%s", buf[:n])
			}
		})
		return code
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(r.stdout.String(), "Add a user") {
		select {
		case code := <-exited:
			t.Fatalf("serve exited with %d\nstdout: %s\nstderr: %s", code, r.stdout.String(), r.stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("serve printed no listeners\nstdout: %s\nstderr: %s", r.stdout.String(), r.stderr.String())
		}
	}
	sc := bufio.NewScanner(strings.NewReader(r.stdout.String()))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && strings.HasPrefix(f[1], "127.0.0.1:") && !strings.Contains(sc.Text(), "not available") {
			r.addrs[f[0]] = f[1]
		}
	}
	t.Cleanup(func() { r.stop() })
	return r
}

// addUser adds a user through the command line, as an administrator would
// while serve runs.
func (r *running) addUser(t *testing.T, address, password string) {
	t.Helper()
	if code, out, errOut := runIn(t, password+"\n", "user", "add", "-config", r.config, address); code != exitOK {
		t.Fatalf("user add %s: %d %s %s", address, code, out, errOut)
	}
}

// deliver stores a message for address through a second handle on the
// store, as another process would.
func (r *running) deliver(t *testing.T, address string, msg []byte) {
	t.Helper()
	st, err := mailstore.Open(filepath.Join(r.dataDir, storeFile), mailstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Deliver(context.Background(), "sender@remote.test", []string{address}, msg); err != nil {
		t.Fatal(err)
	}
}

// pop3Cmd sends a POP3 command and checks its status.
func pop3Cmd(t *testing.T, c *textproto.Conn, cmd string, wantOK bool) string {
	t.Helper()
	if err := c.PrintfLine("%s", cmd); err != nil {
		t.Fatal(err)
	}
	line, err := c.ReadLine()
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(line, "+OK") != wantOK {
		t.Fatalf("%s: %s", cmd, line)
	}
	return line
}

func TestServePOP3(t *testing.T) {
	r := startServe(t, "")
	addr := r.addrs["pop3"]
	if addr == "" || r.addrs["pop3s"] == "" {
		t.Fatalf("serve did not start POP3:\n%s", r.stdout.String())
	}
	r.addUser(t, "bob@example.test", "bob's password")
	msg := "From: alice@remote.test\r\nSubject: over POP3\r\n\r\n.a line with a dot\r\nbye\r\n"
	r.deliver(t, "bob@example.test", []byte(msg))

	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := textproto.NewConn(conn)
	defer c.Close()
	if line, err := c.ReadLine(); err != nil || !strings.HasPrefix(line, "+OK") {
		t.Fatalf("greeting %q %v", line, err)
	}
	pop3Cmd(t, c, "USER bob@example.test", true)
	pop3Cmd(t, c, "PASS wrong", false)
	pop3Cmd(t, c, "USER bob@example.test", true)
	pop3Cmd(t, c, "PASS bob's password", true)
	if stat := pop3Cmd(t, c, "STAT", true); stat != fmt.Sprintf("+OK 1 %d", len(msg)) {
		t.Fatalf("STAT %q, want 1 message of %d octets", stat, len(msg))
	}
	pop3Cmd(t, c, "RETR 1", true)
	body, err := c.ReadDotBytes()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.ReplaceAll(string(body), "\n", "\r\n"); got != msg {
		t.Fatalf("RETR gave %q, want %q", got, msg)
	}
	pop3Cmd(t, c, "DELE 1", true)
	pop3Cmd(t, c, "QUIT", true)

	if code := r.stop(); code != exitOK {
		t.Fatalf("serve exited with %d\n%s", code, r.stderr.String())
	}
	code, out, _ := runIn(t, "", "mailbox", "list", "-config", r.config, "bob@example.test")
	if code != exitOK || !strings.Contains(out, "INBOX    0") {
		t.Fatalf("after DELE and QUIT the INBOX should be empty:\n%s", out)
	}
}

func TestServeSMTP(t *testing.T) {
	r := startServe(t, "")
	if r.addrs["smtp"] == "" || r.addrs["submission"] == "" || r.addrs["submissions"] == "" {
		t.Fatalf("serve did not start SMTP:\n%s", r.stdout.String())
	}
	r.addUser(t, "alice@example.test", "alice's password")
	r.addUser(t, "bob@example.test", "bob's password")

	// Inbound over the MX listener, as another domain's relay would send.
	msg := "From: carol@remote.test\r\nTo: bob@example.test\r\nSubject: inbound\r\n\r\nhello bob\r\n"
	if err := sendPlain(r.addrs["smtp"], "carol@remote.test", "bob@example.test", msg); err != nil {
		t.Fatalf("MX delivery: %v", err)
	}
	// Relaying through the MX without logging in is refused.
	err := sendPlain(r.addrs["smtp"], "carol@remote.test", "someone@far.test", msg)
	var smtpErr *smtp.SMTPError
	if !errors.As(err, &smtpErr) || smtpErr.Code != 554 {
		t.Fatalf("open relay check: %v", err)
	}
	// A submission for a remote domain is queued for the relay.
	var out, errOut bytes.Buffer
	code := run([]string{"send", "-server", r.addrs["submission"], "-cafile", filepath.Join(r.dataDir, selfSignedCert),
		"-helo", "client.example.test", "-user", "alice@example.test", "-to", "dave@far.test", "-subject", "outbound"},
		strings.NewReader("alice's password\nhi dave\n"), &out, &errOut)
	if code != exitOK {
		t.Fatalf("send: %d %s %s", code, out.String(), errOut.String())
	}
	code, queue, _ := runIn(t, "", "queue", "list", "-config", r.config)
	if code != exitOK || !strings.Contains(queue, "dave@far.test") || !strings.Contains(queue, "alice@example.test") {
		t.Fatalf("queue list after submission:\n%s", queue)
	}

	// bob's message, with the Return-Path and Received fields of final delivery.
	st, err := mailstore.Open(filepath.Join(r.dataDir, storeFile), mailstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	msgs := inboxMessages(t, st, "bob@example.test")
	if len(msgs) != 1 {
		t.Fatalf("bob's INBOX: %v", msgs)
	}
	body, err := st.ReadBody(ctx, msgs[0].BodyID)
	if err != nil {
		t.Fatal(err)
	}
	// The MX checked it: DNS (dns.server) refuses every lookup, so the
	// results are temperror, which the default policy accepts.
	if !strings.HasPrefix(string(body), "Return-Path: <carol@remote.test>\r\nAuthentication-Results: mail.example.test;") ||
		!strings.Contains(string(body), "spf=temperror smtp.mailfrom=remote.test") ||
		!strings.Contains(string(body), "\r\nReceived: from ") ||
		!strings.Contains(string(body), "by mail.example.test") || !strings.HasSuffix(string(body), msg) {
		t.Fatalf("stored message:\n%s", body)
	}
}

// sendPlain sends one message without TLS or AUTH, as a remote MTA that
// does not use STARTTLS would.
func sendPlain(addr, from, to, msg string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("mx.remote.test"); err != nil {
		return err
	}
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	if err := c.Rcpt(to, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

func TestServeIMAP(t *testing.T) {
	r := startServe(t, "")
	if r.addrs["imap"] == "" || r.addrs["imaps"] == "" {
		t.Fatalf("serve did not start IMAP:\n%s", r.stdout.String())
	}
	r.addUser(t, "bob@example.test", "bob's password")
	msg := "From: carol@remote.test\r\nTo: bob@example.test\r\nSubject: over IMAP\r\n\r\nhello\r\n"
	if err := sendPlain(r.addrs["smtp"], "carol@remote.test", "bob@example.test", msg); err != nil {
		t.Fatal(err)
	}
	c := imapLogin(t, r.addrs["imap"], "bob@example.test", "bob's password", nil)
	defer c.Close()
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil || sel.NumMessages != 1 {
		t.Fatalf("SELECT INBOX: %+v %v", sel, err)
	}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{Envelope: true}).Collect()
	if err != nil || len(msgs) != 1 || msgs[0].Envelope.Subject != "over IMAP" {
		t.Fatalf("FETCH ENVELOPE: %+v %v", msgs, err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
}

// A session still open at the stop is closed after the grace period, and
// serve still exits 0: a busy server stops cleanly, not as a failure.
func TestServeStopsWithOpenSession(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out the shutdown grace period")
	}
	r := startServe(t, "")
	r.addUser(t, "bob@example.test", "bob's password")
	conn, err := net.DialTimeout("tcp", r.addrs["pop3"], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	c := textproto.NewConn(conn)
	if _, err := c.ReadLine(); err != nil {
		t.Fatal(err)
	}
	pop3Cmd(t, c, "USER bob@example.test", true)
	pop3Cmd(t, c, "PASS bob's password", true)
	// The session stays open, idle, while serve stops.
	if code := r.stop(); code != exitOK {
		t.Fatalf("serve exited with %d\n%s", code, r.stderr.String())
	}
	if !strings.Contains(r.stderr.String(), "sessions cut at the end of the grace period") {
		t.Errorf("the cut sessions were not logged:\n%s", r.stderr.String())
	}
}

// TestServeAppendLimitFollowsMessageSize: IMAP announces APPENDLIMIT as
// smtp.max_message_bytes and refuses a larger APPEND before its literal.
func TestServeAppendLimitFollowsMessageSize(t *testing.T) {
	r := startServe(t, "[smtp]\nmax_message_bytes = 1000000\n")
	r.addUser(t, "user@example.test", "password")
	conn, err := net.DialTimeout("tcp", r.addrs["imap"], 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(conn)
	tagged := func(cmd, tag string) (string, string) {
		t.Helper()
		fmt.Fprintf(conn, "%s\r\n", cmd)
		var untagged strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("%s: %v", cmd, err)
			}
			if strings.HasPrefix(line, tag+" ") || strings.HasPrefix(line, "+") {
				return untagged.String(), line
			}
			untagged.WriteString(line)
		}
	}
	br.ReadString('\n') // greeting
	if _, st := tagged(`b LOGIN "user@example.test" "password"`, "b"); !strings.HasPrefix(st, "b OK") {
		t.Fatalf("login: %q", st)
	}
	caps, _ := tagged("a CAPABILITY", "a")
	if !strings.Contains(caps, "APPENDLIMIT=1000000") {
		t.Fatalf("capabilities %q lack APPENDLIMIT=1000000", caps)
	}
	if _, st := tagged("c APPEND INBOX {1000001}", "c"); !strings.HasPrefix(st, "c NO [TOOBIG]") {
		t.Fatalf("APPEND over the limit: %q, want NO [TOOBIG] before any +", st)
	}
	if _, st := tagged("d APPEND INBOX {13}", "d"); !strings.HasPrefix(st, "+") {
		t.Fatalf("APPEND within the limit: %q, want +", st)
	}
	if _, st := tagged("Subject: x\r\n\r\n", "d"); !strings.HasPrefix(st, "d OK") {
		t.Fatalf("APPEND: %q", st)
	}
}

// servedSerial opens a new TLS connection to addr and returns the serial
// number of the certificate the server presents.
func servedSerial(t *testing.T, addr string) *big.Int {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber
}

func TestServeReloadsCertificateOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := writeSelfSigned("mail.example.test", certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	serialA := certSerial(t, certFile)
	r := startServe(t, "[tls]\ncert = \""+certFile+"\"\nkey = \""+keyFile+"\"\n")
	r.addUser(t, "bob@example.test", "bob's password")
	if got := servedSerial(t, r.addrs["imaps"]); got.Cmp(serialA) != 0 {
		t.Fatalf("serve presents serial %x, want the configured %x", got, serialA)
	}

	// A session opened before the reload.
	c, err := imapclient.DialTLS(r.addrs["imaps"], &imapclient.Options{TLSConfig: &tls.Config{InsecureSkipVerify: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("bob@example.test", "bob's password").Wait(); err != nil {
		t.Fatal(err)
	}

	// The renewed pair, then SIGHUP as systemctl reload sends it.
	if err := writeSelfSigned("mail.example.test", certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	serialB := certSerial(t, certFile)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for servedSerial(t, r.addrs["imaps"]).Cmp(serialB) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("new connections still get serial %x after SIGHUP, want %x\n%s", serialA, serialB, r.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, proto := range []string{"submissions", "pop3s"} {
		if got := servedSerial(t, r.addrs[proto]); got.Cmp(serialB) != 0 {
			t.Errorf("%s presents serial %x after the reload, want %x", proto, got, serialB)
		}
	}
	if err := c.Noop().Wait(); err != nil {
		t.Fatalf("session opened before the reload: NOOP: %v", err)
	}

	// A broken pair keeps B and says which file is wrong.
	if err := os.WriteFile(certFile, []byte("-----BEGIN CERTIFICATE-----\nbroken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	r.waitLog(t, "not reloaded", 10*time.Second) // a broken pair is reported
	if !strings.Contains(r.stderr.String(), certFile+": no PEM") {
		t.Errorf("the error does not name %s:\n%s", certFile, r.stderr.String())
	}
	if got := servedSerial(t, r.addrs["imaps"]); got.Cmp(serialB) != 0 {
		t.Errorf("after a broken pair, serial %x, want %x still", got, serialB)
	}
	if err := c.Noop().Wait(); err != nil {
		t.Fatalf("session opened before the reloads: NOOP: %v", err)
	}
}
