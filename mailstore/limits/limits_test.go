package limits

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestClientKeyGroupsIPv6By64(t *testing.T) {
	a := ClientKey(netip.MustParseAddr("2001:db8:1:2:aaaa::1"))
	b := ClientKey(netip.MustParseAddr("2001:db8:1:2:bbbb::9"))
	c := ClientKey(netip.MustParseAddr("2001:db8:1:3::1"))
	if a != b || a == c {
		t.Fatalf("keys %v %v %v: want the first two equal and the third apart", a, b, c)
	}
	if k := ClientKey(netip.MustParseAddr("::ffff:192.0.2.7")); k != netip.MustParsePrefix("192.0.2.7/32") {
		t.Fatalf("mapped IPv4 key %v, want 192.0.2.7/32", k)
	}
}

func TestConnsGroupsInsideParent(t *testing.T) {
	all := NewConns(3, 0, nil)
	mx := NewConns(2, 1, all)
	sub := NewConns(5, 5, all)
	a, b := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")

	r1, err := mx.Acquire(a)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mx.Acquire(a); !errors.Is(err, ErrTooManyFromAddress) {
		t.Fatalf("second from one address: %v, want ErrTooManyFromAddress", err)
	}
	r2, err := mx.Acquire(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mx.Acquire(netip.MustParseAddr("127.0.0.4")); !errors.Is(err, ErrTooManyConnections) {
		t.Fatalf("group full: %v, want ErrTooManyConnections", err)
	}
	// The group is full but submission still has room in the parent.
	r3, err := sub.Acquire(a)
	if err != nil {
		t.Fatalf("submission while MX is full: %v", err)
	}
	if _, err := sub.Acquire(b); !errors.Is(err, ErrTooManyConnections) {
		t.Fatalf("parent full: %v, want ErrTooManyConnections", err)
	}
	if sub.Open() != 1 || all.Open() != 3 {
		t.Fatalf("open: submission %d, all %d; want 1 and 3", sub.Open(), all.Open())
	}
	r1()
	r1() // a second call is a no-op
	r2()
	r3()
	if mx.Open() != 0 || sub.Open() != 0 || all.Open() != 0 {
		t.Fatalf("after release: %d %d %d open", mx.Open(), sub.Open(), all.Open())
	}
	if len(mx.count) != 0 || len(all.count) != 0 {
		t.Fatalf("per-address counts left behind: %v %v", mx.count, all.count)
	}
}

// fakeClock is a settable clock for failure windows.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func verifyIs(ok bool) func(context.Context) (bool, error) {
	return func(context.Context) (bool, error) { return ok, nil }
}

func TestLoginsBlockAcrossProtocols(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	l := NewLogins(LoginPolicy{MaxFailures: 4, FailureWindow: time.Minute, BlockFor: 10 * time.Minute, FailureDelay: -1, Now: clock.now})
	ctx := context.Background()
	attacker := netip.MustParseAddr("2001:db8::1")
	neighbour := netip.MustParseAddr("2001:db8::2") // same /64
	other := netip.MustParseAddr("127.0.0.9")
	for i, proto := range []string{"smtp", "pop3", "imap", "smtp"} {
		err := l.Check(ctx, Attempt{Protocol: proto, Remote: attacker, User: "bob"}, verifyIs(false))
		if !errors.Is(err, ErrLoginFailed) {
			t.Fatalf("failure %d over %s: %v, want ErrLoginFailed", i, proto, err)
		}
	}
	// Blocked on every protocol, even with the right password, for the
	// whole /64.
	for _, proto := range []string{"smtp", "pop3", "imap"} {
		if err := l.Check(ctx, Attempt{Protocol: proto, Remote: neighbour, User: "bob"}, verifyIs(true)); !errors.Is(err, ErrBlocked) {
			t.Fatalf("%s login from the blocked /64: %v, want ErrBlocked", proto, err)
		}
	}
	if err := l.Check(ctx, Attempt{Protocol: "imap", Remote: other, User: "bob"}, verifyIs(true)); err != nil {
		t.Fatalf("login from an untouched address: %v", err)
	}
	clock.advance(10*time.Minute + time.Second)
	if err := l.Check(ctx, Attempt{Protocol: "pop3", Remote: attacker, User: "bob"}, verifyIs(true)); err != nil {
		t.Fatalf("login after the block: %v", err)
	}
}

