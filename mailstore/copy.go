package mailstore

// Moving an installation: a stopped SQLite store copied into an empty
// PostgreSQL one (postern store copy), keeping every ID, UID, UIDVALIDITY
// and MODSEQ, so that IMAP clients see the same mailboxes and need not
// resynchronise.

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
)

// CopyTable is what CopyTo copied into one table: its rows and a
// checksum of them, computed the same way from the source and, after the
// commit, from the destination.
type CopyTable struct {
	Name     string
	Rows     int64
	Checksum string // hex SHA-256 of the rows' canonical encodings in primary-key order
}

// CopyReport lists the tables CopyTo copied, in the order it copied them.
type CopyReport struct {
	Tables []CopyTable
}

// ErrNotEmpty: CopyTo's destination already holds data.
var ErrNotEmpty = errors.New("destination store is not empty")

// The one place that says how a table or column is copied; every table
// and column not named here is copied as it is, found in the source's
// schema (so that a new schema version needs no change here unless one
// of its columns is derived or runtime state).
var (
	// copySkipTables are not copied: runtime state of a running server,
	// or data the destination rebuilds. A name the schema lacks (yet) is
	// ignored.
	copySkipTables = map[string]string{
		"maildrop_leases": "the POP3 leases of running sessions; the source is stopped",
		"relay_slots":     "the relay connections of running frontends; the source is stopped",
		"body_text":       "SQLite's full-text index cannot be read back; the bodies are marked for indexing",
	}
	// copyRecountedColumns are inserted as 0 and kept by the
	// destination's triggers as the messages and queue entries are
	// copied; their checksums then show that the recounted values equal
	// the source's.
	copyRecountedColumns = map[string][]string{
		"bodies": {"refs"},
		"users":  {"used_bytes"},
	}
	// copyResetColumns are inserted as their zero value (0, '') and left
	// out of the checksums: indexed = 0 makes the destination's indexer
	// index every body again (and it changes the column after the
	// commit); a queue entry's lease is the stopped source's.
	copyResetColumns = map[string][]string{
		"bodies": {"indexed"},
		"queue":  {"lease_owner", "lease_until"},
	}
	// copyRowFilters restrict the rows compared (on both sides): the
	// PostgreSQL schema keeps its version in meta, SQLite in a pragma.
	copyRowFilters = map[string]string{
		"meta": "key NOT IN ('application_id', 'schema_version')",
	}
)

// copyProgressEvery is how many rows of a table pass between two calls of
// CopyTo's progress function.
const copyProgressEvery = 10000

// column kinds, from the destination's column types.
const (
	kindInt = iota + 1
	kindText
	kindBytes
)

type copyColumn struct {
	name     string
	kind     int
	pk       int  // position in the primary key, 0 when not in it
	zero     bool // inserted as its kind's zero value (recounted or reset)
	checked  bool // in the checksum (not reset)
	identity bool // a PostgreSQL identity column (its sequence is reset)
}

type copyTableSpec struct {
	name   string
	cols   []copyColumn
	refs   []string // tables its foreign keys name
	filter string
}

