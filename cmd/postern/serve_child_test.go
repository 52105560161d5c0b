package main

// The harness for e2e tests and benchmarks that run `postern serve` in a
// child process (this test binary, re-executed through storetest), and the
// configuration they give it.

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore/storetest"
)

func TestMain(m *testing.M) {
	storetest.DispatchChild(map[string]storetest.ChildMain{"postern": childPostern})
	os.Exit(m.Run())
}

// childPostern runs postern with args in a re-executed test binary.
func childPostern(args []string) int { return run(args, os.Stdin, os.Stdout, os.Stderr) }

// child is a `postern serve` process started by a test or a benchmark.
type child struct {
	*storetest.Child
	config string
	addrs  map[string]string // service name -> address
	banner string            // what it printed up to its listeners
}

// serveStopGrace is how long stop waits for serve to end on SIGTERM.
const serveStopGrace = 40 * time.Second

// spawnServe starts `postern serve -config config` in a child process (this
// test binary, re-executed) and waits until it prints its listeners. The
// child's standard error is kept and shown if it fails to start.
func spawnServe(tb testing.TB, config string) *child {
	tb.Helper()
	c := &child{Child: storetest.StartChild(tb, "postern", "serve", "-config", config), config: config, addrs: map[string]string{}}
	tb.Cleanup(c.stop) // before StartChild's kill: serve ends gracefully
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(c.Stdout)
		var banner strings.Builder
		for sc.Scan() {
			banner.WriteString(sc.Text() + "\n")
			f := strings.Fields(sc.Text())
			if len(f) >= 2 && strings.HasPrefix(f[1], "127.0.0.1:") {
				c.addrs[f[0]] = f[1]
			}
			if strings.Contains(sc.Text(), "Add a user") {
				c.banner = banner.String()
				close(ready)
				break
			}
		}
		io.Copy(io.Discard, c.Stdout)
	}()
	select {
	case <-ready:
	case <-c.Done():
		tb.Fatalf("serve exited before printing its listeners: %v; stderr:\n%s", c.Wait(), c.Stderr())
	case <-time.After(30 * time.Second):
		tb.Fatalf("serve printed no listeners within 30s; stderr:\n%s", c.Stderr())
	}
	return c
}

// stop ends serve with SIGTERM, killing it after serveStopGrace.
func (c *child) stop() { c.Stop(serveStopGrace) }

// serveConfig is a configuration for `postern serve` in a test: every
// listener on 127.0.0.1 with a port the system chooses.
type serveConfig struct {
	hostname string   // "mail.example.test" when empty
	domain   string   // "example.test" when empty
	dataDir  string   // "data" beside the configuration file when empty
	listen   []string // the services that listen, of smtp, submission, pop3 and imap; all four when nil
	tls      bool     // submission, pop3 and imap listen with implicit TLS too
	smtp     string   // more keys of the [smtp] table
	dns      string   // the DNS server; when empty 127.0.0.1:1, where nothing answers
	store    string   // the [store] table's keys; when empty the SQLite store in data_dir
	extra    string   // more tables, appended as they are
}

// postgresStore is serveConfig.store for the PostgreSQL database dsn.
func postgresStore(dsn string) string { return "driver = \"postgres\"\ndsn = \"" + dsn + "\"\n" }

// write writes the configuration to postern.toml in a new temporary
// directory and returns its path.
func (c serveConfig) write(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	or := func(v, def string) string {
		if v == "" {
			return def
		}
		return v
	}
	listen := c.listen
	if listen == nil {
		listen = []string{"smtp", "submission", "pop3", "imap"}
	}
	var b strings.Builder
	b.WriteString("hostname = \"" + or(c.hostname, "mail.example.test") + "\"\n")
	b.WriteString("data_dir = \"" + or(c.dataDir, filepath.Join(dir, "data")) + "\"\n")
	b.WriteString("domains = [\"" + or(c.domain, "example.test") + "\"]\n")
	for _, service := range []string{"smtp", "submission", "pop3", "imap"} {
		addr := ""
		for _, l := range listen {
			if l == service {
				addr = "127.0.0.1:0"
			}
		}
		b.WriteString("[" + service + "]\nlisten = \"" + addr + "\"\n")
		if service == "smtp" {
			b.WriteString(c.smtp)
		} else if c.tls && addr != "" {
			b.WriteString("listen_tls = \"127.0.0.1:0\"\n")
		} else {
			b.WriteString("listen_tls = \"\"\n")
		}
	}
	b.WriteString("[dns]\nserver = \"" + or(c.dns, "127.0.0.1:1") + "\"\n")
	if c.store != "" {
		b.WriteString("[store]\n" + c.store)
	}
	b.WriteString(c.extra)
	config := filepath.Join(dir, "postern.toml")
	if err := os.WriteFile(config, []byte(b.String()), 0o600); err != nil {
		tb.Fatal(err)
	}
	return config
}
