package msgauth

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
)

func TestStoreKeysRoundTrip(t *testing.T) {
	st, err := mailstore.Open(filepath.Join(t.TempDir(), "postern.db"), mailstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	if err := st.AddDomain(ctx, "example.test"); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	made, err := AddGeneratedKeys(ctx, st, "example.test", now)
	if err != nil {
		t.Fatal(err)
	}
	got, err := StoreKeys{st}.SigningKeys(ctx, "example.test")
	if err != nil || len(got) != 2 {
		t.Fatalf("signing keys: %d, %v", len(got), err)
	}
	for i := range got {
		if got[i].Selector != made[i].Selector || got[i].DNSRecord() != made[i].DNSRecord() {
			t.Fatalf("key %d read back as %s %q, made %s %q", i, got[i].Selector, got[i].DNSRecord(), made[i].Selector, made[i].DNSRecord())
		}
	}
	msg := []byte("From: a@example.test\r\nTo: b@elsewhere.test\r\nSubject: hi\r\n\r\nbody\r\n")
	fields, err := (&Signer{Keys: StoreKeys{st}, Now: func() time.Time { return now.Add(time.Hour) }}).Sign(ctx, "example.test", msg)
	if err != nil || strings.Count(fields, "DKIM-Signature:") != 2 {
		t.Fatalf("signed with stored keys: %q, %v", fields, err)
	}
	if err := st.RetireDKIMKey(ctx, "example.test", made[1].Selector, now); err != nil {
		t.Fatal(err)
	}
	if got, _ := (StoreKeys{st}).SigningKeys(ctx, "example.test"); len(got) != 1 {
		t.Fatalf("%d signing keys after retiring one, want 1", len(got))
	}
}