func TestLoginsFailuresOutsideWindowAreForgotten(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	l := NewLogins(LoginPolicy{MaxFailures: 3, FailureWindow: time.Minute, FailureDelay: -1, Now: clock.now})
	ip := netip.MustParseAddr("192.0.2.1")
	for range 10 {
		l.Check(context.Background(), Attempt{Remote: ip}, verifyIs(false))
		l.Check(context.Background(), Attempt{Remote: ip}, verifyIs(false))
		clock.advance(2 * time.Minute)
	}
	if l.Blocked(ip) {
		t.Fatal("two failures per window blocked the address; the limit is three")
	}
}

func TestLoginsVerifyErrorIsNotAFailure(t *testing.T) {
	l := NewLogins(LoginPolicy{MaxFailures: 1, FailureDelay: -1})
	ip := netip.MustParseAddr("192.0.2.1")
	boom := errors.New("disk on fire")
	err := l.Check(context.Background(), Attempt{Remote: ip, User: "x"}, func(context.Context) (bool, error) { return false, boom })
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want the verify error wrapped", err)
	}
	if l.Blocked(ip) {
		t.Fatal("an internal error counted as a failed login")
	}
}

func TestLoginsHashConcurrencyBounded(t *testing.T) {
	const slots = 3
	l := NewLogins(LoginPolicy{MaxHashes: slots, HashQueue: 1000, HashWait: time.Minute, FailureDelay: -1, MaxFailures: 1 << 20})
	var running, peak atomic.Int32
	verify := func(context.Context) (bool, error) {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(2 * time.Millisecond)
		running.Add(-1)
		return false, nil
	}
	var wg sync.WaitGroup
	var failed atomic.Int32
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ip := netip.AddrFrom4([4]byte{10, 0, byte(i / 250), byte(i % 250)})
			if errors.Is(l.Check(context.Background(), Attempt{Remote: ip}, verify), ErrLoginFailed) {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	if p := peak.Load(); p > slots || p == 0 {
		t.Fatalf("peak concurrent checks %d, want 1..%d", p, slots)
	}
	if failed.Load() != 200 {
		t.Fatalf("%d of 200 checks ran to a failure", failed.Load())
	}
}

func TestLoginsQueueBoundAndWait(t *testing.T) {
	l := NewLogins(LoginPolicy{MaxHashes: 1, HashQueue: 1, HashWait: 50 * time.Millisecond, FailureDelay: -1})
	hold := occupy(l)
	waited := make(chan error)
	go func() {
		waited <- l.Check(context.Background(), Attempt{Remote: netip.MustParseAddr("192.0.2.2")}, verifyIs(true))
	}()
	// The second is queued; a third turns it away, and then waits past
	// HashWait itself.
	waitQueued(t, l, 1)
	start := time.Now()
	third := l.Check(context.Background(), Attempt{Remote: netip.MustParseAddr("192.0.2.3")}, verifyIs(true))
	if err := <-waited; !errors.Is(err, ErrBusy) {
		t.Fatalf("check turned out of a full queue: %v, want ErrBusy", err)
	}
	if !errors.Is(third, ErrBusy) || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("check that waited past HashWait: %v after %v, want ErrBusy after 50ms", third, time.Since(start))
	}
	// A dirty address cannot turn a clean one away.
	l2 := NewLogins(LoginPolicy{MaxHashes: 1, HashQueue: 1, HashWait: time.Minute, FailureDelay: -1})
	dirty := netip.MustParseAddr("192.0.2.66")
	l2.Check(context.Background(), Attempt{Remote: dirty}, verifyIs(false))
	hold2 := occupy(l2)
	clean := make(chan error)
	go func() {
		clean <- l2.Check(context.Background(), Attempt{Remote: netip.MustParseAddr("192.0.2.2")}, verifyIs(true))
	}()
	waitQueued(t, l2, 1)
	if err := l2.Check(context.Background(), Attempt{Remote: dirty}, verifyIs(true)); !errors.Is(err, ErrBusy) {
		t.Fatalf("dirty check over a queue of clean ones: %v, want ErrBusy", err)
	}
	hold2()
	if err := <-clean; err != nil {
		t.Fatalf("clean check: %v", err)
	}
	hold()
	// The slot comes back: a new check runs.
	deadline := time.Now().Add(5 * time.Second)
	for l.Check(context.Background(), Attempt{Remote: netip.MustParseAddr("192.0.2.4")}, verifyIs(true)) != nil {
		if time.Now().After(deadline) {
			t.Fatal("slot never returned")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLoginsCleanAddressesGoFirst(t *testing.T) {
	l := NewLogins(LoginPolicy{MaxHashes: 1, HashQueue: 100, HashWait: time.Minute, FailureDelay: -1, MaxFailures: 1000})
	dirty := netip.MustParseAddr("192.0.2.66")
	if err := l.Check(context.Background(), Attempt{Remote: dirty}, verifyIs(false)); !errors.Is(err, ErrLoginFailed) {
		t.Fatal(err)
	}
	hold := occupy(l)
	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	// Queue the dirty ones, then the clean one.
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.Check(context.Background(), Attempt{Remote: dirty}, func(context.Context) (bool, error) {
				mu.Lock()
				order = append(order, "dirty")
				mu.Unlock()
				return false, nil
			})
		}()
		waitQueued(t, l, i+1)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		l.Check(context.Background(), Attempt{Remote: netip.MustParseAddr("192.0.2.7")}, func(context.Context) (bool, error) {
			mu.Lock()
			order = append(order, "clean")
			mu.Unlock()
			return true, nil
		})
	}()
	waitQueued(t, l, 4)
	hold()
	wg.Wait()
	if len(order) != 4 || order[0] != "clean" {
		t.Fatalf("order %v: the address without failures should go first", order)
	}
}

func TestLoginsNewestWaiterFirst(t *testing.T) {
	l := NewLogins(LoginPolicy{MaxHashes: 1, HashQueue: 10, HashWait: time.Minute, FailureDelay: -1})
	hold := occupy(l)
	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.Check(context.Background(), Attempt{Remote: netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)})}, func(context.Context) (bool, error) {
				mu.Lock()
				order = append(order, i)
				mu.Unlock()
				return true, nil
			})
		}()
		waitQueued(t, l, i+1)
	}
	hold()
	wg.Wait()
	if len(order) != 3 || order[0] != 2 {
		t.Fatalf("order %v: the newest waiter should be served first", order)
	}
}

