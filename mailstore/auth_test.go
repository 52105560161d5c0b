package mailstore

import (
	"context"
	"errors"
	"runtime"
	"testing"
)

// A password check's argon2id memory (19 MiB at the production cost) is
// garbage once Authenticate returns: nothing in the store keeps it.
func TestAuthenticateKeepsNoHashMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the production password hash")
	}
	s := newTestDB(t).open(t, Options{})
	defer s.Close()
	ctx := context.Background()
	if err := s.AddDomain(ctx, "example.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddUser(ctx, "u@example.test", "right"); err != nil {
		t.Fatal(err)
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	// Wrong passwords, an unknown user (the dummy hash) and a right one.
	for _, try := range []struct{ user, pass string }{
		{"u@example.test", "wrong1"}, {"u@example.test", "wrong2"}, {"nobody@example.test", "x"}, {"u@example.test", "right"},
	} {
		_, err := s.Authenticate(ctx, try.user, try.pass)
		if try.pass == "right" && err != nil || try.pass != "right" && !errors.Is(err, ErrAuthFailed) {
			t.Fatalf("authenticate %s: %v", try.user, err)
		}
	}
	after := heap()
	const perHash = 19 << 20
	if after > before && after-before > perHash/2 {
		t.Fatalf("heap grew by %d bytes over 4 password checks: hash memory is kept", after-before)
	}
}

// A stored hash with parameters argon2 refuses fails the login; it never
// panics the session.
func TestMalformedStoredHashFails(t *testing.T) {
	for _, h := range []string{
		"$argon2id$v=19$m=64,t=0,p=1$c2FsdHNhbHRzYWx0c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5",
		"$argon2id$v=19$m=64,t=1,p=0$c2FsdHNhbHRzYWx0c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5",
		"$argon2id$v=19$m=64,t=1,p=1$c2FsdA$",
		"$bcrypt$x",
	} {
		if checkPassword(h, "pw") {
			t.Errorf("%q matched", h)
		}
	}
}
