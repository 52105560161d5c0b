package smtpd

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore/limits"
)

// Many unfinished large transfers with a small memory budget: the bytes
// held in memory stay within the budget, the rest waits in private spool
// files, every message is stored byte for byte, and no file is left.
func TestSpoolLargeMessages(t *testing.T) {
	const budget = 256 << 10
	mem := limits.NewBudget(budget, 0)
	dir := t.TempDir()
	e := newTestEnv(t, func(c *Config) {
		c.Shared.Memory = mem
		c.Shared.SpoolDir = dir
	})
	spoolFiles := func() []string {
		names, err := filepath.Glob(filepath.Join(dir, "spool-*.tmp"))
		must(t, err)
		return names
	}

	const transfers = 8
	msgs := make([]string, transfers)
	clients := make([]*raw, transfers)
	for i := range transfers {
		// About 300 KB each, lines of varied content, the last one without
		// its line end, so that nothing is regular enough to hide a
		// misplaced block.
		var b strings.Builder
		fmt.Fprintf(&b, "From: s@elsewhere.test\r\nTo: %s\r\nSubject: big %d\r\n\r\n", alice, i)
		for l := 0; b.Len() < 300<<10; l++ {
			fmt.Fprintf(&b, "message %d line %d %s\r\n", i, l, strings.Repeat(string(rune('a'+(i+l)%26)), l%70))
		}
		msgs[i] = b.String()
		c := e.dial(t, e.mx)
		c.cmd("EHLO client.example.test", "250")
		c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
		c.cmd("RCPT TO:<"+alice+">", "250 ")
		c.cmd("DATA", "354 ")
		// All but the end of data.
		c.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.conn.Write([]byte(dotStuff(msgs[i]))); err != nil {
			t.Fatal(err)
		}
		clients[i] = c
	}
	// While they are open: the memory used stays within the budget, and
	// the messages that do not fit are in files only the server can read.
	// Ready when the messages that do not fit have reached their files.
	spooled := func() bool {
		names := spoolFiles()
		for _, name := range names {
			if fi, err := os.Stat(name); err != nil || fi.Size() < 200<<10 {
				return false
			}
		}
		return len(names) >= transfers-1
	}
	deadline := time.Now().Add(20 * time.Second)
	for !spooled() {
		if used := mem.Used(); used > budget {
			t.Fatalf("%d bytes in memory, budget %d", used, budget)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d spool files, want at least %d of 200 KB or more", len(spoolFiles()), transfers-1)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if used := mem.Used(); used > budget {
		t.Fatalf("%d bytes in memory, budget %d", used, budget)
	}
	for _, name := range spoolFiles() {
		fi, err := os.Stat(name)
		must(t, err)
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v", name, fi.Mode().Perm())
		}
	}
	for _, c := range clients {
		c.send(".")
	}
	for i, c := range clients {
		if r := c.reply(); !strings.HasPrefix(r, "250 ") {
			t.Fatalf("transfer %d: %q", i, r)
		}
	}
	got := e.inbox(t, alice)
	if len(got) != transfers {
		t.Fatalf("%d messages stored, want %d", len(got), transfers)
	}
	seen := make(map[int]bool)
	for _, body := range got {
		i := indexOf(msgs, body)
		if i < 0 {
			t.Fatalf("stored message is none of those sent: %.200q", body)
		}
		seen[i] = true
		// Only the trace fields are added in front.
		trimTrace(t, body, msgs[i])
	}
	if len(seen) != transfers {
		t.Errorf("%d different messages stored, want %d", len(seen), transfers)
	}
	if names := spoolFiles(); len(names) != 0 {
		t.Errorf("spool files left: %v", names)
	}
	if used := mem.Used(); used != 0 {
		t.Errorf("%d bytes still reserved", used)
	}
}

// indexOf returns the index of the message body ends with.
func indexOf(msgs []string, body []byte) int {
	for i, m := range msgs {
		if bytes.HasSuffix(body, []byte(m)) {
			return i
		}
	}
	return -1
}

// An aborted transfer removes its spool file too.
func TestSpoolRemovedOnAbort(t *testing.T) {
	dir := t.TempDir()
	e := newTestEnv(t, func(c *Config) {
		c.Shared.Memory = limits.NewBudget(64<<10, 0)
		c.Shared.SpoolDir = dir
	})
	c := e.dial(t, e.mx)
	c.cmd("EHLO client.example.test", "250")
	c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
	c.cmd("RCPT TO:<"+alice+">", "250 ")
	c.cmd("DATA", "354 ")
	c.send("Subject: cut", "", strings.Repeat("x", 900), strings.Repeat(strings.Repeat("y", 900)+"\r\n", 200))
	deadline := time.Now().Add(10 * time.Second)
	for {
		names, _ := filepath.Glob(filepath.Join(dir, "spool-*.tmp"))
		if len(names) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no spool file")
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.conn.Close()
	deadline = time.Now().Add(10 * time.Second)
	for {
		names, _ := filepath.Glob(filepath.Join(dir, "spool-*.tmp"))
		if len(names) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("spool file left after the client went away: %v", names)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(e.inbox(t, alice)); n != 0 {
		t.Errorf("%d messages stored", n)
	}
}

// A message that would pass the spool files' disk bound gets a temporary
// failure, and the space comes back for the next one.
func TestSpoolDiskFull(t *testing.T) {
	dir := t.TempDir()
	mem := limits.NewBudget(64<<10, 200<<10)
	e := newTestEnv(t, func(c *Config) {
		c.Shared.Memory = mem
		c.Shared.SpoolDir = dir
	})
	send := func(lines int) string {
		c := e.dial(t, e.mx)
		c.cmd("EHLO client.example.test", "250")
		c.cmd("MAIL FROM:<s@elsewhere.test>", "250 ")
		c.cmd("RCPT TO:<"+alice+">", "250 ")
		c.cmd("DATA", "354 ")
		c.send("Subject: big", "", strings.Repeat(strings.Repeat("z", 998)+"\r\n", lines), ".")
		line, err := c.r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return line
	}
	if reply := send(300); !strings.HasPrefix(reply, "452 4.3.1 ") {
		t.Fatalf("300 KB message past a 200 KiB spool bound: %q, want 452 4.3.1", reply)
	}
	if mem.DiskUsed() != 0 {
		t.Fatalf("spool bytes still counted after the refusal: %d", mem.DiskUsed())
	}
	if reply := send(150); !strings.HasPrefix(reply, "250 ") {
		t.Fatalf("150 KB message within the bound: %q", reply)
	}
}