func waitQueued(t *testing.T, l *Logins, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l.gate.mu.Lock()
		q := len(l.gate.first) + len(l.gate.rest)
		l.gate.mu.Unlock()
		if q == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d checks queued, want %d", q, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestLogFailureForm(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil)).With("session", "abc123")
	LogFailure(Attempt{Protocol: "pop3", Mechanism: "USER", Remote: netip.MustParseAddr("192.0.2.5"),
		User: `x" remote=6.6.6.6 ` + strings.Repeat("é", 300), Log: log}, "wrong credentials")
	line := buf.String()
	for _, want := range []string{`level=WARN msg="login failed" session=abc123 protocol=pop3 remote=192.0.2.5 user="x\" remote=6.6.6.6 `, ` mechanism=USER reason="wrong credentials"`} {
		if !strings.Contains(line, want) {
			t.Fatalf("log line %q lacks %q", line, want)
		}
	}
	if strings.Count(line, "é") != (256-18)/2 { // 256 octets cut back to whole characters
		t.Fatalf("user name not cut at 256 octets: %d é in %q", strings.Count(line, "é"), line)
	}
}

func TestBudgetFIFO(t *testing.T) {
	b := NewBudget(100, 0)
	if !b.TryReserve(60) {
		t.Fatal("TryReserve(60) of 100 failed")
	}
	if err := b.Reserve(context.Background(), 101, time.Second); !errors.Is(err, ErrNoMemory) {
		t.Fatalf("Reserve over the whole budget: %v", err)
	}
	got := make(chan error, 1)
	go func() { got <- b.Reserve(context.Background(), 50, time.Minute) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.mu.Lock()
		n := len(b.waiters)
		b.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Reserve did not wait")
		}
		time.Sleep(time.Millisecond)
	}
	// While someone waits, small reservations do not overtake it.
	if b.TryReserve(10) {
		t.Fatal("TryReserve overtook a waiter")
	}
	b.Release(60)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if b.Used() != 50 {
		t.Fatalf("used %d, want 50", b.Used())
	}
	if err := b.Reserve(context.Background(), 60, 20*time.Millisecond); !errors.Is(err, ErrNoMemory) {
		t.Fatalf("Reserve that cannot fit in time: %v, want ErrNoMemory", err)
	}
	b.Release(50)
	if b.Used() != 0 {
		t.Fatalf("used %d after releasing all", b.Used())
	}
}

