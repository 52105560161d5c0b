package limits

import (
	"os"
	"time"
)

// Protocol is the part of [limits] that each listener group has for
// itself ([limits.mx], [limits.submission], [limits.pop3], [limits.imap]),
// under the same names in every server's Config. A zero field takes the
// server's default.
type Protocol struct {
	// MaxConnections bounds the group's connections at once.
	MaxConnections int
	// MaxConnectionsPerAddress bounds those from one client key (IPv4
	// address, IPv6 /64).
	MaxConnectionsPerAddress int
	// LoginTimeout ends a session that is idle this long before it has
	// logged in (for the MX, which has no login: between commands).
	LoginTimeout time.Duration
	// IdleTimeout ends a session that is idle this long after login.
	IdleTimeout time.Duration
	// MaxErrors ends a session after this many protocol errors (unknown
	// or malformed commands, failed logins).
	MaxErrors int
}

// Shared is what all servers of one process share. A nil field makes a
// server use one of its own with default settings (tests, one server).
type Shared struct {
	Conns  *Conns  // process-wide connection budget, the parent of each group's
	Logins *Logins // failed logins and password-check slots
	Memory *Budget // message bytes in memory
	// SpoolDir is where spools beyond Memory go (data_dir); "" means
	// os.TempDir().
	SpoolDir string
}

// DefaultMemory is the default in-flight message budget in memory,
// limits.in_flight_bytes, and DefaultSpool the default for spool files,
// limits.spool_bytes.
const (
	DefaultMemory = 128 << 20
	DefaultSpool  = 2 << 30
)

// WithDefaults returns sh with nil fields filled with private defaults.
func (sh Shared) WithDefaults() Shared {
	if sh.Logins == nil {
		sh.Logins = NewLogins(LoginPolicy{})
	}
	if sh.Memory == nil {
		sh.Memory = NewBudget(DefaultMemory, DefaultSpool)
	}
	if sh.SpoolDir == "" {
		sh.SpoolDir = os.TempDir()
	}
	return sh
}

// Group makes the connection budget of one listener group from p, with
// def standing in for p's zero fields, inside sh.Conns.
func (sh Shared) Group(p Protocol, def Protocol) (*Conns, Protocol) {
	if p.MaxConnections <= 0 {
		p.MaxConnections = def.MaxConnections
	}
	if p.MaxConnectionsPerAddress <= 0 {
		p.MaxConnectionsPerAddress = def.MaxConnectionsPerAddress
	}
	if p.LoginTimeout <= 0 {
		p.LoginTimeout = def.LoginTimeout
	}
	if p.IdleTimeout <= 0 {
		p.IdleTimeout = def.IdleTimeout
	}
	if p.MaxErrors <= 0 {
		p.MaxErrors = def.MaxErrors
	}
	return NewConns(p.MaxConnections, p.MaxConnectionsPerAddress, sh.Conns), p
}
