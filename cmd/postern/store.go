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

	"github.com/postern/postern/mailstore"
)

// storeFile is the name of the database inside data_dir.
const storeFile = "postern.db"

// openStore opens, creating it if needed, the mailstore in cfg.DataDir for
// a command-line tool. Store events are not logged; serve uses
// openStoreOpts to give the store its logger.
func openStore(cfg *Config) (*mailstore.Store, error) {
	return openStoreOpts(cfg, mailstore.Options{})
}

// openStoreOpts creates cfg.DataDir if it does not exist, makes it private
// (privateDataDir) and opens the database in it with opts. The caller
// closes the store.
func openStoreOpts(cfg *Config, opts mailstore.Options) (*mailstore.Store, error) {
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
	st, err := mailstore.Open(filepath.Join(cfg.DataDir, storeFile), opts)
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