func TestSpoolSpillsBeyondBudget(t *testing.T) {
	dir := t.TempDir()
	b := NewBudget(256<<10, 0)
	msg := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	sp := b.NewSpool(dir, int64(len(msg)))
	for off := 0; off < len(msg); off += 1000 {
		if _, err := sp.Write(msg[off:min(off+1000, len(msg))]); err != nil {
			t.Fatal(err)
		}
		if b.Used() > b.Max() {
			t.Fatalf("budget overrun: %d of %d", b.Used(), b.Max())
		}
	}
	if !sp.OnDisk() {
		t.Fatal("a 1 MiB message in a 256 KiB budget stayed in memory")
	}
	if b.Used() != 0 {
		t.Fatalf("spilled spool still holds %d bytes of the budget", b.Used())
	}
	files, _ := filepath.Glob(filepath.Join(dir, "spool-*.tmp"))
	if len(files) != 1 {
		t.Fatalf("spool files %v, want one", files)
	}
	if fi, err := os.Stat(files[0]); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("spool file mode: %v %v, want 0600", fi.Mode(), err)
	}
	if _, err := sp.Write([]byte("x")); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("write past the limit: %v, want ErrTooLarge", err)
	}
	// Loading needs the whole budget at most, since 3×1 MiB is more.
	got, err := sp.Load(context.Background(), 10, 3)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[10:], msg) || len(got) != 10+len(msg) {
		t.Fatal("loaded message differs from what was written")
	}
	if b.Used() != b.Max() {
		t.Fatalf("a loaded message holds %d, want the whole budget %d", b.Used(), b.Max())
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	files, _ = filepath.Glob(filepath.Join(dir, "spool-*.tmp"))
	if len(files) != 0 || b.Used() != 0 {
		t.Fatalf("after Close: files %v, budget used %d", files, b.Used())
	}
}

func TestSpoolSmallStaysInMemory(t *testing.T) {
	dir := t.TempDir()
	b := NewBudget(1<<20, 0)
	sp := b.NewSpool(dir, 0)
	defer sp.Close()
	sp.Write([]byte("Subject: hi\r\n\r\nbody\r\n"))
	if sp.OnDisk() || sp.Size() != 21 {
		t.Fatalf("small spool: on disk %v, size %d", sp.OnDisk(), sp.Size())
	}
	got, err := sp.Load(context.Background(), 0, 2)
	if err != nil || string(got) != "Subject: hi\r\n\r\nbody\r\n" {
		t.Fatalf("Load: %q %v", got, err)
	}
}

