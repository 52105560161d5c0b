package main

// The [limits] section: how many connections, password checks, failed
// logins and message bytes in memory the servers allow, made into the
// values of mailstore/limits that every server of the process shares.

import (
	"fmt"
	"time"

	"github.com/postern/postern/imapd"
	"github.com/postern/postern/mailstore/limits"
)

// LimitsConfig is the [limits] section. Durations are strings such as
// "15m" (time.ParseDuration); validateLimits checks them, so that
// newServeLimits can parse them without errors.
type LimitsConfig struct {
	Connections        int    `toml:"connections"`          // all listeners together; 0: from the file-descriptor limit
	PasswordChecks     int    `toml:"password_checks"`      // password hashes at once; 0: number of CPUs
	PasswordQueue      int    `toml:"password_queue"`       // logins waiting for a check
	PasswordWait       string `toml:"password_wait"`        // longest wait for a check
	LoginFailures      int    `toml:"login_failures"`       // failed logins from one address within...
	LoginFailureWindow string `toml:"login_failure_window"` // ...this window block it...
	LoginBlock         string `toml:"login_block"`          // ...for this long
	LoginFailureDelay  string `toml:"login_failure_delay"`  // wait before answering a failed login; "0s": none
	InFlightBytes      int64  `toml:"in_flight_bytes"`      // message bytes in memory, all sessions
	SpoolBytes         int64  `toml:"spool_bytes"`          // message bytes in spool files, all sessions
	IMAPCommandBytes   int    `toml:"imap_command_bytes"`   // longest IMAP command line
	IMAPLiteralBytes   int64  `toml:"imap_literal_bytes"`   // longest IMAP literal outside APPEND
	MaildropLease      string `toml:"maildrop_lease"`       // a dead frontend's POP3 maildrop stays locked this long

	MX         ProtocolLimits `toml:"mx"`
	Submission ProtocolLimits `toml:"submission"`
	POP3       ProtocolLimits `toml:"pop3"`
	IMAP       ProtocolLimits `toml:"imap"`
}

// ProtocolLimits is one listener group's table: [limits.mx],
// [limits.submission], [limits.pop3], [limits.imap].
type ProtocolLimits struct {
	Connections           int    `toml:"connections"`
	ConnectionsPerAddress int    `toml:"connections_per_address"` // IPv4 address or IPv6 /64
	LoginTimeout          string `toml:"login_timeout"`           // idle before login (MX: between commands)
	IdleTimeout           string `toml:"idle_timeout"`            // idle after login
	MaxErrors             int    `toml:"max_errors"`              // protocol errors before the session ends
}

// Minimum lengths of the IMAP command line: RFC 7162 section 4 asks
// servers to accept command lines of at least 8192 octets.
const minIMAPCommandBytes = 8192

// defaultLimits is [limits] as configs/postern.toml shows it, for both the
// embedded default and keys left out of a file.
func defaultLimits() LimitsConfig {
	return LimitsConfig{
		Connections:        0,
		PasswordChecks:     0,
		PasswordQueue:      64,
		PasswordWait:       "5s",
		LoginFailures:      10,
		LoginFailureWindow: "15m",
		LoginBlock:         "15m",
		LoginFailureDelay:  "2s",
		InFlightBytes:      limits.DefaultMemory,
		SpoolBytes:         limits.DefaultSpool,
		IMAPCommandBytes:   imapd.LibraryMaxCommandBytes,
		IMAPLiteralBytes:   imapd.LibraryMaxLiteralBytes,
		MaildropLease:      "30s",
		MX:                 ProtocolLimits{1000, 20, "5m", "5m", 20},
		Submission:         ProtocolLimits{500, 20, "1m", "5m", 10},
		POP3:               ProtocolLimits{1000, 20, "1m", "10m", 10},
		IMAP:               ProtocolLimits{2000, 50, "1m", "30m", 20},
	}
}

// limitGroup is one listener group with its table and the listeners
// (Config.listeners protocol names) it serves.
type limitGroup struct {
	name   string // "mx", "submission", "pop3", "imap"
	limits *ProtocolLimits
	protos []string
	// minIdle is the shortest idle_timeout the group's RFC allows, and
	// rfc names the section; minLogin likewise for login_timeout.
	minIdle, minLogin time.Duration
	rfc               string
}

