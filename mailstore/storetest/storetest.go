// Package storetest is the home of test fixtures shared by Postern's
// packages: the mailstore suite, the protocol packages and cmd/postern use it
// to get a store to test against without each writing its own copy.
//
// It must not import mailstore or any protocol package (their tests import
// it), so the fixtures here hand out what a test needs to open a store
// itself, such as a PostgreSQL DSN. Besides the store: the re-executed
// child process (StartChild, DispatchChild), self-signed certificates
// (SelfSigned), a log buffer safe for concurrent use (SyncBuffer) and a
// record of an IMAP server's unilateral updates (IMAPUpdates). A loopback
// DNS server is smtpd/msgauth/msgauthtest.
//
// PostgreSQL: POSTERN_TEST_POSTGRES_DSN names a server on which the tests may
// create and drop databases (CI starts a throwaway cluster and sets it; see
// .ci/postgres.sh). Without it, tests that need PostgreSQL skip, unless
// POSTERN_REQUIRE_INTEROP=1, which turns the skip into a failure.
package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvPostgresDSN names the environment variable that holds the DSN of a
// PostgreSQL server the tests may create databases on.
const EnvPostgresDSN = "POSTERN_TEST_POSTGRES_DSN"

// EnvRequireInterop, set to 1, makes a missing external dependency (here the
// PostgreSQL server) fail the test instead of skipping it.
const EnvRequireInterop = "POSTERN_REQUIRE_INTEROP"

// adminTimeout bounds each CREATE/DROP DATABASE round trip.
const adminTimeout = 30 * time.Second

// PostgresDSN creates a fresh, empty database with a random name on the
// server named by POSTERN_TEST_POSTGRES_DSN and returns a DSN for it (the
// same server, user and options, with the database replaced). The database
// is dropped WITH (FORCE) at t.Cleanup, so connections a test leaves open do
// not keep it alive. Without POSTERN_TEST_POSTGRES_DSN the test is skipped,
// or fails when POSTERN_REQUIRE_INTEROP=1.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	admin := os.Getenv(EnvPostgresDSN)
	if admin == "" {
		if os.Getenv(EnvRequireInterop) == "1" {
			t.Fatalf("storetest: %s is not set and %s=1: a PostgreSQL server is required", EnvPostgresDSN, EnvRequireInterop)
		} else {
			t.Skipf("storetest: %s is not set: skipping the PostgreSQL test", EnvPostgresDSN)
		}
		return ""
	}
	name, err := databaseName(t.Name())
	if err != nil {
		t.Fatalf("storetest: %v", err)
		return ""
	}
	dsn, err := withDatabase(admin, name)
	if err != nil {
		t.Fatalf("storetest: %s: %v", EnvPostgresDSN, err)
		return ""
	}
	// CREATE DATABASE cannot take a bind parameter; the name is ours
	// (letters, digits, underscores) and quoted as an identifier anyway.
	if err := adminExec(admin, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("storetest: create database %s: %v", name, err)
		return ""
	}
	t.Cleanup(func() {
		// WITH (FORCE) (PostgreSQL 13+) ends the sessions still connected.
		if err := adminExec(admin, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("storetest: drop database %s: %v", name, err)
		}
	})
	return dsn
}

// adminExec runs one statement on its own connection to the admin DSN.
func adminExec(admin, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return fmt.Errorf("connect to the server in %s: %w", EnvPostgresDSN, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

// databaseName builds "postern_" + up to 30 characters of the test's name
// (lower case letters, digits and underscores) + "_" + 16 random hex digits,
// well under PostgreSQL's 63-byte identifier limit.
func databaseName(testName string) (string, error) {
	var b strings.Builder
	b.WriteString("postern_")
	n := 0
	for _, r := range strings.ToLower(testName) {
		if n == 30 {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
		n++
	}
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", fmt.Errorf("random database name: %w", err)
	}
	b.WriteByte('_')
	b.WriteString(hex.EncodeToString(rnd[:]))
	return b.String(), nil
}

// withDatabase returns dsn with its database replaced by name. It accepts
// both forms libpq and pgx do: a URL (postgres:// or postgresql://), whose
// path is the database, and keyword/value settings, where a later dbname
// overrides an earlier one.
func withDatabase(dsn, name string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			// *url.Error quotes the whole URL, password included: keep
			// only the reason.
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return "", fmt.Errorf("parse DSN as a URL: %w", err)
		}
		u.Path = "/" + name
		u.RawPath = ""
		return u.String(), nil
	}
	if _, err := pgx.ParseConfig(dsn); err != nil {
		return "", fmt.Errorf("parse DSN: %w", err)
	}
	return strings.TrimSpace(dsn) + " dbname=" + name, nil
}
