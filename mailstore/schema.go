package mailstore

import (
	"context"
	"database/sql"
	"fmt"
)

// migrations[i] brings the schema from version i to i+1. Each runs in its
// own transaction together with the user_version bump. Never edit one that
// has shipped: add a new one.
var migrations = []string{
	// 1: the first schema. Row IDs are AUTOINCREMENT: a deleted user's,
	// mailbox's or body's ID must never name a new one, since sessions
	// and caches hold IDs (a reused body ID would show one user another's
	// message).
	`
CREATE TABLE meta (
	key   TEXT PRIMARY KEY,
	value INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('uidvalidity', CAST(strftime('%s','now') AS INTEGER));

CREATE TABLE domains (
	name TEXT PRIMARY KEY
);

CREATE TABLE users (
	id            INTEGER PRIMARY KEY AUTOINCREMENT,
	address       TEXT NOT NULL UNIQUE,
	password_hash TEXT NOT NULL,
	disabled      INTEGER NOT NULL DEFAULT 0,
	quota_bytes   INTEGER NOT NULL DEFAULT 0,
	created       INTEGER NOT NULL
);

-- An alias maps an address to one or more targets: local users or, for
-- forwarding, remote addresses.
CREATE TABLE aliases (
	address TEXT NOT NULL,
	target  TEXT NOT NULL,
	PRIMARY KEY (address, target)
);

CREATE TABLE mailboxes (
	id            INTEGER PRIMARY KEY AUTOINCREMENT,
	user_id       INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
	name          TEXT NOT NULL,
	uidvalidity   INTEGER NOT NULL,
	uidnext       INTEGER NOT NULL DEFAULT 1,
	highestmodseq INTEGER NOT NULL DEFAULT 1,
	special_use   TEXT NOT NULL DEFAULT '',
	subscribed    INTEGER NOT NULL DEFAULT 0,
	noselect      INTEGER NOT NULL DEFAULT 0,
	keywords      TEXT NOT NULL DEFAULT '',
	UNIQUE (user_id, name)
);

-- Bodies are stored once, keyed by SHA-256, in chunks so that a large
-- message is streamed rather than loaded whole. refs counts the messages and
-- queue entries that use a body; triggers keep it and free unused bodies.
CREATE TABLE bodies (
	id     INTEGER PRIMARY KEY AUTOINCREMENT,
	sha256 BLOB NOT NULL UNIQUE,
	size   INTEGER NOT NULL,
	refs   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE body_chunks (
	body_id INTEGER NOT NULL REFERENCES bodies(id) ON DELETE CASCADE,
	seq     INTEGER NOT NULL,
	data    BLOB NOT NULL,
	PRIMARY KEY (body_id, seq)
);

CREATE TABLE messages (
	id            INTEGER PRIMARY KEY AUTOINCREMENT,
	mailbox_id    INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
	uid           INTEGER NOT NULL,
	modseq        INTEGER NOT NULL,
	flags         INTEGER NOT NULL DEFAULT 0,
	keywords      TEXT NOT NULL DEFAULT '',
	internal_date INTEGER NOT NULL,
	size          INTEGER NOT NULL,
	body_id       INTEGER NOT NULL REFERENCES bodies(id),
	UNIQUE (mailbox_id, uid)
);
CREATE INDEX messages_body ON messages (body_id);

-- Expunged UIDs with the MODSEQ of their removal, for QRESYNC (RFC 7162).
CREATE TABLE expunged (
	mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
	uid        INTEGER NOT NULL,
	modseq     INTEGER NOT NULL,
	PRIMARY KEY (mailbox_id, uid)
);

CREATE TABLE queue (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	sender       TEXT NOT NULL,
	recipient    TEXT NOT NULL,
	domain       TEXT NOT NULL,
	body_id      INTEGER NOT NULL REFERENCES bodies(id),
	attempts     INTEGER NOT NULL DEFAULT 0,
	next_attempt INTEGER NOT NULL,
	last_error   TEXT NOT NULL DEFAULT '',
	created      INTEGER NOT NULL,
	env_id       TEXT NOT NULL DEFAULT '',
	ret          TEXT NOT NULL DEFAULT '',
	notify       TEXT NOT NULL DEFAULT '',
	orcpt        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX queue_due ON queue (next_attempt);

CREATE TRIGGER message_ref AFTER INSERT ON messages BEGIN
	UPDATE bodies SET refs = refs + 1 WHERE id = NEW.body_id;
END;
CREATE TRIGGER message_unref AFTER DELETE ON messages BEGIN
	UPDATE bodies SET refs = refs - 1 WHERE id = OLD.body_id;
	DELETE FROM bodies WHERE id = OLD.body_id AND refs <= 0;
END;
CREATE TRIGGER queue_ref AFTER INSERT ON queue BEGIN
	UPDATE bodies SET refs = refs + 1 WHERE id = NEW.body_id;
END;
CREATE TRIGGER queue_unref AFTER DELETE ON queue BEGIN
	UPDATE bodies SET refs = refs - 1 WHERE id = OLD.body_id;
	DELETE FROM bodies WHERE id = OLD.body_id AND refs <= 0;
END;
`,
	// 2: derived data kept per body (IMAP ENVELOPE, BODYSTRUCTURE, ...),
	// computed once since bodies never change.
	`
CREATE TABLE body_meta (
	body_id INTEGER NOT NULL REFERENCES bodies(id) ON DELETE CASCADE,
	kind    TEXT NOT NULL,
	data    BLOB NOT NULL,
	PRIMARY KEY (body_id, kind)
);
`,
	// 3: whether the sender of a queue entry was told of its delay.
	`
ALTER TABLE queue ADD COLUMN delay_warned INTEGER NOT NULL DEFAULT 0;
`,
	// 4: a body whose last reference goes is no longer deleted by the
	// trigger: sessions that have not been told of the expunge may still
	// read it (RFC 2180 4.1), so the store deletes it later (see hold.go);
	// the partial index finds such bodies at once. Mailboxes remember the
	// highest UID a session has been given \Recent for (RFC 3501 2.3.2);
	// mail already there when the store is upgraded is not new.
	`
DROP TRIGGER message_unref;
CREATE TRIGGER message_unref AFTER DELETE ON messages BEGIN
	UPDATE bodies SET refs = refs - 1 WHERE id = OLD.body_id;
END;
DROP TRIGGER queue_unref;
CREATE TRIGGER queue_unref AFTER DELETE ON queue BEGIN
	UPDATE bodies SET refs = refs - 1 WHERE id = OLD.body_id;
END;
CREATE INDEX bodies_unreferenced ON bodies (id) WHERE refs <= 0;
ALTER TABLE mailboxes ADD COLUMN recent_uid INTEGER NOT NULL DEFAULT 0;
UPDATE mailboxes SET recent_uid = uidnext - 1;
`,
	// 5: subscriptions are names, not a property of a mailbox: a name
	// can be subscribed without a mailbox, and DELETE and RENAME leave
	// the subscription alone (RFC 3501 6.3.4-6.3.6). The flags on the
	// mailboxes become rows.
	`
CREATE TABLE subscriptions (
	user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
	name    TEXT NOT NULL,
	PRIMARY KEY (user_id, name)
);
INSERT INTO subscriptions (user_id, name) SELECT user_id, name FROM mailboxes WHERE subscribed != 0;
ALTER TABLE mailboxes DROP COLUMN subscribed;
`,
	// 6: DKIM signing keys of the local domains (RFC 6376), private keys
	// as PEM; a retired key no longer signs but stays for export until
	// it is deleted with its domain.
	`
CREATE TABLE dkim_keys (
	domain      TEXT NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
	selector    TEXT NOT NULL,
	algorithm   TEXT NOT NULL,
	private_pem BLOB NOT NULL,
	created     INTEGER NOT NULL,
	retired     INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (domain, selector)
);
`,
	// 7: each user's usage in bytes, kept by triggers in the transaction
	// of every insert and delete, so that a quota check reads one row
	// instead of summing every message. A mailbox deleted with its
	// messages (by cascade, as with its user) is taken off before the
	// cascade runs: the messages' own trigger no longer finds their
	// mailbox then, and does nothing.
	`
ALTER TABLE users ADD COLUMN used_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE users SET used_bytes = (SELECT coalesce(sum(m.size), 0) FROM messages m
	JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.user_id = users.id);
CREATE TRIGGER message_usage_add AFTER INSERT ON messages BEGIN
	UPDATE users SET used_bytes = used_bytes + NEW.size
		WHERE id = (SELECT user_id FROM mailboxes WHERE id = NEW.mailbox_id);
END;
CREATE TRIGGER message_usage_remove AFTER DELETE ON messages BEGIN
	UPDATE users SET used_bytes = used_bytes - OLD.size
		WHERE id = (SELECT user_id FROM mailboxes WHERE id = OLD.mailbox_id);
END;
CREATE TRIGGER mailbox_usage_remove BEFORE DELETE ON mailboxes BEGIN
	UPDATE users SET used_bytes = used_bytes -
		(SELECT coalesce(sum(size), 0) FROM messages WHERE mailbox_id = OLD.id)
		WHERE id = OLD.user_id;
END;
`,
	// 8: a full-text index of each body (SQLite FTS5, trigram tokenizer,
	// so that any substring of three characters or more is found in any
	// language), contentless: the text is only searched, never read
	// back. text is the message's searchable text (header fields and
	// decoded text parts), hdr that of the header fields IMAP SEARCH
	// names; both lower-cased. bodies.indexed is the version of the text
	// extraction that filled a body's row (0: not yet, as for every body
	// stored before this version, which the indexer then takes; negative:
	// no text could be extracted), so that a search never trusts an index
	// made differently.
	`
CREATE VIRTUAL TABLE body_text USING fts5(text, hdr, content='', contentless_delete=1,
	tokenize='trigram case_sensitive 1');
ALTER TABLE bodies ADD COLUMN indexed INTEGER NOT NULL DEFAULT 0;
CREATE INDEX bodies_unindexed ON bodies (id) WHERE indexed = 0;
CREATE TRIGGER body_text_remove AFTER DELETE ON bodies BEGIN
	DELETE FROM body_text WHERE rowid = OLD.id;
END;
`,
	// 9: MTA-STS policies of destination domains (RFC 8461 5.1: a sender
	// keeps a domain's policy until its max_age passes, across restarts),
	// as fetched; the relay parses them. id is the TXT record's id the
	// policy was fetched under, expires the fetch time plus max_age.
	`
CREATE TABLE mtasts_policies (
	domain  TEXT PRIMARY KEY,
	id      TEXT NOT NULL,
	policy  BLOB NOT NULL,
	fetched INTEGER NOT NULL,
	expires INTEGER NOT NULL
);
`,
	// 10: administrators of the web console (postern user admin).
	`
ALTER TABLE users ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
`,
	// 11: expunged rows are tombstones the change feed reads (on
	// PostgreSQL, other frontends learn of an expunge from them): when
	// the expunge happened (unix seconds; 0 for those before this
	// version), so that old ones can go, and indexes to read a mailbox's
	// changes since a MODSEQ.
	// Also the POP3 maildrop leases (RFC 1939 8: one session at a time
	// per maildrop) that hold across frontends: a row per locked
	// maildrop, with the holder's token and when the lease ends unless
	// renewed (unix nanoseconds).
	`
ALTER TABLE expunged ADD COLUMN at INTEGER NOT NULL DEFAULT 0;
CREATE INDEX expunged_modseq ON expunged (mailbox_id, modseq);
CREATE INDEX messages_modseq ON messages (mailbox_id, modseq);
CREATE TABLE maildrop_leases (
	user_id INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
	holder  TEXT NOT NULL,
	token   BLOB NOT NULL,
	expires INTEGER NOT NULL
);
`,
	// 12: the relay queue shared by every frontend (queue_lease.go).
	// A queue entry is leased by one relay (lease_owner, "host:pid/...")
	// until lease_until (unix nanoseconds; 0: not leased), so that each
	// entry is tried by one worker at a time and a dead frontend's
	// entries come back when its leases end. Deferring an entry (the
	// only update that counts an attempt) ends its lease, in the
	// trigger, so that QueueDefer needs no change. relay_slots are the
	// connections open to each destination domain, one leased row per
	// (domain, slot), so that a per-domain connection limit holds
	// across frontends.
	`
ALTER TABLE queue ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';
ALTER TABLE queue ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;
CREATE TRIGGER queue_defer_unlease AFTER UPDATE OF attempts ON queue
	WHEN NEW.attempts != OLD.attempts AND NEW.lease_until != 0 BEGIN
	UPDATE queue SET lease_owner = '', lease_until = 0 WHERE id = NEW.id;
END;
CREATE TABLE relay_slots (
	domain  TEXT NOT NULL,
	slot    INTEGER NOT NULL,
	owner   TEXT NOT NULL,
	expires INTEGER NOT NULL,
	PRIMARY KEY (domain, slot)
);
`,
}

// migrate applies the migrations the database has not seen yet.
func migrate(db *sql.DB) error {
	ctx := context.Background()
	for {
		done, err := migrateOne(ctx, db)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
	}
}

func migrateOne(ctx context.Context, db *sql.DB) (done bool, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("begin migration: %w", err)
	}
	defer tx.Rollback()
	var version int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return false, fmt.Errorf("read schema version: %w", err)
	}
	if version > len(migrations) {
		return false, fmt.Errorf("%w (schema version %d, this binary knows up to %d)", ErrSchemaTooNew, version, len(migrations))
	}
	if version == len(migrations) {
		return true, nil
	}
	if _, err := tx.ExecContext(ctx, migrations[version]); err != nil {
		return false, fmt.Errorf("migrate schema to version %d: %w", version+1, err)
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", version+1)); err != nil {
		return false, fmt.Errorf("set schema version %d: %w", version+1, err)
	}
	if version == 0 {
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA application_id = %d", applicationID)); err != nil {
			return false, fmt.Errorf("set application id: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("commit migration to version %d: %w", version+1, err)
	}
	return false, nil
}
