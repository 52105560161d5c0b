package console

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestConsolePasswordChangeEndsSessions: changing a user's password ends
// every console session of theirs (two browsers here): the next request
// is sent to the login page (a GET) or refused with 401 (the API), and an
// open event stream ends. Other users' sessions go on, and a login with
// the new password works. The console reads the stamp from the store
// (Store.PasswordStamp), as serve and the demo run it.
func TestConsolePasswordChangeEndsSessions(t *testing.T) {
	e := startWeb(t, func(c *Config) { c.keepAlive = 100 * time.Millisecond })
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
