package main

// `postern backup DEST` and `postern restore SRC`.
//
// mailstore has no backup API, so backup opens the database file read-only
// with the same SQLite driver and runs VACUUM INTO: one read transaction,
// so the copy is the store as it was at one instant, while serve goes on
// committing (WAL readers never block the writer). The copy is checked
// (integrity_check, Postern's application id, counts) before it is
// reported. restore checks its source the same way, refuses while a serve
// holds the data directory lock, and keeps the store it replaces.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	_ "modernc.org/sqlite" // the driver mailstore uses
)

// postern's SQLite application id ("Pstn"), as mailstore sets it.
const sqliteApplicationID = 0x5073746e

// storeSummary is what a verified copy holds.
type storeSummary struct {
	Path                                                        string
	Bytes                                                       int64
	Schema                                                      int
	Domains, Users, Aliases, Mailboxes, Messages, Bodies, Queue int64
}

func (s storeSummary) String() string {
	return fmt.Sprintf("%s: %d bytes, schema version %d, integrity ok\n"+
		"  %d domains, %d users, %d aliases, %d mailboxes, %d messages (%d distinct bodies), %d queue entries\n",
		s.Path, s.Bytes, s.Schema, s.Domains, s.Users, s.Aliases, s.Mailboxes, s.Messages, s.Bodies, s.Queue)
}

// sqliteDSN is a driver DSN for path with the given query values.
func sqliteDSN(path string, params string) string {
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + params
}

func cmdBackup(c *cli, args []string) int {
	const name = "backup"
	fs := c.flagSet(name, "[-config FILE] DEST")
	path := configFlag(fs)
	if code, ok := c.parse(fs, args); !ok {
		return code
	}
	if fs.NArg() != 1 {
		return c.usageError(fs, "want one DEST file")
	}
	dest := fs.Arg(0)
	file, from := resolveConfig(*path)
	cfg, err := loadConfig(file)
	if err != nil {
		return c.fail(name, err)
	}
	if err := refusePostgres(cfg); err != nil {
		return c.fail(name, err)
	}
	src := filepath.Join(cfg.DataDir, storeFile)
	if _, err := os.Stat(src); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return c.fail(name, fmt.Errorf("no mailstore at %s (data_dir of %s); point to the server's configuration with -config FILE or %s=FILE", src, from, configEnv))
		}
		return c.fail(name, fmt.Errorf("mailstore: %w", err))
	}
	start := time.Now()
	sum, err := backupStore(c.ctx, src, dest)
	if err != nil {
		return c.fail(name, err)
	}
	fmt.Fprintf(c.stdout, "backup of %s taken in %v\n", src, time.Since(start).Round(time.Millisecond))
	fmt.Fprint(c.stdout, sum)
	return exitOK
}

// backupStore copies the database at src to dest, which must not exist,
// and verifies the copy. A copy that fails verification is removed.
func backupStore(ctx context.Context, src, dest string) (storeSummary, error) {
	if _, err := os.Lstat(dest); err == nil {
		return storeSummary{}, fmt.Errorf("backup to %s: the file exists; give a new name", dest)
	}
	// The copy holds every user's mail and the password hashes.
	syscall.Umask(0o077)
	db, err := sql.Open("sqlite", sqliteDSN(src, "mode=ro&_pragma=busy_timeout(30000)"))
	if err != nil {
		return storeSummary{}, fmt.Errorf("backup: open %s: %w", src, err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "VACUUM INTO ?", dest); err != nil {
		os.Remove(dest)
		return storeSummary{}, fmt.Errorf("backup %s to %s: %w", src, dest, err)
	}
	if err := syncFile(dest); err != nil {
		return storeSummary{}, err
	}
	sum, err := verifyStore(ctx, dest)
	if err != nil {
		os.Remove(dest)
		return storeSummary{}, fmt.Errorf("backup %s to %s: the copy fails its check, removed: %w", src, dest, err)
	}
	return sum, nil
}

// verifyStore checks that the file at path is a whole Postern database and
// counts what it holds. It opens the file immutable: nothing is written,
// not even a -shm file.
func verifyStore(ctx context.Context, path string) (storeSummary, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return storeSummary{}, fmt.Errorf("check %s: %w", path, err)
	}
	db, err := sql.Open("sqlite", sqliteDSN(path, "mode=ro&immutable=1"))
	if err != nil {
		return storeSummary{}, fmt.Errorf("check %s: %w", path, err)
	}
	defer db.Close()
	sum := storeSummary{Path: path, Bytes: fi.Size()}
	var appID int64
	if err := db.QueryRowContext(ctx, "SELECT (SELECT application_id FROM pragma_application_id), (SELECT user_version FROM pragma_user_version)").Scan(&appID, &sum.Schema); err != nil {
		return sum, fmt.Errorf("check %s: not a SQLite database: %w", path, err)
	}
	if appID != sqliteApplicationID {
		return sum, fmt.Errorf("check %s: not a Postern database (application id %#x)", path, appID)
	}
	rows, err := db.QueryContext(ctx, "PRAGMA integrity_check")
	if err != nil {
		return sum, fmt.Errorf("check %s: integrity_check: %w", path, err)
	}
	var problems []string
	for rows.Next() && len(problems) < 10 {
		var line string
		if err := rows.Scan(&line); err != nil {
			rows.Close()
			return sum, fmt.Errorf("check %s: integrity_check: %w", path, err)
		}
		if line != "ok" {
			problems = append(problems, line)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return sum, fmt.Errorf("check %s: integrity_check: %w", path, err)
	}
	if len(problems) > 0 {
		return sum, fmt.Errorf("check %s: integrity_check: %s", path, strings.Join(problems, "; "))
	}
	for _, q := range []struct {
		table string
		n     *int64
	}{
		{"domains", &sum.Domains}, {"users", &sum.Users}, {"aliases", &sum.Aliases},
		{"mailboxes", &sum.Mailboxes}, {"messages", &sum.Messages}, {"bodies", &sum.Bodies}, {"queue", &sum.Queue},
	} {
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM "+q.table).Scan(q.n); err != nil {
			return sum, fmt.Errorf("check %s: count %s: %w", path, q.table, err)
		}
	}
	return sum, nil
}

