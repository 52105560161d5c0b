package main

// Several `postern serve` frontends, each a process of its own, on one
// PostgreSQL database: deliveries through all of them at once, read
// through one, and IDLE on one seeing what the others did.

import (
	"bufio"
	"fmt"
	"io"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/postern/postern/mailstore/storetest"
)

// startFrontends starts n serve processes on the database dsn, each with
// its own data_dir and listeners on 127.0.0.1, after adding user with
// password through the command line.
func startFrontends(t testing.TB, dsn string, n int, user, password string) []*child {
	t.Helper()
	var configs []string
	for i := range n {
		config := serveConfig{
			hostname: "mail" + strconv.Itoa(i) + ".example.test",
			listen:   []string{"smtp", "pop3", "imap"},
			store:    postgresStore(dsn),
			extra:    "[limits]\nmaildrop_lease = \"2s\"\n[limits.mx]\nconnections_per_address = 100\n",
		}.write(t)
		configs = append(configs, config)
	}
	if code, out, errOut := runIn(t, password+"\n", "user", "add", "-config", configs[0], user); code != exitOK {
		t.Fatalf("user add: %d %s %s", code, out, errOut)
	}
	var fronts []*child
	for _, config := range configs {
		fronts = append(fronts, spawnServe(t, config))
	}
	for i, f := range fronts {
		if f.addrs["smtp"] == "" || f.addrs["imap"] == "" {
			t.Fatalf("frontend %d printed no smtp or imap address: %v", i, f.addrs)
		}
		if !slices.ContainsFunc(strings.Split(f.banner, "\n"), func(line string) bool {
			return slices.Equal(strings.Fields(line), []string{"store", redactDSN(dsn)})
		}) {
			t.Errorf("frontend %d's banner does not name the store %s:\n%s", i, redactDSN(dsn), f.banner)
		}
	}
	return fronts
}

