package main

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore/limits"
)

func TestLimitsConfigErrors(t *testing.T) {
	const h = "hostname = \"a.example\"\n"
	tests := []struct {
		name string
		src  string
		want string
	}{
		{"negative connections", h + "[limits]\nconnections = -1\n",
			`t.toml:3: key "limits.connections": must be 0 or more`},
		{"connections below a group", h + "[limits]\nconnections = 1500\n",
			`t.toml:3: key "limits.connections": must be 0 or at least limits.imap.connections (2000)`},
		{"password_checks", h + "[limits]\npassword_checks = -2\n",
			`key "limits.password_checks": must be 0 or more`},
		{"password_queue", h + "[limits]\npassword_queue = 0\n",
			`t.toml:3: key "limits.password_queue": must be at least 1`},
		{"password_wait", h + "[limits]\npassword_wait = \"5 seconds\"\n",
			`t.toml:3: key "limits.password_wait": must be a duration such as "90s" or "15m", not "5 seconds"`},
		{"password_wait zero", h + "[limits]\npassword_wait = \"0s\"\n",
			`key "limits.password_wait": must be greater than 0`},
		{"password_wait integer", h + "[limits]\npassword_wait = 5\n",
			`t.toml:3: key "limits.password_wait": must be a string, not an integer`},
		{"login_failures", h + "[limits]\nlogin_failures = 0\n",
			`key "limits.login_failures": must be at least 1`},
		{"login_failure_window", h + "[limits]\nlogin_failure_window = \"-1m\"\n",
			`key "limits.login_failure_window": must be greater than 0`},
		{"login_block", h + "[limits]\nlogin_block = \"forever\"\n",
			`key "limits.login_block": must be a duration`},
		{"login_failure_delay", h + "[limits]\nlogin_failure_delay = \"-2s\"\n",
			`key "limits.login_failure_delay": must not be negative`},
		{"in_flight_bytes zero", h + "[limits]\nin_flight_bytes = 0\n",
			`key "limits.in_flight_bytes": must be greater than 0`},
		{"in_flight_bytes below a message", h + "[smtp]\nmax_message_bytes = 1000\n[limits]\nin_flight_bytes = 999\n",
			`t.toml:5: key "limits.in_flight_bytes": must be at least smtp.max_message_bytes (1000)`},
		{"spool_bytes below a message", h + "[limits]\nspool_bytes = 1000\n",
			`key "limits.spool_bytes": must be at least smtp.max_message_bytes (33554432)`},
		{"imap_command_bytes", h + "[limits]\nimap_command_bytes = 1000\n",
			`key "limits.imap_command_bytes": must be at least 8192`},
		{"imap_literal_bytes", h + "[limits]\nimap_literal_bytes = 0\n",
			`key "limits.imap_literal_bytes": must be at least 1`},
		{"imap_command_bytes over the library", h + "[limits]\nimap_command_bytes = 65536\n",
			`key "limits.imap_command_bytes": must be at most 51200`},
		{"imap_literal_bytes over the library", h + "[limits]\nimap_literal_bytes = 4097\n",
			`key "limits.imap_literal_bytes": must be at most 4096`},
		{"group connections", h + "[limits.pop3]\nconnections = 0\n",
			`t.toml:3: key "limits.pop3.connections": must be at least 1`},
		{"group per address", h + "[limits.submission]\nconnections_per_address = 0\n",
			`key "limits.submission.connections_per_address": must be at least 1`},
		{"per address above the group", h + "[limits.submission]\nconnections = 10\nconnections_per_address = 11\n",
			`t.toml:4: key "limits.submission.connections_per_address": must not be more than limits.submission.connections (10)`},
		{"group login_timeout", h + "[limits.imap]\nlogin_timeout = \"0s\"\n",
			`key "limits.imap.login_timeout": must be greater than 0`},
		{"group max_errors", h + "[limits.mx]\nmax_errors = 0\n",
			`key "limits.mx.max_errors": must be at least 1`},
		{"pop3 idle below RFC 1939", h + "[limits.pop3]\nidle_timeout = \"9m59s\"\n",
			`t.toml:3: key "limits.pop3.idle_timeout": must be at least 10m0s (RFC 1939 3)`},
		{"imap idle below RFC 9051", h + "[limits.imap]\nidle_timeout = \"29m\"\n",
			`key "limits.imap.idle_timeout": must be at least 30m0s (RFC 9051 5.4)`},
		{"mx idle below RFC 5321", h + "[limits.mx]\nidle_timeout = \"4m\"\n",
			`key "limits.mx.idle_timeout": must be at least 5m0s (RFC 5321 4.5.3.2.7)`},
		{"mx command wait below RFC 5321", h + "[limits.mx]\nlogin_timeout = \"30s\"\n",
			`key "limits.mx.login_timeout": must be at least 5m0s (RFC 5321 4.5.3.2.7)`},
		{"submission idle below RFC 5321", h + "[limits.submission]\nidle_timeout = \"1m\"\n",
			`key "limits.submission.idle_timeout": must be at least 5m0s (RFC 5321 4.5.3.2.7)`},
		{"unknown key", h + "[limits.pop3]\nconections = 5\n",
			`t.toml:3: unknown key "limits.pop3.conections"`},
		{"unknown group", h + "[limits.nntp]\nconnections = 5\n",
			`t.toml:2: unknown key "limits.nntp"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseConfig("t.toml", []byte(tt.src))
			if err == nil {
				t.Fatalf("no error; limits %+v", cfg.Limits)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q\ndoes not contain %q", err, tt.want)
			}
		})
	}
}

func TestLimitsConfigAccepts(t *testing.T) {
	cfg, err := parseConfig("t.toml", []byte(`hostname = "a.example"
[limits]
connections = 2000
login_failure_delay = "0s"
in_flight_bytes = 33554432
[limits.imap]
idle_timeout = "1h"
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Limits.Connections != 2000 || cfg.Limits.IMAP.IdleTimeout != "1h" || cfg.Limits.IMAP.Connections != 2000 {
		t.Errorf("limits %+v", cfg.Limits)
	}
}

func TestNewServeLimits(t *testing.T) {
	cfg, err := parseConfig("t.toml", []byte(`hostname = "a.example"
data_dir = "/srv/mail"
[smtp]
max_message_bytes = 1000000
[limits]
password_queue = 7
password_wait = "3s"
login_failures = 4
login_failure_window = "1m"
login_block = "2h"
login_failure_delay = "0s"
in_flight_bytes = 5000000
imap_command_bytes = 9000
imap_literal_bytes = 4000
[limits.pop3]
connections = 30
connections_per_address = 3
login_timeout = "20s"
idle_timeout = "11m"
max_errors = 4
`))
	if err != nil {
		t.Fatal(err)
	}
	sl := newServeLimits(cfg, 1234)
	if sl.Shared.Conns == nil || sl.Shared.Conns.Max() != 1234 {
		t.Errorf("process-wide connections: %+v", sl.Shared.Conns)
	}
	if sl.Shared.Memory == nil || sl.Shared.Memory.Max() != 5000000 {
		t.Errorf("memory budget: %+v", sl.Shared.Memory)
	}
	if sl.Shared.SpoolDir != "/srv/mail" {
		t.Errorf("spool dir %q", sl.Shared.SpoolDir)
	}
	p := sl.Shared.Logins.Policy()
	if p.MaxHashes != runtime.NumCPU() || p.HashQueue != 7 || p.HashWait != 3*time.Second || p.MaxFailures != 4 ||
		p.FailureWindow != time.Minute || p.BlockFor != 2*time.Hour || p.FailureDelay >= 0 {
		t.Errorf("login policy %+v", p)
	}
	wantPOP3 := limits.Protocol{MaxConnections: 30, MaxConnectionsPerAddress: 3, LoginTimeout: 20 * time.Second,
		IdleTimeout: 11 * time.Minute, MaxErrors: 4}
	if sl.POP3 != wantPOP3 {
		t.Errorf("pop3 %+v, want %+v", sl.POP3, wantPOP3)
	}
	wantMX := limits.Protocol{MaxConnections: 1000, MaxConnectionsPerAddress: 20, LoginTimeout: 5 * time.Minute,
		IdleTimeout: 5 * time.Minute, MaxErrors: 20}
	wantSub := limits.Protocol{MaxConnections: 500, MaxConnectionsPerAddress: 20, LoginTimeout: time.Minute,
		IdleTimeout: 5 * time.Minute, MaxErrors: 10}
	wantIMAP := limits.Protocol{MaxConnections: 2000, MaxConnectionsPerAddress: 50, LoginTimeout: time.Minute,
		IdleTimeout: 30 * time.Minute, MaxErrors: 20}
	if sl.MX != wantMX || sl.Submission != wantSub || sl.IMAP != wantIMAP {
		t.Errorf("mx %+v\nsubmission %+v\nimap %+v", sl.MX, sl.Submission, sl.IMAP)
	}
	if sl.IMAPCommandBytes != 9000 || sl.IMAPLiteralBytes != 4000 || sl.MaxMessageBytes != 1000000 {
		t.Errorf("imap sizes %d %d %d", sl.IMAPCommandBytes, sl.IMAPLiteralBytes, sl.MaxMessageBytes)
	}

	// The default delay stays the default; password_checks passes through.
	cfg.Limits.LoginFailureDelay, cfg.Limits.PasswordChecks = "2s", 3
	p = newServeLimits(cfg, 10).Shared.Logins.Policy()
	if p.FailureDelay != 2*time.Second || p.MaxHashes != 3 {
		t.Errorf("policy %+v", p)
	}
}
