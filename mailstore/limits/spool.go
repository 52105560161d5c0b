package limits

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// ErrTooLarge is returned by Spool.Write past the spool's limit.
var ErrTooLarge = errors.New("message over the size limit")

// ErrNoMemory is returned by Spool.Load when the budget could not give the
// message's bytes in time: a temporary failure (SMTP 452 4.3.1, IMAP NO
// [UNAVAILABLE]).
var ErrNoMemory = errors.New("too many messages in memory")

// Budget bounds the message bytes that all sessions hold in memory
// together. Its methods are safe for concurrent use.
type Budget struct {
	max int64

	mu      sync.Mutex
	used    int64
	waiters []*reservation // FIFO; while any waits, TryReserve fails
}

type reservation struct {
	n     int64
	ready chan struct{}
}

// NewBudget makes a budget of max bytes (> 0).
func NewBudget(max int64) *Budget { return &Budget{max: max} }

// Max is the budget's size.
func (b *Budget) Max() int64 { return b.max }

// Used is the bytes reserved now.
func (b *Budget) Used() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// TryReserve takes n bytes if they are free now and nobody is waiting.
func (b *Budget) TryReserve(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.waiters) > 0 || b.used+n > b.max {
		return false
	}
	b.used += n
	return true
}

// Reserve takes n bytes (at most Max), waiting in turn for at most wait.
// It returns ErrNoMemory when the wait ends first, or ctx's error.
func (b *Budget) Reserve(ctx context.Context, n int64, wait time.Duration) error {
	if n > b.max {
		return fmt.Errorf("reserve %d bytes of a %d byte budget: %w", n, b.max, ErrNoMemory)
	}
	b.mu.Lock()
	if len(b.waiters) == 0 && b.used+n <= b.max {
		b.used += n
		b.mu.Unlock()
		return nil
	}
	r := &reservation{n: n, ready: make(chan struct{})}
	b.waiters = append(b.waiters, r)
	b.mu.Unlock()

	t := time.NewTimer(wait)
	defer t.Stop()
	var err error
	select {
	case <-r.ready:
		return nil
	case <-t.C:
		err = ErrNoMemory
	case <-ctx.Done():
		err = ctx.Err()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, x := range b.waiters {
		if x == r {
			b.waiters = append(b.waiters[:i], b.waiters[i+1:]...)
			b.grant()
			return err
		}
	}
	return nil // granted as the wait ended
}

// Release gives back n reserved bytes.
func (b *Budget) Release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	b.grant()
}

// grant serves waiters in order while they fit. b.mu is held.
func (b *Budget) grant() {
	for len(b.waiters) > 0 && b.used+b.waiters[0].n <= b.max {
		r := b.waiters[0]
		b.waiters[0] = nil
		b.waiters = b.waiters[1:]
		b.used += r.n
		close(r.ready)
	}
}

// Spool reasons.
const (
	// spoolStep is how much memory a spool reserves at a time.
	spoolStep = 64 << 10
	// loadWait bounds how long Load waits for memory.
	loadWait = 30 * time.Second
)

// Spool holds one message as it arrives: in memory while the budget gives
// room, then in a temporary file (mode 0600, in dir) that Close removes.
// A Spool is used by one goroutine.
type Spool struct {
	b     *Budget
	dir   string
	limit int64

	mem  []byte
	held int64 // reserved from b
	f    *os.File
	size int64
}

// NewSpool starts a spool for at most limit bytes (<= 0: no limit) whose
// file, if it needs one, goes in dir.
func (b *Budget) NewSpool(dir string, limit int64) *Spool {
	return &Spool{b: b, dir: dir, limit: limit}
}

// Write appends p; past the limit it keeps nothing more and returns
// ErrTooLarge.
func (s *Spool) Write(p []byte) (int, error) {
	if s.limit > 0 && s.size+int64(len(p)) > s.limit {
		return 0, fmt.Errorf("spool %d more bytes after %d: %w", len(p), s.size, ErrTooLarge)
	}
	if s.f == nil {
		need := int64(len(s.mem) + len(p))
		for need > s.held {
			if !s.b.TryReserve(spoolStep) {
				if err := s.spill(); err != nil {
					return 0, err
				}
				break
			}
			s.held += spoolStep
		}
	}
	if s.f != nil {
		n, err := s.f.Write(p)
		s.size += int64(n)
		if err != nil {
			return n, fmt.Errorf("spool to %s: %w", s.f.Name(), err)
		}
		return n, nil
	}
	s.mem = append(s.mem, p...)
	s.size += int64(len(p))
	return len(p), nil
}

// spill moves the message so far to a file and gives back its memory.
func (s *Spool) spill() error {
	f, err := os.CreateTemp(s.dir, "spool-*.tmp") // CreateTemp makes it 0600
	if err != nil {
		return fmt.Errorf("spool message: %w", err)
	}
	if _, err := f.Write(s.mem); err != nil {
		f.Close()
		os.Remove(f.Name())
		return fmt.Errorf("spool to %s: %w", f.Name(), err)
	}
	s.f = f
	s.mem = nil
	s.b.Release(s.held)
	s.held = 0
	return nil
}

// Size is the bytes written so far.
func (s *Spool) Size() int64 { return s.size }

// OnDisk reports whether the message went to a file.
func (s *Spool) OnDisk() bool { return s.f != nil }

// Load returns the whole message in memory after headroom free bytes (so
// that a caller can prepend without copying), holding from the budget
// what that and the working copies of storing it take (factor times the
// size, at most the whole budget) until Close. It waits for memory in
// turn, and returns ErrNoMemory if none comes in time.
func (s *Spool) Load(ctx context.Context, headroom int, factor int64) ([]byte, error) {
	want := min(factor*(s.size+int64(headroom)), s.b.max)
	if want > s.held {
		if s.held > 0 && s.f == nil {
			// Waiting while holding part of the budget could starve
			// everyone: give it back and wait in turn for the whole.
			s.b.Release(s.held)
			s.held = 0
		}
		if err := s.b.Reserve(ctx, want-s.held, loadWait); err != nil {
			return nil, fmt.Errorf("load a %d byte message: %w", s.size, err)
		}
		s.held = want
	}
	buf := make([]byte, headroom, headroom+int(s.size))
	if s.f == nil {
		return append(buf, s.mem...), nil
	}
	buf = buf[:headroom+int(s.size)]
	if _, err := s.f.ReadAt(buf[headroom:], 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read spool %s: %w", s.f.Name(), err)
	}
	return buf, nil
}

// Close gives back the memory and removes the file. The spool is empty
// afterwards and may not be used again.
func (s *Spool) Close() error {
	s.b.Release(s.held)
	s.held = 0
	s.mem = nil
	if s.f == nil {
		return nil
	}
	name := s.f.Name()
	err := s.f.Close()
	if rerr := os.Remove(name); rerr != nil && err == nil {
		err = rerr
	}
	s.f = nil
	if err != nil {
		return fmt.Errorf("remove spool %s: %w", name, err)
	}
	return nil
}

// RemoveStale removes the spool files a process that was killed left in
// dir. Call it at start, before any spool of this process exists.
func RemoveStale(dir string) error {
	names, err := filepath.Glob(filepath.Join(dir, "spool-*.tmp"))
	if err != nil {
		return fmt.Errorf("find stale spool files in %s: %w", dir, err)
	}
	for _, n := range names {
		if err := os.Remove(n); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale spool file: %w", err)
		}
	}
	return nil
}
