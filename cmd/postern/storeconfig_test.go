package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/mailstore/storetest"
)

// storeConfig writes a configuration with data in a temporary directory,
// the local domain example.test and the [store] table given.
func storeConfig(t *testing.T, store string) (config, dataDir string) {
	t.Helper()
	dataDir = filepath.Join(t.TempDir(), "data")
	config = writeFile(t, "store.toml", `hostname = "mail.example.test"
data_dir = "`+dataDir+`"
domains = ["example.test"]
[store]
`+store)
	return config, dataDir
}

// postgresConfig is storeConfig on a fresh PostgreSQL database.
func postgresConfig(t *testing.T) (config, dsn string) {
	t.Helper()
	dsn = storetest.PostgresDSN(t)
	config, _ = storeConfig(t, "driver = \"postgres\"\ndsn = \""+dsn+"\"\n")
	return config, dsn
}

func TestStoreConfigValidate(t *testing.T) {
	t.Setenv(storeDSNEnv, "")
	cases := []struct {
		name, store string
		env         string
		wantErr     string // substring of the error; "" for valid
	}{
		{"default is sqlite", "", "", ""},
		{"sqlite", `driver = "sqlite"`, "", ""},
		{"unknown driver", `driver = "mysql"`, "", `key "store.driver": must be one of sqlite, postgres, not "mysql"`},
		{"postgres without dsn", `driver = "postgres"`, "", `key "store.dsn": must be set for driver = "postgres"`},
		{"dsn with sqlite", `dsn = "postgres://u@h/db"`, "", `key "store.dsn": is for driver = "postgres"`},
		{"postgres", "driver = \"postgres\"\ndsn = \"postgres://u@h/db\"", "", ""},
		{"postgres dsn from the environment", `driver = "postgres"`, "postgres://u@h/db", ""},
		{"bad dsn", "driver = \"postgres\"\ndsn = \"postgres://u:topsecret@h:notaport/db\"", "", `key "store.dsn"`},
		{"bad dsn from the environment", `driver = "postgres"`, "postgres://u:topsecret@h:notaport/db", `key "store.driver": is "postgres" but $POSTERN_STORE_DSN does not parse`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(storeDSNEnv, tc.env)
			config, _ := storeConfig(t, tc.store+"\n")
			_, err := loadConfig(config)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("want valid, got %v", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("want an error with %q, got none", tc.wantErr)
			case err != nil && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("error %q lacks %q", err, tc.wantErr)
			case err != nil && strings.Contains(err.Error(), "topsecret"):
				t.Fatalf("error shows the password: %v", err)
			}
			if tc.wantErr == "" {
				return // config check would go on to connect to the store
			}
			// config check names the key and exits 1, too.
			code, _, errOut := runCmd(t, "config", "check", "-config", config)
			if code != exitFailure || !strings.Contains(errOut, tc.wantErr) {
				t.Errorf("config check: %d %q, want 1 and %q", code, errOut, tc.wantErr)
			}
		})
	}
}

func TestStoreDSNEnvironmentWins(t *testing.T) {
	t.Setenv(storeDSNEnv, "postgres://fromenv@envhost/envdb")
	config, _ := storeConfig(t, "driver = \"postgres\"\ndsn = \"postgres://fromfile@filehost/filedb\"\n")
	cfg, err := loadConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Store.DSN != "postgres://fromenv@envhost/envdb" || cfg.Store.dsnFrom != "$"+storeDSNEnv {
		t.Errorf("DSN %q from %q, want the environment's", cfg.Store.DSN, cfg.Store.dsnFrom)
	}
	// With SQLite the variable is ignored, with a warning.
	config, _ = storeConfig(t, "driver = \"sqlite\"\n")
	code, _, errOut := runCmd(t, "config", "check", "-config", config)
	if code != exitOK || !strings.Contains(errOut, `warning: `) || !strings.Contains(errOut, "POSTERN_STORE_DSN is ignored") {
		t.Errorf("config check with sqlite and %s: %d %q, want 0 and a warning", storeDSNEnv, code, errOut)
	}
}