func TestSpoolsTogetherStayWithinBudget(t *testing.T) {
	dir := t.TempDir()
	b := NewBudget(1<<20, 0)
	chunk := bytes.Repeat([]byte("x"), 8192)
	var wg sync.WaitGroup
	var spools []*Spool
	var mu sync.Mutex
	for range 20 {
		sp := b.NewSpool(dir, 0)
		spools = append(spools, sp)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 64 { // 512 KiB each, 10 MiB in all
				if _, err := sp.Write(chunk); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if u := b.Used(); u > b.Max() {
					t.Errorf("budget overrun: %d", u)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, sp := range spools {
		if sp.Size() != 64*8192 {
			t.Fatalf("spool size %d", sp.Size())
		}
		sp.Close()
	}
	if b.Used() != 0 {
		t.Fatalf("budget used %d after closing all spools", b.Used())
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "*")); len(files) != 0 {
		t.Fatalf("files left: %v", files)
	}
}

func TestRemoveStale(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"spool-1.tmp", "spool-2.tmp", "mail.db"} {
		os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o600)
	}
	if err := RemoveStale(dir); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(files) != 1 || filepath.Base(files[0]) != "mail.db" {
		t.Fatalf("left %v, want only mail.db", files)
	}
}

func TestLoadMovesIdleSpoolsToDisk(t *testing.T) {
	dir := t.TempDir()
	b := NewBudget(1<<20, 0)
	a, bb := b.NewSpool(dir, 0), b.NewSpool(dir, 0)
	defer a.Close()
	defer bb.Close()
	msgA := bytes.Repeat([]byte("A"), 400<<10)
	a.Write(msgA)
	bb.Write(bytes.Repeat([]byte("B"), 300<<10))
	if a.OnDisk() || bb.OnDisk() {
		t.Fatal("spools within the budget went to disk")
	}
	c := b.NewSpool(dir, 0)
	defer c.Close()
	msgC := bytes.Repeat([]byte("C"), 200<<10)
	c.Write(msgC)
	start := time.Now()
	got, err := c.Load(context.Background(), 0, 3) // 600 KiB: more than is free
	if err != nil {
		t.Fatalf("Load: %v after %v", err, time.Since(start))
	}
	if !bytes.Equal(got, msgC) {
		t.Fatal("loaded message differs")
	}
	if !a.OnDisk() {
		t.Fatal("the largest idle spool was not moved to disk to make room")
	}
	if b.Used() > b.Max() {
		t.Fatalf("budget overrun: %d", b.Used())
	}
	c.Close()
	gotA, err := a.Load(context.Background(), 0, 1)
	if err != nil || !bytes.Equal(gotA, msgA) {
		t.Fatalf("spool moved to disk reads back wrong: %v", err)
	}
}

// TestLoginsQueuedGuessesStopAtBlock: guesses from one address that were
// waiting for a password check when the address got blocked are not
// checked.
func TestLoginsQueuedGuessesStopAtBlock(t *testing.T) {
	l := NewLogins(LoginPolicy{MaxHashes: 1, HashQueue: 64, HashWait: 10 * time.Second, MaxFailures: 3, FailureDelay: -1})
	var checked atomic.Int32
	var wg sync.WaitGroup
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.Check(context.Background(), Attempt{Remote: netip.MustParseAddr("192.0.2.7")}, func(context.Context) (bool, error) {
				checked.Add(1)
				time.Sleep(5 * time.Millisecond)
				return false, nil
			})
		}()
	}
	wg.Wait()
	if n := checked.Load(); n > 3 {
		t.Fatalf("%d passwords checked for one address with MaxFailures 3", n)
	}
}

func TestSpoolDiskBound(t *testing.T) {
	dir := t.TempDir()
	b := NewBudget(64<<10, 200<<10)
	a := b.NewSpool(dir, 0)
	chunk := bytes.Repeat([]byte("y"), 10<<10)
	var err error
	for range 30 {
		if _, err = a.Write(chunk); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrSpoolFull) {
		t.Fatalf("writing 300 KiB past a 64 KiB memory and 200 KiB disk budget: %v, want ErrSpoolFull", err)
	}
	if d := b.DiskUsed(); d > 200<<10 {
		t.Fatalf("disk used %d over the bound", d)
	}
	a.Close()
	if b.DiskUsed() != 0 || b.Used() != 0 {
		t.Fatalf("after Close: disk %d, memory %d", b.DiskUsed(), b.Used())
	}
	c := b.NewSpool(dir, 0)
	defer c.Close()
	for range 15 {
		if _, err := c.Write(chunk); err != nil {
			t.Fatalf("a new spool after the space came back: %v", err)
		}
	}
}

