// Package mailstore keeps Postern's users, mailboxes, messages and outbound
// queue in one SQLite database (WAL mode, synchronous=FULL).
//
// Implementation notes:
//   - One writer goroutine owns the only write connection. Every change is a
//     request to it; requests that arrive while a commit is running are
//     gathered into the next transaction (group commit), each inside its own
//     SAVEPOINT so that one failing request does not fail the others.
//   - A call that changes data returns only after its transaction committed,
//     so a 250 given after Deliver means the message is on disk.
//   - Commit first, then publish to the change feed: the feed only wakes
//     readers, the database is the truth.
//   - Readers use a separate pool of read-only connections and never wait
//     for the writer (WAL).
//   - A body outlives its last message while a Hold may still address it
//     (RFC 2180 4.1); the writer deletes it later (hold.go).
//   - No SQLite type crosses the package API.
package mailstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// Errors callers can test for with errors.Is.
var (
	// ErrNotFound: no such user, mailbox, message, queue entry or body.
	// A body is not found once no message uses it and every Hold that
	// could still address it has synced or closed (or kept it for
	// Options.HoldMaxAge); IMAP answers that as EXPUNGEISSUED (RFC 5530).
	ErrNotFound       = errors.New("not found")
	ErrExists         = errors.New("already exists")
	ErrAuthFailed     = errors.New("authentication failed")
	ErrNotLocal       = errors.New("domain is not local")
	ErrNoSuchUser     = errors.New("no such user")
	ErrOverQuota      = errors.New("mailbox quota exceeded")
	ErrInvalidName    = errors.New("invalid name")
	ErrHasChildren    = errors.New("mailbox has inferior hierarchical names")
	ErrNoSelect       = errors.New("mailbox cannot be selected")
	ErrClosed         = errors.New("mailstore is closed")
	ErrNotPostern     = errors.New("not a Postern database")
	ErrSchemaTooNew   = errors.New("database written by a newer Postern")
	ErrInvalidAddress = errors.New("invalid address")
	ErrLimit          = errors.New("limit reached")
)

const (
	// busyTimeoutMillis bounds how long a connection waits for a lock held
	// by another process (the CLI while serve runs, say) before failing.
	busyTimeoutMillis = 30000
	// maxReaders is the size of the read-only connection pool.
	maxReaders = 8
	// authCacheTTL is how long a successful login is remembered.
	authCacheTTL = 5 * time.Minute
)

// Options tune a Store. The zero value is ready to use.
type Options struct {
	// Logger receives store events; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// PasswordCost selects the argon2id parameters; the zero value is the
	// production setting. Tests may use FastPasswordHash.
	PasswordCost PasswordCost
	// HoldMaxAge bounds how long a body that no message uses any more is
	// kept for open Holds that have not synced since (see Hold); zero
	// means 24 hours.
	HoldMaxAge time.Duration

	// OnCommit, when set, is called by the writer after each write
	// transaction (group commit) with its size and latency, for metrics.
	// It must not block.
	OnCommit func(CommitInfo)

	noIndexer bool // tests that drive the full-text indexer themselves
	// indexLoad, when set, tells the full-text indexer whether the
	// store is under load instead of its own measure (tests).
	indexLoad func() bool
	// deferBacklog, when positive, replaces indexDeferBacklog (tests).
	deferBacklog int
}

// CommitInfo describes one write transaction: how many requests shared
// it, how long it took from BEGIN to the end of COMMIT, and its error.
type CommitInfo struct {
	Requests int
	Duration time.Duration
	Err      error
}

// BackendInfo describes the database under a Store.
type BackendInfo struct {
	Backend       string // "sqlite" or "postgres"
	ServerVersion string // sqlite_version(), or PostgreSQL's server_version
	SchemaVersion int
}

