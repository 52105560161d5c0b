package main

import (
	"math"
	"strings"
	"syscall"
	"testing"
)

func TestPlanConnections(t *testing.T) {
	groups := []groupConns{{"limits.mx.connections", 1000}, {"limits.submission.connections", 500},
		{"limits.pop3.connections", 1000}, {"limits.imap.connections", 2000}}
	tests := []struct {
		name       string
		configured int
		soft       uint64
		want       int
		warn       []string // each in the warning; nil: no warning
	}{
		{"plenty of descriptors", 0, 65536, 4500, nil},
		{"unlimited", 0, math.MaxUint64, 4500, nil},
		{"exactly enough", 0, 4500 + fdReserve, 4500, nil},
		{"too few descriptors", 0, 1024, 1024 - fdReserve,
			[]string{"allow 4500 connections together", "limits.imap.connections 2000", "limit 1024 less 256", "leaves 768", "at most 768"}},
		{"configured fits", 3000, 65536, 3000, nil},
		{"configured too many", 5000, 4096, 5000,
			[]string{"limits.connections is 5000", "limit 4096 less 256", "leaves 3840"}},
		{"tiny limit keeps half", 0, 100, 50, []string{"leaves 50"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := planConnections(tt.configured, groups, tt.soft)
			if p.Connections != tt.want {
				t.Errorf("connections = %d, want %d (plan %+v)", p.Connections, tt.want, p)
			}
			if p.Groups != 4500 {
				t.Errorf("groups = %d, want 4500", p.Groups)
			}
			if tt.warn == nil && p.Warning != "" {
				t.Errorf("unexpected warning %q", p.Warning)
			}
			for _, w := range tt.warn {
				if !strings.Contains(p.Warning, w) {
					t.Errorf("warning %q does not contain %q", p.Warning, w)
				}
			}
		})
	}
}

// Only groups with a listener count toward the automatic budget.
func TestEnabledGroups(t *testing.T) {
	cfg, err := parseConfig("t.toml", []byte(`hostname = "a.example"
[submission]
listen = ""
[pop3]
listen = ""
listen_tls = ""
[imap]
listen = ""
`))
	if err != nil {
		t.Fatal(err)
	}
	got := cfg.enabledGroups()
	want := []groupConns{{"limits.mx.connections", 1000}, {"limits.submission.connections", 500}, {"limits.imap.connections", 2000}}
	if len(got) != len(want) {
		t.Fatalf("groups %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("groups %v, want %v", got, want)
		}
	}
}

func TestRaiseFileLimit(t *testing.T) {
	var before syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &before); err != nil {
		t.Fatal(err)
	}
	// Lower the soft limit so that there is something to raise.
	if before.Max > 64 {
		lower := syscall.Rlimit{Cur: 64, Max: before.Max}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lower); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &before) })
	}
	soft, err := raiseFileLimit()
	if err != nil {
		t.Fatal(err)
	}
	var after syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &after); err != nil {
		t.Fatal(err)
	}
	if after.Cur != after.Max || soft != after.Cur {
		t.Errorf("after raise: soft %d hard %d, returned %d", after.Cur, after.Max, soft)
	}
}
