package main

// Opening the mailstore named by a configuration, for serve and for the
// store-backed commands (user, domain, alias, mailbox, queue).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/postern/postern/mailstore"
)

// storeFile is the name of the database inside data_dir.
const storeFile = "postern.db"

// openStore opens, creating it if needed, the mailstore [store] names for
// a command-line tool. Store events are not logged; serve uses
// openStoreOpts to give the store its logger.
func openStore(cfg *Config) (*mailstore.Store, error) {
	return openStoreOpts(cfg, mailstore.Options{})
}

// storeConnectTimeout bounds connecting to (and migrating) a PostgreSQL
// store, so that a command or serve facing a dead server says so.
const storeConnectTimeout = 60 * time.Second

// openStoreOpts is the one way serve and every command open the store
// [store] names, with opts. On SQLite it creates cfg.DataDir if it does
// not exist, makes it private (privateDataDir) and opens the database in
// it; on PostgreSQL it connects to store.dsn and creates or upgrades the
// schema. Either way the configured domains are made local. The caller
// closes the store.
func openStoreOpts(cfg *Config, opts mailstore.Options) (*mailstore.Store, error) {
	st, err := openBackend(cfg, opts)
	if err != nil {
		return nil, err
	}
	// The configuration's domains are always local; more can be added
	// with postern domain add.
	for _, d := range cfg.Domains {
		if err := st.AddDomain(context.Background(), d); err != nil && !errors.Is(err, mailstore.ErrExists) {
			st.Close()
			return nil, fmt.Errorf("add configured domain %s: %w", d, err)
		}
	}
	return st, nil
}

// openBackend opens the store [store] names, as openStoreOpts does, but
// leaves the domains alone (config check uses it).
func openBackend(cfg *Config, opts mailstore.Options) (*mailstore.Store, error) {
	var st *mailstore.Store
	if cfg.Store.Driver == driverPostgres {
		ctx, cancel := context.WithTimeout(context.Background(), storeConnectTimeout)
		defer cancel()
		var err error
		// mailstore's errors leave the password out (pgconn redacts it).
		st, err = mailstore.OpenPostgres(ctx, cfg.Store.DSN, opts)
		if err != nil {
			return nil, fmt.Errorf("store %s: %w", redactDSN(cfg.Store.DSN), err)
		}
	} else {
		// Every user's mail and the password hashes are in the database:
		// files Postern creates (SQLite's -wal and -shm too) are private, and
		// those of an earlier start are made so.
		syscall.Umask(0o077)
		if err := privateDataDir(cfg.DataDir); err != nil {
			return nil, err
		}
		for _, suffix := range []string{"", "-wal", "-shm"} {
			if err := os.Chmod(filepath.Join(cfg.DataDir, storeFile+suffix), 0o600); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("data directory: %w", err)
			}
		}
		// mailstore's errors already read "open mailstore PATH: ...".
		var err error
		st, err = mailstore.Open(filepath.Join(cfg.DataDir, storeFile), opts)
		if err != nil {
			return nil, err
		}
	}
	return st, nil
}

// storeExists reports whether the store [store] names is there already,
// for the commands that only read and so must not create one. where names
// it for messages. A PostgreSQL database is always taken to exist: it is
// made by its administrator, and opening it only adds Postern's tables.
func storeExists(cfg *Config) (where string, exists bool, err error) {
	where = cfg.Store.describe(cfg.DataDir)
	if cfg.Store.Driver == driverPostgres {
		return where, true, nil
	}
	_, err = os.Stat(where)
	switch {
	case err == nil:
		return where, true, nil
	case errors.Is(err, os.ErrNotExist):
		return where, false, nil
	default:
		return where, false, fmt.Errorf("mailstore: %w", err)
	}
}

// privateDataDir creates dir with mode 0700, or tightens it to 0700 when it
// exists with a looser mode (made by hand, or by a package): it holds every
// user's mail, the password hashes and the TLS key. A shared directory
// such as /tmp (sticky bit) is refused rather than changed.
func privateDataDir(dir string) error {
	if err := os.MkdirAll(dir, dataDirPerm); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("data directory %s is not a directory", dir)
	}
	if fi.Mode()&os.ModeSticky != 0 {
		return fmt.Errorf("data directory %s is a shared directory (sticky bit, like /tmp): give Postern a directory of its own", dir)
	}
	if fi.Mode().Perm() != dataDirPerm {
		if err := os.Chmod(dir, dataDirPerm); err != nil {
			return fmt.Errorf("data directory: make it private: %w", err)
		}
	}
	return nil
}
