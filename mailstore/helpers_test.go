package mailstore

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// setUserVersion stamps a schema version into a database, as a newer
// Postern would.
func setUserVersion(t *testing.T, path string, v int) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(fmt.Sprintf("PRAGMA user_version = %d", v)); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("PRAGMA journal_mode = DELETE"); err != nil {
		t.Fatal(err)
	}
}

// oldSchemaDB makes a SQLite database at path as a Postern at schema
// version v left it (migrations[:v], the version and application id
// stamped), then runs stmts, the test's rows. The connection (foreign keys
// on) stays open for rows that need arguments; close it before Open.
func oldSchemaDB(t *testing.T, path string, v int, stmts ...string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=foreign_keys(1)")
	if err != nil {
		t.Fatal(err)
	}
	all := append(slices.Clone(migrations[:v]), fmt.Sprintf("PRAGMA user_version = %d", v),
		fmt.Sprintf("PRAGMA application_id = %d", applicationID))
	for _, q := range append(all, stmts...) {
		if _, err := db.Exec(q); err != nil {
			db.Close()
			t.Fatalf("%.40s: %v", q, err)
		}
	}
	return db
}

// openMigrated opens the store at path, migrating it, and checks that it
// reached the latest schema version and is consistent; the store is
// closed at Cleanup.
func openMigrated(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path, Options{PasswordCost: FastPasswordHash})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	var version int
	if err := s.readRow(context.Background(), "PRAGMA user_version").Scan(&version); err != nil || version != len(migrations) {
		t.Fatalf("schema version %d (%v) after open, want %d", version, err, len(migrations))
	}
	if err := s.IntegrityCheck(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// makeForeignDB writes a SQLite database that some other program made.
func makeForeignDB(t *testing.T, path string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("CREATE TABLE recipes (name TEXT); INSERT INTO recipes VALUES ('soup')"); err != nil {
		t.Fatal(err)
	}
}

// snapshot describes every file in dir by name and content hash.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, fmt.Sprintf("%s %x", e.Name(), sha256.Sum256(b)))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// testBackend is the backend the suite runs on: TestMain runs every test
// once on SQLite and, when POSTERN_TEST_POSTGRES_DSN is set, once more on
// PostgreSQL.
var testBackend = "sqlite"

// onPostgres reports whether this pass of the suite runs on PostgreSQL.
func onPostgres() bool { return testBackend == "postgres" }

// sqliteOnly skips a test of SQLite's own file handling (old schema
// versions, foreign files) in the PostgreSQL pass; those have PostgreSQL
// counterparts of their own.
func sqliteOnly(t testing.TB) {
	t.Helper()
	if onPostgres() {
		t.Skip("tests SQLite's file handling; the SQLite pass runs it")
	}
}

// testDB is one test's database: a file on SQLite, a fresh database on
// PostgreSQL. It can be opened, closed and opened again.
type testDB struct {
	path string // SQLite
	dsn  string // PostgreSQL
}

func newTestDB(t testing.TB) testDB {
	t.Helper()
	if onPostgres() {
		return testDB{dsn: postgresDSN(t)}
	}
	return testDB{path: filepath.Join(t.TempDir(), "postern.db")}
}

// location is what a child process needs to open the database.
func (d testDB) location() string {
	if d.dsn != "" {
		return d.dsn
	}
	return d.path
}

func (d testDB) openErr(opts Options) (*Store, error) {
	return openLocation(d.location(), opts)
}

// openLocation opens a file path or a postgres:// DSN.
func openLocation(loc string, opts Options) (*Store, error) {
	if strings.HasPrefix(loc, "postgres://") {
		return OpenPostgres(context.Background(), loc, opts)
	}
	return Open(loc, opts)
}

// open opens the database, failing the test when it cannot.
func (d testDB) open(t testing.TB, opts Options) *Store {
	t.Helper()
	s, err := d.openErr(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// postgresTestEnv names the server tests make their databases on.
const postgresTestEnv = "POSTERN_TEST_POSTGRES_DSN"

// postgresDSN makes a fresh, empty database on the test server and
// returns its DSN; the database is dropped at cleanup. Without
// POSTERN_TEST_POSTGRES_DSN the test is skipped, or fails when
// POSTERN_REQUIRE_INTEROP=1. (The same contract as
// storetest.PostgresDSN, which mailstore cannot import.)
func postgresDSN(t testing.TB) string {
	t.Helper()
	base := os.Getenv(postgresTestEnv)
	if base == "" {
		if os.Getenv("POSTERN_REQUIRE_INTEROP") == "1" {
			t.Fatal(postgresTestEnv + " is not set and POSTERN_REQUIRE_INTEROP=1")
		}
		t.Skip(postgresTestEnv + " is not set")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connect to %s: %v", postgresTestEnv, err)
	}
	defer conn.Close(context.Background())
	name := fmt.Sprintf("postern_test_%x", randomBytes(8))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Errorf("drop database %s: %v", name, err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("%s: %v", postgresTestEnv, err)
	}
	u.Path = "/" + name
	return u.String()
}

// runSuites runs the tests on each backend in turn.
func runSuites(m *testing.M) int {
	code := m.Run()
	if os.Getenv(postgresTestEnv) == "" {
		if os.Getenv("POSTERN_REQUIRE_INTEROP") == "1" {
			fmt.Fprintln(os.Stderr, "mailstore: "+postgresTestEnv+" is not set and POSTERN_REQUIRE_INTEROP=1: the PostgreSQL pass cannot run")
			return 1
		}
		fmt.Println("mailstore: " + postgresTestEnv + " is not set: the suite ran on SQLite only")
		return code
	}
	fmt.Println("=== mailstore: the same suite on PostgreSQL")
	testBackend = "postgres"
	if c := m.Run(); c != 0 {
		code = c
	}
	return code
}
