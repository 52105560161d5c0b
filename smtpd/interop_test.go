package smtpd

import (
	"bytes"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-smtp"
)

// bigMessage is a multipart MIME message with a non-ASCII subject
// (RFC 2047) and a 5 MB attachment, in CRLF form.
func bigMessage(t testing.TB) []byte {
	t.Helper()
	var h mail.Header
	h.SetAddressList("From", []*mail.Address{{Name: "Zoë Alice", Address: alice}})
	h.SetAddressList("To", []*mail.Address{{Name: "Bob", Address: bob}})
	h.SetSubject("Grüße aus Köln — 5 MB Anhang ✓")
	h.SetDate(time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC))
	must(t, h.GenerateMessageIDWithHostname("example.test"))
	var buf bytes.Buffer
	w, err := mail.CreateWriter(&buf, h)
	must(t, err)
	var th mail.InlineHeader
	th.Set("Content-Type", "text/plain; charset=utf-8")
	tw, err := w.CreateSingleInline(th)
	must(t, err)
	tw.Write([]byte("Hallo Bob,\r\nanbei die Daten. Schöne Grüße\r\n.\r\n"))
	tw.Close()
	var ah mail.AttachmentHeader
	ah.Set("Content-Type", "application/octet-stream")
	ah.SetFilename("daten-ü.bin")
	aw, err := w.CreateAttachment(ah)
	must(t, err)
	data := make([]byte, 5<<20)
	rand.Read(data)
	aw.Write(data)
	aw.Close()
	must(t, w.Close())
	msg := buf.Bytes()
	if bytes.Contains(bytes.ReplaceAll(msg, []byte("\r\n"), nil), []byte("\n")) {
		t.Fatal("test message has bare LF")
	}
	return msg
}

// checkArrived checks that the message is in the INBOX byte for byte,
// after the trace fields, and that the subject decodes.
func checkArrived(t *testing.T, e *testEnv, user string, msg []byte, with string) {
	t.Helper()
	got := e.inbox(t, user)
	if len(got) == 0 {
		t.Fatalf("nothing in %s's INBOX", user)
	}
	last := got[len(got)-1]
	prefix := trimTrace(t, last, string(msg))
	if !strings.Contains(prefix, " with "+with+" ") {
		t.Errorf("Received does not say %s:\n%s", with, prefix)
	}
	r, err := mail.CreateReader(bytes.NewReader(last))
	must(t, err)
	if s, err := r.Header.Subject(); err != nil || s != "Grüße aus Köln — 5 MB Anhang ✓" {
		t.Errorf("subject %q, %v", s, err)
	}
}

func TestInteropGoClient(t *testing.T) {
	e := newTestEnv(t)
	msg := bigMessage(t)
	c, err := smtp.Dial(e.mx)
	must(t, err)
	defer c.Close()
	must(t, c.Hello("go.example.test"))
	must(t, c.SendMail("someone@elsewhere.test", []string{bob}, bytes.NewReader(msg)))
	checkArrived(t, e, bob, msg, "ESMTP")
}

func TestInteropPythonSmtplib(t *testing.T) {
	python := interop(t, "python3")
	e := newTestEnv(t, insecureEverywhere)
	msg := bigMessage(t)
	path := filepath.Join(t.TempDir(), "msg.eml")
	must(t, os.WriteFile(path, msg, 0o600))
	ca := e.certPEM(t)
	port := func(addr string) string { return addr[strings.LastIndexByte(addr, ':')+1:] }
	for _, tt := range []struct {
		name, mode, addr, user, mech, with string
	}{
		{"MX", "plain", e.mx, "", "", "ESMTP"},
		{"MX with STARTTLS", "starttls", e.mx, "", "", "ESMTPS"},
		{"submission STARTTLS PLAIN", "starttls", e.sub, alice, "PLAIN", "ESMTPSA"},
		{"submission STARTTLS LOGIN", "starttls", e.sub, alice, "LOGIN", "ESMTPSA"},
		{"submission implicit TLS", "tls", e.subTLS, alice, "PLAIN", "ESMTPSA"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := exec.Command(python, "testdata/smtplib_send.py", tt.mode, "127.0.0.1", port(tt.addr), ca,
				tt.user, alicePassword, tt.mech, alice, bob, path).CombinedOutput()
			if err != nil {
				t.Fatalf("smtplib: %v\n%s", err, out)
			}
			checkArrived(t, e, bob, msg, tt.with)
		})
	}
	// Without TLS, smtplib cannot log in: AUTH is not offered.
	out, err := exec.Command(python, "testdata/smtplib_send.py", "plain", "127.0.0.1", port(e.sub), ca,
		alice, alicePassword, "PLAIN", alice, bob, path).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "AUTH") {
		t.Errorf("login without TLS: %v\n%s", err, out)
	}
}

func TestInteropSwaks(t *testing.T) {
	swaks := interop(t, "swaks")
	e := newTestEnv(t) // loopback counts as secure: AUTH without TLS
	sent := bigMessage(t)
	path := filepath.Join(t.TempDir(), "msg.eml")
	must(t, os.WriteFile(path, sent, 0o600))
	// swaks ends the data with CRLF "." CRLF even after a final CRLF, so
	// the message arrives with one more empty line.
	msg := append(sent, "\r\n"...)
	run := func(t *testing.T, args ...string) string {
		t.Helper()
		out, err := exec.Command(swaks, append([]string{"--helo", "swaks.example.test", "--timeout", "60"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("swaks %v: %v\n%.3000s", args, err, out)
		}
		return string(out)
	}
	t.Run("MX", func(t *testing.T) {
		run(t, "--server", e.mx, "--from", "someone@elsewhere.test", "--to", bob, "--data", "@"+path)
		checkArrived(t, e, bob, msg, "ESMTP")
	})
	t.Run("submission AUTH PLAIN", func(t *testing.T) {
		run(t, "--server", e.sub, "--from", alice, "--to", bob, "--auth", "PLAIN",
			"--auth-user", alice, "--auth-password", alicePassword, "--data", "@"+path)
		checkArrived(t, e, bob, msg, "ESMTPA")
	})
	t.Run("submission AUTH LOGIN", func(t *testing.T) {
		run(t, "--server", e.sub, "--from", alice, "--to", bob, "--auth", "LOGIN",
			"--auth-user", alice, "--auth-password", alicePassword, "--data", "@"+path)
		checkArrived(t, e, bob, msg, "ESMTPA")
	})
	t.Run("relay refused", func(t *testing.T) {
		out, err := exec.Command(swaks, "--server", e.mx, "--from", "someone@elsewhere.test", "--to", remote,
			"--helo", "swaks.example.test").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "554 5.7.1") {
			t.Errorf("swaks to a remote address: %v\n%s", err, out)
		}
	})
	if support, _ := exec.Command(swaks, "--support").CombinedOutput(); strings.Contains(string(support), "=== TLS supported") {
		t.Run("STARTTLS", func(t *testing.T) {
			run(t, "--server", e.sub, "--tls", "--from", alice, "--to", bob, "--auth", "PLAIN",
				"--auth-user", alice, "--auth-password", alicePassword, "--data", "@"+path)
			checkArrived(t, e, bob, msg, "ESMTPSA")
		})
	}
}
