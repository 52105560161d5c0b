package imapd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-imap/v2"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
)

// A message over the in-flight memory budget goes through a spool file
// and is stored byte for byte; the file is gone afterwards.
func TestAppendSpooledToDisk(t *testing.T) {
	spoolDir := t.TempDir()
	mem := limits.NewBudget(64<<10, 0)
	env := newEnv(t, func(c *Config) {
		c.Shared.Memory = mem
		c.Shared.SpoolDir = spoolDir
	})
	c := env.dial(t, nil)
	var b strings.Builder
	b.WriteString("From: a@remote.test\r\nTo: u@example.test\r\nSubject: big\r\n\r\n")
	for i := 0; b.Len() < 600<<10; i++ {
		fmt.Fprintf(&b, "line %d \x01\xff of a large message\r\n", i)
	}
	msg := []byte(b.String())
	cmd := c.Append("INBOX", int64(len(msg)), nil)
	if _, err := cmd.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := cmd.Wait()
	if err != nil {
		t.Fatalf("APPEND: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.UIDSetNum(data.UID), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("FETCH: %v, %d messages", err, len(msgs))
	}
	if got := msgs[0].FindBodySection(section); !bytes.Equal(got, msg) {
		t.Errorf("stored message differs: %d bytes, want %d", len(got), len(msg))
	}
	if left, _ := os.ReadDir(spoolDir); len(left) != 0 {
		t.Errorf("spool files left: %v", left)
	}
	if mem.Used() != 0 {
		t.Errorf("%d bytes of the budget still held", mem.Used())
	}
}

// A FETCH racing an EXPUNGE in another session gets the message or NO
// [EXPUNGEISSUED], never a server error (RFC 2180 4.1).
func TestFetchRacesExpunge(t *testing.T) {
	env := newEnv(t)
	c := env.dial(t, nil)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	mb, err := env.store.MailboxByName(ctx, env.user.ID, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 60; i++ {
		env.deliver(t, testMessage(i, "race"))
		if err := c.Noop().Wait(); err != nil { // learn of it
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := env.store.StoreFlags(ctx, mb.ID, nil, mailstore.FlagsAdd, []string{mailstore.FlagDeleted}); err != nil {
				t.Error(err)
				return
			}
			if _, err := env.store.Expunge(ctx, mb.ID, nil); err != nil {
				t.Error(err)
			}
		}()
		_, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{
			Envelope:    true,
			BodySection: []*imap.FetchItemBodySection{{Peek: true}, {Peek: true, Part: []int{1}}},
		}).Collect()
		wg.Wait()
		var ie *imap.Error
		if err != nil && (!errors.As(err, &ie) || ie.Code != "EXPUNGEISSUED") {
			t.Fatalf("round %d: FETCH = %v", i, err)
		}
		if err := c.Noop().Wait(); err != nil { // learn of the expunge
			t.Fatal(err)
		}
	}
	if strings.Contains(env.logs.String(), "level=ERROR") {
		t.Errorf("ERROR logged:\n%s", env.logs)
	}
	// The session's Hold keeps the body of a message it still shows: a
	// FETCH that found the message never finds its body gone.
	if strings.Contains(env.logs.String(), "message expunged while fetched") {
		t.Errorf("a body went while the session could still address its message:\n%s", env.logs)
	}
}
