package smtpd

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/mailstore/limits"
)

// TestSubmitPipeline: Submit runs the submission pipeline without a
// network connection: the message is signed, gets the trace fields and
// reaches a local mailbox; the From policy refuses another user's
// address with the server's reply.
func TestSubmitPipeline(t *testing.T) {
	w := newAuthWorld(t, func(c *Config) { c.Trace = true })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// LF line ends and a line starting with a dot: the client side
	// converts and dot-stuffs.
	msg := "From: Alice <alice@example.test>\nTo: bob@example.test\nSubject: from the console\n\nHello.\n.dot line\n"
	must(t, w.srv.Submit(ctx, alice, alice, []string{bob}, strings.NewReader(msg)))
	got := w.inbox(t, bob)
	if len(got) != 1 {
		t.Fatalf("%d messages for bob, want 1", len(got))
	}
	m := got[0]
	for _, want := range []string{"Return-Path: <alice@example.test>\r\nDKIM-Signature:", "(Authenticated sender: alice@example.test)",
		"Message-ID: <", "Date: ", "\r\n\r\nHello.\r\n.dot line\r\n"} {
		if !bytes.Contains(m, []byte(want)) {
			t.Errorf("delivered message lacks %q:\n%s", want, m)
		}
	}
	logs := w.logs.String()
	if strings.Contains(logs, "error handling") {
		t.Errorf("go-smtp logged an error for the session:\n%s", logs)
	}
	for _, want := range []string{"remote=console", "mechanism=console", `msg="message accepted"`, `line="MAIL FROM:<alice@example.test>`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q", want)
		}
	}

	// From policy: alice may not write as bob.
	err := w.srv.Submit(ctx, alice, alice, []string{bob}, strings.NewReader(messageFrom("bob@example.test", "forged")))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 553 && se.Code != 550 {
		t.Fatalf("forged From: %v, want a 5xx refusal", err)
	}
	// Envelope sender policy.
	if err := w.srv.Submit(ctx, alice, bob, []string{bob}, strings.NewReader(simpleMessage("x"))); !errors.As(err, &se) {
		t.Fatalf("envelope sender of another user: %v, want a refusal", err)
	}
	if n := len(w.inbox(t, bob)); n != 1 {
		t.Fatalf("refused messages delivered: %d in the inbox", n)
	}
	// Unknown and disabled users cannot submit.
	if err := w.srv.Submit(ctx, "nobody@example.test", alice, []string{bob}, strings.NewReader(simpleMessage("y"))); err == nil {
		t.Fatal("unknown user submitted")
	}
	must(t, w.store.SetDisabled(ctx, alice, true))
	if err := w.srv.Submit(ctx, alice, alice, []string{bob}, strings.NewReader(simpleMessage("z"))); err == nil {
		t.Fatal("disabled user submitted")
	}
}

// TestSubmitTakesAConnectionSlot: a console submission counts in the
// submission listener's connection budget like a client would.
func TestSubmitTakesAConnectionSlot(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.SubmissionLimits.MaxConnectionsPerAddress = 1 })
	c := e.dial(t, e.sub) // holds the one slot of 127.0.0.1
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	msg := "From: alice@example.test\nTo: bob@example.test\nSubject: x\n\nhi\n"
	if err := e.srv.Submit(ctx, alice, alice, []string{bob}, strings.NewReader(msg)); !errors.Is(err, limits.ErrTooManyFromAddress) {
		t.Fatalf("Submit with the address's slot taken: %v, want ErrTooManyFromAddress", err)
	}
	c.cmd("QUIT", "221")
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := e.srv.Submit(ctx, alice, alice, []string{bob}, strings.NewReader(msg))
		if err == nil {
			break
		}
		if !errors.Is(err, limits.ErrTooManyFromAddress) || time.Now().After(deadline) {
			t.Fatalf("Submit after the slot was freed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