// CopyTo copies s, a SQLite store nothing else writes to, into dst, an
// empty PostgreSQL store at the same schema version, in one transaction
// of dst: every table, keeping IDs (the identity sequences are then set
// past the highest ID the source ever gave, deleted rows' included), so
// that UIDs, UIDVALIDITY, MODSEQs and everything else stay the same.
// Rows are streamed, never all in memory. After the commit each table is
// read back from dst and its row count and checksum compared with the
// source's; a mismatch is an error naming the table (the copy is then
// committed but must not be used). progress, when not nil, is called
// now and then with the table being copied and the rows copied so far.
// The full-text index is not copied: dst indexes every body again.
func (s *Store) CopyTo(ctx context.Context, dst *Store, progress func(table string, rows int64)) (CopyReport, error) {
	var report CopyReport
	if s.d.pg {
		return report, fmt.Errorf("store copy: the source is on PostgreSQL: only a SQLite store is copied")
	}
	if dst == nil || !dst.d.pg {
		return report, fmt.Errorf("store copy: the destination must be a PostgreSQL store")
	}
	srcInfo, err := s.Describe(ctx)
	if err != nil {
		return report, fmt.Errorf("store copy: source: %w", err)
	}
	dstInfo, err := dst.Describe(ctx)
	if err != nil {
		return report, fmt.Errorf("store copy: destination: %w", err)
	}
	if srcInfo.SchemaVersion != dstInfo.SchemaVersion {
		return report, fmt.Errorf("store copy: source schema version %d, destination %d: both must be the same (open the source with this Postern to upgrade it)",
			srcInfo.SchemaVersion, dstInfo.SchemaVersion)
	}

	// One read transaction: the source's snapshot for the whole copy.
	src, err := s.rdb.BeginTx(ctx, nil)
	if err != nil {
		return report, fmt.Errorf("store copy: begin reading %s: %w", s.path, err)
	}
	defer src.Rollback()

	conn, err := pgx.Connect(ctx, dst.dsn)
	if err != nil {
		return report, fmt.Errorf("store copy: connect to the destination: %w", err)
	}
	defer conn.Close(context.Background())

	specs, err := copySchema(ctx, src, conn)
	if err != nil {
		return report, fmt.Errorf("store copy: %w", err)
	}
	seqs, err := sqliteSequences(ctx, src)
	if err != nil {
		return report, fmt.Errorf("store copy: %w", err)
	}

	tx, err := conn.Begin(ctx)
	if err != nil {
		return report, fmt.Errorf("store copy: begin the destination transaction: %w", err)
	}
	defer tx.Rollback(context.Background())
	// Frontends starting now wait: they migrate under the same lock.
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", pgLockKey); err != nil {
		return report, fmt.Errorf("store copy: lock the destination: %w", err)
	}
	if err := copyCheckEmpty(ctx, tx, specs); err != nil {
		return report, fmt.Errorf("store copy: %w", err)
	}
	// The destination's own UIDVALIDITY seed gives way to the source's.
	if _, err := tx.Exec(ctx, "DELETE FROM meta WHERE "+copyRowFilters["meta"]); err != nil {
		return report, fmt.Errorf("store copy: clear the destination's meta: %w", err)
	}
	for _, spec := range specs {
		t, err := copyTable(ctx, src, tx, spec, progress)
		if err != nil {
			return report, fmt.Errorf("store copy: table %s: %w", spec.name, err)
		}
		report.Tables = append(report.Tables, t)
	}
	if err := copyResetSequences(ctx, tx, specs, seqs); err != nil {
		return report, fmt.Errorf("store copy: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return report, fmt.Errorf("store copy: commit: %w", err)
	}

	// Read back what was committed and compare.
	rtx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return report, fmt.Errorf("store copy: verify: begin: %w", err)
	}
	defer rtx.Rollback(context.Background())
	for _, want := range report.Tables {
		spec := specs[slices.IndexFunc(specs, func(sp copyTableSpec) bool { return sp.name == want.Name })]
		got, err := pgChecksum(ctx, rtx, spec)
		if err != nil {
			return report, fmt.Errorf("store copy: verify table %s: %w", spec.name, err)
		}
		if got != want {
			return report, fmt.Errorf("store copy: verify table %s: the source has %d rows (checksum %s), the destination %d (checksum %s)",
				spec.name, want.Rows, want.Checksum, got.Rows, got.Checksum)
		}
	}
	return report, nil
}

// copySchema reads the tables to copy and their columns from the source,
// checks that the destination has the same, and orders them so that a
// table comes after those its foreign keys name.
func copySchema(ctx context.Context, src *sql.Tx, dst *pgx.Conn) ([]copyTableSpec, error) {
	srcTables, err := sqliteStrings(ctx, src, "SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("list the source's tables: %w", err)
	}
	rows, err := dst.Query(ctx, `SELECT table_name::text FROM information_schema.tables
		WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name`)
	if err != nil {
		return nil, fmt.Errorf("list the destination's tables: %w", err)
	}
	dstTables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list the destination's tables: %w", err)
	}
	keep := func(names []string) []string {
		return slices.DeleteFunc(names, func(n string) bool { _, skip := copySkipTables[n]; return skip })
	}
	srcTables, dstTables = keep(srcTables), keep(dstTables)
	for _, t := range srcTables {
		if !slices.Contains(dstTables, t) {
			return nil, fmt.Errorf("table %s is in the source but not in the destination", t)
		}
	}
	for _, t := range dstTables {
		if !slices.Contains(srcTables, t) {
			return nil, fmt.Errorf("table %s is in the destination but not in the source", t)
		}
	}
	var specs []copyTableSpec
	for _, t := range srcTables {
		spec, err := copyTableSchema(ctx, src, dst, t)
		if err != nil {
			return nil, fmt.Errorf("table %s: %w", t, err)
		}
		specs = append(specs, spec)
	}
	return copyOrder(specs)
}

