package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore/storetest"
)

// serveBriefly runs serve with config until it has printed its listeners,
// stops it, and returns what it wrote.
func serveBriefly(t *testing.T, config string) (stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut storetest.SyncBuffer
	exited := make(chan int, 1)
	go func() {
		exited <- runContext(ctx, []string{"serve", "-config", config}, strings.NewReader(""), &out, &errOut)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "Add a user") {
		select {
		case code := <-exited:
			t.Fatalf("serve exited early with %d\nstdout: %s\nstderr: %s", code, out.String(), errOut.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start\nstdout: %s\nstderr: %s", out.String(), errOut.String())
		}
	}
	cancel()
	select {
	case code := <-exited:
		if code != exitOK {
			t.Errorf("serve exited with %d after cancel\nstderr: %s", code, errOut.String())
		}
	case <-time.After(shutdownGrace + shutdownMargin + 5*time.Second):
		t.Fatal("serve did not stop after cancel")
	}
	return out.String(), errOut.String()
}

// quietConfig writes a configuration for dataDir with only the inbound MX
// listening, on a free loopback port.
func quietConfig(t *testing.T, dataDir string) string {
	t.Helper()
	return writeFile(t, "serve.toml", "hostname = \"mail.test.example\"\ndata_dir = \""+dataDir+"\"\n"+
		"smtp.listen = \"127.0.0.1:0\"\nsubmission = { listen = \"\", listen_tls = \"\" }\n"+
		"pop3 = { listen = \"\", listen_tls = \"\" }\nimap = { listen = \"\", listen_tls = \"\" }\n")
}

// A data directory that exists with a loose mode is made private, the
// generated key is private, and spool files a killed process left are
// removed at start.
func TestServeTightensDataDirAndRemovesStaleSpools(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dataDir, 0o755); err != nil { // whatever the umask
		t.Fatal(err)
	}
	stale := filepath.Join(dataDir, "spool-123456.tmp")
	keep := filepath.Join(dataDir, "notes.txt")
	for _, f := range []string{stale, keep} {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	serveBriefly(t, quietConfig(t, dataDir))

	fi, err := os.Stat(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("data directory mode %v, want 0700", fi.Mode().Perm())
	}
	ki, err := os.Stat(filepath.Join(dataDir, selfSignedKey))
	if err != nil {
		t.Fatal(err)
	}
	if ki.Mode().Perm() != 0o600 {
		t.Errorf("generated key mode %v, want 0600", ki.Mode().Perm())
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale spool file still there: %v", err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("another file was removed: %v", err)
	}
}

// The admin commands make an existing data directory private too.
func TestAdminTightensDataDir(t *testing.T) {
	config, dataDir := adminConfig(t)
	if err := os.Mkdir(dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dataDir, 0o750); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := runIn(t, "password\n", "user", "add", "-config", config, "a@example.test"); code != exitOK {
		t.Fatalf("user add: %s", errOut)
	}
	fi, err := os.Stat(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("data directory mode %v, want 0700", fi.Mode().Perm())
	}
}

// A shared directory such as /tmp is never made private, nor used.
func TestDataDirSharedRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	err := privateDataDir(dir)
	if err == nil || !strings.Contains(err.Error(), "sticky") || !strings.Contains(err.Error(), dir) {
		t.Errorf("sticky directory: got %v", err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o777 {
		t.Errorf("shared directory was changed to %v", fi.Mode().Perm())
	}
}
