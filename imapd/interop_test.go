package imapd

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Real clients (DESIGN.md): each test skips when its client is missing,
// unless POSTERN_REQUIRE_INTEROP=1, when it fails instead.

func needTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("POSTERN_REQUIRE_INTEROP") == "1" {
			t.Fatalf("%s is not installed and POSTERN_REQUIRE_INTEROP=1", name)
		}
		t.Skipf("%s is not installed", name)
	}
	return path
}

func runTool(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

const imaplibScript = `
import imaplib, sys, email
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
M = imaplib.IMAP4(host, port)
print("caps", " ".join(sorted(M.capabilities)))
M.login(user, pw)
typ, data = M.append("INBOX", r"(\Flagged)", imaplib.Time2Internaldate(1700000000),
    b"From: py@example.test\r\nSubject: from python\r\n\r\nhello from imaplib\r\n")
print("append", typ, data[0].decode())
M2 = imaplib.IMAP4(host, port)
M2.login(user, pw)
typ, data = M2.status("INBOX", "(RECENT)")
print("status before select", data[0].decode())
typ, data = M.select("INBOX")
print("select", typ, data[0].decode())
print("select recent", M.response("RECENT")[1][0].decode())
typ, data = M2.status("INBOX", "(RECENT)")
print("status after select", data[0].decode())
M2.logout()
typ, data = M.search(None, "NEW")
print("search new", typ, data[0].decode())
typ, data = M.search(None, "FLAGGED")
print("search", typ, data[0].decode())
typ, data = M.fetch("1:*", "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
for item in data:
    if isinstance(item, tuple):
        print("fetch", item[0].decode(), repr(item[1].decode()))
typ, data = M.fetch("2", "(RFC822)")
msg = email.message_from_bytes(data[0][1])
print("rfc822", msg["Subject"], msg.get_payload().strip())
typ, data = M.store("1", "+FLAGS", r"(\Deleted)")
print("store", typ, data[0].decode())
typ, data = M.copy("2", "Archive")
print("copy", typ)
typ, data = M.expunge()
print("expunge", typ, [d.decode() for d in data if d])
typ, data = M.list()
print("list", len(data))
typ, data = M.status("Archive", "(MESSAGES UIDNEXT)")
print("status", data[0].decode())
M.close()
M.logout()
print("done")
`

func TestPythonImaplib(t *testing.T) {
	python := needTool(t, "python3")
	env := newEnv(t)
	env.deliver(t, testMessage(1, "delivered"))
	script := filepath.Join(t.TempDir(), "client.py")
	if err := os.WriteFile(script, []byte(imaplibScript), 0o600); err != nil {
		t.Fatal(err)
	}
	out := runTool(t, time.Minute, python, script, "127.0.0.1", port(env.addr), testUser, testPass)
	for _, want := range []string{
		"IMAP4REV1", "IMAP4REV2", "AUTH=PLAIN", "STARTTLS",
		"append OK [APPENDUID ",
		"status before select INBOX (RECENT 2)",
		"select OK 2",
		"select recent 2",
		"status after select INBOX (RECENT 0)",
		"search new OK 1 2",
		"search OK 2",
		`fetch 1 (UID 1 FLAGS (\Recent) RFC822.SIZE 165 BODY[HEADER.FIELDS ("SUBJECT")] {22} 'Subject: delivered\r\n\r\n'`,
		`fetch 2 (UID 2 FLAGS (\Flagged \Recent) RFC822.SIZE 67 BODY[HEADER.FIELDS ("SUBJECT")] {24} 'Subject: from python\r\n\r\n'`,
		"rfc822 from python hello from imaplib",
		`store OK 1 (UID 1 FLAGS (\Deleted \Recent))`,
		"copy OK",
		"expunge OK ['1']",
		"list 6",
		`status "Archive" (MESSAGES 1 UIDNEXT 2)`,
		"done",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("imaplib output lacks %q:\n%s", want, out)
		}
	}
}

// syncFolders are the server folders of the sync tests and how many
// messages each starts with: 200 in all.
var syncFolders = []struct {
	name string
	n    int
}{{"INBOX", 80}, {"Work", 70}, {"Lists", 50}}