// Store is an open mailstore. It is safe for concurrent use.
type Store struct {
	d      *dialect
	path   string
	dsn    string // PostgreSQL only
	trgm   bool   // PostgreSQL: body_text has its trigram indexes
	log    *slog.Logger
	now    func() time.Time
	cost   PasswordCost
	rdb    *sql.DB
	rmu    sync.Mutex
	rstmts map[string]*sql.Stmt // read statements, prepared once per pooled connection
	w      *writer
	feed   *feed
	auth   *authCache
	closed chan struct{}
	once   sync.Once

	indexDone chan struct{} // closed when the full-text indexer has stopped

	onCommit func(CommitInfo)
	listen   *pgListener // PostgreSQL: the change feed across frontends

	indexLoad    func() bool // Options.indexLoad
	deferBacklog int         // the backlog the indexer leaves alone under load
	// indexDeferred counts the indexer's looks at the load that left its
	// backlog alone (tests wait on it).
	indexDeferred atomic.Int64
}

// sqliteMagic starts every SQLite 3 database file.
var sqliteMagic = []byte("SQLite format 3\x00")

// applicationID marks a database as Postern's ("Pstn"), so that a stray
// SQLite file is never migrated into a mailstore.
const applicationID = 0x5073746e

// Open opens (creating if needed) the mailstore database at path and brings
// its schema up to date. A file that is not a Postern database, or one
// written by a newer version, is refused and left untouched.
func Open(path string, opts Options) (*Store, error) {
	if err := checkFile(path); err != nil {
		return nil, err
	}
	wdb, err := sql.Open("sqlite", dsn(path, false))
	if err != nil {
		return nil, fmt.Errorf("open mailstore %s: %w", path, err)
	}
	wdb.SetMaxOpenConns(1)
	wdb.SetMaxIdleConns(1)
	wdb.SetConnMaxLifetime(0)
	wdb.SetConnMaxIdleTime(0)
	if err := migrate(wdb); err != nil {
		wdb.Close()
		return nil, fmt.Errorf("open mailstore %s: %w", path, err)
	}
	rdb, err := sql.Open("sqlite", dsn(path, true))
	if err != nil {
		wdb.Close()
		return nil, fmt.Errorf("open mailstore %s: %w", path, err)
	}
	rdb.SetMaxOpenConns(maxReaders)
	rdb.SetMaxIdleConns(maxReaders)
	s := newStore(sqliteDialect, path, opts)
	if err := s.start(wdb, rdb, opts); err != nil {
		return nil, fmt.Errorf("open mailstore %s: %w", path, err)
	}
	return s, nil
}

// newStore makes a Store's in-memory parts.
func newStore(d *dialect, path string, opts Options) *Store {
	s := &Store{
		d:        d,
		path:     path,
		log:      opts.Logger,
		now:      opts.Now,
		cost:     opts.PasswordCost,
		feed:     newFeed(),
		auth:     newAuthCache(),
		closed:   make(chan struct{}),
		rstmts:   make(map[string]*sql.Stmt),
		onCommit: opts.OnCommit,

		indexLoad:    opts.indexLoad,
		deferBacklog: indexDeferBacklog,
	}
	if opts.deferBacklog > 0 {
		s.deferBacklog = opts.deferBacklog
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s
}

// start runs a Store on its migrated databases: wdb for the writer (one
// connection), rdb for readers. It closes both when it fails.
func (s *Store) start(wdb, rdb *sql.DB, opts Options) error {
	s.rdb = rdb
	// No Hold survives a restart: bodies left without a reference (kept
	// for sessions, or by a crash before their sweep) go now. On
	// PostgreSQL other frontends may be running: their bodies in use
	// have refs > 0, and one being shared right now is locked by the
	// sharing transaction (storeBody), which this delete waits for.
	if _, err := wdb.Exec("DELETE FROM bodies WHERE refs <= 0"); err != nil {
		rdb.Close()
		wdb.Close()
		return fmt.Errorf("delete unreferenced bodies: %w", err)
	}
	maxAge := opts.HoldMaxAge
	if maxAge <= 0 {
		maxAge = defaultHoldMaxAge
	}
	var err error
	s.w, err = newWriter(s, wdb, maxAge)
	if err != nil {
		rdb.Close()
		wdb.Close()
		return err
	}
	if s.d.pg {
		s.listen = newPGListener(s)
		s.feed.lastGone = s.listen.unwatch
	}
	s.indexDone = make(chan struct{})
	if opts.noIndexer {
		close(s.indexDone)
	} else {
		go s.runIndexer()
	}
	return nil
}

func dsn(path string, readOnly bool) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeoutMillis))
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(FULL)")
	if readOnly {
		q.Add("_pragma", "query_only(1)")
	} else {
		q.Add("_pragma", "journal_mode(WAL)")
		// Temporary files (statement journals, sorts) stay on disk,
		// SQLite's default: in memory they would never spill, and one
		// large statement (deleting a mailbox of millions of messages)
		// would hold the pages it changes in the writer's memory. The
		// group commit takes no savepoints in the common case, so they
		// cost little (writer.run).
		q.Set("_txlock", "immediate")
	}
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
}

