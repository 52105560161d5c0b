package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const serviceUnit = "../../configs/postern.service"

// The unit is Type=notify (serve sends READY=1, see TestServeHTTP), reloads
// with SIGHUP, and passes systemd-analyze verify where that is installed.
func TestSystemdUnitNotifyAndVerify(t *testing.T) {
	src, err := os.ReadFile(serviceUnit)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify\n", "ExecReload=/bin/kill -HUP $MAINPID\n", "User=postern\n",
		"StateDirectory=postern\n", "AmbientCapabilities=CAP_NET_BIND_SERVICE\n", "ProtectSystem=strict\n", "NoNewPrivileges=true\n"} {
		if !strings.Contains(string(src), want) {
			t.Errorf("%s lacks %q", serviceUnit, want)
		}
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("POSTERN_REQUIRE_INTEROP") == "1" {
			t.Fatalf("systemd-analyze is required (POSTERN_REQUIRE_INTEROP=1): %v", err)
		}
		t.Skip("systemd-analyze not installed")
	}
	// verify wants the commands to exist: point them at a stand-in.
	dir := t.TempDir()
	bin := filepath.Join(dir, "postern")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(dir, "postern.service")
	if err := os.WriteFile(unit, []byte(strings.ReplaceAll(string(src), "/usr/local/bin/postern", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", unit).CombinedOutput()
	if err != nil || strings.Contains(string(out), "postern.service:") {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