// groups lists the listener groups in file order.
func (l *LimitsConfig) groups() []limitGroup {
	return []limitGroup{
		// RFC 5321 4.5.3.2.7: an SMTP server waits at least 5 minutes
		// for the next command. The MX has no login, so its
		// login_timeout is that wait too.
		{"mx", &l.MX, []string{"smtp"}, 5 * time.Minute, 5 * time.Minute, "RFC 5321 4.5.3.2.7"},
		{"submission", &l.Submission, []string{"submission", "submissions"}, 5 * time.Minute, 0, "RFC 5321 4.5.3.2.7"},
		// RFC 1939 section 3: an autologout timer of at least 10 minutes.
		{"pop3", &l.POP3, []string{"pop3", "pop3s"}, 10 * time.Minute, 0, "RFC 1939 3"},
		// RFC 9051 5.4: at least 30 minutes after login; before login
		// the server decides.
		{"imap", &l.IMAP, []string{"imap", "imaps"}, 30 * time.Minute, 0, "RFC 9051 5.4"},
	}
}

// validateLimits checks [limits]; bad records a problem with a key.
func (c *Config) validateLimits(bad func(key, format string, args ...any)) {
	l := &c.Limits
	atLeast := func(key string, v, lowest int64) {
		if v < lowest {
			if lowest == 0 {
				bad(key, "must be 0 or more")
			} else {
				bad(key, "must be at least %d", lowest)
			}
		}
	}
	duration := func(key, s string, lowest time.Duration, why string) {
		d, err := time.ParseDuration(s)
		switch {
		case err != nil:
			bad(key, "must be a duration such as \"90s\" or \"15m\", not %q", s)
		case lowest == 0 && d < 0:
			bad(key, "must not be negative")
		case lowest > 0 && d < lowest && why != "":
			bad(key, "must be at least %v (%s)", lowest, why)
		case lowest > 0 && d < lowest:
			bad(key, "must be greater than 0")
		}
	}
	const positive = time.Nanosecond

	atLeast("limits.connections", int64(l.Connections), 0)
	atLeast("limits.password_checks", int64(l.PasswordChecks), 0)
	atLeast("limits.password_queue", int64(l.PasswordQueue), 1)
	duration("limits.password_wait", l.PasswordWait, positive, "")
	atLeast("limits.login_failures", int64(l.LoginFailures), 1)
	duration("limits.login_failure_window", l.LoginFailureWindow, positive, "")
	duration("limits.login_block", l.LoginBlock, positive, "")
	duration("limits.login_failure_delay", l.LoginFailureDelay, 0, "")
	duration("limits.maildrop_lease", l.MaildropLease, time.Second, "the lease is renewed every third of it")
	switch {
	case l.InFlightBytes <= 0:
		bad("limits.in_flight_bytes", "must be greater than 0")
	case l.InFlightBytes < c.SMTP.MaxMessageBytes:
		// One message of the largest size must fit in memory when it
		// is stored (limits.Spool.Load).
		bad("limits.in_flight_bytes", "must be at least smtp.max_message_bytes (%d)", c.SMTP.MaxMessageBytes)
	}
	if l.SpoolBytes < c.SMTP.MaxMessageBytes {
		// A message of the largest size that arrives while memory is
		// spent must fit in a spool file.
		bad("limits.spool_bytes", "must be at least smtp.max_message_bytes (%d)", c.SMTP.MaxMessageBytes)
	}
	atLeast("limits.imap_command_bytes", int64(l.IMAPCommandBytes), minIMAPCommandBytes)
	atLeast("limits.imap_literal_bytes", int64(l.IMAPLiteralBytes), 1)
	// The IMAP library bounds both itself; a larger value would promise
	// what it refuses.
	if l.IMAPCommandBytes > imapd.LibraryMaxCommandBytes {
		bad("limits.imap_command_bytes", "must be at most %d (the IMAP library's own bound)", imapd.LibraryMaxCommandBytes)
	}
	if l.IMAPLiteralBytes > imapd.LibraryMaxLiteralBytes {
		bad("limits.imap_literal_bytes", "must be at most %d (the IMAP library's own bound)", imapd.LibraryMaxLiteralBytes)
	}

	largest, largestKey := 0, ""
	for _, g := range l.groups() {
		key := "limits." + g.name + "."
		atLeast(key+"connections", int64(g.limits.Connections), 1)
		atLeast(key+"connections_per_address", int64(g.limits.ConnectionsPerAddress), 1)
		if g.minLogin > 0 {
			duration(key+"login_timeout", g.limits.LoginTimeout, g.minLogin, g.rfc)
		} else {
			duration(key+"login_timeout", g.limits.LoginTimeout, positive, "")
		}
		duration(key+"idle_timeout", g.limits.IdleTimeout, g.minIdle, g.rfc)
		atLeast(key+"max_errors", int64(g.limits.MaxErrors), 1)
		if g.limits.ConnectionsPerAddress > g.limits.Connections && g.limits.Connections > 0 {
			bad(key+"connections_per_address", "must not be more than %sconnections (%d)", key, g.limits.Connections)
		}
		if g.limits.Connections > largest {
			largest, largestKey = g.limits.Connections, key+"connections"
		}
	}
	if l.Connections > 0 && l.Connections < largest {
		bad("limits.connections", "must be 0 or at least %s (%d)", largestKey, largest)
	}
}

