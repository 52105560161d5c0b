package main

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/postern/postern/mailstore"
)

func TestUserQuotaDisableEnable(t *testing.T) {
	config, dataDir := adminConfig(t)
	if code, _, errOut := runIn(t, "a long password\n", "user", "add", "-config", config, "ann@example.test"); code != exitOK {
		t.Fatalf("user add: %s", errOut)
	}
	steps := []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"user", "quota", "-config", config, "ann@example.test", "500M"}, exitOK, "quota of ann@example.test is 524288000 bytes"},
		{[]string{"user", "list", "-config", config}, exitOK, "ann@example.test quota 524288000 bytes"},
		{[]string{"user", "quota", "-config", config, "ann@example.test", "2GiB"}, exitOK, "2147483648 bytes"},
		{[]string{"user", "quota", "-config", config, "ann@example.test", "none"}, exitOK, "ann@example.test has no quota"},
		{[]string{"user", "quota", "-config", config, "ann@example.test", "lots"}, exitUsage, "size \"lots\""},
		{[]string{"user", "quota", "-config", config, "ann@example.test", "-5"}, exitUsage, "size \"-5\""},
		{[]string{"user", "quota", "-config", config, "nobody@example.test", "1M"}, exitFailure, "not found"},
		{[]string{"user", "admin", "-config", config, "ann@example.test", "on"}, exitOK, "ann@example.test is an administrator"},
		{[]string{"user", "list", "-config", config}, exitOK, "ann@example.test admin"},
		{[]string{"user", "admin", "-config", config, "ann@example.test", "off"}, exitOK, "is not an administrator"},
		{[]string{"user", "admin", "-config", config, "ann@example.test", "maybe"}, exitUsage, "want on or off"},
		{[]string{"user", "disable", "-config", config, "ann@example.test"}, exitOK, "disabled ann@example.test"},
		{[]string{"user", "list", "-config", config}, exitOK, "ann@example.test disabled"},
	}
	for _, s := range steps {
		code, out, errOut := runIn(t, "", s.args...)
		text := out
		if s.code != exitOK {
			text = errOut
		}
		if code != s.code || !strings.Contains(text, s.out) {
			t.Fatalf("%v: exit %d, want %d; stdout %q stderr %q (want %q)", s.args[1:], code, s.code, out, errOut, s.out)
		}
	}
	if err := authenticate(t, dataDir, "ann@example.test", "a long password"); err == nil {
		t.Error("a disabled user logged in")
	}
	if code, out, errOut := runIn(t, "", "user", "enable", "-config", config, "ann@example.test"); code != exitOK || !strings.Contains(out, "enabled") {
		t.Fatalf("user enable: %d %s %s", code, out, errOut)
	}
	if err := authenticate(t, dataDir, "ann@example.test", "a long password"); err != nil {
		t.Errorf("an enabled user cannot log in: %v", err)
	}
}

func TestMinPasswordLength(t *testing.T) {
	config, dataDir := adminConfig(t)
	code, _, errOut := runIn(t, "seven77\n", "user", "add", "-config", config, "ann@example.test")
	if code != exitFailure || !strings.Contains(errOut, "at least 8 (auth.min_password_length)") {
		t.Fatalf("short password on add: %d %s", code, errOut)
	}
	// Eight characters, not bytes.
	if code, _, errOut := runIn(t, "ééééééé8\n", "user", "add", "-config", config, "ann@example.test"); code != exitOK {
		t.Fatalf("eight characters: %s", errOut)
	}
	code, _, errOut = runIn(t, "short\n", "user", "passwd", "-config", config, "ann@example.test")
	if code != exitFailure || !strings.Contains(errOut, "needs at least 8") {
		t.Fatalf("short password on passwd: %d %s", code, errOut)
	}
	if err := authenticate(t, dataDir, "ann@example.test", "ééééééé8"); err != nil {
		t.Errorf("a refused passwd changed the password: %v", err)
	}
	// The length is configurable.
	src, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	config2 := writeFile(t, "short.toml", string(src)+"[auth]\nmin_password_length = 4\n")
	if code, _, errOut := runIn(t, "abcd\n", "user", "passwd", "-config", config2, "ann@example.test"); code != exitOK {
		t.Fatalf("passwd with min_password_length = 4: %s", errOut)
	}
	if err := authenticate(t, dataDir, "ann@example.test", "abcd"); err != nil && !errors.Is(err, mailstore.ErrAuthFailed) {
		t.Fatal(err)
	} else if err != nil {
		t.Error("the new password does not work")
	}
	config3 := writeFile(t, "zero.toml", string(src)+"[auth]\nmin_password_length = 0\n")
	if code, _, errOut := runIn(t, "", "config", "check", "-config", config3); code != exitFailure || !strings.Contains(errOut, "auth.min_password_length") {
		t.Errorf("min_password_length = 0: %d %s", code, errOut)
	}
}
