package limits

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// ErrTooLarge is returned by Spool.Write past the spool's limit.
var ErrTooLarge = errors.New("message over the size limit")

// ErrSpoolFull is returned by Spool.Write when the bytes spooled to disk
// by all sessions together would pass the budget's disk bound: a
// temporary failure (SMTP 452 4.3.1, IMAP NO [UNAVAILABLE]).
var ErrSpoolFull = errors.New("spool space used up")

// ErrNoMemory is returned by Spool.Load when the budget could not give the
// message's bytes in time: a temporary failure (SMTP 452 4.3.1, IMAP NO
// [UNAVAILABLE]).
var ErrNoMemory = errors.New("too many messages in memory")

// Budget bounds the message bytes that all sessions hold in memory
// together. Its methods are safe for concurrent use.
type Budget struct {
	max     int64
	maxDisk int64 // <= 0: no bound

	mu       sync.Mutex
	used     int64
	diskUsed int64
	waiters  []*reservation // FIFO; while any waits, TryReserve fails
	// spools are the spools holding memory that they could give up by
	// moving to a file: a Reserve that has to wait asks them to, so that
	// transfers left unfinished (or finished and waiting their turn) never
	// keep a message that is ready to be stored out of memory.
	spools map[*Spool]struct{}
}

type reservation struct {
	n     int64
	ready chan struct{}
}

// NewBudget makes a budget of max bytes (> 0) in memory and maxDisk bytes
// (<= 0: no bound) in spool files, for all sessions together.
func NewBudget(max, maxDisk int64) *Budget {
	return &Budget{max: max, maxDisk: maxDisk, spools: make(map[*Spool]struct{})}
}

// takeDisk counts n more spooled bytes if they fit.
func (b *Budget) takeDisk(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.maxDisk > 0 && b.diskUsed+n > b.maxDisk {
		return false
	}
	b.diskUsed += n
	return true
}

// giveDisk gives back n spooled bytes.
func (b *Budget) giveDisk(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.diskUsed -= n
}

// DiskUsed is the bytes in spool files now.
func (b *Budget) DiskUsed() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.diskUsed
}

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
	short := b.used + n - b.max
	spools := make([]*Spool, 0, len(b.spools))
	for sp := range b.spools {
		spools = append(spools, sp)
	}
	b.mu.Unlock()
	b.reclaim(spools, short)

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

// reclaim asks spools holding memory to move to files, the largest first,
// until about short bytes are freed. Releasing wakes the waiters.
func (b *Budget) reclaim(spools []*Spool, short int64) {
	type sized struct {
		sp   *Spool
		held int64
	}
	list := make([]sized, len(spools))
	for i, sp := range spools {
		list[i] = sized{sp, sp.heldNow()}
	}
	slices.SortFunc(list, func(x, y sized) int { return cmp.Compare(y.held, x.held) })
	for _, x := range list {
		if short <= 0 {
			return
		}
		short -= x.sp.giveUp()
	}
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
	// minChunk is the least a spool's first chunk is allocated with.
	minChunk = 8 << 10
	// loadWait bounds how long Load waits for memory.
	loadWait = 30 * time.Second
)

// Spool holds one message as it arrives: in memory while the budget gives
// room, then in a temporary file (mode 0600, in dir) that Close removes.
// A Spool is used by one goroutine; the budget may move it to its file
// from another when memory is wanted.
type Spool struct {
	b     *Budget
	dir   string
	limit int64

	mu     sync.Mutex
	mem    [][]byte // spoolStep-sized chunks, so that memory is what is reserved
	held   int64    // reserved from b
	f      *os.File
	size   int64
	loaded bool // Load has given out the message: it stays where it is
}

// NewSpool starts a spool for at most limit bytes (<= 0: no limit) whose
// file, if it needs one, goes in dir.
func (b *Budget) NewSpool(dir string, limit int64) *Spool {
	return &Spool{b: b, dir: dir, limit: limit}
}

