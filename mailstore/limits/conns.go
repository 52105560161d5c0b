package limits

import (
	"errors"
	"net"
	"net/netip"
	"sync"
)

// Refusals of a new connection. Servers answer them in their protocol's
// words (SMTP 421 4.7.0, POP3 -ERR [SYS/TEMP], IMAP * BYE).
var (
	// ErrTooManyConnections: the budget of the listener group, or of the
	// whole process, is spent.
	ErrTooManyConnections = errors.New("too many connections")
	// ErrTooManyFromAddress: the client address has its share.
	ErrTooManyFromAddress = errors.New("too many connections from this address")
)

// ClientKey groups client addresses for every per-address limit: an IPv4
// address, or the IPv6 /64 around an IPv6 address. An invalid address maps
// to the zero Prefix, which is then one shared key.
func ClientKey(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return netip.Prefix{}
	}
	return p
}

// RemoteIP is the client address of c, IPv4 unmapped; the zero Addr when
// c's remote address is not an IP address.
func RemoteIP(c net.Conn) netip.Addr {
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// Conns is a connection budget: at most Max connections at once, at most
// MaxPerAddress of them from one client key, and a place within its
// parent's budget. Its methods are safe for concurrent use.
type Conns struct {
	max, maxPerKey int
	parent         *Conns

	mu    sync.Mutex
	total int
	count map[netip.Prefix]int
}

// NewConns makes a budget. max or maxPerAddress <= 0 means no bound of
// that kind; parent may be nil.
func NewConns(max, maxPerAddress int, parent *Conns) *Conns {
	return &Conns{max: max, maxPerKey: maxPerAddress, parent: parent, count: make(map[netip.Prefix]int)}
}

// Acquire takes one connection from ip out of c and its parents. On
// success the caller must call release exactly once when the connection
// ends; on failure err is ErrTooManyConnections or ErrTooManyFromAddress.
func (c *Conns) Acquire(ip netip.Addr) (release func(), err error) {
	key := ClientKey(ip)
	if err := c.take(key); err != nil {
		return nil, err
	}
	if c.parent != nil {
		parentRelease, err := c.parent.Acquire(ip)
		if err != nil {
			c.give(key)
			return nil, err
		}
		var once sync.Once
		return func() {
			once.Do(func() {
				parentRelease()
				c.give(key)
			})
		}, nil
	}
	var once sync.Once
	return func() { once.Do(func() { c.give(key) }) }, nil
}

func (c *Conns) take(key netip.Prefix) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.max > 0 && c.total >= c.max {
		return ErrTooManyConnections
	}
	if c.maxPerKey > 0 && c.count[key] >= c.maxPerKey {
		return ErrTooManyFromAddress
	}
	c.total++
	c.count[key]++
	return nil
}

func (c *Conns) give(key netip.Prefix) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total--
	if c.count[key]--; c.count[key] <= 0 {
		delete(c.count, key)
	}
}

// Open is the number of connections held in c now.
func (c *Conns) Open() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// Max is c's bound on connections at once, 0 for none.
func (c *Conns) Max() int { return c.max }
