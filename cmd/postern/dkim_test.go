package main

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/smtpd/msgauth"
)

// domain add makes the domain's keys; dkim list shows them, rotate adds a
// pair and retires the generation before the previous one, export prints
// PEM that parses back into the same key.
func TestDKIMCommands(t *testing.T) {
	t.Setenv(configEnv, "")
	config, dataDir := adminConfig(t)
	code, out, errOut := runIn(t, "", "domain", "add", "-config", config, "Other.Test")
	if code != exitOK || !strings.Contains(out, "added other.test") || !strings.Contains(out, "._domainkey.other.test TXT") {
		t.Fatalf("domain add: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// Never a private key outside export.
	if strings.Contains(out, "PRIVATE KEY") {
		t.Errorf("domain add printed a private key: %q", out)
	}
	day := time.Now().UTC().Format("20060102")
	code, out, errOut = runIn(t, "", "dkim", "list", "-config", config, "other.test")
	if code != exitOK {
		t.Fatalf("dkim list: exit %d, stderr %q", code, errOut)
	}
	for _, w := range []string{"SELECTOR", "p" + day + "e  ed25519", "p" + day + "r  rsa", "active", "p" + day + "e._domainkey.other.test"} {
		if !strings.Contains(out, w) {
			t.Errorf("dkim list %q does not contain %q", out, w)
		}
	}
	if strings.Contains(out, "PRIVATE KEY") {
		t.Errorf("dkim list printed a private key")
	}

	// First rotate: a new pair beside the first (kept); second rotate:
	// the first retired, the second kept.
	code, out, errOut = runIn(t, "", "dkim", "rotate", "-config", config, "other.test")
	if code != exitOK || !strings.Contains(out, "added p"+day+"-2e (ed25519)") || !strings.Contains(out, "kept p"+day+"e") || strings.Contains(out, "retired") {
		t.Fatalf("dkim rotate: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, errOut = runIn(t, "", "dkim", "rotate", "-config", config, "other.test")
	if code != exitOK || !strings.Contains(out, "added p"+day+"-3e") || !strings.Contains(out, "retired p"+day+"e (ed25519)") ||
		!strings.Contains(out, "retired p"+day+"r (rsa)") || !strings.Contains(out, "kept p"+day+"-2e") {
		t.Fatalf("second dkim rotate: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	st, err := mailstore.Open(filepath.Join(dataDir, storeFile), mailstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	active, err := msgauth.StoreKeys{Store: st}.SigningKeys(context.Background(), "other.test")
	st.Close()
	if err != nil || len(active) != 4 {
		t.Fatalf("active keys after two rotations: %d, %v; want 4", len(active), err)
	}
	// -retire: only the newest pair signs.
	code, out, _ = runIn(t, "", "dkim", "rotate", "-config", config, "-retire", "other.test")
	if code != exitOK || strings.Count(out, "retired") != 4 || strings.Contains(out, "kept") {
		t.Fatalf("dkim rotate -retire: exit %d, stdout %q", code, out)
	}

	code, out, errOut = runIn(t, "", "dkim", "export", "-config", config, "other.test", "p"+day+"e")
	if code != exitOK || strings.Count(out, "BEGIN PRIVATE KEY") != 1 {
		t.Fatalf("dkim export: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	k, err := msgauth.ParsePrivateKey("other.test", "p"+day+"e", time.Now(), []byte(out[strings.Index(out, "-----BEGIN"):]))
	if err != nil || k.Algorithm != msgauth.Ed25519 {
		t.Errorf("exported key: %v %v", k.Algorithm, err)
	}
	code, out, _ = runIn(t, "", "dkim", "export", "-config", config, "other.test")
	if code != exitOK || strings.Count(out, "BEGIN PRIVATE KEY") != 2 {
		t.Errorf("dkim export of the active keys: exit %d, %d keys", code, strings.Count(out, "BEGIN PRIVATE KEY"))
	}
	code, _, errOut = runIn(t, "", "dkim", "export", "-config", config, "other.test", "nosuch")
	if code != exitFailure || !strings.Contains(errOut, "nosuch") {
		t.Errorf("export of an unknown selector: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = runIn(t, "", "dkim", "list", "-config", config, "foreign.test")
	if code != exitFailure || !strings.Contains(errOut, "not local") {
		t.Errorf("dkim list of a foreign domain: exit %d, stderr %q", code, errOut)
	}
	if code, _, _ := runIn(t, "", "dkim", "list", "-config", config); code != exitUsage {
		t.Errorf("dkim list without a domain: exit %d, want 2", code)
	}
}

// serve, at start, gives every local domain without active keys a pair
// (an installation from before DKIM), and leaves the others alone.
func TestEnsureDKIMKeys(t *testing.T) {
	config, _ := adminConfig(t)
	cfg, err := loadConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	st, err := openStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	if err := st.AddDomain(ctx, "two.test"); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := ensureDKIMKeys(ctx, st, log, time.Now()); err != nil {
		t.Fatal(err)
	}
	sel := regexp.MustCompile(`^p\d{8}[er]$`)
	for _, d := range []string{"example.test", "two.test"} {
		keys, err := st.DKIMKeys(ctx, d, true)
		if err != nil || len(keys) != 2 || !sel.MatchString(keys[0].Selector) {
			t.Fatalf("%s: keys %v %v", d, keys, err)
		}
	}
	if err := ensureDKIMKeys(ctx, st, log, time.Now()); err != nil {
		t.Fatal(err)
	}
	if keys, _ := st.DKIMKeys(ctx, "two.test", false); len(keys) != 2 {
		t.Errorf("a second start added keys: %d", len(keys))
	}
}