// occupy takes l's only password-check slot with a check from 192.0.2.1
// that holds it until the returned function is called.
func occupy(l *Logins) (release func()) {
	hold := make(chan struct{})
	started := make(chan struct{})
	go l.Check(context.Background(), Attempt{Remote: netip.MustParseAddr("192.0.2.1")}, func(context.Context) (bool, error) {
		close(started)
		<-hold
		return true, nil
	})
	<-started
	return func() { close(hold) }
}

// TestLoginsBlockedListAndUnblock: the operator's view of blocked keys,
// latest block last, and lifting one.
func TestLoginsBlockedListAndUnblock(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	l := NewLogins(LoginPolicy{MaxFailures: 2, FailureWindow: time.Minute, BlockFor: 10 * time.Minute, FailureDelay: -1, Now: clock.now})
	ctx := context.Background()
	fail := func(ip string) {
		for range 2 {
			l.Check(ctx, Attempt{Protocol: "imap", Remote: netip.MustParseAddr(ip), User: "x"}, verifyIs(false))
		}
	}
	fail("192.0.2.7")
	clock.advance(time.Second)
	fail("2001:db8:1:2::99")
	l.Check(ctx, Attempt{Protocol: "pop3", Remote: netip.MustParseAddr("198.51.100.1"), User: "x"}, verifyIs(false)) // one failure: not blocked
	list, total := l.BlockedList(0)
	if total != 2 || len(list) != 2 || list[0].Key.String() != "192.0.2.7/32" || list[1].Key.String() != "2001:db8:1:2::/64" ||
		!list[1].Until.Equal(clock.now().Add(10*time.Minute)) {
		t.Fatalf("BlockedList = %v, %d", list, total)
	}
	if list, total := l.BlockedList(1); total != 2 || len(list) != 1 || list[0].Key.String() != "2001:db8:1:2::/64" {
		t.Fatalf("BlockedList(1) = %v, %d: want the latest block", list, total)
	}
	if !l.Unblock(netip.MustParseAddr("2001:db8:1:2::1")) || l.Blocked(netip.MustParseAddr("2001:db8:1:2::99")) {
		t.Fatal("Unblock of an address in the blocked /64 did not lift the block")
	}
	if l.Unblock(netip.MustParseAddr("198.51.100.1")) {
		t.Fatal("Unblock reported a block for an address that had one failure")
	}
	clock.advance(10 * time.Minute)
	if _, total := l.BlockedList(0); total != 0 {
		t.Fatalf("%d keys blocked after the block ended", total)
	}
}

// A password check that panics gives its slot back: a server that
// recovers the panic (IMAP LOGIN does) must not lose a slot each time.
func TestLoginsSlotFreedWhenVerifyPanics(t *testing.T) {
	l := NewLogins(LoginPolicy{MaxHashes: 1, HashQueue: 1, HashWait: 50 * time.Millisecond, FailureDelay: -1})
	a := Attempt{Protocol: "imap", Mechanism: "LOGIN", Remote: netip.MustParseAddr("192.0.2.1"), User: "u@example.test"}
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the panic did not reach the caller")
			}
		}()
		l.Check(context.Background(), a, func(context.Context) (bool, error) { panic("in the password check") })
	}()
	if err := l.Check(context.Background(), a, func(context.Context) (bool, error) { return true, nil }); err != nil {
		t.Fatalf("check after a panicking one: %v (its slot was not given back)", err)
	}
}

func TestKnownMechanism(t *testing.T) {
	for s, want := range map[string]bool{
		"PLAIN": true, "plain": true, "Login": true,
		"": false, "CRAM-MD5": false, "hunter2": false, "AGJvYgBodW50ZXIyeHl6": false, "PLAIN2": false,
	} {
		if got := KnownMechanism(s); got != want {
			t.Errorf("KnownMechanism(%q) = %v, want %v", s, got, want)
		}
	}
}
