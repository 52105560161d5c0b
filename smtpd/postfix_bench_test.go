package smtpd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/storetest"
)

// BenchmarkSMTPIngestPostfix measures, in one run and with one client,
// Postfix's smtp-source (20 sessions of 4 KiB messages, the figure issue
// 17 names), three servers that each answer 250 only once the message is
// safe:
//
//   - Postern's MX into its durable store (a message is in the mailbox
//     when the 250 comes);
//   - the bare ceiling (newCeiling) into the same store code;
//   - Postfix handing each message to Dovecot over LMTP into Maildir:
//     timed until the last message is in the mailbox, since Postfix
//     answers 250 once it has queued, and delivers after.
//
// Rounds alternate the three, in a rotating order. It needs root (Postfix's
// master runs as root), smtp-source, postfix and dovecot's LMTP server:
//
//	apt-get install postfix dovecot-lmtpd
//	go test -run '^$' -bench BenchmarkSMTPIngestPostfix -benchtime 8000x ./smtpd/
//
// (Debian starts the system's Postfix and Dovecot on install; this
// benchmark runs its own, from their own configuration in a temporary
// directory, on free loopback ports, and stops them at the end.)
func BenchmarkSMTPIngestPostfix(b *testing.B) {
	source := findProgram(b, "smtp-source")
	pf := startPostfixDovecot(b)
	// Labelled as in benchIngest: go tool pprof -tagfocus side=postern.
	var ours *testEnv
	pprof.Do(context.Background(), pprof.Labels("side", "postern"), func(context.Context) { ours = newTestEnv(b) })
	var ceiling string
	var ceilingStore *mailstore.Store
	pprof.Do(context.Background(), pprof.Labels("side", "ceiling"), func(context.Context) { ceiling, ceilingStore = newCeiling(b) })
	// One round of a few messages first: processes started, caches warm.
	warm := 20
	runSMTPSource(b, source, ours.mx, warm)
	runSMTPSource(b, source, ceiling, warm)
	pf.send(b, source, warm)

	const rounds = 6
	b.ResetTimer()
	var tOurs, tCeiling, tPostfix time.Duration
	for i := range rounds {
		n := roundShare(b.N, rounds, i)
		if n == 0 {
			continue
		}
		sides := []func(){
			func() {
				tOurs += runSMTPSource(b, source, ours.mx, n)
				waitIndexed(b, ours.store)
			},
			func() {
				tCeiling += runSMTPSource(b, source, ceiling, n)
				waitIndexed(b, ceilingStore)
			},
			func() { tPostfix += pf.send(b, source, n) },
		}
		for j := range sides {
			sides[(i+j)%len(sides)]()
		}
	}
	b.StopTimer()
	total := b.N + warm
	for name, st := range map[string]*mailstore.Store{"postern": ours.store, "ceiling": ceilingStore} {
		if n := inboxCount(b, st); n != total {
			b.Fatalf("%s stored %d messages, want %d", name, n, total)
		}
	}
	rOurs := float64(b.N) / tOurs.Seconds()
	rCeiling := float64(b.N) / tCeiling.Seconds()
	rPostfix := float64(b.N) / tPostfix.Seconds()
	b.ReportMetric(rOurs, "postern-msgs/s")
	b.ReportMetric(rCeiling, "ceiling-msgs/s")
	b.ReportMetric(rPostfix, "postfix-dovecot-msgs/s")
	b.ReportMetric(rOurs/rPostfix, "postern/postfix-dovecot")
	b.ReportMetric(rOurs/rCeiling, "postern/ceiling")
}

// findProgram finds a program the benchmark needs, in PATH or in
// /usr/sbin (where Debian puts Postfix's and Dovecot's), or skips.
func findProgram(b *testing.B, name string) string {
	b.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	p := filepath.Join("/usr/sbin", name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	b.Skipf("%s is not installed (apt-get install postfix dovecot-lmtpd)", name)
	return ""
}

// runSMTPSource sends n messages of 4 KiB from 20 sessions to addr and
// returns how long smtp-source took: it ends after the last 250.
func runSMTPSource(b *testing.B, source, addr string, n int) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, source, "-s", "20", "-l", "4096", "-m", strconv.Itoa(n),
		"-f", "s@elsewhere.test", "-t", alice, addr)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	elapsed := time.Since(start)
	if err != nil || len(out) > 0 {
		// smtp-source says nothing when every message was accepted.
		b.Fatalf("smtp-source to %s: %v\n%s", addr, err, out)
	}
	return elapsed
}

func inboxCount(b *testing.B, st *mailstore.Store) int {
	b.Helper()
	ctx := context.Background()
	u, err := st.UserByAddress(ctx, alice)
	must(b, err)
	in, err := st.MailboxByName(ctx, u.ID, "INBOX")
	must(b, err)
	status, err := st.Status(ctx, in.ID)
	must(b, err)
	return int(status.Messages)
}

// postfixDovecot is a Postfix that hands every message for example.test to
// a Dovecot LMTP server, which stores it in alice's Maildir, both in a
// temporary directory and with default durability (Postfix fsyncs its
// queue file before the 250; Dovecot fsyncs the message before its LMTP
// 250, and Postfix removes the queue file after).
type postfixDovecot struct {
	smtpAddr  string
	maildir   string // alice's new/
	delivered int    // messages in maildir so far
}

