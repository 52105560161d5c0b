package mailstore

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// A database left at an older schema version is migrated on open, with its
// data kept.
func TestMigratesOlderSchema(t *testing.T) {
	sqliteOnly(t)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "postern.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	stmts := []string{
		migrations[0],
		"PRAGMA user_version = 1",
		fmt.Sprintf("PRAGMA application_id = %d", applicationID),
		"INSERT INTO domains (name) VALUES ('example.test')",
	}
	for _, q := range stmts {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%.40s: %v", q, err)
		}
	}
	db.Close()

	s, err := Open(path, Options{PasswordCost: FastPasswordHash})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var version int
	if err := s.readRow(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		t.Fatal(err)
	}
	if version != len(migrations) {
		t.Fatalf("schema version %d after open, want %d", version, len(migrations))
	}
	if local, err := s.IsLocalDomain(ctx, "example.test"); err != nil || !local {
		t.Fatalf("data lost in migration: %v %v", local, err)
	}
	u := addUser(t, s, "u@example.test")
	m, err := s.Append(ctx, inbox(t, s, u).ID, nil, time.Time{}, testMessage(1))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetBodyMeta(ctx, m.BodyID, "test", []byte("derived")); err != nil {
		t.Fatal(err)
	}
}

func TestBodyMetaGoesWithBody(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	mb := inbox(t, s, u)
	m, err := s.Append(ctx, mb.ID, nil, time.Time{}, testMessage(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := s.BodyMeta(ctx, m.BodyID, "bodystructure"); ok || err != nil {
		t.Fatalf("meta before set: %v %v", ok, err)
	}
	for _, v := range []string{"first", "second"} {
		if err := s.SetBodyMeta(ctx, m.BodyID, "bodystructure", []byte(v)); err != nil {
			t.Fatal(err)
		}
		got, ok, err := s.BodyMeta(ctx, m.BodyID, "bodystructure")
		if err != nil || !ok || string(got) != v {
			t.Fatalf("meta %q %v %v, want %q", got, ok, err, v)
		}
	}
	if _, err := s.DeleteMessages(ctx, mb.ID, []uint32{m.UID}); err != nil {
		t.Fatal(err)
	}
	s.sweepNow(t)
	var n int
	if err := s.readRow(ctx, "SELECT count(*) FROM body_meta").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d meta rows left after the body went (%v)", n, err)
	}
	// Setting meta for a body that is gone stores nothing and is no error.
	if err := s.SetBodyMeta(ctx, m.BodyID, "bodystructure", []byte("late")); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.BodyMeta(ctx, m.BodyID, "bodystructure"); ok {
		t.Fatal("meta stored for a freed body")
	}
}

// The full-text index merges 8 segments at a time (set when the writer
// starts).
func TestFullTextAutomerge(t *testing.T) {
	sqliteOnly(t)
	s := openTest(t)
	var v int
	if err := s.readRow(context.Background(), "SELECT v FROM body_text_config WHERE k = 'automerge'").Scan(&v); err != nil {
		t.Fatalf("read the index's automerge: %v", err)
	}
	if v != 8 {
		t.Fatalf("automerge %d, want 8", v)
	}
}
