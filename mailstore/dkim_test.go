package mailstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestDKIMKeys(t *testing.T) {
	s := openTest(t) // example.test is local
	ctx := context.Background()
	day := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	e := DKIMKey{Domain: "Example.TEST", Selector: "p20261201e", Algorithm: "ed25519", PrivatePEM: []byte("pem-e"), Created: day}
	r := DKIMKey{Domain: "example.test", Selector: "p20261201r", Algorithm: "rsa", PrivatePEM: []byte("pem-r"), Created: day}
	if err := s.AddDKIMKeys(ctx, e, r); err != nil {
		t.Fatal(err)
	}
	if err := s.AddDKIMKeys(ctx, e); !errors.Is(err, ErrExists) {
		t.Fatalf("same selector again: %v, want ErrExists", err)
	}
	if err := s.AddDKIMKeys(ctx, DKIMKey{Domain: "elsewhere.test", Selector: "x", Algorithm: "rsa", PrivatePEM: []byte("p"), Created: day}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("key for a domain that is not local: %v, want ErrNotFound", err)
	}
	keys, err := s.DKIMKeys(ctx, "example.test", true)
	if err != nil || len(keys) != 2 || keys[0].Selector != "p20261201e" || !bytes.Equal(keys[1].PrivatePEM, []byte("pem-r")) || !keys[0].Created.Equal(day) {
		t.Fatalf("keys %+v, %v", keys, err)
	}
	if err := s.RetireDKIMKey(ctx, "example.test", "p20261201r", day.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.RetireDKIMKey(ctx, "example.test", "p20261201r", day.Add(time.Hour)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("retiring a retired key: %v, want ErrNotFound", err)
	}
	if keys, _ := s.DKIMKeys(ctx, "example.test", true); len(keys) != 1 || keys[0].Selector != "p20261201e" {
		t.Fatalf("active keys after retiring one: %+v", keys)
	}
	all, _ := s.DKIMKeys(ctx, "example.test", false)
	if len(all) != 2 || !all[1].Retired.Equal(day.Add(time.Hour)) {
		t.Fatalf("all keys: %+v", all)
	}
	// Keys go with their domain.
	if err := s.DeleteDomain(ctx, "example.test"); err != nil {
		t.Fatal(err)
	}
	s.AddDomain(ctx, "example.test")
	if keys, _ := s.DKIMKeys(ctx, "example.test", false); len(keys) != 0 {
		t.Fatalf("keys outlived their domain: %+v", keys)
	}
}

// TestDKIMKeysIfNone: frontends of one store that each find a domain
// without keys at the same moment store one pair between them.
func TestDKIMKeysIfNone(t *testing.T) {
	ctx := context.Background()
	fe, _ := frontends(t, 3)
	day := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	var added atomic.Int32
	var wg sync.WaitGroup
	for i, s := range fe {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sel := fmt.Sprintf("p20261201-%d", i)
			ok, err := s.AddDKIMKeysIfNone(ctx, "example.test",
				DKIMKey{Domain: "example.test", Selector: sel + "e", Algorithm: "ed25519", PrivatePEM: []byte("e"), Created: day},
				DKIMKey{Domain: "example.test", Selector: sel + "r", Algorithm: "rsa", PrivatePEM: []byte("r"), Created: day})
			if err != nil {
				t.Errorf("frontend %d: %v", i, err)
			}
			if ok {
				added.Add(1)
			}
		}()
	}
	wg.Wait()
	keys, err := fe[0].DKIMKeys(ctx, "example.test", true)
	if err != nil || added.Load() != 1 || len(keys) != 2 {
		t.Fatalf("%d frontends added keys, %d active keys (%v); want 1 and 2", added.Load(), len(keys), err)
	}
	if _, err := fe[1].AddDKIMKeysIfNone(ctx, "elsewhere.test", DKIMKey{Domain: "example.test"}); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("a key of another domain: %v, want ErrInvalidName", err)
	}
	if _, err := fe[1].AddDKIMKeysIfNone(ctx, "elsewhere.test"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a domain that is not local: %v, want ErrNotFound", err)
	}
}
