package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
)

// A maildir message the tests write: where, flags in the name, mtime, bytes.
type testMaildirMsg struct {
	folder, sub, name string
	mtime             time.Time
	data              string
}

var importMaildir = []testMaildirMsg{
	{"", "cur", "1000000001.a.host:2,S", time.Unix(1000000001, 0),
		"From: a@example.org\nSubject: seen\n\nFrom the start of the body\n>From quoted in the original\n"},
	{"", "cur", "1000000002.b.host:2,FR", time.Unix(1000000002, 0),
		"Subject: 8bit\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nGr\xc3\xbc\xc3\x9fe, na\xc3\xafve caf\xc3\xa9\n\xff\xfe raw bytes\n"},
	{"", "new", "1000000003.c.host", time.Unix(1000000003, 0),
		"Subject: new\n\nplain\n\n\n"},
	{".Work.Projects", "cur", "1000000004.d.host:2,T", time.Unix(1000000004, 0),
		"Subject: deleted\n\nx\n"},
	{"Lists", "cur", "1000000005.e.host:2,", time.Unix(1000000005, 0),
		"Subject: list\n\ny\n"},
}

// importMbox is an mboxrd file in exactly the form export writes, so that
// export gives it back byte for byte.
const importMbox = "From MAILER-DAEMON Mon Jan  2 15:04:05 2006\n" +
	"Subject: m1\n\n" +
	">From here, a line that had to be quoted\n" +
	">>From one quoted in the message itself\n" +
	">>>From twice\n" +
	"\n" +
	"From MAILER-DAEMON Tue Feb  3 04:05:06 2009\n" +
	"Subject: m2\nContent-Type: text/plain; charset=iso-8859-1\n" +
	"Status: RO\nX-Status: AF\n\n" +
	"caf\xe9 8-bit latin1\n\n>From is not a separator without a date\n" +
	"\n"

func writeMaildirTree(t *testing.T, root string, msgs []testMaildirMsg) {
	t.Helper()
	for _, m := range msgs {
		dir := filepath.Join(root, m.folder)
		for _, sub := range []string{"cur", "new", "tmp"} {
			if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
				t.Fatal(err)
			}
		}
		p := filepath.Join(dir, m.sub, m.name)
		if err := os.WriteFile(p, []byte(m.data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, m.mtime, m.mtime); err != nil {
			t.Fatal(err)
		}
	}
}

// importFixture is a store with the user alice@example.test and the
// sources above on disk.
func importFixture(t *testing.T, extra string) (config, dataDir, src string) {
	t.Helper()
	dataDir = filepath.Join(t.TempDir(), "data")
	config = writeFile(t, "import.toml", `hostname = "mail.example.test"
data_dir = "`+dataDir+`"
domains = ["example.test"]
`+extra)
	if code, _, errOut := runIn(t, "password-1\n", "user", "add", "-config", config, "alice@example.test"); code != exitOK {
		t.Fatalf("user add: %d %s", code, errOut)
	}
	src = t.TempDir()
	writeMaildirTree(t, filepath.Join(src, "md"), importMaildir)
	if err := os.WriteFile(filepath.Join(src, "archive.mbox"), []byte(importMbox), 0o600); err != nil {
		t.Fatal(err)
	}
	return config, dataDir, src
}

// storedView is every message of alice's: mailbox -> list of
// "flags|date|bytes" in UID order.
func storedView(t *testing.T, dataDir string) map[string][]string {
	return storedViewOf(t, dataDir, "alice@example.test")
}

