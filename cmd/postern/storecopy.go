package main

// postern store copy: moving an installation from its SQLite store to a
// PostgreSQL database that several frontends can share.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/postern/postern/mailstore"
)

func cmdStore(c *cli, args []string) int {
	return c.verbs("store", args, map[string]func(*cli, []string) int{
		"copy": cmdStoreCopy,
	})
}

func cmdStoreCopy(c *cli, args []string) int {
	const name = "store copy"
	fs := c.flagSet(name, "[-config FILE] -to-dsn DSN")
	path := configFlag(fs)
	toDSN := fs.String("to-dsn", "", "the empty PostgreSQL database to copy into, as a URL or key=value `DSN` (default: $"+storeDSNEnv+")")
	if code, ok := c.parse(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return c.usageError(fs, "unexpected argument %q", fs.Arg(0))
	}
	dsn := *toDSN
	if dsn == "" {
		// The password then need not be on the command line (where
		// ps shows it).
		dsn = os.Getenv(storeDSNEnv)
	}
	if dsn == "" {
		return c.usageError(fs, "-to-dsn DSN is required (or $%s)", storeDSNEnv)
	}
	file, from := resolveConfig(*path)
	cfg, err := loadConfig(file)
	if err != nil {
		return c.fail(name, err)
	}
	if cfg.Store.Driver == driverPostgres {
		return c.fail(name, fmt.Errorf("the store of %s is on PostgreSQL (%s) already: store copy copies a SQLite store; use pg_dump and pg_restore between PostgreSQL databases",
			from, redactDSN(cfg.Store.DSN)))
	}
	report, err := storeCopy(c, cfg, dsn)
	if err != nil {
		return c.fail(name, err)
	}
	to := redactDSN(dsn)
	tw := tabwriter.NewWriter(c.stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "table\trows\tsha256")
	var total int64
	for _, t := range report.Tables {
		fmt.Fprintf(tw, "%s\t%d\t%s\n", t.Name, t.Rows, t.Checksum)
		total += t.Rows
	}
	tw.Flush()
	fmt.Fprintf(c.stdout, "copied %d rows in %d tables into %s; row counts and checksums read back from it match the SQLite store\n",
		total, len(report.Tables), to)
	config := file
	if config == "" {
		config = "a configuration file (serve -config FILE)"
	}
	fmt.Fprintf(c.stdout, `
To serve from PostgreSQL, set in %s:

  [store]
  driver = "postgres"
  dsn = "%s"

adding the password to dsn, or leave dsn out and give serve the whole DSN
in $%s, which keeps the password out of the file.
IMAP clients keep their UIDVALIDITY and UIDs and download nothing again.
The SQLite store in %s is left as it was: do not serve from it again, or
mail delivered there will not be on PostgreSQL.
`, config, to, storeDSNEnv, cfg.DataDir)
	return exitOK
}

// storeCopy copies cfg's SQLite store, holding the data directory's lock
// (so serve cannot run on it meanwhile), into the empty PostgreSQL
// database dsn, whose schema it creates.
func storeCopy(c *cli, cfg *Config, dsn string) (mailstore.CopyReport, error) {
	var report mailstore.CopyReport
	where, exists, err := storeExists(cfg)
	if err != nil {
		return report, err
	}
	if !exists {
		return report, fmt.Errorf("there is no store to copy: %s does not exist", where)
	}
	unlock, err := lockDataDir(cfg.DataDir)
	if errors.Is(err, errStoreInUse) {
		return report, fmt.Errorf("copy %s: %w; stop it first (systemctl stop postern): the copy must see every message", where, err)
	}
	if err != nil {
		return report, err
	}
	defer unlock()
	src, err := openBackend(cfg, mailstore.Options{})
	if err != nil {
		return report, err
	}
	defer src.Close()

	ctx, cancel := context.WithTimeout(c.ctx, storeConnectTimeout)
	dst, err := mailstore.OpenPostgres(ctx, dsn, mailstore.Options{})
	cancel()
	if err != nil {
		// mailstore's errors leave the password out (pgconn redacts it).
		return report, fmt.Errorf("store %s: %w", redactDSN(dsn), err)
	}
	defer dst.Close()
	fmt.Fprintf(c.stderr, "postern: store copy: copying %s into %s\n", where, redactDSN(dsn))
	report, err = src.CopyTo(c.ctx, dst, func(table string, rows int64) {
		fmt.Fprintf(c.stderr, "postern: store copy: %s: %d rows\n", table, rows)
	})
	if err != nil {
		return report, fmt.Errorf("copy %s into %s: %w", where, redactDSN(dsn), err)
	}
	return report, nil
}