// TestFrontendsShareOnePostgres: 3 frontends x 300 deliveries at once to one
// mailbox give 900 messages, each once, with unique UIDs that ascend in the
// order each sender had its deliveries acknowledged, whichever frontend
// took them.
func TestFrontendsShareOnePostgres(t *testing.T) {
	t.Setenv(storeDSNEnv, "")
	dsn := storetest.PostgresDSN(t)
	const (
		user, password = "box@example.test", "box password 1"
		perFrontend    = 300
		sendersPer     = 4 // SMTP clients at once per frontend
	)
	fronts := startFrontends(t, dsn, 3, user, password)

	var wg sync.WaitGroup
	errs := make(chan error, len(fronts)*sendersPer)
	for fi, f := range fronts {
		for s := range sendersPer {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Each sender delivers its share one after another.
				for i := s; i < perFrontend; i += sendersPer {
					subj := fmt.Sprintf("f%d-s%d-%03d", fi, s, i)
					msg := "From: sender@remote.test\r\nTo: " + user + "\r\nSubject: " + subj +
						"\r\nMessage-ID: <" + subj + "@remote.test>\r\n\r\nbody of " + subj + "\r\n"
					if err := sendPlain(f.addrs["smtp"], "sender@remote.test", user, msg); err != nil {
						errs <- fmt.Errorf("frontend %d, %s: %w", fi, subj, err)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}

	const total = 3 * perFrontend
	seen := inboxSubjects(t, fronts[0].addrs["imap"], user, password)
	for fi := range fronts {
		for s := range sendersPer {
			var last imap.UID
			for i := s; i < perFrontend; i += sendersPer {
				subj := fmt.Sprintf("f%d-s%d-%03d", fi, s, i)
				uid, ok := seen[subj]
				if !ok {
					t.Errorf("%s, acknowledged, is missing", subj)
					continue
				}
				// Sent after the previous one was acknowledged, so a
				// larger UID, whichever frontends stored them.
				if uid <= last {
					t.Errorf("%s has UID %d, not above its predecessor's %d", subj, uid, last)
				}
				last = uid
			}
		}
	}
	if len(seen) != total {
		t.Errorf("%d distinct messages, want %d", len(seen), total)
	}
}

// idleTimeout bounds the wait for an IDLE update. The issue asks for 1 s;
// the limit here is generous so that a loaded 2-core machine does not fail
// the test: it checks that the change arrives at all without a client
// command.
const idleTimeout = 20 * time.Second

func loginSelect(t *testing.T, addr, user, password string, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	c := imapLogin(t, addr, user, password, opts)
	t.Cleanup(func() { c.Close() })
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestIdleAcrossFrontends: IDLE on frontend A sees a message delivered
// through B, a flag set through C and an expunge made through B.
func TestIdleAcrossFrontends(t *testing.T) {
	t.Setenv(storeDSNEnv, "")
	dsn := storetest.PostgresDSN(t)
	const user, password = "idler@example.test", "idler password 1"
	fronts := startFrontends(t, dsn, 3, user, password)
	a, b, cf := fronts[0], fronts[1], fronts[2]

	ev := storetest.NewIMAPUpdates()
	idler := loginSelect(t, a.addrs["imap"], user, password, &imapclient.Options{UnilateralDataHandler: ev.Handler()})
	idle, err := idler.Idle()
	if err != nil {
		t.Fatal(err)
	}

	msg := "From: sender@remote.test\r\nTo: " + user + "\r\nSubject: through B\r\n\r\nhello\r\n"
	if err := sendPlain(b.addrs["smtp"], "sender@remote.test", user, msg); err != nil {
		t.Fatalf("deliver through B: %v", err)
	}
	ev.WaitFor(t, "EXISTS 1 for a delivery through B", idleTimeout, func(u *storetest.IMAPUpdates) bool { return slices.Contains(u.Exists, 1) })

	onC := loginSelect(t, cf.addrs["imap"], user, password, nil)
	if err := onC.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged}}, nil).Close(); err != nil {
		t.Fatalf("STORE through C: %v", err)
	}
	ev.WaitFor(t, `FETCH 1 \Flagged for a flag set through C`, idleTimeout, func(u *storetest.IMAPUpdates) bool {
		return slices.ContainsFunc(u.Flags, func(s string) bool { return strings.HasPrefix(s, "1 ") && strings.Contains(s, `\Flagged`) })
	})

	onB := loginSelect(t, b.addrs["imap"], user, password, nil)
	if err := onB.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close(); err != nil {
		t.Fatalf("STORE \\Deleted through B: %v", err)
	}
	if err := onB.Expunge().Close(); err != nil {
		t.Fatalf("EXPUNGE through B: %v", err)
	}
	ev.WaitFor(t, "EXPUNGE 1 for an expunge through B", idleTimeout, func(u *storetest.IMAPUpdates) bool { return slices.Contains(u.Expunges, 1) })

	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
}

// inboxSubjects logs in on addr and returns the subject of every message
// in user's INBOX with its UID, failing on a subject stored twice or UIDs
// that do not ascend.
func inboxSubjects(t *testing.T, addr, user, password string) map[string]imap.UID {
	t.Helper()
	c := loginSelect(t, addr, user, password, nil)
	all, err := c.Fetch(imap.SeqSet{imap.SeqRange{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, Envelope: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]imap.UID{}
	var prev imap.UID
	for _, m := range all {
		if m.UID <= prev {
			t.Errorf("message %d has UID %d after UID %d: not strictly ascending", m.SeqNum, m.UID, prev)
		}
		prev = m.UID
		if m.Envelope == nil {
			t.Fatalf("message %d (UID %d) has no envelope", m.SeqNum, m.UID)
		}
		if first, dup := seen[m.Envelope.Subject]; dup {
			t.Errorf("%s stored twice: UIDs %d and %d", m.Envelope.Subject, first, m.UID)
		}
		seen[m.Envelope.Subject] = m.UID
	}
	c.Logout().Wait()
	return seen
}

// TestFrontendKilledLosesNothing: a frontend killed with SIGKILL in the
// middle of concurrent deliveries through all three loses no acknowledged
// message and stores none twice; the others go on, and it starts again on
// the same database.
func TestFrontendKilledLosesNothing(t *testing.T) {
	t.Setenv(storeDSNEnv, "")
	dsn := storetest.PostgresDSN(t)
	const (
		user, password = "victim@example.test", "victim password 1"
		sendersPer     = 4
		perSender      = 40
		killAfter      = 100 // acknowledged deliveries in all before the kill
	)
	fronts := startFrontends(t, dsn, 3, user, password)
	victim := fronts[1]

	var (
		mu     sync.Mutex
		acked  = map[string]bool{}
		killed = make(chan struct{})
		once   sync.Once
		wg     sync.WaitGroup
	)
	errs := make(chan error, len(fronts)*sendersPer)
	for fi, f := range fronts {
		for s := range sendersPer {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range perSender {
					subj := fmt.Sprintf("k%d-s%d-%03d", fi, s, i)
					msg := "From: sender@remote.test\r\nTo: " + user + "\r\nSubject: " + subj + "\r\n\r\nbody of " + subj + "\r\n"
					err := sendPlain(f.addrs["smtp"], "sender@remote.test", user, msg)
					if err != nil {
						if f == victim {
							select {
							case <-killed:
								return // expected once it is dead
							default:
							}
						}
						errs <- fmt.Errorf("frontend %d, %s: %w", fi, subj, err)
						return
					}
					mu.Lock()
					acked[subj] = true
					n := len(acked)
					mu.Unlock()
					if n >= killAfter {
						once.Do(func() {
							// Closed first: the victim's senders
							// may fail from the kill on.
							close(killed)
							if err := victim.Kill(); err != nil {
								errs <- fmt.Errorf("kill frontend 1: %w", err)
							}
						})
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	select {
	case <-killed:
	default:
		t.Fatal("the deliveries ended before frontend 1 was killed")
	}

	seen := inboxSubjects(t, fronts[0].addrs["imap"], user, password)
	victimAcked := 0
	for subj := range acked {
		if strings.HasPrefix(subj, "k1-") {
			victimAcked++
		}
	}
	t.Logf("%d deliveries acknowledged, %d of them by the killed frontend (of %d it was sent); %d messages stored",
		len(acked), victimAcked, sendersPer*perSender, len(seen))
	for subj := range acked {
		if _, ok := seen[subj]; !ok {
			t.Errorf("%s was acknowledged but is missing", subj)
		}
	}
	// The survivors delivered all of theirs.
	for _, fi := range []int{0, 2} {
		for s := range sendersPer {
			for i := range perSender {
				if subj := fmt.Sprintf("k%d-s%d-%03d", fi, s, i); !acked[subj] {
					t.Errorf("%s through a surviving frontend was not acknowledged", subj)
				}
			}
		}
	}

	// The killed frontend starts again on the same database and serves.
	again := spawnServe(t, victim.config)
	if err := sendPlain(again.addrs["smtp"], "sender@remote.test", user,
		"From: sender@remote.test\r\nTo: "+user+"\r\nSubject: after restart\r\n\r\nback\r\n"); err != nil {
		t.Fatalf("deliver through the restarted frontend: %v", err)
	}
	seen = inboxSubjects(t, fronts[2].addrs["imap"], user, password)
	if _, ok := seen["after restart"]; !ok {
		t.Error("the message delivered through the restarted frontend is missing")
	}
}

// pop3TryLogin dials a POP3 server and logs in; it returns the connection
// and the reply to PASS.
func pop3TryLogin(t *testing.T, addr, user, password string) (*textproto.Conn, string) {
	t.Helper()
	c, err := textproto.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.R = bufio.NewReader(io.LimitReader(c.R, 1<<20))
	line := func(cmd string) string {
		if cmd != "" {
			if err := c.PrintfLine("%s", cmd); err != nil {
				t.Fatal(err)
			}
		}
		l, err := c.ReadLine()
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	if l := line(""); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("greeting %q", l)
	}
	if l := line("USER " + user); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("USER: %q", l)
	}
	return c, line("PASS " + password)
}

// TestPOP3InUseAcrossFrontends: a POP3 session on frontend A locks the
// maildrop for frontend B too (-ERR [IN-USE]); when A is killed with
// SIGKILL, B gets the maildrop once A's lease (limits.maildrop_lease, 2 s
// here) has run out.
func TestPOP3InUseAcrossFrontends(t *testing.T) {
	t.Setenv(storeDSNEnv, "")
	dsn := storetest.PostgresDSN(t)
	const user, password = "popper@example.test", "popper password 1"
	fronts := startFrontends(t, dsn, 2, user, password)
	a, b := fronts[0], fronts[1]
	if _, reply := pop3TryLogin(t, a.addrs["pop3"], user, password); !strings.HasPrefix(reply, "+OK") {
		t.Fatalf("login on A: %q", reply)
	}
	if _, reply := pop3TryLogin(t, b.addrs["pop3"], user, password); !strings.HasPrefix(reply, "-ERR [IN-USE]") {
		t.Fatalf("login on B while A holds the maildrop: %q, want -ERR [IN-USE]", reply)
	}
	killed := time.Now()
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	for {
		c, reply := pop3TryLogin(t, b.addrs["pop3"], user, password)
		if strings.HasPrefix(reply, "+OK") {
			c.PrintfLine("QUIT")
			break
		}
		if !strings.HasPrefix(reply, "-ERR [IN-USE]") || time.Since(killed) > 20*time.Second {
			t.Fatalf("login on B %v after A was killed: %q", time.Since(killed), reply)
		}
		c.Close()
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("B got the maildrop %v after A was killed", time.Since(killed).Round(100*time.Millisecond))
}
