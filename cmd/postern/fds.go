package main

// File descriptors: every client connection takes one, and so do the
// store, spool files, DNS lookups and relay connections. serve raises its
// limit and sizes the process-wide connection budget to fit under it, so
// that a flood on one protocol fails with a polite refusal instead of
// accept errors on every listener.

import (
	"fmt"
	"math"
	"syscall"
)

// fdReserve is how many file descriptors the connection budget leaves for
// everything else: the database with its WAL and shared memory and the
// readers' handles, spool files, DNS lookups, relay connections, the
// listeners themselves and the TLS files read at start.
const fdReserve = 256

// raiseFileLimit raises the soft RLIMIT_NOFILE to the hard limit and
// returns the soft limit then in force. (Go's os package already does this
// at start on Linux; doing it here says so in one place and covers the
// systems where it does not.)
func raiseFileLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("read the file-descriptor limit: %w", err)
	}
	if rl.Cur < rl.Max {
		want := rl
		want.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			return uint64(rl.Cur), fmt.Errorf("raise the file-descriptor limit from %d to %d: %w", rl.Cur, rl.Max, err)
		}
		rl = want
	}
	return uint64(rl.Cur), nil
}

// groupConns is one listener group's connection budget, for planConnections.
type groupConns struct {
	key string // "limits.mx.connections"
	n   int
}

// connPlan is the process-wide connection budget and why.
type connPlan struct {
	// Connections is the budget for all listeners together.
	Connections int
	// Groups is what the enabled listener groups allow together.
	Groups int
	// Available is the file descriptors left for connections: the soft
	// limit less fdReserve.
	Available int
	// Warning, when not empty, says that the budgets exceed Available:
	// a flood may then run the process out of file descriptors.
	Warning string
}

// planConnections decides the process-wide connection budget from
// limits.connections (configured, 0: automatic), the enabled listener
// groups' budgets and the soft file-descriptor limit. Automatic is the
// groups' sum, capped at what the file descriptors allow.
func planConnections(configured int, groups []groupConns, soft uint64) connPlan {
	reserve := fdReserve
	if soft < 2*fdReserve {
		// A tiny limit (a test, a misconfigured system): keep half.
		reserve = int(soft / 2)
	}
	avail := math.MaxInt32
	if soft < math.MaxInt32 {
		avail = int(soft) - reserve
	}
	p := connPlan{Available: avail}
	var detail string
	for _, g := range groups {
		p.Groups += g.n
		if detail != "" {
			detail += " + "
		}
		detail += fmt.Sprintf("%s %d", g.key, g.n)
	}
	if configured > 0 {
		p.Connections = configured
		if configured > avail {
			p.Warning = fmt.Sprintf("limits.connections is %d, but the file-descriptor limit %d less %d kept for the store, spool files, DNS and relaying leaves %d: raise the limit (LimitNOFILE in systemd) or lower limits.connections",
				configured, soft, reserve, avail)
		}
		return p
	}
	p.Connections = min(p.Groups, avail)
	if p.Groups > avail {
		p.Warning = fmt.Sprintf("the listener groups allow %d connections together (%s), but the file-descriptor limit %d less %d kept for the store, spool files, DNS and relaying leaves %d: all listeners together take at most %d; raise the limit (LimitNOFILE in systemd) or lower the groups' connections",
			p.Groups, detail, soft, reserve, avail, p.Connections)
	}
	if p.Connections < 1 {
		p.Connections = 1
	}
	return p
}

// enabledGroups lists the budgets of the listener groups that have at
// least one listener.
func (c *Config) enabledGroups() []groupConns {
	on := make(map[string]bool)
	for _, l := range c.listeners() {
		on[l.Proto] = true
	}
	var out []groupConns
	for _, g := range c.Limits.groups() {
		for _, proto := range g.protos {
			if on[proto] {
				out = append(out, groupConns{"limits." + g.name + ".connections", g.limits.Connections})
				break
			}
		}
	}
	if on["http"] || on["https"] {
		out = append(out, groupConns{"http.connections", c.HTTP.Connections})
	}
	return out
}