func TestRedactDSN(t *testing.T) {
	t.Setenv("PGPASSWORD", "")
	for _, tc := range []struct{ in, want string }{
		{"postgres://alice:topsecret@db.example:6543/mail?sslmode=disable", "postgres://alice@db.example:6543/mail"},
		{"host=db.example port=6543 user=alice password=topsecret dbname=mail", "postgres://alice@db.example:6543/mail"},
		{"postgres://alice:topsecret@db.example:notaport/mail", "(a PostgreSQL DSN that does not parse)"},
	} {
		got := redactDSN(tc.in)
		if got != tc.want {
			t.Errorf("redactDSN(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if strings.Contains(got, "topsecret") {
			t.Errorf("redactDSN(%q) shows the password: %q", tc.in, got)
		}
	}
}

func TestBackupRestoreRefusePostgres(t *testing.T) {
	t.Setenv(storeDSNEnv, "")
	config, _ := storeConfig(t, "driver = \"postgres\"\ndsn = \"postgres://u:topsecret@127.0.0.1:1/db\"\n")
	dest := filepath.Join(t.TempDir(), "backup.db")
	for _, args := range [][]string{
		{"backup", "-config", config, dest},
		{"restore", "-config", config, dest},
	} {
		code, _, errOut := runCmd(t, args...)
		if code != exitFailure || !strings.Contains(errOut, "pg_dump") || !strings.Contains(errOut, "pg_restore") {
			t.Errorf("%s: %d %q, want 1 and a pointer to pg_dump/pg_restore", args[0], code, errOut)
		}
		if strings.Contains(errOut, "topsecret") {
			t.Errorf("%s shows the password: %q", args[0], errOut)
		}
	}
}

func TestConfigCheckStoreSQLite(t *testing.T) {
	t.Setenv(storeDSNEnv, "")
	config, dataDir := storeConfig(t, "")
	code, out, errOut := runCmd(t, "config", "check", "-config", config)
	if code != exitOK || !strings.Contains(out, "store: sqlite, ") || !strings.Contains(out, "not created yet") {
		t.Fatalf("config check before any store: %d %q %q", code, out, errOut)
	}
	if m, _ := filepath.Glob(filepath.Join(dataDir, storeFile)); len(m) != 0 {
		t.Fatalf("config check created the store %v", m)
	}
	if code, out, errOut := runIn(t, "pass-word-1\n", "user", "add", "-config", config, "alice@example.test"); code != exitOK {
		t.Fatalf("user add: %d %s %s", code, out, errOut)
	}
	code, out, errOut = runCmd(t, "config", "check", "-config", config)
	if code != exitOK || !strings.Contains(out, "store: sqlite, "+filepath.Join(dataDir, storeFile)+": server version 3.") ||
		!strings.Contains(out, ", schema version ") {
		t.Fatalf("config check on a store: %d %q %q", code, out, errOut)
	}
}

func TestConfigCheckStorePostgres(t *testing.T) {
	t.Setenv(storeDSNEnv, "")
	config, dsn := postgresConfig(t)
	code, out, errOut := runCmd(t, "config", "check", "-config", config)
	if code != exitOK || !strings.Contains(out, "store: postgres, "+redactDSN(dsn)+": server version ") ||
		!strings.Contains(out, ", schema version ") || !strings.HasSuffix(out, "store.toml: ok\n") {
		t.Fatalf("config check on PostgreSQL: %d %q %q", code, out, errOut)
	}
	if strings.Contains(out, "schema version 0") {
		t.Errorf("config check reads schema version 0: %q", out)
	}

	// A server that is not there: exit 1 and what failed, no password.
	config, _ = storeConfig(t, "driver = \"postgres\"\ndsn = \"postgres://postern:topsecret@127.0.0.1:1/postern?connect_timeout=5\"\n")
	code, out, errOut = runCmd(t, "config", "check", "-config", config)
	if code != exitFailure || !strings.Contains(errOut, "postgres://postern@127.0.0.1:1/postern") || strings.Contains(out, ": ok") {
		t.Fatalf("config check on a dead server: %d %q %q", code, out, errOut)
	}
	if strings.Contains(out+errOut, "topsecret") {
		t.Fatalf("config check shows the password: %q %q", out, errOut)
	}
}

// TestUserAddListPostgres: the store commands work on PostgreSQL, with the
// DSN in the file or in $POSTERN_STORE_DSN.
func TestUserAddListPostgres(t *testing.T) {
	t.Setenv(storeDSNEnv, "")
	config, dsn := postgresConfig(t)
	if code, out, errOut := runIn(t, "pass-word-1\n", "user", "add", "-config", config, "Alice@Example.test"); code != exitOK || !strings.Contains(out, "added alice@example.test") {
		t.Fatalf("user add: %d %q %q", code, out, errOut)
	}
	if code, out, errOut := runIn(t, "pass-word-2\n", "user", "add", "-config", config, "alice@example.test"); code != exitFailure || !strings.Contains(errOut, "already exists") {
		t.Fatalf("user add twice: %d %q %q", code, out, errOut)
	}
	// The same database through the environment, the file naming none.
	envConfig, _ := storeConfig(t, "driver = \"postgres\"\n")
	t.Setenv(storeDSNEnv, dsn)
	if code, out, errOut := runIn(t, "pass-word-3\n", "user", "add", "-config", envConfig, "bob@example.test"); code != exitOK {
		t.Fatalf("user add with %s: %d %q %q", storeDSNEnv, code, out, errOut)
	}
	code, out, errOut := runCmd(t, "user", "list", "-config", envConfig)
	if code != exitOK || !strings.Contains(out, "alice@example.test") || !strings.Contains(out, "bob@example.test") {
		t.Fatalf("user list: %d %q %q", code, out, errOut)
	}
	code, out, errOut = runCmd(t, "mailbox", "list", "-config", envConfig, "alice@example.test")
	if code != exitOK || !strings.Contains(out, "INBOX") {
		t.Fatalf("mailbox list: %d %q %q", code, out, errOut)
	}
}