// checkFile refuses, without writing anything, a file that is not a SQLite
// database, a SQLite database of another application, or a Postern
// database with a schema newer than this binary knows. A missing or empty
// file is a new database.
func checkFile(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open mailstore %s: %w", path, err)
	}
	defer f.Close()
	var hdr [100]byte
	n, err := io.ReadFull(f, hdr[:])
	if n == 0 {
		return nil
	}
	if err != nil || !bytes.Equal(hdr[:16], sqliteMagic) {
		return fmt.Errorf("open mailstore %s: %w (not a SQLite database)", path, ErrNotPostern)
	}
	// The header may be stale when a WAL file holds newer pages, so ask
	// SQLite itself, on a read-only connection that cannot change the file.
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?mode=ro")
	if err != nil {
		return fmt.Errorf("open mailstore %s: %w", path, err)
	}
	defer db.Close()
	var appID, version, tables int
	err = db.QueryRow(`SELECT (SELECT application_id FROM pragma_application_id),
		(SELECT user_version FROM pragma_user_version),
		(SELECT count(*) FROM sqlite_master)`).Scan(&appID, &version, &tables)
	if err != nil {
		return fmt.Errorf("open mailstore %s: %w (%w)", path, ErrNotPostern, err)
	}
	switch {
	case appID == 0 && version == 0 && tables == 0:
		return nil // an empty SQLite file: ours to initialise
	case appID != applicationID:
		return fmt.Errorf("open mailstore %s: %w (application id %#x)", path, ErrNotPostern, appID)
	case version > len(migrations):
		return fmt.Errorf("open mailstore %s: %w (schema version %d, this binary knows up to %d)",
			path, ErrSchemaTooNew, version, len(migrations))
	}
	return nil
}

// Close stops the writer after the requests already sent and closes the
// database. Calls after Close fail with ErrClosed.
func (s *Store) Close() error {
	var err error
	s.once.Do(func() {
		close(s.closed)
		<-s.indexDone
		if s.listen != nil {
			s.listen.stop()
		}
		err = s.w.close()
		s.rmu.Lock()
		for _, st := range s.rstmts {
			st.Close()
		}
		s.rmu.Unlock()
		if rerr := s.rdb.Close(); err == nil {
			err = rerr
		}
		s.feed.closeAll()
	})
	return err
}

// readStmt returns the reader pool's prepared statement for query.
func (s *Store) readStmt(ctx context.Context, query string) (*sql.Stmt, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if st, ok := s.rstmts[query]; ok {
		return st, nil
	}
	st, err := s.rdb.PrepareContext(ctx, s.d.rebind(query))
	if err != nil {
		return nil, fmt.Errorf("prepare %q: %w", query, err)
	}
	s.rstmts[query] = st
	return st, nil
}

// read runs a query on the reader pool.
func (s *Store) read(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	st, err := s.readStmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, s.d.args(args)...)
}

// readRow runs a single-row query on the reader pool.
func (s *Store) readRow(ctx context.Context, query string, args ...any) row {
	st, err := s.readStmt(ctx, query)
	if err != nil {
		return row{err: err}
	}
	return row{r: st.QueryRowContext(ctx, s.d.args(args)...)}
}

// Path is the database file ("" on PostgreSQL).
func (s *Store) Path() string { return s.path }

// Backend is "sqlite" or "postgres".
func (s *Store) Backend() string { return s.d.name() }

