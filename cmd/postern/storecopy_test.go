package main

import (
	"crypto/sha256"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"

	"github.com/postern/postern/mailstore/storetest"
)

// imapView is what an IMAP client sees of every mailbox of user: its
// UIDVALIDITY and UIDNEXT, and each message's UID, flags and the SHA-256
// of its bytes (BODY.PEEK[]), one line each. \Recent is left out.
func imapView(t *testing.T, addr, user, password string) string {
	t.Helper()
	c := imapLogin(t, addr, user, password, nil)
	defer c.Close()
	list, err := c.List("", "*", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range list {
		names = append(names, l.Mailbox)
	}
	slices.Sort(names)
	var b strings.Builder
	whole := &imap.FetchItemBodySection{Peek: true}
	for _, name := range names {
		sel, err := c.Select(name, nil).Wait()
		if err != nil {
			t.Fatalf("select %s: %v", name, err)
		}
		fmt.Fprintf(&b, "%s uidvalidity %d uidnext %d messages %d\n", name, sel.UIDValidity, sel.UIDNext, sel.NumMessages)
		if sel.NumMessages == 0 {
			continue
		}
		msgs, err := c.Fetch(imap.SeqSet{imap.SeqRange{Start: 1, Stop: 0}},
			&imap.FetchOptions{UID: true, Flags: true, BodySection: []*imap.FetchItemBodySection{whole}}).Collect()
		if err != nil {
			t.Fatalf("fetch in %s: %v", name, err)
		}
		for _, m := range msgs {
			// \Recent goes to the first session that selects the
			// mailbox (RFC 3501 2.3.2): this view's first SELECT
			// claims it, and the copy keeps the claim.
			flags := slices.DeleteFunc(slices.Clone(m.Flags), func(f imap.Flag) bool { return strings.EqualFold(string(f), `\Recent`) })
			slices.Sort(flags)
			body := m.FindBodySection(whole)
			fmt.Fprintf(&b, "  uid %d flags %v size %d sha256 %x\n", m.UID, flags, len(body), sha256.Sum256(body))
		}
	}
	c.Logout().Wait()
	return b.String()
}

// TestStoreCopyServesTheSameIMAPView: a SQLite store, populated through
// serve, copied with postern store copy (refused while serve runs) and
// served from PostgreSQL shows an IMAP client the same mailboxes, UIDs,
// flags, UIDVALIDITY and bodies, byte for byte; the DSN's password is
// never printed.
func TestStoreCopyServesTheSameIMAPView(t *testing.T) {
	t.Setenv(storeDSNEnv, "")
	dsn := storetest.PostgresDSN(t)
	// The test server trusts loopback, so a password in the DSN is
	// accepted and ignored: enough to see that it is never printed.
	const secret = "pw-that-must-not-show"
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), secret)
	dsn = u.String()

	dataDir := filepath.Join(t.TempDir(), "data")
	sqliteConfig := serveConfig{dataDir: dataDir, listen: []string{"smtp", "imap"}, store: "driver = \"sqlite\"\n"}.write(t)
	const user, password = "mover@example.test", "mover password 1"
	if code, out, errOut := runIn(t, password+"\n", "user", "add", "-config", sqliteConfig, user); code != exitOK {
		t.Fatalf("user add: %d %s %s", code, out, errOut)
	}
	serve := spawnServe(t, sqliteConfig)
	for i := range 5 {
		msg := fmt.Sprintf("From: sender@remote.test\r\nTo: %s\r\nSubject: moving %d\r\n\r\nline one\r\nline two %d \xe2\x82\xac\r\n", user, i, i)
		if err := sendPlain(serve.addrs["smtp"], "sender@remote.test", user, msg); err != nil {
			t.Fatalf("deliver %d: %v", i, err)
		}
	}
	c := loginSelect(t, serve.addrs["imap"], user, password, nil)
	store := func(uids []imap.UID, op imap.StoreFlagsOp, flags ...imap.Flag) {
		t.Helper()
		if err := c.Store(imap.UIDSetNum(uids...), &imap.StoreFlags{Op: op, Flags: flags, Silent: true}, nil).Close(); err != nil {
			t.Fatal(err)
		}
	}
	store([]imap.UID{1, 2}, imap.StoreFlagsAdd, imap.FlagSeen)
	store([]imap.UID{3}, imap.StoreFlagsAdd, imap.FlagFlagged, "$Moved")
	store([]imap.UID{4}, imap.StoreFlagsAdd, imap.FlagDeleted)
	if err := c.Expunge().Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Create("Projects", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Copy(imap.UIDSetNum(1, 3), "Projects").Wait(); err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
	before := imapView(t, serve.addrs["imap"], user, password)
	if !strings.Contains(before, "Projects uidvalidity") || !strings.Contains(before, `\Flagged`) {
		t.Fatalf("the view before the copy lacks what the test made:\n%s", before)
	}

	// Refused while serve holds the store.
	code, out, errOut := runIn(t, "", "store", "copy", "-config", sqliteConfig, "-to-dsn", dsn)
	if code != exitFailure || !strings.Contains(errOut, "in use by a running postern serve") {
		t.Fatalf("store copy while serve runs: %d\n%s\n%s", code, out, errOut)
	}
	serve.stop()

	code, out, errOut = runIn(t, "", "store", "copy", "-config", sqliteConfig, "-to-dsn", dsn)
	if code != exitOK {
		t.Fatalf("store copy: %d\n%s\n%s", code, out, errOut)
	}
	for _, want := range []string{"messages", "mailboxes", "users", `driver = "postgres"`, redactDSN(dsn), "match the SQLite store"} {
		if !strings.Contains(out, want) {
			t.Errorf("store copy's output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out+errOut, secret) {
		t.Errorf("store copy printed the DSN's password:\n%s\n%s", out, errOut)
	}

	// A second copy into the same database is refused.
	code, out2, errOut2 := runIn(t, "", "store", "copy", "-config", sqliteConfig, "-to-dsn", dsn)
	if code != exitFailure || !strings.Contains(errOut2, "not empty") || strings.Contains(out2+errOut2, secret) {
		t.Fatalf("second store copy: %d\n%s\n%s", code, out2, errOut2)
	}

	pgConfig := serveConfig{listen: []string{"smtp", "imap"}, store: postgresStore(dsn)}.write(t)
	pg := spawnServe(t, pgConfig)
	after := imapView(t, pg.addrs["imap"], user, password)
	if after != before {
		t.Fatalf("IMAP view after the copy differs:\n--- SQLite\n%s--- PostgreSQL\n%s\nstore copy said:\n%s", before, after, out)
	}
}

// TestStoreCopyUsage: what store copy refuses, and the DSN taken from
// $POSTERN_STORE_DSN so that the password need not be on the command
// line.
func TestStoreCopyUsage(t *testing.T) {
	t.Setenv(storeDSNEnv, "")
	sqliteConfig, _ := storeConfig(t, "driver = \"sqlite\"\n")
	if code, _, errOut := runIn(t, "", "store", "copy", "-config", sqliteConfig); code != exitUsage || !strings.Contains(errOut, "-to-dsn DSN is required") {
		t.Errorf("without -to-dsn: %d %s", code, errOut)
	}
	if code, _, errOut := runIn(t, "", "store", "copy", "-config", sqliteConfig, "-to-dsn", "postgres://u@127.0.0.1:1/db"); code != exitFailure || !strings.Contains(errOut, "no store to copy") {
		t.Errorf("without a store: %d %s", code, errOut)
	}
	if code, _, errOut := runIn(t, "", "store", "frobnicate"); code != exitUsage {
		t.Errorf("unknown verb: %d %s", code, errOut)
	}

	pgConfig, dsn := postgresConfig(t)
	if code, _, errOut := runIn(t, "", "store", "copy", "-config", pgConfig, "-to-dsn", dsn); code != exitFailure || !strings.Contains(errOut, "on PostgreSQL") {
		t.Errorf("from a PostgreSQL store: %d %s", code, errOut)
	}

	if code, out, errOut := runIn(t, "a password 123\n", "user", "add", "-config", sqliteConfig, "env@example.test"); code != exitOK {
		t.Fatalf("user add: %d %s %s", code, out, errOut)
	}
	t.Setenv(storeDSNEnv, dsn)
	if code, out, errOut := runIn(t, "", "store", "copy", "-config", sqliteConfig); code != exitOK {
		t.Fatalf("store copy with the DSN from $%s: %d\n%s\n%s", storeDSNEnv, code, out, errOut)
	}
	t.Setenv(storeDSNEnv, "")
	if code, out, errOut := runIn(t, "", "user", "list", "-config", pgConfig); code != exitOK || !strings.Contains(out, "env@example.test") {
		t.Fatalf("user list on the copy: %d\n%s\n%s", code, out, errOut)
	}
}
