package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/mailstore"
)

// adminConfig writes a configuration whose data lives in a temporary
// directory, with the local domain example.test.
func adminConfig(t *testing.T) (config, dataDir string) {
	t.Helper()
	dataDir = filepath.Join(t.TempDir(), "data")
	config = writeFile(t, "admin.toml", `hostname = "mail.example.test"
data_dir = "`+dataDir+`"
domains = ["example.test"]
`)
	return config, dataDir
}

// runIn runs a command with stdin and returns exit code, stdout and stderr.
func runIn(t testing.TB, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

// authenticate checks a password against the store in dataDir.
func authenticate(t *testing.T, dataDir, address, password string) error {
	t.Helper()
	st, err := mailstore.Open(filepath.Join(dataDir, storeFile), mailstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = st.Authenticate(context.Background(), address, password)
	return err
}

func TestUserRoundTrip(t *testing.T) {
	config, dataDir := adminConfig(t)
	steps := []struct {
		stdin string
		args  []string
		code  int
		out   string // substring of stdout (or of stderr when code != 0)
	}{
		{"first-pass\n", []string{"user", "add", "-config", config, "Alice@Example.test"}, exitOK, "added alice@example.test"},
		{"x\n", []string{"user", "add", "-config", config, "alice@example.test"}, exitFailure, "already exists"},
		{"x\n", []string{"user", "add", "-config", config, "bob@elsewhere.test"}, exitFailure, "domain is not local"},
		{"", []string{"user", "add", "-config", config, "carol@example.test"}, exitFailure, "no password"},
		{"", []string{"user", "add", "-config", config}, exitUsage, "wrong number of arguments"},
		{"", []string{"user", "list", "-config", config}, exitOK, "alice@example.test"},
		{"", []string{"user", "frobnicate"}, exitUsage, "unknown verb"},
	}
	for _, s := range steps {
		code, out, errOut := runIn(t, s.stdin, s.args...)
		text := out
		if s.code != exitOK {
			text = errOut
		}
		if code != s.code || !strings.Contains(text, s.out) {
			t.Fatalf("%v: exit %d, want %d; stdout %q stderr %q (want %q)", s.args, code, s.code, out, errOut, s.out)
		}
	}
	if err := authenticate(t, dataDir, "alice@example.test", "first-pass"); err != nil {
		t.Fatalf("password from user add: %v", err)
	}
	if code, _, errOut := runIn(t, "second-pass\r\n", "user", "passwd", "-config", config, "alice@example.test"); code != exitOK {
		t.Fatalf("user passwd: %d %s", code, errOut)
	}
	if err := authenticate(t, dataDir, "alice@example.test", "first-pass"); !errors.Is(err, mailstore.ErrAuthFailed) {
		t.Fatalf("old password after passwd: %v", err)
	}
	if err := authenticate(t, dataDir, "alice@example.test", "second-pass"); err != nil {
		t.Fatalf("new password: %v", err)
	}
	code, out, _ := runIn(t, "", "mailbox", "list", "-config", config, "alice@example.test")
	if code != exitOK || !strings.Contains(out, "INBOX") || !strings.Contains(out, "Archive") {
		t.Fatalf("mailbox list: %d %q", code, out)
	}
	if code, _, errOut := runIn(t, "", "user", "del", "-config", config, "alice@example.test"); code != exitOK {
		t.Fatalf("user del: %d %s", code, errOut)
	}
	if err := authenticate(t, dataDir, "alice@example.test", "second-pass"); !errors.Is(err, mailstore.ErrAuthFailed) {
		t.Fatalf("deleted user logs in: %v", err)
	}
	if code, out, _ := runIn(t, "", "user", "list", "-config", config); code != exitOK || out != "" {
		t.Fatalf("user list after del: %d %q", code, out)
	}
	if code, _, _ := runIn(t, "", "user", "del", "-config", config, "alice@example.test"); code != exitFailure {
		t.Fatalf("deleting a missing user: exit %d", code)
	}
}

func TestDomainAndAliasRoundTrip(t *testing.T) {
	config, _ := adminConfig(t)
	steps := []struct {
		stdin string
		args  []string
		code  int
		out   string
	}{
		{"", []string{"domain", "list", "-config", config}, exitFailure, "no mailstore at"}, // reading never creates one
		{"", []string{"domain", "add", "-config", config, "Other.TEST"}, exitOK, "added other.test"},
		{"", []string{"domain", "add", "-config", config, "other.test"}, exitFailure, "already exists"},
		{"", []string{"domain", "add", "-config", config, "bad_domain!"}, exitFailure, "invalid name"},
		{"", []string{"domain", "list", "-config", config}, exitOK, "example.test\nother.test\n"},
		{"password\n", []string{"user", "add", "-config", config, "dave@other.test"}, exitOK, "added"},
		{"", []string{"domain", "del", "-config", config, "other.test"}, exitFailure, "still has 1 users"},
		{"", []string{"user", "del", "-config", config, "dave@other.test"}, exitOK, "deleted"},
		{"", []string{"domain", "del", "-config", config, "other.test"}, exitOK, "deleted other.test"},
		{"password\n", []string{"user", "add", "-config", config, "erin@example.test"}, exitOK, "added"},
		{"", []string{"alias", "add", "-config", config, "team@example.test", "erin@example.test", "far@remote.test"}, exitOK, "team@example.test -> erin@example.test, far@remote.test"},
		{"", []string{"alias", "add", "-config", config, "ghosts@example.test", "nobody@example.test"}, exitFailure, "no such user"},
		{"", []string{"alias", "add", "-config", config, "lonely@example.test"}, exitUsage, "wrong number"},
		{"", []string{"alias", "list", "-config", config}, exitOK, "team@example.test -> erin@example.test, far@remote.test\n"},
		{"", []string{"alias", "del", "-config", config, "team@example.test", "far@remote.test"}, exitOK, "deleted"},
		{"", []string{"alias", "list", "-config", config, "team@example.test"}, exitOK, "team@example.test -> erin@example.test\n"},
		{"", []string{"alias", "del", "-config", config, "team@example.test"}, exitOK, "deleted"},
		{"", []string{"alias", "del", "-config", config, "team@example.test"}, exitFailure, "not found"},
		{"", []string{"mailbox", "list", "-config", config, "nobody@example.test"}, exitFailure, "not found"},
	}
	for _, s := range steps {
		code, out, errOut := runIn(t, s.stdin, s.args...)
		text := out
		if s.code != exitOK {
			text = errOut
		}
		if code != s.code || !strings.Contains(text, s.out) {
			t.Fatalf("%v: exit %d, want %d; stdout %q stderr %q (want %q)", s.args, code, s.code, out, errOut, s.out)
		}
	}
}

// The database holds everyone's mail and password hashes: it is private
// even when the data directory was made by hand with a loose mode.
func TestStoreFilesArePrivate(t *testing.T) {
	config, dataDir := adminConfig(t)
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := runIn(t, "password\n", "user", "add", "-config", config, "a@example.test"); code != exitOK {
		t.Fatalf("user add: %s", errOut)
	}
	entries, err := os.ReadDir(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(e.Name(), storeFile) && info.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v", e.Name(), info.Mode().Perm())
		}
	}
}

func TestReindex(t *testing.T) {
	config, dataDir := adminConfig(t)
	if code, out, errOut := runIn(t, "password1\n", "user", "add", "-config", config, "a@example.test"); code != exitOK {
		t.Fatalf("user add: %d %s %s", code, out, errOut)
	}
	st, err := mailstore.Open(filepath.Join(dataDir, storeFile), mailstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		msg := fmt.Sprintf("Subject: note %d\r\n\r\nthe word zanzibar %d\r\n", i, i)
		if _, err := st.Deliver(context.Background(), "s@elsewhere.test", []string{"a@example.test"}, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	code, out, errOut := runIn(t, "", "reindex", "-config", config, "a@example.test")
	if code != exitOK || !strings.Contains(out, "5 messages to index again") || !strings.Contains(out, "index complete") {
		t.Fatalf("reindex: %d %q %q", code, out, errOut)
	}
	if code, _, _ := runIn(t, "", "reindex", "-config", config, "nobody@example.test"); code != exitFailure {
		t.Fatalf("reindex of an unknown user: exit %d, want %d", code, exitFailure)
	}
	if code, out, _ := runIn(t, "", "reindex", "-config", config, "all"); code != exitOK || !strings.Contains(out, "index complete") {
		t.Fatalf("reindex all: %d %q", code, out)
	}
}