// Describe reports the backend, its server's version and the schema
// version (for postern config check).
func (s *Store) Describe(ctx context.Context) (BackendInfo, error) {
	info := BackendInfo{Backend: s.Backend()}
	var err error
	if s.d.pg {
		if info.ServerVersion, err = pgServerVersion(ctx, s); err != nil {
			return info, fmt.Errorf("describe store: server version: %w", err)
		}
		err = s.readRow(ctx, "SELECT value FROM meta WHERE key = 'schema_version'").Scan(&info.SchemaVersion)
	} else {
		if err = s.readRow(ctx, "SELECT sqlite_version()").Scan(&info.ServerVersion); err != nil {
			return info, fmt.Errorf("describe store: server version: %w", err)
		}
		err = s.readRow(ctx, "PRAGMA user_version").Scan(&info.SchemaVersion)
	}
	if err != nil {
		return info, fmt.Errorf("describe store: schema version: %w", err)
	}
	return info, nil
}

// IntegrityCheck checks the database and returns nil when it finds
// nothing wrong. On SQLite it runs integrity_check; on PostgreSQL (whose
// storage checks itself) it checks what the store keeps consistent:
// see pgIntegrityChecks.
func (s *Store) IntegrityCheck(ctx context.Context) error {
	q := "PRAGMA integrity_check"
	if s.d.pg {
		q = pgIntegrityChecks
	}
	rows, err := s.read(ctx, q)
	if err != nil {
		return fmt.Errorf("integrity check: %w", err)
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return fmt.Errorf("integrity check: %w", err)
		}
		if line != "ok" {
			problems = append(problems, line)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("integrity check: %w", err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("integrity check: %v", problems)
	}
	return nil
}

// pgIntegrityChecks lists, one row each, the inconsistencies it finds:
// a body whose reference count is not the number of messages and queue
// entries using it, a body whose chunks do not add up to its size or do
// not run 0..n-1, a user whose usage is not the sum of its messages, a
// message whose UID is not below its mailbox's UIDNEXT or whose MODSEQ is
// above its mailbox's HIGHESTMODSEQ, and an expunged UID still present.
const pgIntegrityChecks = `
SELECT 'body ' || b.id || ': refs ' || b.refs || ', used by ' || (
	(SELECT count(*) FROM messages m WHERE m.body_id = b.id) + (SELECT count(*) FROM queue q WHERE q.body_id = b.id))
	FROM bodies b WHERE b.refs > 0 AND b.refs != (SELECT count(*) FROM messages m WHERE m.body_id = b.id)
		+ (SELECT count(*) FROM queue q WHERE q.body_id = b.id)
UNION ALL
SELECT 'body ' || b.id || ': size ' || b.size || ', chunks hold ' || coalesce(sum(length(c.data)), 0)
	FROM bodies b LEFT JOIN body_chunks c ON c.body_id = b.id GROUP BY b.id
	HAVING coalesce(sum(length(c.data)), 0) != b.size OR count(c.seq) != coalesce(max(c.seq) + 1, 0)
UNION ALL
SELECT 'user ' || u.id || ': used_bytes ' || u.used_bytes || ', messages hold ' || coalesce(sum(m.size), 0)
	FROM users u LEFT JOIN mailboxes b ON b.user_id = u.id LEFT JOIN messages m ON m.mailbox_id = b.id
	GROUP BY u.id HAVING u.used_bytes != coalesce(sum(m.size), 0)
UNION ALL
SELECT 'mailbox ' || b.id || ': uid ' || m.uid || ' modseq ' || m.modseq || ' beyond uidnext ' || b.uidnext || ' highestmodseq ' || b.highestmodseq
	FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id WHERE m.uid >= b.uidnext OR m.modseq > b.highestmodseq
UNION ALL
SELECT 'mailbox ' || e.mailbox_id || ': uid ' || e.uid || ' both present and expunged'
	FROM expunged e JOIN messages m ON m.mailbox_id = e.mailbox_id AND m.uid = e.uid
`

// randomBytes fills a new slice of n random bytes.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // never fails: crypto/rand crashes the program instead
	return b
}
