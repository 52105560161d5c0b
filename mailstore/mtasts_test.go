package mailstore

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A stored MTA-STS policy is found again after the store is closed and
// reopened, and a new fetch replaces it.
func TestMTASTSPolicyPersists(t *testing.T) {
	ctx := context.Background()
	db := newTestDB(t)
	s := db.open(t, Options{PasswordCost: FastPasswordHash})
	if _, err := s.MTASTSPolicyOf(ctx, "beta.test"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("policy before any: %v, want ErrNotFound", err)
	}
	now := time.Unix(1700000000, 0).UTC()
	p := MTASTSPolicy{Domain: "Beta.Test", ID: "id1", Policy: []byte("version: STSv1\n"), Fetched: now, Expires: now.Add(time.Hour)}
	if err := s.PutMTASTSPolicy(ctx, p); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = db.open(t, Options{PasswordCost: FastPasswordHash})
	defer s.Close()
	got, err := s.MTASTSPolicyOf(ctx, "beta.test")
	if err != nil {
		t.Fatal(err)
	}
	if got.Domain != "beta.test" || got.ID != "id1" || string(got.Policy) != "version: STSv1\n" || !got.Fetched.Equal(now) || !got.Expires.Equal(now.Add(time.Hour)) {
		t.Fatalf("policy after reopen: %+v", got)
	}
	p.ID = "id2"
	if err := s.PutMTASTSPolicy(ctx, p); err != nil {
		t.Fatal(err)
	}
	if got, err := s.MTASTSPolicyOf(ctx, "beta.test"); err != nil || got.ID != "id2" {
		t.Fatalf("policy after replace: %+v, %v", got, err)
	}
	p.ID = ""
	if err := s.PutMTASTSPolicy(ctx, p); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("empty id: %v, want ErrInvalidName", err)
	}
}