func copyTableSchema(ctx context.Context, src *sql.Tx, dst *pgx.Conn, table string) (copyTableSpec, error) {
	spec := copyTableSpec{name: table, filter: copyRowFilters[table]}
	rows, err := src.QueryContext(ctx, "SELECT name, pk FROM pragma_table_info(?) ORDER BY cid", table)
	if err != nil {
		return spec, fmt.Errorf("read the source's columns: %w", err)
	}
	for rows.Next() {
		var c copyColumn
		if err := rows.Scan(&c.name, &c.pk); err != nil {
			rows.Close()
			return spec, fmt.Errorf("read the source's columns: %w", err)
		}
		reset := slices.Contains(copyResetColumns[table], c.name)
		c.zero = reset || slices.Contains(copyRecountedColumns[table], c.name)
		c.checked = !reset
		spec.cols = append(spec.cols, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return spec, fmt.Errorf("read the source's columns: %w", err)
	}
	if spec.refs, err = sqliteStrings(ctx, src, `SELECT DISTINCT "table" FROM pragma_foreign_key_list(?)`, table); err != nil {
		return spec, fmt.Errorf("read the source's foreign keys: %w", err)
	}
	prow, err := dst.Query(ctx, `SELECT column_name::text, data_type::text, is_identity = 'YES'
		FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1`, table)
	if err != nil {
		return spec, fmt.Errorf("read the destination's columns: %w", err)
	}
	type pgCol struct {
		typ      string
		identity bool
	}
	pgCols := map[string]pgCol{}
	for prow.Next() {
		var name string
		var c pgCol
		if err := prow.Scan(&name, &c.typ, &c.identity); err != nil {
			prow.Close()
			return spec, fmt.Errorf("read the destination's columns: %w", err)
		}
		pgCols[name] = c
	}
	prow.Close()
	if err := prow.Err(); err != nil {
		return spec, fmt.Errorf("read the destination's columns: %w", err)
	}
	if len(pgCols) != len(spec.cols) {
		var names []string
		for n := range pgCols {
			names = append(names, n)
		}
		sort.Strings(names)
		return spec, fmt.Errorf("the destination's columns %v differ from the source's %v", names, columnNames(spec.cols))
	}
	for i := range spec.cols {
		c := &spec.cols[i]
		pc, ok := pgCols[c.name]
		if !ok {
			return spec, fmt.Errorf("column %s is not in the destination", c.name)
		}
		switch pc.typ {
		case "bigint", "integer", "smallint":
			c.kind = kindInt
		case "text", "character varying":
			c.kind = kindText
		case "bytea":
			c.kind = kindBytes
		default:
			return spec, fmt.Errorf("column %s: type %s is not one the copy knows", c.name, pc.typ)
		}
		c.identity = pc.identity
	}
	return spec, nil
}

// copyOrder sorts the tables so that each comes after the tables its
// foreign keys name (by name among those free to go).
func copyOrder(specs []copyTableSpec) ([]copyTableSpec, error) {
	done := map[string]bool{}
	var out []copyTableSpec
	for len(out) < len(specs) {
		progressed := false
		for _, sp := range specs {
			if done[sp.name] {
				continue
			}
			ready := true
			for _, r := range sp.refs {
				if r != sp.name && !done[r] {
					ready = false
					break
				}
			}
			if ready {
				done[sp.name] = true
				out = append(out, sp)
				progressed = true
			}
		}
		if !progressed {
			return nil, fmt.Errorf("the tables' foreign keys form a cycle")
		}
	}
	return out, nil
}

func columnNames(cols []copyColumn) []string {
	var names []string
	for _, c := range cols {
		names = append(names, c.name)
	}
	return names
}

// orderBy is the table's primary key order (every column when it has
// none); on PostgreSQL text sorts by bytes, as SQLite's BINARY collation.
func (sp copyTableSpec) orderBy(pg bool) string {
	var pk []copyColumn
	for _, c := range sp.cols {
		if c.pk > 0 {
			pk = append(pk, c)
		}
	}
	sort.Slice(pk, func(i, j int) bool { return pk[i].pk < pk[j].pk })
	if len(pk) == 0 {
		pk = sp.cols
	}
	var terms []string
	for _, c := range pk {
		t := quoteIdent(c.name)
		if pg && c.kind == kindText {
			t += ` COLLATE "C"`
		}
		terms = append(terms, t)
	}
	return strings.Join(terms, ", ")
}

// selectSQL reads the table's rows in primary-key order.
func (sp copyTableSpec) selectSQL(pg bool) string {
	var cols []string
	for _, c := range sp.cols {
		cols = append(cols, quoteIdent(c.name))
	}
	q := "SELECT " + strings.Join(cols, ", ") + " FROM " + quoteIdent(sp.name)
	if sp.filter != "" {
		q += " WHERE " + sp.filter
	}
	return q + " ORDER BY " + sp.orderBy(pg)
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// copyCheckEmpty refuses a destination with any row beyond what a new
// PostgreSQL store holds (meta's version, mark and UIDVALIDITY seed).
func copyCheckEmpty(ctx context.Context, tx pgx.Tx, specs []copyTableSpec) error {
	for _, sp := range specs {
		q := "SELECT EXISTS (SELECT 1 FROM " + quoteIdent(sp.name)
		if sp.name == "meta" {
			q += " WHERE key NOT IN ('application_id', 'schema_version', 'uidvalidity')"
		}
		var has bool
		if err := tx.QueryRow(ctx, q+")").Scan(&has); err != nil {
			return fmt.Errorf("check that the destination is empty: %s: %w", sp.name, err)
		}
		if has {
			return fmt.Errorf("%w (table %s has rows): copy into a new, empty database", ErrNotEmpty, sp.name)
		}
	}
	return nil
}

// copyTable streams one table from src into tx with COPY, hashing each
// row as read.
func copyTable(ctx context.Context, src *sql.Tx, tx pgx.Tx, spec copyTableSpec, progress func(string, int64)) (CopyTable, error) {
	rows, err := src.QueryContext(ctx, spec.selectSQL(false))
	if err != nil {
		return CopyTable{}, fmt.Errorf("read the source: %w", err)
	}
	defer rows.Close()
	rs := &copySource{spec: spec, rows: rows, hash: sha256.New(), progress: progress}
	rs.scan = make([]any, len(spec.cols))
	rs.ptrs = make([]any, len(spec.cols))
	for i := range rs.scan {
		rs.ptrs[i] = &rs.scan[i]
	}
	n, err := tx.CopyFrom(ctx, pgx.Identifier{spec.name}, columnNames(spec.cols), rs)
	if rs.err != nil {
		return CopyTable{}, rs.err
	}
	if err != nil {
		return CopyTable{}, fmt.Errorf("write the destination (after %d rows): %w", rs.n, err)
	}
	if n != rs.n {
		return CopyTable{}, fmt.Errorf("read %d rows but wrote %d", rs.n, n)
	}
	if progress != nil {
		progress(spec.name, rs.n)
	}
	return CopyTable{Name: spec.name, Rows: rs.n, Checksum: hex.EncodeToString(rs.hash.Sum(nil))}, nil
}

// copySource feeds COPY from the source's rows (pgx.CopyFromSource).
type copySource struct {
	spec     copyTableSpec
	rows     *sql.Rows
	scan     []any
	ptrs     []any
	vals     []any
	hash     hash.Hash
	enc      []byte
	n        int64
	err      error
	progress func(string, int64)
}

func (rs *copySource) Next() bool {
	if rs.err != nil || !rs.rows.Next() {
		if rs.err == nil {
			if err := rs.rows.Err(); err != nil {
				rs.err = fmt.Errorf("read the source: %w", err)
			}
		}
		return false
	}
	if err := rs.rows.Scan(rs.ptrs...); err != nil {
		rs.err = fmt.Errorf("read the source (row %d): %w", rs.n+1, err)
		return false
	}
	vals := make([]any, len(rs.scan))
	rs.enc = rs.enc[:0]
	for i, c := range rs.spec.cols {
		v, err := convertValue(c.kind, rs.scan[i])
		if err != nil {
			rs.err = fmt.Errorf("row %d, column %s: %w", rs.n+1, c.name, err)
			return false
		}
		if c.checked {
			rs.enc = encodeValue(rs.enc, c.kind, v)
		}
		if c.zero {
			v = zeroValue(c.kind)
		}
		vals[i] = v
	}
	rs.hash.Write(rs.enc)
	rs.vals = vals
	rs.n++
	if rs.progress != nil && rs.n%copyProgressEvery == 0 {
		rs.progress(rs.spec.name, rs.n)
	}
	return true
}

func (rs *copySource) Values() ([]any, error) { return rs.vals, nil }
func (rs *copySource) Err() error             { return rs.err }

// convertValue turns a value read from SQLite into the Go type of the
// destination column's kind. SQLite's columns take any type, so a text
// in a blob column (or the reverse) is converted; a value that cannot be
// is an error.
func convertValue(kind int, v any) (any, error) {
	if v == nil {
		return nil, nil
	}
	switch kind {
	case kindInt:
		switch x := v.(type) {
		case int64:
			return x, nil
		case bool:
			if x {
				return int64(1), nil
			}
			return int64(0), nil
		}
	case kindText:
		switch x := v.(type) {
		case string:
			return x, nil
		case []byte:
			return string(x), nil
		}
	case kindBytes:
		switch x := v.(type) {
		case []byte:
			return x, nil
		case string:
			return []byte(x), nil
		}
	}
	return nil, fmt.Errorf("a %T where the destination wants %s", v, kindName(kind))
}

// zeroValue is what a recounted or reset column of kind is inserted as.
func zeroValue(kind int) any {
	switch kind {
	case kindInt:
		return int64(0)
	case kindText:
		return ""
	default:
		return []byte{}
	}
}

func kindName(kind int) string {
	switch kind {
	case kindInt:
		return "an integer"
	case kindText:
		return "text"
	default:
		return "bytes"
	}
}

// encodeValue appends the canonical encoding of v (of kind) to b: a tag
// byte, then 8 bytes big-endian for an integer, or a length and the
// bytes for text and bytes; NULL is its tag alone.
func encodeValue(b []byte, kind int, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(b, 'n')
	case int64:
		b = append(b, 'i')
		return binary.BigEndian.AppendUint64(b, uint64(x))
	case string:
		b = append(b, 't')
		b = binary.AppendUvarint(b, uint64(len(x)))
		return append(b, x...)
	case []byte:
		b = append(b, 'b')
		b = binary.AppendUvarint(b, uint64(len(x)))
		return append(b, x...)
	}
	panic(fmt.Sprintf("mailstore: encodeValue of %T", v)) // convertValue gives only these
}

// pgChecksum reads a table back from the destination and computes its
// row count and checksum as copyTable did from the source.
func pgChecksum(ctx context.Context, tx pgx.Tx, spec copyTableSpec) (CopyTable, error) {
	rows, err := tx.Query(ctx, spec.selectSQL(true))
	if err != nil {
		return CopyTable{}, err
	}
	defer rows.Close()
	h := sha256.New()
	var n int64
	var enc []byte
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return CopyTable{}, err
		}
		enc = enc[:0]
		for i, c := range spec.cols {
			if !c.checked {
				continue
			}
			v := vals[i]
			switch x := v.(type) {
			case int32:
				v = int64(x)
			case int16:
				v = int64(x)
			}
			if v, err = convertValue(c.kind, v); err != nil {
				return CopyTable{}, fmt.Errorf("column %s: %w", c.name, err)
			}
			enc = encodeValue(enc, c.kind, v)
		}
		h.Write(enc)
		n++
	}
	if err := rows.Err(); err != nil {
		return CopyTable{}, err
	}
	return CopyTable{Name: spec.name, Rows: n, Checksum: hex.EncodeToString(h.Sum(nil))}, nil
}

