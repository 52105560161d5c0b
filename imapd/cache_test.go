package imapd

import (
	"context"
	"testing"
	"time"

	"github.com/postern/postern/mime"
)

func TestDataCacheKeepsDataInStore(t *testing.T) {
	env := newEnv(t)
	env.deliver(t, testMessage(1, "first"))
	env.deliver(t, testMessage(2, "second"))
	ctx := context.Background()
	mb, _ := env.store.MailboxByName(ctx, env.user.ID, "INBOX")
	msgs, err := env.store.Messages(ctx, mb.ID, nil)
	if err != nil || len(msgs) != 2 {
		t.Fatal(msgs, err)
	}
	c := newDataCache(env.store, 1, newEnvLogger())
	defer c.close()
	d1, err := c.get(ctx, msgs[0].BodyID)
	if err != nil || d1.Envelope.Subject != "first" {
		t.Fatalf("get: %+v, %v", d1, err)
	}
	// Computed once, it is written to the mailstore in the background.
	deadline := time.Now().Add(waitTimeout)
	for {
		raw, ok, err := env.store.BodyMeta(ctx, msgs[0].BodyID, bodyMetaKind)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			var d mime.IMAPData
			if err := d.UnmarshalBinary(raw); err != nil || d.Envelope.Subject != "first" {
				t.Fatalf("stored data: %+v, %v", d, err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("IMAP data never stored")
		}
		time.Sleep(time.Millisecond)
	}
	// The second body pushes the first out of memory; the first then
	// comes back from the store, not from parsing.
	if _, err := c.get(ctx, msgs[1].BodyID); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.ids[msgs[0].BodyID]; ok {
		t.Fatal("LRU kept two entries with room for one")
	}
	if err := env.store.SetBodyMeta(ctx, msgs[0].BodyID, bodyMetaKind, mustMarshal(t, &mime.IMAPData{Envelope: d1.Envelope, BodyStructure: d1.BodyStructure, HeaderSize: 7})); err != nil {
		t.Fatal(err)
	}
	again, err := c.get(ctx, msgs[0].BodyID)
	if err != nil || again.HeaderSize != 7 {
		t.Errorf("data did not come from the store: %+v, %v", again, err)
	}
	// Data of another version is computed again.
	if err := env.store.SetBodyMeta(ctx, msgs[1].BodyID, bodyMetaKind, []byte(`{"v":0}`)); err != nil {
		t.Fatal(err)
	}
	c2 := newDataCache(env.store, 10, newEnvLogger())
	defer c2.close()
	d2, err := c2.get(ctx, msgs[1].BodyID)
	if err != nil || d2.Envelope.Subject != "second" {
		t.Errorf("stale version: %+v, %v", d2, err)
	}
}

func mustMarshal(t *testing.T, d *mime.IMAPData) []byte {
	t.Helper()
	b, err := d.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