func fillFolders(t *testing.T, env *testEnv) {
	t.Helper()
	ctx := context.Background()
	for _, f := range syncFolders {
		mb, err := env.store.MailboxByName(ctx, env.user.ID, f.name)
		if err != nil {
			if mb, err = env.store.CreateMailbox(ctx, env.user.ID, f.name, ""); err != nil {
				t.Fatal(err)
			}
		}
		for i := 0; i < f.n; i++ {
			msg := testMessage(i, fmt.Sprintf("%s message %d", f.name, i))
			if _, err := env.store.Append(ctx, mb.ID, nil, time.Time{}, []byte(msg)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// maildirCount counts the messages of a Maildir folder.
func maildirCount(t *testing.T, dir string) (n int, names []string) {
	t.Helper()
	for _, sub := range []string{"new", "cur"} {
		entries, err := os.ReadDir(filepath.Join(dir, sub))
		if err != nil {
			continue
		}
		for _, e := range entries {
			names = append(names, filepath.Join(dir, sub, e.Name()))
		}
	}
	return len(names), names
}

func serverCount(t *testing.T, env *testEnv, name string) (messages, unseen uint32) {
	t.Helper()
	ctx := context.Background()
	mb, err := env.store.MailboxByName(ctx, env.user.ID, name)
	if err != nil {
		t.Fatalf("mailbox %s: %v", name, err)
	}
	st, err := env.store.Status(ctx, mb.ID)
	if err != nil {
		t.Fatal(err)
	}
	return st.Messages, st.Unseen
}

func TestMbsync(t *testing.T) {
	mbsync := needTool(t, "mbsync")
	env := newEnv(t)
	fillFolders(t, env)
	dir := t.TempDir()
	local := filepath.Join(dir, "mail") + "/"
	conf := filepath.Join(dir, "mbsyncrc")
	os.MkdirAll(local, 0o700)
	rc := fmt.Sprintf(`IMAPAccount postern
Host 127.0.0.1
Port %s
User %s
Pass "%s"
SSLType None
AuthMechs LOGIN
Timeout 60

IMAPStore remote
Account postern

MaildirStore local
Path %s
Inbox %sINBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns INBOX Work Lists
Create Both
Expunge Both
SyncState *
`, port(env.addr), testUser, testPass, local, local)
	if err := os.WriteFile(conf, []byte(rc), 0o600); err != nil {
		t.Fatal(err)
	}
	runTool(t, 2*time.Minute, mbsync, "-c", conf, "-a")
	for _, f := range syncFolders {
		if n, _ := maildirCount(t, filepath.Join(local, f.name)); n != f.n {
			t.Errorf("after the first sync, local %s has %d messages, want %d", f.name, n, f.n)
		}
	}

	// Local changes go up: a new message, a message read, one deleted.
	newMsg := testMessage(999, "written locally")
	if err := os.WriteFile(filepath.Join(local, "Work", "new", "1700000000.local.test"), []byte(newMsg), 0o600); err != nil {
		t.Fatal(err)
	}
	_, names := maildirCount(t, filepath.Join(local, "Lists"))
	read := names[0]
	if err := os.Rename(read, filepath.Join(local, "Lists", "cur", filepath.Base(strings.Split(read, ":2,")[0])+":2,S")); err != nil {
		t.Fatal(err)
	}
	_, names = maildirCount(t, filepath.Join(local, "INBOX"))
	if err := os.Remove(names[0]); err != nil {
		t.Fatal(err)
	}
	// A server change comes down.
	env.deliver(t, testMessage(1000, "delivered after the first sync"))

	runTool(t, 2*time.Minute, mbsync, "-c", conf, "-a")
	if n, _ := serverCount(t, env, "Work"); n != 71 {
		t.Errorf("server Work has %d messages, want 71", n)
	}
	if _, unseen := serverCount(t, env, "Lists"); unseen != 49 {
		t.Errorf("server Lists has %d unseen, want 49", unseen)
	}
	// INBOX: 80 - 1 deleted locally + 1 delivered.
	if n, _ := serverCount(t, env, "INBOX"); n != 80 {
		t.Errorf("server INBOX has %d messages, want 80", n)
	}
	if n, _ := maildirCount(t, filepath.Join(local, "INBOX")); n != 80 {
		t.Errorf("local INBOX has %d messages, want 80", n)
	}

	// A third run changes nothing.
	runTool(t, 2*time.Minute, mbsync, "-c", conf, "-a")
	for _, f := range []struct {
		name string
		n    int
	}{{"INBOX", 80}, {"Work", 71}, {"Lists", 50}} {
		if n, _ := maildirCount(t, filepath.Join(local, f.name)); n != f.n {
			t.Errorf("after the third sync, local %s has %d messages, want %d", f.name, n, f.n)
		}
		if n, _ := serverCount(t, env, f.name); int(n) != f.n {
			t.Errorf("after the third sync, server %s has %d messages, want %d", f.name, n, f.n)
		}
	}
}

func TestOfflineimap(t *testing.T) {
	offlineimap := needTool(t, "offlineimap")
	env := newEnv(t)
	fillFolders(t, env)
	dir := t.TempDir()
	local := filepath.Join(dir, "mail")
	conf := filepath.Join(dir, "offlineimaprc")
	rc := fmt.Sprintf(`[general]
accounts = postern
metadata = %s
maxsyncaccounts = 1

[Account postern]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = %s

[Repository remote]
type = IMAP
remotehost = 127.0.0.1
remoteport = %s
remoteuser = %s
remotepass = %s
ssl = no
starttls = no
folderfilter = lambda name: name in ['INBOX', 'Work', 'Lists']
`, filepath.Join(dir, "meta"), local, port(env.addr), testUser, testPass)
	if err := os.WriteFile(conf, []byte(rc), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func() { runTool(t, 3*time.Minute, offlineimap, "-c", conf, "-o", "-u", "basic") }
	run()
	for _, f := range syncFolders {
		if n, _ := maildirCount(t, filepath.Join(local, f.name)); n != f.n {
			t.Errorf("after the first sync, local %s has %d messages, want %d", f.name, n, f.n)
		}
	}

	// Local changes go up: a new message, a message read, one deleted.
	if err := os.WriteFile(filepath.Join(local, "Work", "new", "1700000000_0.local.test"), []byte(testMessage(999, "written locally")), 0o600); err != nil {
		t.Fatal(err)
	}
	_, names := maildirCount(t, filepath.Join(local, "Lists"))
	base := filepath.Base(names[0])
	if i := strings.Index(base, ":2,"); i >= 0 {
		base = base[:i]
	}
	if err := os.Rename(names[0], filepath.Join(local, "Lists", "cur", base+":2,S")); err != nil {
		t.Fatal(err)
	}
	_, names = maildirCount(t, filepath.Join(local, "INBOX"))
	if err := os.Remove(names[0]); err != nil {
		t.Fatal(err)
	}
	env.deliver(t, testMessage(1000, "delivered after the first sync"))
	run()
	if n, _ := serverCount(t, env, "Work"); n != 71 {
		t.Errorf("server Work has %d messages, want 71", n)
	}
	if _, unseen := serverCount(t, env, "Lists"); unseen != 49 {
		t.Errorf("server Lists has %d unseen, want 49", unseen)
	}
	if n, _ := serverCount(t, env, "INBOX"); n != 80 {
		t.Errorf("server INBOX has %d messages, want 80", n)
	}
	run()
	for _, f := range []struct {
		name string
		n    int
	}{{"INBOX", 80}, {"Work", 71}, {"Lists", 50}} {
		if n, _ := maildirCount(t, filepath.Join(local, f.name)); n != f.n {
			t.Errorf("after the third sync, local %s has %d messages, want %d", f.name, n, f.n)
		}
		if n, _ := serverCount(t, env, f.name); int(n) != f.n {
			t.Errorf("after the third sync, server %s has %d messages, want %d", f.name, n, f.n)
		}
	}
}
