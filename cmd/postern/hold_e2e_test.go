package main

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore/storetest"
	"github.com/postern/postern/smtpd/relay"
)

// With relay.hold, submitted mail for another domain stays queued and
// `queue list` says so; `queue retry ID` releases it to the relay.
func TestServeRelayHold(t *testing.T) {
	r := startServe(t, "hold = true\n") // lands in the [relay] table
	if !strings.Contains(r.stdout.String(), "Outbound mail is held in the queue") {
		t.Fatalf("banner does not say mail is held:\n%s", r.stdout.String())
	}
	r.addUser(t, "alice@example.test", "alice's password")
	code := run([]string{"send", "-server", r.addrs["submission"], "-cafile", filepath.Join(r.dataDir, selfSignedCert),
		"-user", "alice@example.test", "-to", "dave@far.test", "-subject", "held"},
		strings.NewReader("alice's password\nhi dave\n"), &storetest.SyncBuffer{}, &storetest.SyncBuffer{})
	if code != exitOK {
		t.Fatalf("send: exit %d", code)
	}
	// The relay holds it at its next look at the queue.
	var list string
	waitFor := func(what string, ok func(string) bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			_, list, _ = runIn(t, "", "queue", "list", "-config", r.config)
			if ok(list) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s; queue list:\n%s", what, list)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("the message was not held", func(l string) bool { return strings.Contains(l, relay.HoldNote) })
	m := regexp.MustCompile(`(?m)^(\d+)\s+held\s`).FindStringSubmatch(list)
	if m == nil {
		t.Fatalf("queue list does not show the entry as held:\n%s", list)
	}
	if code, out, errOut := runIn(t, "", "queue", "retry", "-config", r.config, m[1]); code != exitOK {
		t.Fatalf("queue retry: %s %s", out, errOut)
	}
	// Released: the relay tries it (its DNS, 127.0.0.1:1, fails), so the
	// entry is deferred with that error instead of held.
	waitFor("the released message was not tried", func(l string) bool {
		return strings.Contains(l, "dave@far.test") && !strings.Contains(l, relay.HoldNote)
	})
	if strings.Contains(list, " held ") {
		t.Errorf("still held after release:\n%s", list)
	}
}