func storedViewOf(t *testing.T, dataDir, address string) map[string][]string {
	t.Helper()
	ctx := context.Background()
	st, err := mailstore.Open(filepath.Join(dataDir, storeFile), mailstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	u, err := st.UserByAddress(ctx, address)
	if err != nil {
		t.Fatal(err)
	}
	boxes, err := st.Mailboxes(ctx, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	view := make(map[string][]string)
	for _, mb := range boxes {
		msgs, err := st.Messages(ctx, mb.ID, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			body, err := st.ReadBody(ctx, m.BodyID)
			if err != nil {
				t.Fatal(err)
			}
			view[mb.Name] = append(view[mb.Name], fmt.Sprintf("%s|%s|%q",
				strings.Join(m.Flags, " "), m.InternalDate.UTC().Format(time.RFC3339), body))
		}
	}
	return view
}

func crlf(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }

func TestImportExportRoundTrip(t *testing.T) {
	config, dataDir, src := importFixture(t, "")
	code, out, errOut := runIn(t, "", "import", "-config", config, "alice@example.test", filepath.Join(src, "md"))
	if code != exitOK {
		t.Fatalf("import maildir: %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(out, "imported 5 messages") || !strings.Contains(out, "0 already present") {
		t.Errorf("import maildir summary:\n%s", out)
	}
	code, out, errOut = runIn(t, "", "import", "-config", config, "-mailbox", "Archive", "alice@example.test", filepath.Join(src, "archive.mbox"))
	if code != exitOK {
		t.Fatalf("import mbox: %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(out, "imported 2 messages") || !strings.Contains(out, "mailboxes: Archive") {
		t.Errorf("import mbox summary:\n%s", out)
	}

	view := storedView(t, dataDir)
	want := map[string][]string{
		"INBOX": {
			fmt.Sprintf("%s|2001-09-09T01:46:41Z|%q", `\Seen`, crlf(importMaildir[0].data)),
			fmt.Sprintf("%s|2001-09-09T01:46:42Z|%q", `\Answered \Flagged`, crlf(importMaildir[1].data)),
			fmt.Sprintf("%s|2001-09-09T01:46:43Z|%q", ``, crlf(importMaildir[2].data)),
		},
		"Work/Projects": {fmt.Sprintf("%s|2001-09-09T01:46:44Z|%q", `\Deleted`, crlf(importMaildir[3].data))},
		"Lists":         {fmt.Sprintf("%s|2001-09-09T01:46:45Z|%q", ``, crlf(importMaildir[4].data))},
		"Archive": {
			fmt.Sprintf("|2006-01-02T15:04:05Z|%q", crlf("Subject: m1\n\nFrom here, a line that had to be quoted\n>From one quoted in the message itself\n>>From twice\n")),
			fmt.Sprintf("%s|2009-02-03T04:05:06Z|%q", `\Seen \Answered \Flagged`,
				crlf("Subject: m2\nContent-Type: text/plain; charset=iso-8859-1\n\ncaf\xe9 8-bit latin1\n\nFrom is not a separator without a date\n")),
		},
	}
	for name, w := range want {
		if !slices.Equal(view[name], w) {
			t.Errorf("mailbox %s holds\n%s\nwant\n%s", name, strings.Join(view[name], "\n"), strings.Join(w, "\n"))
		}
	}

	// Importing again adds nothing.
	code, out, _ = runIn(t, "", "import", "-config", config, "alice@example.test", filepath.Join(src, "md"))
	if code != exitOK || !strings.Contains(out, "imported 0 messages") || !strings.Contains(out, "5 already present") {
		t.Errorf("second import of the maildir: %d\n%s", code, out)
	}
	code, out, _ = runIn(t, "", "import", "-config", config, "-mailbox", "Archive", "alice@example.test", filepath.Join(src, "archive.mbox"))
	if code != exitOK || !strings.Contains(out, "imported 0 messages") || !strings.Contains(out, "2 already present") {
		t.Errorf("second import of the mbox: %d\n%s", code, out)
	}
	if again := storedView(t, dataDir); fmt.Sprint(again) != fmt.Sprint(view) {
		t.Errorf("a second import changed the store")
	}

	// Export to mbox: the mbox written in export's own form comes back
	// byte for byte.
	outDir := t.TempDir()
	mboxDir := filepath.Join(outDir, "mbox")
	code, out, errOut = runIn(t, "", "export", "-config", config, "-format", "mbox", "alice@example.test", mboxDir)
	if code != exitOK || !strings.Contains(out, "exported 7 messages") {
		t.Fatalf("export mbox: %d\n%s%s", code, out, errOut)
	}
	got, err := os.ReadFile(filepath.Join(mboxDir, "Archive.mbox"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != importMbox {
		t.Errorf("exported Archive.mbox differs from the imported file:\n%q\nwant\n%q", got, importMbox)
	}
	if _, err := os.Stat(filepath.Join(mboxDir, "Work", "Projects.mbox")); err != nil {
		t.Errorf("child mailbox: %v", err)
	}

	// Export to Maildir: each file holds the imported bytes, flags in
	// the name and the internal date as its modification time.
	mdDir := filepath.Join(outDir, "maildir")
	code, out, errOut = runIn(t, "", "export", "-config", config, "alice@example.test", mdDir)
	if code != exitOK || !strings.Contains(out, "exported 7 messages") {
		t.Fatalf("export maildir: %d\n%s%s", code, out, errOut)
	}
	for _, m := range importMaildir {
		folder := m.folder
		if folder == "Lists" {
			folder = ".Lists"
		}
		files, _ := filepath.Glob(filepath.Join(mdDir, folder, "cur", fmt.Sprintf("%d.*", m.mtime.Unix())))
		if len(files) != 1 {
			t.Errorf("message of %v in %q: exported as %v", m.mtime.Unix(), folder, files)
			continue
		}
		data, err := os.ReadFile(files[0])
		if err != nil {
			t.Fatal(err)
		}
		if string(data) != m.data {
			t.Errorf("%s holds %q, want %q", files[0], data, m.data)
		}
		fi, _ := os.Stat(files[0])
		if !fi.ModTime().Equal(m.mtime) {
			t.Errorf("%s: mtime %v, want %v", files[0], fi.ModTime(), m.mtime)
		}
		wantInfo := ":2,"
		if i := strings.Index(m.name, ":2,"); i >= 0 {
			wantInfo = m.name[i:]
		}
		if !strings.HasSuffix(files[0], sortedInfo(wantInfo)) {
			t.Errorf("%s: want flags %s", files[0], wantInfo)
		}
	}

	// The exported Maildir imports again as the same messages: a second
	// user gets exactly alice's view.
	if code, _, errOut := runIn(t, "password-2\n", "user", "add", "-config", config, "bob@example.test"); code != exitOK {
		t.Fatal(errOut)
	}
	if code, out, errOut := runIn(t, "", "import", "-config", config, "bob@example.test", mdDir); code != exitOK {
		t.Fatalf("import of the export: %d\n%s%s", code, out, errOut)
	}
	if bob := storedViewOf(t, dataDir, "bob@example.test"); fmt.Sprint(bob) != fmt.Sprint(view) {
		t.Errorf("the exported Maildir imports as\n%v\nwant\n%v", bob, view)
	}

	// mutt opens what export wrote and counts the messages.
	muttCount(t, filepath.Join(mboxDir, "INBOX.mbox"), 3)
	muttCount(t, filepath.Join(mboxDir, "Archive.mbox"), 2)
	muttCount(t, mdDir, 3)
	muttCount(t, filepath.Join(mdDir, ".Work.Projects"), 1)
}

// sortedInfo puts the letters after ":2," in ASCII order.
func sortedInfo(info string) string {
	letters := []byte(strings.TrimPrefix(info, ":2,"))
	sort.Slice(letters, func(i, j int) bool { return letters[i] < letters[j] })
	return ":2," + string(letters)
}

// muttCount opens the folder with mutt on a pseudo-terminal (script(1))
// and checks the message count mutt shows in its status line.
func muttCount(t *testing.T, folder string, want int) {
	t.Helper()
	mutt, err := exec.LookPath("mutt")
	if err == nil {
		_, err = exec.LookPath("script")
	}
	if err != nil {
		if os.Getenv("POSTERN_REQUIRE_INTEROP") == "1" {
			t.Fatalf("mutt and script(1) are needed: %v", err)
		}
		t.Skipf("mutt or script(1) missing: %v", err)
	}
	dir := t.TempDir()
	rc := filepath.Join(dir, "muttrc")
	os.WriteFile(rc, []byte(fmt.Sprintf("set folder=%s\nset spoolfile=%s\nset mbox=%s/mbox\nset move=no\nset quit=yes\n"+
		"set status_format=\"POSTERN-COUNT=%%m=\"\n", dir, folder, dir)), 0o600)
	cmd := exec.Command("script", "-qec", fmt.Sprintf("%s -F %s -n -R -f '%s' -e 'push <quit>'", mutt, rc, folder), "/dev/null")
	cmd.Env = append(os.Environ(), "TERM=vt100", "HOME="+dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan struct{})
	var out []byte
	go func() { out, _ = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		cmd.Process.Kill()
		<-done
		t.Fatalf("mutt on %s did not finish: %q", folder, out)
	}
	m := regexp.MustCompile(`POSTERN-COUNT=(\d+)=`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("mutt on %s: no count in its screen: %q", folder, out)
	}
	if string(m[1]) != fmt.Sprint(want) {
		t.Errorf("mutt counts %s messages in %s, want %d", m[1], folder, want)
	}
}

func TestImportSkipsOversizeAndReadsMboxo(t *testing.T) {
	config, dataDir, src := importFixture(t, "[smtp]\nmax_message_bytes = 2000\n")
	big := strings.Repeat("0123456789abcdef\n", 200) // 3400 bytes
	mbox := "From someone@example.org Sat Jan  1 00:00:00 2000\nSubject: small\n\nFrom me, unquoted (mboxo), after an empty line\n\n" +
		"From someone@example.org Sat Jan  1 00:00:01 2000\nSubject: big\n\n" + big + "\n" +
		"From someone@example.org Sat Jan  1 00:00:02 +0100 2000\nSubject: after\nContent-Length: 3\n\nok\n"
	path := filepath.Join(src, "tree", "Folder.sbd", "Sub")
	os.MkdirAll(filepath.Dir(path), 0o700)
	if err := os.WriteFile(path, []byte(mbox), 0o600); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(src, "tree", "notes.txt"), []byte("not mail\n"), 0o600)
	code, out, errOut := runIn(t, "", "import", "-config", config, "alice@example.test", filepath.Join(src, "tree"))
	if code != exitOK {
		t.Fatalf("import: %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(out, "imported 2 messages") || !strings.Contains(out, "1 larger than smtp.max_message_bytes") ||
		!strings.Contains(out, "Sub line 6") {
		t.Errorf("summary:\n%s", out)
	}
	view := storedView(t, dataDir)
	want := []string{
		fmt.Sprintf("|2000-01-01T00:00:00Z|%q", crlf("Subject: small\n\nFrom me, unquoted (mboxo), after an empty line\n")),
		fmt.Sprintf("|1999-12-31T23:00:02Z|%q", crlf("Subject: after\nContent-Length: 3\n\nok\n")),
	}
	if got := view["Folder/Sub"]; !slices.Equal(got, want) {
		t.Errorf("Folder/Sub holds\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestImportExportUsage(t *testing.T) {
	config, _, src := importFixture(t, "")
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"import", "-config", config, "alice@example.test"}, exitUsage, "want ADDRESS and PATH"},
		{[]string{"import", "-config", config, "-mailbox", "a//b", "alice@example.test", src}, exitUsage, "empty level"},
		{[]string{"import", "-config", config, "nobody@example.test", src}, exitFailure, "nobody@example.test"},
		{[]string{"import", "-config", config, "alice@example.test", filepath.Join(src, "missing")}, exitFailure, "no such file"},
		{[]string{"export", "-config", config, "-format", "pst", "alice@example.test", t.TempDir()}, exitUsage, "maildir or mbox"},
	} {
		code, out, errOut := runIn(t, "", tc.args...)
		if code != tc.code || !strings.Contains(out+errOut, tc.msg) {
			t.Errorf("%v: %d %s%s; want %d and %q", tc.args, code, out, errOut, tc.code, tc.msg)
		}
	}
	// An mbox export refuses to overwrite an earlier one.
	dest := t.TempDir()
	if code, _, errOut := runIn(t, "", "export", "-config", config, "-format", "mbox", "alice@example.test", dest); code != exitOK {
		t.Fatal(errOut)
	}
	if code, _, errOut := runIn(t, "", "export", "-config", config, "-format", "mbox", "alice@example.test", dest); code != exitFailure || !strings.Contains(errOut, "exists") {
		t.Errorf("second export into the same directory: %d %s", code, errOut)
	}
}

// TestImportJobs imports with several appenders at once: the same
// messages as one at a time (in an order that may differ), and a second
// run adds nothing.
func TestImportJobs(t *testing.T) {
	config, dataDir, src := importFixture(t, "")
	mbox := filepath.Join(src, "gen.mbox")
	writeBenchMbox(t, mbox, 300)
	if code, _, errOut := runIn(t, "password-2\n", "user", "add", "-config", config, "bob@example.test"); code != exitOK {
		t.Fatal(errOut)
	}
	defer func(d time.Duration) { importProgressEvery = d }(importProgressEvery)
	importProgressEvery = 0 // a progress line per message
	code, out, errOut := runIn(t, "", "import", "-config", config, "-jobs", "8", "alice@example.test", mbox)
	if code != exitOK || !strings.Contains(out, "imported 300 messages") {
		t.Fatalf("import -jobs 8: %d\n%s%s", code, out, errOut)
	}
	if !regexp.MustCompile(`import: \d+ messages, [0-9.]+ MB of [0-9.]+ MB, \d+ messages/s, about \S+ left`).MatchString(errOut) {
		t.Errorf("no progress with count, rate and time left on stderr:\n%.500s", errOut)
	}
	if code, out, errOut := runIn(t, "", "import", "-config", config, "bob@example.test", mbox); code != exitOK {
		t.Fatalf("import: %d\n%s%s", code, out, errOut)
	}
	a, b := storedViewOf(t, dataDir, "alice@example.test")["INBOX"], storedViewOf(t, dataDir, "bob@example.test")["INBOX"]
	slices.Sort(a)
	slices.Sort(b)
	if len(a) != 300 || !slices.Equal(a, b) {
		t.Errorf("-jobs 8 stored %d messages, one at a time %d; the same: %v", len(a), len(b), slices.Equal(a, b))
	}
	code, out, _ = runIn(t, "", "import", "-config", config, "-jobs", "8", "alice@example.test", mbox)
	if code != exitOK || !strings.Contains(out, "imported 0 messages") || !strings.Contains(out, "300 already present") {
		t.Errorf("second import -jobs 8: %d\n%s", code, out)
	}
	// Export lists a mailbox a page of UIDs at a time; with pages of 7,
	// every message still comes out once, in UID order.
	defer func(p uint64) { exportPage = p }(exportPage)
	exportPage = 7
	dest := t.TempDir()
	code, out, errOut = runIn(t, "", "export", "-config", config, "-format", "mbox", "bob@example.test", dest)
	if code != exitOK || !strings.Contains(out, "exported 300 messages") {
		t.Fatalf("export: %d\n%s%s", code, out, errOut)
	}
	got, _ := os.ReadFile(filepath.Join(dest, "INBOX.mbox"))
	want, _ := os.ReadFile(mbox)
	// The generated file writes Status before the blank line as export
	// does, and its From lines name another sender.
	fromLine := regexp.MustCompile(`(?m)^From \S+ `)
	if fromLine.ReplaceAllString(string(got), "From X ") != fromLine.ReplaceAllString(string(want), "From X ") {
		t.Errorf("the export of a one-at-a-time import differs from its source")
	}
	if code, _, errOut := runIn(t, "", "import", "-config", config, "-jobs", "0", "alice@example.test", mbox); code != exitUsage {
		t.Errorf("-jobs 0: %d %s", code, errOut)
	}
}
