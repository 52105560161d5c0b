package main

// [store]: which database the mailstore lives in. SQLite (the default) is
// one file in data_dir; PostgreSQL is a server several `postern serve`
// frontends can share.

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/postern/postern/mailstore"
)

// StoreConfig is [store].
type StoreConfig struct {
	Driver string `toml:"driver"` // sqlite | postgres
	// DSN is the PostgreSQL connection string (a URL or key=value
	// settings, as libpq takes). $POSTERN_STORE_DSN wins when set, so that
	// a password need not sit in the file. Never logged or printed as is:
	// see describe.
	DSN string `toml:"dsn"`

	// dsnFrom says where DSN came from: "store.dsn" or "$POSTERN_STORE_DSN".
	dsnFrom string
}

const (
	driverSQLite   = "sqlite"
	driverPostgres = "postgres"

	// storeDSNEnv holds the PostgreSQL DSN outside the configuration file.
	storeDSNEnv = "POSTERN_STORE_DSN"
)

var storeDrivers = []string{driverSQLite, driverPostgres}

func defaultStore() StoreConfig { return StoreConfig{Driver: driverSQLite} }

// validateStore checks [store] and takes the DSN from $POSTERN_STORE_DSN
// when it is set and the driver is postgres.
func (c *Config) validateStore(bad func(key, format string, args ...any)) {
	s := &c.Store
	if !slices.Contains(storeDrivers, s.Driver) {
		bad("store.driver", "must be one of %s, not %q", strings.Join(storeDrivers, ", "), s.Driver)
		return
	}
	env := os.Getenv(storeDSNEnv)
	switch s.Driver {
	case driverSQLite:
		if s.DSN != "" {
			bad("store.dsn", "is for driver = %q; the SQLite store is the file %s in data_dir", driverPostgres, storeFile)
		}
		if env != "" {
			c.warnings = append(c.warnings, &configError{Key: "store.driver",
				Msg: fmt.Sprintf("is %q, so $%s is ignored", driverSQLite, storeDSNEnv)})
		}
	case driverPostgres:
		s.dsnFrom = "store.dsn"
		if env != "" {
			s.DSN, s.dsnFrom = env, "$"+storeDSNEnv
		}
		if s.DSN == "" {
			bad("store.dsn", "must be set for driver = %q (or $%s)", driverPostgres, storeDSNEnv)
			return
		}
		// pgconn's parse errors leave the password out.
		if _, err := pgconn.ParseConfig(s.DSN); err != nil {
			if s.dsnFrom == "store.dsn" {
				bad("store.dsn", "%v", err)
			} else {
				bad("store.driver", "is %q but $%s does not parse: %v", driverPostgres, storeDSNEnv, err)
			}
		}
	}
}

// describe names the store for messages: the SQLite file, or the
// PostgreSQL user, host, port and database, never the password.
func (s StoreConfig) describe(dataDir string) string {
	if s.Driver != driverPostgres {
		path := filepath.Join(dataDir, storeFile)
		if abs, err := filepath.Abs(path); err == nil {
			path = abs
		}
		return path
	}
	return redactDSN(s.DSN)
}

// redactDSN is a PostgreSQL DSN without its secrets, as
// postgres://USER@HOST:PORT/DATABASE; the password (in the DSN or in
// PGPASSWORD) and every other setting are left out.
func redactDSN(dsn string) string {
	pc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return "(a PostgreSQL DSN that does not parse)"
	}
	host := pc.Host
	if strings.HasPrefix(host, "/") {
		host = "[" + host + "]" // a Unix socket directory
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s", pc.User, host, pc.Port, pc.Database)
}

// refusePostgres is the error backup and restore give on a PostgreSQL
// store: they copy the SQLite file, and PostgreSQL has its own tools,
// which also work while the frontends run.
func refusePostgres(cfg *Config) error {
	if cfg.Store.Driver != driverPostgres {
		return nil
	}
	return fmt.Errorf("the store is on PostgreSQL (%s), and postern backup and restore copy only a SQLite store: "+
		"use pg_dump -Fc to back it up and pg_restore to restore it", redactDSN(cfg.Store.DSN))
}

// checkStore is config check's look at the store: it connects and prints
// the backend, the server's version and the schema version, or returns
// what failed. A SQLite store that does not exist yet is not created.
func checkStore(ctx context.Context, w io.Writer, cfg *Config) error {
	where, exists, err := storeExists(cfg)
	if err != nil {
		return err
	}
	if !exists {
		fmt.Fprintf(w, "store: %s, %s: not created yet (serve or the first postern user add creates it)\n", cfg.Store.Driver, where)
		return nil
	}
	var info mailstore.BackendInfo
	if cfg.Store.Driver == driverPostgres {
		// Read only: checking a configuration must not migrate a
		// database that running frontends share.
		info, err = mailstore.DescribePostgres(ctx, cfg.Store.DSN)
		if err != nil {
			return fmt.Errorf("store %s: %w", where, err)
		}
	} else {
		st, err := openBackend(cfg, mailstore.Options{})
		if err != nil {
			return err
		}
		defer st.Close()
		if info, err = st.Describe(ctx); err != nil {
			return fmt.Errorf("store %s: %w", where, err)
		}
	}
	schema := strconv.Itoa(info.SchemaVersion)
	if info.SchemaVersion == 0 {
		schema = "none yet (serve or the first postern user add creates it)"
	}
	fmt.Fprintf(w, "store: %s, %s: server version %s, schema version %s\n", info.Backend, where, info.ServerVersion, schema)
	return nil
}
