package console

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
)

// storedHashStamp stands in for the store's password stamp (which
// mailstore does not offer yet): it reads the user's password hash from
// the SQLite file itself, so that the stamp changes exactly when
// Store.SetPassword (what `postern user passwd` calls) changes the hash.
// reads counts the calls.
func storedHashStamp(t *testing.T, st *mailstore.Store, reads *atomic.Int64) func(context.Context, string) ([]byte, error) {
	db, err := sql.Open("sqlite", "file:"+st.Path()+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return func(ctx context.Context, address string) ([]byte, error) {
		reads.Add(1)
		a, err := mailstore.NormalizeAddress(address)
		if err != nil {
			return nil, err
		}
		var hash string
		err = db.QueryRowContext(ctx, "SELECT password_hash FROM users WHERE address = ?", a).Scan(&hash)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("user %s: %w", a, mailstore.ErrNotFound)
		}
		return []byte(hash), err
	}
}

// TestConsolePasswordChangeEndsSessions: changing a user's password ends
// every console session of theirs (two browsers here): the next request
// is sent to the login page (a GET) or refused with 401 (the API), and an
// open event stream ends. Other users' sessions go on, and a login with
// the new password works.
func TestConsolePasswordChangeEndsSessions(t *testing.T) {
	var reads atomic.Int64
	var e *webEnv
	e = startWeb(t, func(c *Config) {
		c.PasswordStamp = func(ctx context.Context, address string) ([]byte, error) {
			return e.stamp(ctx, address)
		}
		c.keepAlive = 100 * time.Millisecond
	})
	e.stamp = storedHashStamp(t, e.store, &reads)
	ctx := context.Background()

	var bobs []*browser
	for range 2 {
		b := e.browser(t)
		if code := b.login("bob@example.test", testPassword); code != http.StatusSeeOther {
			t.Fatalf("bob's login: %d", code)
		}
		bobs = append(bobs, b)
	}
	alice := e.browser(t)
	if code := alice.login("alice@example.test", testPassword); code != http.StatusSeeOther {
		t.Fatalf("alice's login: %d", code)
	}
	for i, b := range bobs {
		if code, _, _ := b.do("GET", "/mail?box=INBOX", nil, nil); code != http.StatusOK {
			t.Fatalf("bob's browser %d before the change: %d", i, code)
		}
	}
	if reads.Load() == 0 {
		t.Fatal("the console never read the password stamp")
	}
	// An event stream open in bob's first browser, and one in alice's.
	streamEnded := func(b *browser) <-chan struct{} {
		t.Helper()
		req, _ := http.NewRequest("GET", e.base+"/api/events", nil)
		resp, err := b.c.Do(req)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("open event stream: %v %v", resp, err)
		}
		ended := make(chan struct{})
		go func() {
			defer close(ended)
			defer resp.Body.Close()
			io.Copy(io.Discard, resp.Body)
		}()
		return ended
	}
	bobStream, aliceStream := streamEnded(bobs[0]), streamEnded(alice)

	if err := e.store.SetPassword(ctx, "bob@example.test", "a brand new password"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-bobStream:
	case <-time.After(10 * time.Second):
		t.Error("bob's event stream still open 10s after his password changed")
	}
	select {
	case <-aliceStream:
		t.Error("alice's event stream ended with bob's password change")
	default:
	}
	if code, hdr, _ := bobs[0].do("GET", "/mail?box=INBOX", nil, nil); code != http.StatusSeeOther || !strings.HasPrefix(hdr.Get("Location"), "/login") {
		t.Errorf("bob's first browser after the password change: %d %q, want a redirect to /login", code, hdr.Get("Location"))
	}
	if code, _, _ := bobs[1].do("GET", "/api/events", nil, nil); code != http.StatusUnauthorized {
		t.Errorf("bob's second browser's API call after the password change: %d, want 401", code)
	}
	// Ended, not just refused: the sessions are gone from the console.
	if n := e.srv.Sessions(); n != 1 {
		t.Errorf("sessions after the change = %d, want 1 (alice's)", n)
	}
	if code, _, _ := alice.do("GET", "/mail?box=INBOX", nil, nil); code != http.StatusOK {
		t.Errorf("alice's session after bob's password change: %d, want 200", code)
	}
	// A state-changing request of an ended session does nothing either.
	if code, _, _ := bobs[0].post("/logout", url.Values{}); code != http.StatusUnauthorized {
		t.Errorf("POST with the ended session: %d, want 401", code)
	}

	if code := bobs[0].login("bob@example.test", testPassword); code != http.StatusUnauthorized {
		t.Errorf("login with the old password: %d, want 401", code)
	}
	if code := bobs[0].login("bob@example.test", "a brand new password"); code != http.StatusSeeOther {
		t.Fatalf("login with the new password: %d", code)
	}
	for range 2 {
		if code, _, _ := bobs[0].do("GET", "/mail?box=INBOX", nil, nil); code != http.StatusOK {
			t.Fatalf("the new session: %d, want 200", code)
		}
	}
}
