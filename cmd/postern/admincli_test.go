package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Commands that only read never create a store: run from a folder without
// one, on the embedded default, they fail and say where they looked and
// how to point them elsewhere.
func TestReadCommandsNeverCreateAStore(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	t.Setenv(configEnv, "")
	want := filepath.Join(dir, "postern-data", storeFile)
	for _, args := range [][]string{
		{"user", "list"},
		{"domain", "list"},
		{"alias", "list"},
		{"mailbox", "list", "you@localhost"},
		{"queue", "list"},
	} {
		code, out, errOut := runIn(t, "", args...)
		if code != exitFailure || out != "" {
			t.Errorf("%v: exit %d, stdout %q; want exit 1 and nothing", args, code, out)
		}
		for _, w := range []string{"postern: " + strings.Join(args[:2], " ") + ": no mailstore at " + want,
			"embedded default", "-config FILE", configEnv + "=FILE"} {
			if !strings.Contains(errOut, w) {
				t.Errorf("%v: stderr %q does not contain %q", args, errOut, w)
			}
		}
		if _, err := os.Stat(filepath.Join(dir, "postern-data")); !os.IsNotExist(err) {
			t.Fatalf("%v created the data directory: %v", args, err)
		}
	}
	// The same with a configuration file whose store does not exist yet.
	config, dataDir := adminConfig(t)
	code, _, errOut := runIn(t, "", "user", "list", "-config", config)
	if code != exitFailure || !strings.Contains(errOut, filepath.Join(dataDir, storeFile)) || !strings.Contains(errOut, config) {
		t.Errorf("user list -config: exit %d, stderr %q", code, errOut)
	}
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Errorf("user list -config created the data directory: %v", err)
	}
}

// A command that writes creates the store if needed, and says so.
func TestWriteCommandSaysItCreatedAStore(t *testing.T) {
	t.Setenv(configEnv, "")
	config, dataDir := adminConfig(t)
	db := filepath.Join(dataDir, storeFile)
	code, out, errOut := runIn(t, "password\n", "user", "add", "-config", config, "a@example.test")
	if code != exitOK || !strings.Contains(out, "added a@example.test") {
		t.Fatalf("user add: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if want := "postern: user add: created a new mailstore at " + db + " (data_dir of " + config + ")"; !strings.Contains(errOut, want) {
		t.Errorf("stderr %q does not contain %q", errOut, want)
	}
	code, _, errOut = runIn(t, "password\n", "user", "add", "-config", config, "b@example.test")
	if code != exitOK || errOut != "" {
		t.Errorf("second user add: exit %d, stderr %q", code, errOut)
	}
}

// The configuration comes from -config, then POSTERN_CONFIG, then the
// embedded default.
func TestConfigFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	config, dataDir := adminConfig(t)
	t.Setenv(configEnv, config)

	code, _, errOut := runIn(t, "password\n", "user", "add", "alice@example.test")
	if code != exitOK || !strings.Contains(errOut, "created a new mailstore at "+filepath.Join(dataDir, storeFile)) ||
		!strings.Contains(errOut, "(from "+configEnv+")") {
		t.Fatalf("user add with %s: exit %d, stderr %q", configEnv, code, errOut)
	}
	if code, out, _ := runIn(t, "", "user", "list"); code != exitOK || out != "alice@example.test\n" {
		t.Errorf("user list with %s: exit %d, stdout %q", configEnv, code, out)
	}
	if code, out, _ := runIn(t, "", "config", "check"); code != exitOK || !strings.Contains(out, config+": ok") {
		t.Errorf("config check with %s: exit %d, stdout %q", configEnv, code, out)
	}
	// -config wins over the environment.
	other, otherData := adminConfig(t)
	code, _, errOut = runIn(t, "", "user", "list", "-config", other)
	if code != exitFailure || !strings.Contains(errOut, filepath.Join(otherData, storeFile)) {
		t.Errorf("user list -config with %s set: exit %d, stderr %q", configEnv, code, errOut)
	}
	// The environment wins over the embedded default: nothing in ./postern-data.
	if _, err := os.Stat(filepath.Join(dir, "postern-data")); !os.IsNotExist(err) {
		t.Errorf("the embedded default's data directory was made: %v", err)
	}
	// A POSTERN_CONFIG naming a missing file is an error, not the default.
	t.Setenv(configEnv, filepath.Join(dir, "missing.toml"))
	if code, _, errOut := runIn(t, "", "user", "list"); code != exitFailure || !strings.Contains(errOut, "missing.toml") {
		t.Errorf("missing %s file: exit %d, stderr %q", configEnv, code, errOut)
	}
}
