package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/postern/postern/mailstore"
)

// subjectsIn lists the Subject of every message in user's INBOX of the
// store file at path, read through a copy so that the file is not touched.
func subjectsIn(t *testing.T, path, user string) []string {
	t.Helper()
	cp := filepath.Join(t.TempDir(), "copy.db")
	if err := copyFile(path, cp); err != nil {
		t.Fatal(err)
	}
	st, err := mailstore.Open(cp, mailstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	msgs := inboxMessages(t, st, user)
	var out []string
	for _, m := range msgs {
		body, err := st.ReadBody(ctx, m.BodyID)
		if err != nil {
			t.Fatal(err)
		}
		_, rest, _ := strings.Cut(string(body), "\r\nSubject: ")
		subj, _, _ := strings.Cut(rest, "\r\n")
		out = append(out, subj)
	}
	slices.Sort(out)
	return out
}

// imapSubjects lists the subjects of user's INBOX over IMAP.
func imapSubjects(t *testing.T, addr, user, password string) []string {
	t.Helper()
	c := imapLogin(t, addr, user, password, nil)
	defer c.Close()
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	if sel.NumMessages > 0 {
		all, err := c.Fetch(imap.SeqSet{imap.SeqRange{Start: 1, Stop: 0}}, &imap.FetchOptions{Envelope: true}).Collect()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range all {
			out = append(out, m.Envelope.Subject)
		}
	}
	c.Logout().Wait()
	slices.Sort(out)
	return out
}

// A backup taken during a delivery blast holds every message acknowledged
// before it began and passes its check; restore refuses while serve runs,
// and after it serve shows the backup's mail over IMAP.
func TestBackupDuringBlastAndRestore(t *testing.T) {
	r := startServe(t, "")
	const user, password = "bob@example.test", "bob's password"
	r.addUser(t, user, password)

	var (
		mu    sync.Mutex
		acked []string
		stop  atomic.Bool
		wg    sync.WaitGroup
		seq   atomic.Int64
		errs  = make(chan error, 4)
	)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				subj := fmt.Sprintf("blast %05d", seq.Add(1))
				msg := "From: carol@remote.test\r\nTo: " + user + "\r\nSubject: " + subj + "\r\n\r\nhello\r\n"
				if err := sendPlain(r.addrs["smtp"], "carol@remote.test", user, msg); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				acked = append(acked, subj)
				mu.Unlock()
			}
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 40 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	before := slices.Clone(acked)
	mu.Unlock()
	dest := filepath.Join(t.TempDir(), "backup.db")
	code, out, errOut := runIn(t, "", "backup", "-config", r.config, dest)
	// Let the blast go on a little after the backup, then stop it.
	time.Sleep(100 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("delivery during the blast: %v", err)
	}
	if code != exitOK || !strings.Contains(out, "integrity ok") || !strings.Contains(out, "1 users") {
		t.Fatalf("backup: exit %d\n%s\n%s", code, out, errOut)
	}
	if len(before) == 0 {
		t.Fatal("no message was acknowledged before the backup")
	}
	inBackup := subjectsIn(t, dest, user)
	for _, s := range before {
		if _, found := slices.BinarySearch(inBackup, s); !found {
			t.Errorf("%q was acknowledged before the backup began but is not in it", s)
		}
	}
	if fi, err := os.Stat(dest); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("backup file mode: %v %v", fi.Mode(), err)
	}
	// A second backup to the same name is refused.
	if code, _, errOut := runIn(t, "", "backup", "-config", r.config, dest); code != exitFailure || !strings.Contains(errOut, "exists") {
		t.Errorf("backup over an existing file: %d %s", code, errOut)
	}

	// restore refuses while serve holds the store.
	if code, _, errOut := runIn(t, "", "restore", "-config", r.config, dest); code != exitFailure || !strings.Contains(errOut, errStoreInUse.Error()) {
		t.Fatalf("restore while serve runs: %d %s", code, errOut)
	}
	if code := r.stop(); code != exitOK {
		t.Fatalf("serve exit %d", code)
	}
	code, out, errOut = runIn(t, "", "restore", "-config", r.config, dest)
	if code != exitOK || !strings.Contains(out, "kept as") {
		t.Fatalf("restore: %d\n%s\n%s", code, out, errOut)
	}
	kept := strings.TrimSpace(out[strings.Index(out, "kept as ")+len("kept as "):])
	// The store replaced is kept whole: every acknowledged message.
	if got := subjectsIn(t, kept, user); len(got) != len(acked) {
		t.Errorf("the kept store has %d messages; %d were acknowledged", len(got), len(acked))
	}

	r2 := startServeConfig(t, r)
	if got := imapSubjects(t, r2.addrs["imap"], user, password); !slices.Equal(got, inBackup) {
		t.Errorf("IMAP view after restore: %d messages, backup has %d", len(got), len(inBackup))
	}
}

// backup without a store fails and says where it looked; a file that is
// not a Postern store is not restored.
func TestBackupRestoreRefusals(t *testing.T) {
	config, dataDir := adminConfig(t)
	code, _, errOut := runIn(t, "", "backup", "-config", config, filepath.Join(t.TempDir(), "b.db"))
	if code != exitFailure || !strings.Contains(errOut, "no mailstore at "+filepath.Join(dataDir, storeFile)) {
		t.Errorf("backup without a store: %d %s", code, errOut)
	}
	junk := writeFile(t, "junk.db", "not a database at all, just text")
	code, _, errOut = runIn(t, "", "restore", "-config", config, junk)
	if code != exitFailure || !strings.Contains(errOut, "restore from "+junk) {
		t.Errorf("restore of junk: %d %s", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(dataDir, storeFile)); !os.IsNotExist(err) {
		t.Errorf("a refused restore made a store: %v", err)
	}
	if code, _, _ := runIn(t, "", "backup", "-config", config); code != exitUsage {
		t.Errorf("backup without DEST: exit %d", code)
	}
}
