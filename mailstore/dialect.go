package mailstore

import (
	"errors"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// dialect is the small difference between the two SQL engines the store
// runs on. Statements are written once, in the SQL both accept, with ?
// placeholders; the few that cannot be (full-text search, locking, the
// orphan log) ask the dialect.
type dialect struct {
	pg bool
}

var (
	sqliteDialect   = &dialect{}
	postgresDialect = &dialect{pg: true}
)

func (d *dialect) name() string {
	if d.pg {
		return "postgres"
	}
	return "sqlite"
}

// rebind turns ? placeholders into PostgreSQL's $1, $2, ... once, when a
// statement is prepared. A ? inside a quoted literal or identifier stays.
func (d *dialect) rebind(q string) string {
	if !d.pg || !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 16)
	n := 0
	var quote byte
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '?':
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// args adapts arguments: PostgreSQL keeps the store's truth values in
// integer columns, as SQLite does, so a Go bool goes as 0 or 1.
func (d *dialect) args(args []any) []any {
	if !d.pg {
		return args
	}
	for i, a := range args {
		if v, ok := a.(bool); ok {
			if v {
				args[i] = int64(1)
			} else {
				args[i] = int64(0)
			}
		}
	}
	return args
}

// begin starts a write transaction: SQLite takes the write lock at once;
// PostgreSQL locks rows as statements reach them (READ COMMITTED, with
// the mailbox rows locked explicitly, see writer.lockRows).
func (d *dialect) begin() string {
	if d.pg {
		return "BEGIN"
	}
	return "BEGIN IMMEDIATE"
}

// forUpdate is appended to a SELECT of a row that the transaction then
// changes from what it read (a mailbox's UIDNEXT and HIGHESTMODSEQ): on
// PostgreSQL another frontend's writer must wait for this commit.
// SQLite's one writer needs nothing.
func (d *dialect) forUpdate() string {
	if d.pg {
		return " FOR UPDATE"
	}
	return ""
}

// forUpdateOf is forUpdate for a join: only table's rows are locked.
func (d *dialect) forUpdateOf(table string) string {
	if d.pg {
		return " FOR UPDATE OF " + table
	}
	return ""
}

// orphanLog names the writer connection's orphan log (hold.go).
func (d *dialect) orphanLog() string {
	if d.pg {
		return "pg_temp.orphan_log"
	}
	return "temp.orphan_log"
}

// textKey is the column of body_text that names the body.
func (d *dialect) textKey() string {
	if d.pg {
		return "body_id"
	}
	return "rowid"
}

// uidList aggregates the uid column into one comma-separated text in
// ascending order ("" for no rows).
func (d *dialect) uidList() string {
	if d.pg {
		return "coalesce(string_agg(uid::text, ',' ORDER BY uid), '')"
	}
	return "coalesce(group_concat(uid, ',' ORDER BY uid), '')"
}

// instr is the position of needle in haystack, 0 when absent.
func (d *dialect) instr(haystack, needle string) string {
	if d.pg {
		return "strpos(" + haystack + ", " + needle + ")"
	}
	return "instr(" + haystack + ", " + needle + ")"
}

// Retryable SQLSTATEs: deadlock_detected and serialization_failure. The
// whole transaction is run again (a bounded number of times).
const (
	sqlstateDeadlock      = "40P01"
	sqlstateSerialization = "40001"
)

// retryable reports whether err means the transaction lost a race with
// another one and can simply be run again.
func retryable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == sqlstateDeadlock || pe.Code == sqlstateSerialization
	}
	return false
}