// sqliteSequences reads sqlite_sequence: the highest ID each
// AUTOINCREMENT table ever gave, deleted rows' included.
func sqliteSequences(ctx context.Context, src *sql.Tx) (map[string]int64, error) {
	seqs := map[string]int64{}
	rows, err := src.QueryContext(ctx, "SELECT name, seq FROM sqlite_sequence")
	if err != nil {
		return nil, fmt.Errorf("read sqlite_sequence: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var seq int64
		if err := rows.Scan(&name, &seq); err != nil {
			return nil, fmt.Errorf("read sqlite_sequence: %w", err)
		}
		seqs[name] = seq
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read sqlite_sequence: %w", err)
	}
	return seqs, nil
}

// copyResetSequences sets each identity column's sequence past both the
// highest ID copied and the highest the source ever gave, so that no ID
// of a deleted user, mailbox or body names a new one (see migration 1).
func copyResetSequences(ctx context.Context, tx pgx.Tx, specs []copyTableSpec, seqs map[string]int64) error {
	for _, sp := range specs {
		for _, c := range sp.cols {
			if !c.identity {
				continue
			}
			var maxID int64
			if err := tx.QueryRow(ctx, "SELECT coalesce(max("+quoteIdent(c.name)+"), 0) FROM "+quoteIdent(sp.name)).Scan(&maxID); err != nil {
				return fmt.Errorf("highest %s.%s: %w", sp.name, c.name, err)
			}
			maxID = max(maxID, seqs[sp.name])
			if maxID <= 0 {
				continue
			}
			if _, err := tx.Exec(ctx, "SELECT setval(pg_get_serial_sequence($1, $2), $3)",
				quoteIdent(sp.name), c.name, maxID); err != nil {
				return fmt.Errorf("reset the sequence of %s.%s to %d: %w", sp.name, c.name, maxID, err)
			}
		}
	}
	return nil
}

// sqliteStrings runs a query of one text column on the source.
func sqliteStrings(ctx context.Context, src *sql.Tx, q string, args ...any) ([]string, error) {
	rows, err := src.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}