func startPostfixDovecot(b *testing.B) *postfixDovecot {
	b.Helper()
	postfix := findProgram(b, "postfix")
	dovecot := findProgram(b, "dovecot")
	if os.Geteuid() != 0 {
		b.Skip("Postfix's master process runs as root")
	}
	pfUser, err := user.Lookup("postfix")
	if err != nil {
		b.Skipf("no postfix user: %v", err)
	}
	uid, _ := strconv.Atoi(pfUser.Uid)
	gid, _ := strconv.Atoi(pfUser.Gid)
	// Not b.TempDir: its parents are private to root, and Postfix's and
	// Dovecot's processes run as their own users.
	dir, err := os.MkdirTemp("", "postern-postfix-bench-")
	must(b, err)
	b.Cleanup(func() { os.RemoveAll(dir) })
	must(b, os.Chmod(dir, 0o755))
	for _, d := range []string{"postfix", "spool", "data", "mail", "dovecot-run", "dovecot-state"} {
		must(b, os.Mkdir(filepath.Join(dir, d), 0o755))
	}
	for _, d := range []string{"data", "mail"} {
		must(b, os.Chown(filepath.Join(dir, d), uid, gid))
	}
	smtpPort, lmtpPort := storetest.FreePort(b), storetest.FreePort(b)

	dovecotConf := filepath.Join(dir, "dovecot.conf")
	must(b, os.WriteFile(dovecotConf, []byte(fmt.Sprintf(`base_dir = %[1]s/dovecot-run
state_dir = %[1]s/dovecot-state
log_path = %[1]s/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
first_valid_uid = %[2]d
mail_location = maildir:%[1]s/mail/%%n
userdb {
  driver = static
  args = uid=%[2]d gid=%[3]d home=%[1]s/mail/%%n
}
passdb {
  driver = static
  args = nopassword=y
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = %[4]d
  }
}
`, dir, uid, gid, lmtpPort)), 0o644))
	dc := exec.Command(dovecot, "-F", "-c", dovecotConf)
	dcOut := &storetest.SyncBuffer{}
	dc.Stdout, dc.Stderr = dcOut, dcOut
	must(b, dc.Start())
	b.Cleanup(func() {
		dc.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { dc.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			dc.Process.Kill()
			<-done
		}
	})

	pfDir := filepath.Join(dir, "postfix")
	must(b, os.WriteFile(filepath.Join(pfDir, "main.cf"), []byte(fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %[1]s/spool
data_directory = %[1]s/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.example.test
mydomain = example.test
myorigin = example.test
mydestination =
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = example.test
virtual_transport = lmtp:inet:127.0.0.1:%[2]d
smtpd_reject_unlisted_recipient = no
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
alias_maps =
alias_database =
local_recipient_maps =
maillog_file_prefixes = %[1]s
maillog_file = %[1]s/maillog
`, dir, lmtpPort)), 0o644))
	// The services a Postfix that receives and hands over to LMTP needs,
	// none chrooted (the queue is in a temporary directory).
	must(b, os.WriteFile(filepath.Join(pfDir, "master.cf"), []byte(fmt.Sprintf(`127.0.0.1:%d inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
lmtp      unix  - - n -  - lmtp
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
`, smtpPort)), 0o644))
	ctl := func(verb string) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, postfix, "-c", pfDir, verb).CombinedOutput()
		if err != nil {
			log, _ := os.ReadFile(filepath.Join(dir, "maillog"))
			return fmt.Errorf("postfix %s: %w\n%s\n%s", verb, err, out, log)
		}
		return nil
	}
	must(b, ctl("start"))
	b.Cleanup(func() {
		if err := ctl("stop"); err != nil {
			b.Log(err)
		}
	})
	pf := &postfixDovecot{
		smtpAddr: fmt.Sprintf("127.0.0.1:%d", smtpPort),
		maildir:  filepath.Join(dir, "mail", "alice", "new"),
	}
	// Both listening before the first round.
	deadline := time.Now().Add(30 * time.Second)
	dialable := func(addr string) bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}
	for !dialable(pf.smtpAddr) || !dialable(fmt.Sprintf("127.0.0.1:%d", lmtpPort)) {
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "maillog"))
			b.Fatalf("Postfix or Dovecot not listening after 30 s:\n%s\n%s", log, dcOut.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return pf
}

// send sends n messages through Postfix and returns the time until the
// last of them is in alice's Maildir.
func (pf *postfixDovecot) send(b *testing.B, source string, n int) time.Duration {
	b.Helper()
	start := time.Now()
	runSMTPSource(b, source, pf.smtpAddr, n)
	want := pf.delivered + n
	deadline := time.Now().Add(5 * time.Minute)
	for {
		entries, err := os.ReadDir(pf.maildir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			b.Fatal(err)
		}
		if len(entries) >= want {
			if len(entries) > want {
				b.Fatalf("%d messages in the Maildir, want %d", len(entries), want)
			}
			pf.delivered = want
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			b.Fatalf("Postfix and Dovecot delivered %d of %d messages in 5 minutes", len(entries), want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
