package relay

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/storetest"
)

func TestMain(m *testing.M) {
	storetest.DispatchChild(map[string]storetest.ChildMain{"kill": killChild})
	os.Exit(m.Run())
}

// killChild is the kill test's child (args: the store, the DNS server, the
// MX port): a relay delivering until killed.
func killChild(args []string) int {
	st, err := mailstore.Open(args[0], mailstore.Options{PasswordCost: mailstore.FastPasswordHash})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	port, _ := strconv.Atoi(args[2])
	r := New(Config{
		Hostname: "mail.alpha.test",
		Resolver: NewResolver(args[1]),
		Port:     port,
		Logger:   slog.New(slog.NewTextHandler(os.Stderr, nil)),
		LeaseTTL: killChildLeaseTTL,
	}, st)
	if err := r.RunOnce(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 4
	}
	// The test kills the child before it gets here.
	return 5
}

// killChildLeaseTTL is the child's queue lease: the restarted relay (a
// new owner) takes the entry once it has lapsed.
const killChildLeaseTTL = 3 * time.Second

// A relay killed in the middle of a delivery loses nothing: here the
// remote server has the whole message but the relay dies before its 250,
// so the entry is still queued and the message goes again after the
// restart, once the dead relay's lease on it has lapsed (a duplicate,
// which RFC 5321 6.1 accepts over a loss).
func TestKillDuringDelivery(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	d, mx := betaMX(t)
	inData, release := mx.holdData(1)

	path := filepath.Join(t.TempDir(), "postern.db")
	st := openStore(t, path, nil)
	ctx := context.Background()
	if err := st.AddDomain(ctx, "alpha.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddUser(ctx, "alice@alpha.test", "pw"); err != nil {
		t.Fatal(err)
	}
	submit(t, st, envelope("alice@alpha.test", "bob@beta.test"), "killed")
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	child := storetest.StartChild(t, "kill", path, d.Addr, strconv.Itoa(int(mx.addr.Port())))
	select {
	case <-inData:
	case <-child.Done():
		t.Fatalf("the child exited (%v) before sending the message", child.Wait())
	case <-time.After(30 * time.Second):
		t.Fatal("the child never sent the message")
	}
	child.Kill()
	mx.mu.Lock()
	mx.onData = nil
	mx.mu.Unlock()
	close(release) // the server now stores the first copy

	st2 := openStore(t, path, nil)
	q := queue(t, st2)
	if len(q) != 1 || q[0].Recipient != "bob@beta.test" {
		t.Fatalf("queue after the kill: %+v", q)
	}
	a := newAlphaOn(t, st2, nil, d, mx.addr.Port())
	// Still leased by the dead relay: not tried.
	a.runOnce(t)
	if q := queue(t, st2); len(q) != 1 || q[0].Attempts != 0 {
		t.Fatalf("queue after a run within the dead relay's lease: %+v", q)
	}
	time.Sleep(killChildLeaseTTL + 100*time.Millisecond)
	a.runOnce(t)
	if q := queue(t, st2); len(q) != 0 {
		t.Fatalf("queue after the restart: %+v", q)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(mx.received()) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // the first copy's session ends on its own
	}
	if got := mx.received(); len(got) != 2 {
		t.Errorf("the server has %d copies, want 2 (the one the kill interrupted, and the retry)", len(got))
	}
}
