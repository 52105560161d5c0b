package mailstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// copyOnce runs a store copy test once, in the SQLite pass of the suite:
// it opens both backends itself.
func copyOnce(t *testing.T) {
	t.Helper()
	if onPostgres() {
		t.Skip("opens a SQLite and a PostgreSQL store itself; the SQLite pass runs it")
	}
}

// populateForCopy fills a SQLite store with one of everything CopyTo
// must carry.
func populateForCopy(t *testing.T, s *Store) {
	t.Helper()
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.AddDomain(ctx, "example.test"))
	must(s.AddDomain(ctx, "other.test"))
	alice := addUser(t, s, "alice@example.test")
	bob := addUser(t, s, "bob@example.test")
	gone := addUser(t, s, "gone@example.test")
	_ = gone
	// A deleted user's ID must never name a new one, on the copy too.
	must(s.DeleteUser(ctx, "gone@example.test"))
	must(s.SetQuota(ctx, "bob@example.test", 50<<20))
	must(s.SetAdmin(ctx, "alice@example.test", true))
	must(s.AddAlias(ctx, "postmaster@example.test", "alice@example.test"))
	must(s.AddAlias(ctx, "team@example.test", "alice@example.test", "bob@example.test", "friend@remote.test"))

	for i := 0; i < 6; i++ {
		if _, err := s.Deliver(ctx, "sender@remote.test", []string{"alice@example.test"}, testMessage(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Shared body (both inboxes), and a queue entry for the remote target.
	if _, err := s.Deliver(ctx, "sender@remote.test", []string{"team@example.test"}, testMessage(100)); err != nil {
		t.Fatal(err)
	}
	// A body of several chunks, with bytes that are not UTF-8.
	big := bytes.Repeat([]byte("0123456789abcdef\xff\x00\r\n"), (2*chunkSize)/20+7)
	big = append([]byte("From: a@example.test\r\nSubject: big\r\n\r\n"), big...)
	if _, err := s.Deliver(ctx, "sender@remote.test", []string{"bob@example.test"}, big); err != nil {
		t.Fatal(err)
	}
	// Alice sends to a remote address: a queue entry, deferred once.
	d, err := s.Deliver(ctx, "alice@example.test", []string{"carol@remote.test"}, testMessage(200))
	if err != nil {
		t.Fatal(err)
	}
	_ = d
	q, err := s.Queue(ctx, time.Time{}, 0)
	if err != nil || len(q) != 2 {
		t.Fatalf("queue %+v, %v", q, err)
	}
	must(s.QueueDefer(ctx, q[1].ID, time.Unix(1900000000, 0), "451 4.7.1 try later", true))

	in := inbox(t, s, alice)
	mustFlags := func(uids UIDSet, op FlagOp, flags ...string) {
		t.Helper()
		if _, err := s.StoreFlags(ctx, in.ID, uids, op, flags); err != nil {
			t.Fatal(err)
		}
	}
	mustFlags(UIDs(1, 2), FlagsAdd, FlagSeen)
	mustFlags(UIDs(3), FlagsAdd, FlagFlagged, "$Label1", "project-x")
	mustFlags(UIDs(4, 5), FlagsAdd, FlagDeleted)
	if uids, err := s.Expunge(ctx, in.ID, nil); err != nil || len(uids) != 2 {
		t.Fatalf("expunge: %v, %v", uids, err)
	}
	work, err := s.CreateMailbox(ctx, alice.ID, "Work/Projects", "")
	must(err)
	must(s.SetSubscribed(ctx, alice.ID, "Work/Projects", true))
	must(s.SetSubscribed(ctx, alice.ID, "Gone/But/Subscribed", true))
	date := time.Date(2020, 2, 29, 12, 0, 0, 0, time.UTC)
	if _, err := s.Append(ctx, work.ID, []string{FlagAnswered, "$Forwarded"}, date, testMessage(300)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Copy(ctx, in.ID, UIDs(1, 3), work.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.ClaimRecent(ctx, in.ID); err != nil {
		t.Fatal(err)
	}
	_ = bob
	day := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	must(s.AddDKIMKeys(ctx,
		DKIMKey{Domain: "example.test", Selector: "s1", Algorithm: "ed25519", PrivatePEM: []byte("-----BEGIN PRIVATE KEY-----\nAAA\n-----END PRIVATE KEY-----\n"), Created: day},
		DKIMKey{Domain: "example.test", Selector: "s2", Algorithm: "rsa", PrivatePEM: []byte("pem-2"), Created: day}))
	must(s.RetireDKIMKey(ctx, "example.test", "s1", day.Add(time.Hour)))
	must(s.PutMTASTSPolicy(ctx, MTASTSPolicy{Domain: "remote.test", ID: "20261201", Policy: []byte("version: STSv1\nmode: enforce\nmx: mx.remote.test\nmax_age: 86400\n"),
		Fetched: day, Expires: day.Add(24 * time.Hour)}))
}

// storeView is everything the exported API shows of a store, as text.
func storeView(t *testing.T, s *Store) string {
	t.Helper()
	ctx := context.Background()
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	check := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	domains, err := s.Domains(ctx)
	check(err)
	p("domains %v", domains)
	aliases, err := s.Aliases(ctx)
	check(err)
	p("aliases %+v", aliases)
	users, err := s.Users(ctx)
	check(err)
	for _, u := range users {
		p("user %d %s disabled=%v quota=%d admin=%v created=%d", u.ID, u.Address, u.Disabled, u.QuotaBytes, u.Admin, u.Created.Unix())
		used, quota, err := s.Usage(ctx, u.ID)
		check(err)
		p("  usage %d/%d", used, quota)
		subs, err := s.Subscriptions(ctx, u.ID)
		check(err)
		p("  subscriptions %v", subs)
		mbs, err := s.Mailboxes(ctx, u.ID)
		check(err)
		for _, mb := range mbs {
			p("  mailbox %d %q uidvalidity=%d uidnext=%d highestmodseq=%d special=%q subscribed=%v noselect=%v keywords=%v",
				mb.ID, mb.Name, mb.UIDValidity, mb.UIDNext, mb.HighestModSeq, mb.SpecialUse, mb.Subscribed, mb.NoSelect, mb.Keywords)
			recent, err := s.RecentMark(ctx, mb.ID)
			check(err)
			p("    recent mark %d", recent)
			msgs, err := s.Messages(ctx, mb.ID, nil)
			check(err)
			for _, m := range msgs {
				body, err := s.ReadBody(ctx, m.BodyID)
				check(err)
				p("    uid %d modseq %d flags %v date %d size %d body %d sha256 %x",
					m.UID, m.ModSeq, m.Flags, m.InternalDate.Unix(), m.Size, m.BodyID, sha256.Sum256(body))
			}
		}
	}
	q, err := s.Queue(ctx, time.Time{}, 0)
	check(err)
	for _, e := range q {
		p("queue %d %s -> %s (%s) body %d size %d attempts %d next %d created %d error %q warned %v dsn %q %q %q %q",
			e.ID, e.Sender, e.Recipient, e.Domain, e.BodyID, e.Size, e.Attempts, e.NextAttempt.Unix(), e.Created.Unix(),
			e.LastError, e.DelayWarned, e.EnvID, e.Ret, e.Notify, e.ORcpt)
	}
	for _, d := range domains {
		keys, err := s.DKIMKeys(ctx, d, false)
		check(err)
		for _, k := range keys {
			p("dkim %s %s %s %x created %d retired %d", k.Domain, k.Selector, k.Algorithm, k.PrivatePEM, k.Created.Unix(), k.Retired.Unix())
		}
	}
	pol, err := s.MTASTSPolicyOf(ctx, "remote.test")
	check(err)
	p("mta-sts %s %s %q %d %d", pol.Domain, pol.ID, pol.Policy, pol.Fetched.Unix(), pol.Expires.Unix())
	return b.String()
}

func TestCopyToPostgres(t *testing.T) {
	copyOnce(t)
	ctx := context.Background()
	opts := Options{PasswordCost: FastPasswordHash}
	src, err := Open(filepath.Join(t.TempDir(), "postern.db"), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	populateForCopy(t, src)
	before := storeView(t, src)

	dst, err := OpenPostgres(ctx, postgresDSN(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()

	progressed := map[string]int64{}
	report, err := src.CopyTo(ctx, dst, func(table string, rows int64) { progressed[table] = rows })
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]CopyTable{}
	for _, tb := range report.Tables {
		rows[tb.Name] = tb
		if len(tb.Checksum) != 64 {
			t.Errorf("table %s: checksum %q", tb.Name, tb.Checksum)
		}
		if progressed[tb.Name] != tb.Rows {
			t.Errorf("table %s: progress said %d rows, report %d", tb.Name, progressed[tb.Name], tb.Rows)
		}
	}
	for name, want := range map[string]int64{"users": 2, "domains": 2, "mailboxes": 14, "expunged": 2, "queue": 2, "dkim_keys": 2,
		"mtasts_policies": 1, "meta": 1, "aliases": 4} {
		if rows[name].Rows != want {
			t.Errorf("table %s: %d rows copied, want %d (report %+v)", name, rows[name].Rows, want, report)
		}
	}
	if _, ok := rows["maildrop_leases"]; ok {
		t.Errorf("maildrop_leases copied: %+v", report)
	}
	if rows["body_chunks"].Rows <= rows["bodies"].Rows {
		t.Errorf("body_chunks %d rows for %d bodies: the big body should take several", rows["body_chunks"].Rows, rows["bodies"].Rows)
	}
	if rows["messages"].Rows != 10 {
		t.Errorf("messages: %d rows, want 10", rows["messages"].Rows)
	}

	after := storeView(t, dst)
	if after != before {
		t.Fatalf("the copy shows something else:\n--- sqlite\n%s--- postgres\n%s", before, after)
	}
	if err := dst.IntegrityCheck(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.Authenticate(ctx, "alice@example.test", "secret-alice@example.test"); err != nil {
		t.Fatalf("old password on the copy: %v", err)
	}
	if _, err := dst.Authenticate(ctx, "alice@example.test", "wrong"); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("wrong password on the copy: %v", err)
	}

	// Life goes on on the copy: UIDs follow, IDs are never reused.
	alice, err := dst.UserByAddress(ctx, "alice@example.test")
	if err != nil {
		t.Fatal(err)
	}
	in := inbox(t, dst, alice)
	if _, err := dst.Deliver(ctx, "sender@remote.test", []string{"alice@example.test"}, testMessage(400)); err != nil {
		t.Fatal(err)
	}
	msgs, err := dst.Messages(ctx, in.ID, nil)
	if err != nil || len(msgs) == 0 || msgs[len(msgs)-1].UID != in.UIDNext || msgs[len(msgs)-1].ModSeq <= in.HighestModSeq {
		t.Fatalf("new message on the copy %+v (mailbox %+v), %v", msgs, in, err)
	}
	dave := addUser(t, dst, "dave@example.test")
	if dave.ID <= 3 {
		t.Fatalf("new user on the copy got ID %d, which a deleted user had", dave.ID)
	}
	mb, err := dst.CreateMailbox(ctx, alice.ID, "Fresh", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, old := range strings.Split(before, "\n") {
		if strings.Contains(old, fmt.Sprintf("uidvalidity=%d ", mb.UIDValidity)) {
			t.Fatalf("new mailbox reuses a UIDVALIDITY: %d in %q", mb.UIDValidity, old)
		}
	}
	// The copy indexes every body for search (UID 3 holds message 2).
	waitIndexed(t, dst)
	found, err := dst.Search(ctx, in.ID, &SearchCriteria{MayContain: []string{"body 2"}})
	if err != nil || len(found) != 1 || found[0].UID != 3 {
		t.Fatalf("search on the copy: %+v, %v", found, err)
	}

	// A second copy into the same database is refused, and changes nothing.
	if _, err := src.CopyTo(ctx, dst, nil); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("copy into a non-empty store: %v, want ErrNotEmpty", err)
	}
	// Only SQLite to PostgreSQL.
	if _, err := dst.CopyTo(ctx, src, nil); err == nil {
		t.Fatal("copy from PostgreSQL: no error")
	}
}

// TestCopyToRefusesOtherSchemaVersion: source and destination must be
// at the same schema version.
func TestCopyToRefusesOtherSchemaVersion(t *testing.T) {
	copyOnce(t)
	ctx := context.Background()
	src, err := Open(filepath.Join(t.TempDir(), "postern.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := OpenPostgres(ctx, postgresDSN(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	conn, err := pgx.Connect(ctx, dst.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "UPDATE meta SET value = value - 1 WHERE key = 'schema_version'"); err != nil {
		t.Fatal(err)
	}
	_, err = src.CopyTo(ctx, dst, nil)
	if err == nil || !strings.Contains(err.Error(), "schema version") {
		t.Fatalf("copy across schema versions: %v", err)
	}
}

// TestCopyToNamesAMismatchedTable: the destination recounts what its
// triggers keep (usage, body references); a source whose counts are off
// fails the verification, naming the table.
func TestCopyToNamesAMismatchedTable(t *testing.T) {
	copyOnce(t)
	ctx := context.Background()
	src, err := Open(filepath.Join(t.TempDir(), "postern.db"), Options{PasswordCost: FastPasswordHash})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if err := src.AddDomain(ctx, "example.test"); err != nil {
		t.Fatal(err)
	}
	addUser(t, src, "alice@example.test")
	if _, err := src.Deliver(ctx, "s@remote.test", []string{"alice@example.test"}, testMessage(1)); err != nil {
		t.Fatal(err)
	}
	if err := src.w.do(ctx, func(tx *wtx) error {
		_, err := tx.exec("UPDATE users SET used_bytes = used_bytes + 1")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	dst, err := OpenPostgres(ctx, postgresDSN(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	_, err = src.CopyTo(ctx, dst, nil)
	if err == nil || !strings.Contains(err.Error(), "verify table users") {
		t.Fatalf("copy of a store with a wrong usage count: %v, want a mismatch in users", err)
	}
}
