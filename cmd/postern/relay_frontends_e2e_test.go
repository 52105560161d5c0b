package main

// The relay queue shared by several `postern serve` frontends on one
// PostgreSQL database: each queued message reaches the remote domain once,
// and a frontend killed in the middle of its deliveries loses nothing.

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/storetest"
	"github.com/postern/postern/smtpd/msgauth/msgauthtest"
)

// TestRelayFrontendsDeliverOnce: 300 messages queued for remote.test, a
// separate Postern instance (its own SQLite store) found through a DNS
// server on loopback, while three frontends on one PostgreSQL database run
// their relays. A frontend holding leases on queue entries is killed with
// SIGKILL mid-run; the others take its entries over once its leases
// (relay.lease, 2 s here) lapse. Counted by Message-ID at the receiver,
// every message arrives exactly once, except that one the killed frontend
// was sending may arrive twice (killed between the remote 250 and the
// removal from the queue: a duplicate, never a loss).
func TestRelayFrontendsDeliverOnce(t *testing.T) {
	t.Setenv(storeDSNEnv, "")
	dsn := storetest.PostgresDSN(t)
	const (
		total     = 300
		chunk     = 30
		rcpt      = "rcpt@remote.test"
		rcptPass  = "rcpt password 1"
		leaseTTL  = 2 * time.Second
		killLeast = 5 // leases the victim holds when it is killed
	)
	d := msgauthtest.NewDNS(t)
	d.Add(t, "remote.test. MX 10 mx.remote.test.", "mx.remote.test. A 127.0.0.1")

	// The remote domain: a Postern of its own.
	rconfig := serveConfig{
		hostname: "mx.remote.test",
		domain:   "remote.test",
		listen:   []string{"smtp", "imap"},
		dns:      d.Addr,
		extra:    "[checks]\nenabled = false\n",
	}.write(t)
	if code, out, errOut := runIn(t, rcptPass+"\n", "user", "add", "-config", rconfig, rcpt); code != exitOK {
		t.Fatalf("user add on the receiver: %d %s %s", code, out, errOut)
	}
	receiver := spawnServe(t, rconfig)
	_, rport, err := net.SplitHostPort(receiver.addrs["smtp"])
	if err != nil {
		t.Fatalf("receiver smtp address %q: %v", receiver.addrs["smtp"], err)
	}

	// Three frontends on one database, relaying to the receiver's port.
	var configs []string
	for i := range 3 {
		config := serveConfig{
			hostname: "mail" + strconv.Itoa(i) + ".example.test",
			listen:   []string{"smtp", "imap"},
			dns:      d.Addr,
			store:    postgresStore(dsn),
			extra:    "[relay]\nport = " + rport + "\nmta_sts = false\nlease = \"" + leaseTTL.String() + "\"\n",
		}.write(t)
		configs = append(configs, config)
	}
	if code, out, errOut := runIn(t, "sender password 1\n", "user", "add", "-config", configs[0], "sender@example.test"); code != exitOK {
		t.Fatalf("user add: %d %s %s", code, out, errOut)
	}
	fronts := map[int]*child{} // by pid
	for _, config := range configs {
		f := spawnServe(t, config)
		fronts[f.Pid()] = f
	}

	// The test's own view of the database: it queues, and watches leases.
	ctx := context.Background()
	st, err := mailstore.OpenPostgres(ctx, dsn, mailstore.Options{PasswordCost: mailstore.FastPasswordHash})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	msgID := map[int64]string{} // queue ID -> Message-ID
	queued := make(chan error, 1)
	go func() {
		defer close(queued)
		for i := range total {
			id := fmt.Sprintf("relay-%03d@example.test", i)
			msg := "From: sender@example.test\r\nTo: " + rcpt + "\r\nSubject: relay " + strconv.Itoa(i) +
				"\r\nMessage-ID: <" + id + ">\r\n\r\nbody " + strconv.Itoa(i) + "\r\n"
			dl, err := st.Deliver(ctx, "sender@example.test", []string{rcpt}, []byte(msg))
			if err != nil || len(dl.Queued) != 1 {
				queued <- fmt.Errorf("queue message %d: %+v %w", i, dl, err)
				return
			}
			msgID[dl.Queued[0].QueueID] = id
			// In chunks over some of the relays' poll intervals (5 s),
			// so that the frontends' relays, polling at their own
			// moments, each find some (a relay leases every due entry
			// it finds, and leaves those of a domain it is busy with to
			// the others).
			if i%chunk == chunk-1 {
				time.Sleep(time.Second)
			}
		}
	}()

	// Kill a frontend that has delivered some while it holds leases on
	// entries it is delivering.
	var victim *child
	var victimOwner string
	deadline := time.Now().Add(90 * time.Second)
	for victim == nil {
		if time.Now().After(deadline) {
			t.Fatal("no frontend was seen holding leases")
		}
		rows, err := db.QueryContext(ctx, "SELECT lease_owner, count(*) FROM queue WHERE lease_owner != '' GROUP BY lease_owner")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var owner string
			var n int
			if err := rows.Scan(&owner, &n); err != nil {
				t.Fatal(err)
			}
			f := fronts[ownerPid(owner)]
			if n >= killLeast && f != nil && victim == nil && strings.Contains(f.Stderr(), "result=delivered") {
				victim, victimOwner = f, owner
			}
		}
		rows.Close()
		if victim == nil {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	var orphaned []int64 // entries the dead frontend held
	rows, err := db.QueryContext(ctx, "SELECT id FROM queue WHERE lease_owner = $1", victimOwner)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		orphaned = append(orphaned, id)
	}
	rows.Close()
	t.Logf("killed %s holding %d leases", victimOwner, len(orphaned))
	if len(orphaned) == 0 {
		t.Fatal("the killed frontend held no lease once dead: nothing was taken over")
	}
	if err := <-queued; err != nil {
		t.Fatal(err)
	}

	// The others deliver everything, the dead one's entries included.
	deadline = time.Now().Add(120 * time.Second)
	for {
		q, err := st.Queue(ctx, time.Time{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(q) == 0 {
			break
		}
		if time.Now().After(deadline) {
			for _, f := range fronts {
				if f != victim {
					t.Logf("frontend log:\n%s", tail(f.Stderr(), 3000))
				}
			}
			t.Fatalf("%d entries still queued (first: %+v)", len(q), q[0])
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("queue empty %v after the kill", time.Since(killed).Round(100*time.Millisecond))

	count := receivedByMessageID(t, receiver.addrs["imap"], rcpt, rcptPass)
	mayRepeat := map[string]bool{}
	for _, id := range orphaned {
		mayRepeat[msgID[id]] = true
	}
	dups := 0
	for _, id := range msgID {
		switch n := count[id]; {
		case n == 0:
			t.Errorf("%s never arrived", id)
		case n == 2 && mayRepeat[id]:
			dups++
		case n != 1:
			t.Errorf("%s arrived %d times", id, n)
		}
	}
	if len(count) != total {
		t.Errorf("%d distinct Message-IDs at the receiver, want %d", len(count), total)
	}
	for pid, f := range fronts {
		n := strings.Count(f.Stderr(), "result=delivered")
		t.Logf("frontend pid %d (killed %v) delivered %d", pid, f == victim, n)
	}
	t.Logf("%d messages the killed frontend was sending arrived twice", dups)
}

// ownerPid is the process ID in a relay's lease owner, "host:pid/id".
func ownerPid(owner string) int {
	rest, _, _ := strings.Cut(owner, "/")
	i := strings.LastIndexByte(rest, ':')
	if i < 0 {
		return 0
	}
	pid, _ := strconv.Atoi(rest[i+1:])
	return pid
}

// tail is the end of a log.
func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// receivedByMessageID counts the messages in user's INBOX on an IMAP
// server by Message-ID.
func receivedByMessageID(t *testing.T, addr, user, password string) map[string]int {
	t.Helper()
	c := loginSelect(t, addr, user, password, nil)
	all, err := c.Fetch(imap.SeqSet{imap.SeqRange{Start: 1, Stop: 0}}, &imap.FetchOptions{Envelope: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, m := range all {
		if m.Envelope == nil {
			t.Fatalf("message %d has no envelope", m.SeqNum)
		}
		count[strings.Trim(m.Envelope.MessageID, "<>")]++
	}
	c.Logout().Wait()
	return count
}
