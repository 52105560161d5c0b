package smtpd

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
)

// The sender-domain answers are reused for localDomainTTL, then asked
// again; the domains remembered stay bounded whatever senders claim.
func TestLocalDomainsCache(t *testing.T) {
	st, err := mailstore.Open(filepath.Join(t.TempDir(), "postern.db"), mailstore.Options{PasswordCost: mailstore.FastPasswordHash})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	now := time.Unix(1_000_000, 0)
	d := &localDomains{store: st, now: func() time.Time { return now }}
	if local, err := d.isLocal(ctx, "new.test"); err != nil || local {
		t.Fatalf("before the domain exists: %v %v", local, err)
	}
	if err := st.AddDomain(ctx, "new.test"); err != nil {
		t.Fatal(err)
	}
	if local, _ := d.isLocal(ctx, "new.test"); local {
		t.Fatal("the answer was not reused within its time")
	}
	now = now.Add(localDomainTTL)
	if local, err := d.isLocal(ctx, "new.test"); err != nil || !local {
		t.Fatalf("after localDomainTTL: %v %v, want the domain local", local, err)
	}
	for i := range 3 * maxLocalDomains {
		if _, err := d.isLocal(ctx, fmt.Sprintf("d%d.test", i)); err != nil {
			t.Fatal(err)
		}
		if n := len(d.entries); n > maxLocalDomains {
			t.Fatalf("%d domains remembered, at most %d", n, maxLocalDomains)
		}
	}
}
