package storetest

import (
	"context"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestPostgresDSNFreshDatabaseDroppedAtCleanup: the DSN names a new, empty
// database the test can write to, a second call gives another one, and the
// databases are gone after the test's cleanup even with a connection left open.
func TestPostgresDSNFreshDatabaseDroppedAtCleanup(t *testing.T) {
	var names []string
	t.Run("inner", func(t *testing.T) {
		dsn1 := PostgresDSN(t)
		dsn2 := PostgresDSN(t)
		if dsn1 == dsn2 {
			t.Fatalf("two calls gave the same DSN %q", dsn1)
		}
		for _, dsn := range []string{dsn1, dsn2} {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatalf("connect to the fresh database: %v", err)
			}
			// Left open on purpose: the cleanup must drop it WITH (FORCE).
			var name string
			var tables int
			if err := conn.QueryRow(ctx, "SELECT current_database(), (SELECT count(*) FROM pg_tables WHERE schemaname = 'public')").Scan(&name, &tables); err != nil {
				t.Fatalf("query the fresh database: %v", err)
			}
			if tables != 0 {
				t.Errorf("fresh database %s has %d tables, want 0", name, tables)
			}
			if !strings.HasPrefix(name, "postern_") {
				t.Errorf("database name %q lacks the postern_ prefix", name)
			}
			if _, err := conn.Exec(ctx, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)"); err != nil {
				t.Fatalf("write to the fresh database: %v", err)
			}
			names = append(names, name)
		}
	})
	if t.Failed() {
		return
	}
	if len(names) != 2 {
		t.Skip("no PostgreSQL server: the inner test skipped")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, os.Getenv(EnvPostgresDSN))
	if err != nil {
		t.Fatalf("connect to the admin DSN: %v", err)
	}
	defer admin.Close(context.Background())
	for _, name := range names {
		var n int
		if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil {
			t.Fatalf("look for database %s: %v", name, err)
		}
		if n != 0 {
			t.Errorf("database %s still exists after the test's cleanup", name)
		}
	}
}

// fakeTB records how PostgresDSN ended a test without a server.
type fakeTB struct {
	testing.TB
	mu      sync.Mutex
	skipped bool
	failed  bool
	msg     string
}

func (f *fakeTB) Helper()      {}
func (f *fakeTB) Name() string { return "TestFake" }
func (f *fakeTB) Skipf(format string, args ...any) {
	f.mu.Lock()
	f.skipped, f.msg = true, format
	f.mu.Unlock()
	runtime.Goexit()
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.failed, f.msg = true, format
	f.mu.Unlock()
	runtime.Goexit()
}

func runFake(f *fakeTB) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		PostgresDSN(f)
	}()
	<-done
}

// TestPostgresDSNWithoutServer: no POSTERN_TEST_POSTGRES_DSN skips, unless
// POSTERN_REQUIRE_INTEROP=1, which fails.
func TestPostgresDSNWithoutServer(t *testing.T) {
	t.Setenv(EnvPostgresDSN, "")
	t.Setenv(EnvRequireInterop, "")
	f := &fakeTB{}
	runFake(f)
	if !f.skipped || f.failed {
		t.Errorf("without a DSN: skipped=%v failed=%v, want a skip", f.skipped, f.failed)
	}
	t.Setenv(EnvRequireInterop, "1")
	f = &fakeTB{}
	runFake(f)
	if f.skipped || !f.failed {
		t.Errorf("without a DSN and %s=1: skipped=%v failed=%v, want a failure", EnvRequireInterop, f.skipped, f.failed)
	}
}

func TestWithDatabase(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "postgres://postgres@127.0.0.1:5432/db1?sslmode=disable"},
		{"postgresql://u:p%40ss@h/x", "postgresql://u:p%40ss@h/db1"},
		{"postgres://u@h:1", "postgres://u@h:1/db1"},
		{"host=127.0.0.1 port=5432 user=postgres dbname=postgres sslmode=disable", "host=127.0.0.1 port=5432 user=postgres dbname=postgres sslmode=disable dbname=db1"},
	} {
		got, err := withDatabase(tc.in, "db1")
		if err != nil {
			t.Errorf("withDatabase(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("withDatabase(%q) = %q, want %q", tc.in, got, tc.want)
		}
		cfg, err := pgx.ParseConfig(got)
		if err != nil {
			t.Errorf("pgx cannot parse %q: %v", got, err)
			continue
		}
		if cfg.Database != "db1" {
			t.Errorf("pgx reads database %q from %q, want db1", cfg.Database, got)
		}
	}
	if _, err := withDatabase("postgres://u:secret@h:bad port/x", "db1"); err == nil {
		t.Error("a malformed URL was accepted")
	} else if strings.Contains(err.Error(), "secret") {
		t.Errorf("the error shows the password: %v", err)
	}
}

func TestDatabaseName(t *testing.T) {
	a, err := databaseName("TestX/sub case-1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := databaseName("TestX/sub case-1")
	if a == b {
		t.Errorf("two names for one test are equal: %q", a)
	}
	if !strings.HasPrefix(a, "postern_testx_sub_case_1_") {
		t.Errorf("name %q does not carry the sanitized test name", a)
	}
	long, _ := databaseName(strings.Repeat("Z", 200))
	if len(long) > 63 {
		t.Errorf("name %q is %d bytes, over PostgreSQL's 63", long, len(long))
	}
	for _, r := range long + a {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			t.Errorf("name has %q outside [a-z0-9_]", r)
		}
	}
}