// syncFile flushes path to disk.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}

func cmdRestore(c *cli, args []string) int {
	const name = "restore"
	fs := c.flagSet(name, "[-config FILE] SRC")
	path := configFlag(fs)
	if code, ok := c.parse(fs, args); !ok {
		return code
	}
	if fs.NArg() != 1 {
		return c.usageError(fs, "want one SRC file (made by postern backup)")
	}
	file, _ := resolveConfig(*path)
	cfg, err := loadConfig(file)
	if err != nil {
		return c.fail(name, err)
	}
	if err := refusePostgres(cfg); err != nil {
		return c.fail(name, err)
	}
	kept, sum, err := restoreStore(c.ctx, cfg.DataDir, fs.Arg(0))
	if err != nil {
		return c.fail(name, err)
	}
	fmt.Fprintf(c.stdout, "restored %s into %s\n", fs.Arg(0), filepath.Join(cfg.DataDir, storeFile))
	fmt.Fprint(c.stdout, sum)
	if kept != "" {
		fmt.Fprintf(c.stdout, "the store it replaced is kept as %s\n", kept)
	}
	return exitOK
}

// restoreStore makes a copy of src the store of dataDir. It refuses while
// a serve holds dataDir, and keeps a store it replaces under a new name,
// returned as kept.
func restoreStore(ctx context.Context, dataDir, src string) (kept string, sum storeSummary, err error) {
	if _, err := verifyStore(ctx, src); err != nil {
		return "", sum, fmt.Errorf("restore from %s: %w", src, err)
	}
	syscall.Umask(0o077)
	if err := privateDataDir(dataDir); err != nil {
		return "", sum, err
	}
	unlock, err := lockDataDir(dataDir)
	if errors.Is(err, errStoreInUse) {
		return "", sum, fmt.Errorf("restore into %s: %w; stop it first (systemctl stop postern)", dataDir, err)
	}
	if err != nil {
		return "", sum, err
	}
	defer unlock()

	db := filepath.Join(dataDir, storeFile)
	tmp := db + ".restore"
	if err := copyFile(src, tmp); err != nil {
		os.Remove(tmp)
		return "", sum, err
	}
	if _, err := os.Stat(db); err == nil {
		// Fold the old store's WAL into its file so that the file kept
		// is whole, then move it aside with its -wal and -shm gone.
		if err := checkpoint(ctx, db); err != nil {
			os.Remove(tmp)
			return "", sum, err
		}
		kept = db + ".before-restore-" + time.Now().UTC().Format("20060102T150405Z")
		if err := os.Rename(db, kept); err != nil {
			os.Remove(tmp)
			return "", sum, fmt.Errorf("restore: keep the old store: %w", err)
		}
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		if err := os.Remove(db + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			return kept, sum, fmt.Errorf("restore: remove the old %s: %w", db+suffix, err)
		}
	}
	if err := os.Rename(tmp, db); err != nil {
		return kept, sum, fmt.Errorf("restore: %w", err)
	}
	if err := syncFile(dataDir); err != nil {
		return kept, sum, err
	}
	sum, err = verifyStore(ctx, db)
	return kept, sum, err
}

// checkpoint copies the WAL of the database at path into it and empties it.
func checkpoint(ctx context.Context, path string) error {
	db, err := sql.Open("sqlite", sqliteDSN(path, "_pragma=busy_timeout(30000)"))
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", path, err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
		return fmt.Errorf("checkpoint %s: %w", path, err)
	}
	return nil
}

// copyFile copies src to a new private file dst and flushes it.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return nil
}
