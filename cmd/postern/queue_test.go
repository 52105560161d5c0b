package main

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
)

// runFunc runs one command function the way run does, with empty stdin.
func runFunc(fn func(*cli, []string) int, args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	c := &cli{ctx: context.Background(), stdin: strings.NewReader(""), stdout: &out, stderr: &errOut}
	return fn(c, args), out.String(), errOut.String()
}

// squash collapses runs of blanks, so that tabwriter's alignment does not
// matter to the checks.
func squash(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.Join(strings.Fields(l), " ")
	}
	return strings.Join(lines, "\n")
}

func TestQueueCommands(t *testing.T) {
	config, _ := adminConfig(t)
	cfg, err := loadConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	st, err := openStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := st.AddUser(ctx, "alice@example.test", "pw"); err != nil {
		t.Fatal(err)
	}
	env := mailstore.Envelope{Sender: "alice@example.test", Recipients: []mailstore.Recipient{
		{Address: "bob@remote.test"}, {Address: "carol@remote.test"}}}
	if _, err := st.DeliverEnvelope(ctx, env, []byte("Subject: hi\r\n\r\nhello\r\n")); err != nil {
		t.Fatal(err)
	}
	q, err := st.Queue(ctx, time.Time{}, 0)
	if err != nil || len(q) != 2 {
		t.Fatalf("queue %+v %v", q, err)
	}
	bob, carol := q[0].ID, q[1].ID
	if q[0].Recipient != "bob@remote.test" {
		bob, carol = carol, bob
	}
	later := time.Now().Add(time.Hour)
	if err := st.QueueDefer(ctx, bob, later, "mx.remote.test said: 451 4.2.1 Mailbox busy (in reply to RCPT TO)", false); err != nil {
		t.Fatal(err)
	}
	// carol's entry is being delivered by a relay of another frontend.
	if got, err := st.QueueLease(ctx, time.Now(), 0, "front2:77/x", time.Hour); err != nil || len(got) != 1 || got[0].ID != carol {
		t.Fatalf("lease: %v, %v", got, err)
	}
	st.Close()
	id := func(n int64) string { return strconv.FormatInt(n, 10) }

	code, out, errOut := runFunc(cmdQueue, "list", "-config", config)
	if code != exitOK {
		t.Fatalf("list: %d %s", code, errOut)
	}
	out = squash(out)
	for _, want := range []string{
		"ID NEXT ATTEMPT ATTEMPTS SIZE FROM TO LAST ERROR",
		" 1 ", "alice@example.test bob@remote.test mx.remote.test said: 451 4.2.1 Mailbox busy",
		"leased by front2:77/x 0 ", "alice@example.test carol@remote.test",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("list lacks %q:\n%s", want, out)
		}
	}
	if code, out, _ := runFunc(cmdQueue, "list", "-config", config, id(carol)); code != exitOK || strings.Contains(out, "bob@") || !strings.Contains(out, "carol@") {
		t.Errorf("list %d: %d\n%s", carol, code, out)
	}

	if code, out, errOut := runFunc(cmdQueue, "retry", "-config", config, id(bob)); code != exitOK || !strings.Contains(out, "is due now") {
		t.Fatalf("retry: %d %s %s", code, out, errOut)
	}
	st = reopen(t, cfg)
	q, _ = st.Queue(ctx, time.Now(), 0)
	st.Close()
	if len(q) != 2 {
		t.Errorf("after retry %d entries are due, want 2", len(q))
	}
	if code, out, _ := runFunc(cmdQueue, "retry", "-config", config); code != exitOK || !strings.Contains(out, "2 entries are due now") {
		t.Errorf("retry all: %d %s", code, out)
	}

	steps := []struct {
		args []string
		code int
		want string // in stdout, or in stderr when code != 0
	}{
		{[]string{"delete", "-config", config}, exitUsage, "wrong number of arguments"},
		{[]string{"delete", "-config", config, "x"}, exitUsage, "not a positive number"},
		{[]string{"delete", "-config", config, id(bob)}, exitOK, "deleted entry"},
		{[]string{"delete", "-config", config, id(bob)}, exitFailure, "not found"},
		{[]string{"list", "-config", config, id(bob)}, exitFailure, "not found"},
		{[]string{"retry", "-config", config, "99"}, exitFailure, "not found"},
		{[]string{"list", "-config", config, "1", "2"}, exitUsage, "wrong number of arguments"},
		{[]string{"frob"}, exitUsage, "unknown verb"},
		{[]string{"delete", "-config", config, id(carol)}, exitOK, "deleted entry"},
		{[]string{"list", "-config", config}, exitOK, "the queue is empty"},
	}
	for _, s := range steps {
		code, out, errOut := runFunc(cmdQueue, s.args...)
		text := out
		if s.code != exitOK {
			text = errOut
		}
		if code != s.code || !strings.Contains(text, s.want) {
			t.Errorf("queue %v: exit %d, want %d; stdout %q stderr %q (want %q)", s.args, code, s.code, out, errOut, s.want)
		}
	}
}

func reopen(t *testing.T, cfg *Config) *mailstore.Store {
	t.Helper()
	st, err := openStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