// Write appends p; past the limit it keeps nothing more and returns
// ErrTooLarge.
func (s *Spool) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.limit > 0 && s.size+int64(len(p)) > s.limit {
		return 0, fmt.Errorf("spool %d more bytes after %d: %w", len(p), s.size, ErrTooLarge)
	}
	if s.f == nil {
		need := s.size + int64(len(p))
		for need > s.held {
			if !s.b.TryReserve(spoolStep) {
				if err := s.spill(); err != nil {
					return 0, err
				}
				break
			}
			if s.held == 0 {
				s.b.track(s, true)
			}
			s.held += spoolStep
		}
	}
	if s.f != nil {
		if !s.b.takeDisk(int64(len(p))) {
			return 0, fmt.Errorf("spool %d more bytes after %d: %w", len(p), s.size, ErrSpoolFull)
		}
		n, err := s.f.Write(p)
		s.size += int64(n)
		s.b.giveDisk(int64(len(p) - n))
		if err != nil {
			return n, fmt.Errorf("spool to %s: %w", s.f.Name(), err)
		}
		return n, nil
	}
	n := len(p)
	for len(p) > 0 {
		if len(s.mem) == 0 || len(s.mem[len(s.mem)-1]) == spoolStep {
			// A chunk starts as small as the write needs and doubles up
			// to spoolStep: most messages are a few KiB, and a full
			// chunk for each would be allocated, zeroed and collected.
			s.mem = append(s.mem, make([]byte, 0, min(spoolStep, max(len(p), minChunk))))
		}
		last := &s.mem[len(s.mem)-1]
		k := min(len(p), spoolStep-len(*last))
		if len(*last)+k > cap(*last) {
			grown := make([]byte, len(*last), min(spoolStep, max(2*cap(*last), len(*last)+k)))
			copy(grown, *last)
			*last = grown
		}
		*last = append(*last, p[:k]...)
		p = p[k:]
	}
	s.size += int64(n)
	return n, nil
}

// track adds or removes s among the spools that could give up memory.
func (b *Budget) track(s *Spool, on bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if on {
		b.spools[s] = struct{}{}
	} else {
		delete(b.spools, s)
	}
}

// heldNow is the memory s holds, for reclaim's order.
func (s *Spool) heldNow() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held
}

// giveUp moves s to its file if it is in memory and not loaded, and
// returns the bytes it gave back.
func (s *Spool) giveUp() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f != nil || s.loaded || s.held == 0 {
		return 0
	}
	held := s.held
	if err := s.spill(); err != nil {
		return 0 // it keeps its memory; the writer will meet the error itself
	}
	return held
}

// spill moves the message so far to a file and gives back its memory.
// s.mu is held.
func (s *Spool) spill() error {
	if !s.b.takeDisk(s.size) {
		return fmt.Errorf("spool %d bytes to disk: %w", s.size, ErrSpoolFull)
	}
	f, err := os.CreateTemp(s.dir, "spool-*.tmp") // CreateTemp makes it 0600
	if err != nil {
		s.b.giveDisk(s.size)
		return fmt.Errorf("spool message: %w", err)
	}
	for _, chunk := range s.mem {
		if _, err := f.Write(chunk); err != nil {
			f.Close()
			os.Remove(f.Name())
			s.b.giveDisk(s.size)
			return fmt.Errorf("spool to %s: %w", f.Name(), err)
		}
	}
	s.f = f
	s.mem = nil
	s.b.track(s, false)
	s.b.Release(s.held)
	s.held = 0
	return nil
}

// Size is the bytes written so far.
func (s *Spool) Size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.size
}

// OnDisk reports whether the message went to a file.
func (s *Spool) OnDisk() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f != nil
}

// Load returns the whole message in memory after headroom free bytes (so
// that a caller can prepend without copying), holding from the budget
// what that and the working copies of storing it take (factor times the
// size, at most the whole budget) until Close. It waits for memory in
// turn, and returns ErrNoMemory if none comes in time.
func (s *Spool) Load(ctx context.Context, headroom int, factor int64) ([]byte, error) {
	// Once loaded is set nobody else touches the spool, so the wait
	// below is made without its lock (reclaim may be looking at it).
	s.mu.Lock()
	s.loaded = true
	held, size := s.held, s.size
	s.held = 0
	s.mu.Unlock()
	s.b.track(s, false)
	want := min(factor*(size+int64(headroom)), s.b.max)
	if want > held {
		if held > 0 {
			// Waiting while holding part of the budget could starve
			// everyone: give it back and wait in turn for the whole.
			s.b.Release(held)
			held = 0
		}
		if err := s.b.Reserve(ctx, want, loadWait); err != nil {
			return nil, fmt.Errorf("load a %d byte message: %w", size, err)
		}
		held = want
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.held = held
	buf := make([]byte, headroom, headroom+int(s.size))
	if s.f == nil {
		for _, chunk := range s.mem {
			buf = append(buf, chunk...)
		}
		s.mem = nil // the copy is the message now
		return buf, nil
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
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.track(s, false)
	s.loaded = true
	s.b.Release(s.held)
	s.held = 0
	s.mem = nil
	if s.f == nil {
		return nil
	}
	s.b.giveDisk(s.size)
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