// serveLimits is the [limits] section as the servers take it: what all of
// them share, and each listener group's own limits. serve makes one; each
// server's Config gets Shared and its group's Protocol (smtpd: MX and
// Submission), and imapd also the IMAP sizes.
type serveLimits struct {
	Shared                     limits.Shared
	MX, Submission, POP3, IMAP limits.Protocol

	IMAPCommandBytes int           // imapd.Config.MaxCommandBytes
	IMAPLiteralBytes int64         // imapd.Config.MaxLiteralBytes
	MaildropLease    time.Duration // pop3d.Config.MaildropLease
	MaxMessageBytes  int64         // imapd.Config.MaxMessageBytes (APPENDLIMIT), as smtp.max_message_bytes
}

// newServeLimits makes the one process-wide connection budget (at most
// connections at once, see planConnections), the one record of failed
// logins with its password-check gate, and the one in-flight message
// budget, spooling to data_dir, from cfg, which must have been validated.
func newServeLimits(cfg *Config, connections int) serveLimits {
	l := cfg.Limits
	delay := mustDuration(l.LoginFailureDelay)
	if delay == 0 {
		delay = -1 // limits.LoginPolicy: negative is none, 0 the default
	}
	return serveLimits{
		Shared: limits.Shared{
			Conns: limits.NewConns(connections, 0, nil),
			Logins: limits.NewLogins(limits.LoginPolicy{
				MaxHashes:     l.PasswordChecks, // 0: the number of CPUs
				HashQueue:     l.PasswordQueue,
				HashWait:      mustDuration(l.PasswordWait),
				MaxFailures:   l.LoginFailures,
				FailureWindow: mustDuration(l.LoginFailureWindow),
				BlockFor:      mustDuration(l.LoginBlock),
				FailureDelay:  delay,
			}),
			Memory:   limits.NewBudget(l.InFlightBytes, l.SpoolBytes),
			SpoolDir: cfg.DataDir,
		},
		MX:               l.MX.protocol(),
		Submission:       l.Submission.protocol(),
		POP3:             l.POP3.protocol(),
		IMAP:             l.IMAP.protocol(),
		IMAPCommandBytes: l.IMAPCommandBytes,
		IMAPLiteralBytes: l.IMAPLiteralBytes,
		MaildropLease:    mustDuration(l.MaildropLease),
		MaxMessageBytes:  cfg.SMTP.MaxMessageBytes,
	}
}

func (p ProtocolLimits) protocol() limits.Protocol {
	return limits.Protocol{
		MaxConnections:           p.Connections,
		MaxConnectionsPerAddress: p.ConnectionsPerAddress,
		LoginTimeout:             mustDuration(p.LoginTimeout),
		IdleTimeout:              mustDuration(p.IdleTimeout),
		MaxErrors:                p.MaxErrors,
	}
}

// mustDuration parses a duration that validateLimits has accepted.
func mustDuration(s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		panic(fmt.Sprintf("limits: unchecked duration %q: %v", s, err)) // a programming error: validate first
	}
	return d
}
