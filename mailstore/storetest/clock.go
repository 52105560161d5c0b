package storetest

import (
	"sync"
	"time"
)

// Clock is a clock that moves only when told, safe for concurrent use: a
// test gives its Now to a server (Config.Now, Options.Now) and moves it
// with Advance.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a Clock set to a fixed instant, 2025-03-01 10:00 UTC.
func NewClock() *Clock {
	return &Clock{t: time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)}
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
