package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/storetest"
)

// runCmd runs postern with args in-process and returns the exit code and
// what it wrote.
func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, strings.NewReader(""), &out, &errOut)
	return code, out.String(), errOut.String()
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCommandLine(t *testing.T) {
	good := writeFile(t, "good.toml", "hostname = \"mail.example.com\"\n")
	bad := writeFile(t, "bad.toml", "hostname = \"mail.example.com\"\n[smtp]\nmax_recipients = 10\n")
	unknown := writeFile(t, "unknown.toml", "hostname = \"mail.example.com\"\n[imap]\nlisten_ssl = \":993\"\n")

	tests := []struct {
		args       []string
		code       int
		stdout     string // must appear in stdout
		stderr     string // must appear in stderr
		noStdout   bool   // stdout must be empty
		noStderr   bool   // stderr must be empty
		wantUsage  bool   // the general usage text appears (stdout or stderr)
		usageOnOut bool
	}{
		{args: nil, code: exitUsage, wantUsage: true, noStdout: true},
		{args: []string{"help"}, code: exitOK, wantUsage: true, usageOnOut: true, noStderr: true},
		{args: []string{"-h"}, code: exitOK, wantUsage: true, usageOnOut: true},
		{args: []string{"frobnicate"}, code: exitUsage, stderr: `postern: unknown command "frobnicate"`, wantUsage: true},
		{args: []string{"version"}, code: exitOK, stdout: "postern dev (go", noStderr: true},
		{args: []string{"version", "extra"}, code: exitUsage, stderr: `postern: version: unexpected argument "extra"`},
		{args: []string{"config"}, code: exitUsage, stderr: "postern: config: missing verb"},
		{args: []string{"config", "lint"}, code: exitUsage, stderr: `postern: config: unknown verb "lint"`},
		{args: []string{"config", "check"}, code: exitUsage, stderr: "postern: config check: -config FILE is required"},
		{args: []string{"config", "check", "-nope"}, code: exitUsage, stderr: "flag provided but not defined: -nope"},
		{args: []string{"config", "check", "-h"}, code: exitOK, stderr: "usage: postern config check -config FILE"},
		{args: []string{"config", "check", "-config", good}, code: exitOK, stdout: good + ": ok\n", noStderr: true},
		{args: []string{"config", "check", "-config", good, "more"}, code: exitUsage, stderr: `unexpected argument "more"`},
		{args: []string{"config", "check", "-config", bad}, code: exitFailure, noStdout: true,
			stderr: "postern: config check: config: " + bad + `:3: key "smtp.max_recipients": must be at least 100 (RFC 5321 4.5.3.1.8)` + "\n"},
		{args: []string{"config", "check", "-config", unknown}, code: exitFailure,
			stderr: "config: " + unknown + `:3: unknown key "imap.listen_ssl"`},
		{args: []string{"config", "check", "-config", filepath.Join(t.TempDir(), "none.toml")}, code: exitFailure,
			stderr: "none.toml: no such file or directory"},
		{args: []string{"config", "check", "-config", exampleConfig}, code: exitOK, stdout: "postern.toml: ok"},
		{args: []string{"serve", "-config", bad}, code: exitFailure, stderr: `postern: serve: config: ` + bad + `:3: key "smtp.max_recipients"`},
		{args: []string{"serve", "now"}, code: exitUsage, stderr: `postern: serve: unexpected argument "now"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := runCmd(t, tt.args...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, stdout, stderr)
			}
			if !strings.Contains(stdout, tt.stdout) {
				t.Errorf("stdout %q does not contain %q", stdout, tt.stdout)
			}
			if !strings.Contains(stderr, tt.stderr) {
				t.Errorf("stderr %q does not contain %q", stderr, tt.stderr)
			}
			if tt.noStdout && stdout != "" {
				t.Errorf("unexpected stdout %q", stdout)
			}
			if tt.noStderr && stderr != "" {
				t.Errorf("unexpected stderr %q", stderr)
			}
			if tt.wantUsage {
				text := stderr
				if tt.usageOnOut {
					text = stdout
				}
				if !strings.Contains(text, "postern serve [-config FILE]") || !strings.Contains(text, "postern version") {
					t.Errorf("no usage text in %q", text)
				}
			}
		})
	}
}

// The usage text lists only commands that exist.
func TestUsageListsCommands(t *testing.T) {
	_, stdout, _ := runCmd(t, "help")
	for _, cmd := range commands() {
		if !strings.Contains(stdout, "postern "+cmd.name) {
			t.Errorf("usage does not mention %q", cmd.name)
		}
		if code, _, _ := runCmd(t, cmd.name, "-h"); code != exitOK {
			t.Errorf("%s -h: exit code %d", cmd.name, code)
		}
	}
}

func TestServe(t *testing.T) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	config := writeFile(t, "serve.toml", `hostname = "mail.test.example"
data_dir = "`+dataDir+`"
domains = ["test.example"]
[smtp]
listen = "127.0.0.1:0"
[submission]
listen = ""
listen_tls = "127.0.0.1:0"
[pop3]
listen = ""
listen_tls = ""
[imap]
listen = "127.0.0.1:0"
listen_tls = ""
[log]
format = "json"
level = "debug"
`)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr storetest.SyncBuffer
	exited := make(chan int, 1)
	go func() {
		exited <- runContext(ctx, []string{"serve", "-config", config}, strings.NewReader(""), &stdout, &stderr)
	}()

	// serve prints its listeners before it waits; then stop it.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stdout.String(), "imap") {
		select {
		case code := <-exited:
			t.Fatalf("serve exited early with %d\nstdout: %s\nstderr: %s", code, stdout.String(), stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve printed no listeners\nstdout: %s\nstderr: %s", stdout.String(), stderr.String())
		}
	}
	cancel()
	select {
	case code := <-exited:
		if code != exitOK {
			t.Errorf("serve exited with %d after cancel\nstderr: %s", code, stderr.String())
		}
	case <-time.After(shutdownGrace + shutdownMargin + 5*time.Second):
		t.Fatal("serve did not stop after cancel")
	}

	out := stdout.String()
	for _, want := range []string{"mail.test.example", config, dataDir, "smtp", "submissions", "imap"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout does not mention %q:\n%s", want, out)
		}
	}
	for _, absent := range []string{"pop3", "submission "} {
		if strings.Contains(out, absent) {
			t.Errorf("stdout mentions disabled listener %q:\n%s", absent, out)
		}
	}
	if !strings.Contains(stderr.String(), `"msg":"serving"`) {
		t.Errorf("stderr has no JSON log line: %s", stderr.String())
	}
	fi, err := os.Stat(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); !fi.IsDir() || perm != dataDirPerm {
		t.Errorf("data directory mode %v, want a directory with %o", fi.Mode(), dataDirPerm)
	}
	if _, err := os.Stat(filepath.Join(dataDir, storeFile)); err != nil {
		t.Errorf("no mailstore: %v", err)
	}
}

// serve refuses a data directory whose database is not Postern's, and
// leaves the file alone.
func TestServeForeignDatabase(t *testing.T) {
	dataDir := t.TempDir()
	db := filepath.Join(dataDir, storeFile)
	if err := os.WriteFile(db, []byte("not a database, just some text"), 0o600); err != nil {
		t.Fatal(err)
	}
	config := writeFile(t, "serve.toml", "hostname = \"mail.test.example\"\ndata_dir = \""+dataDir+"\"\n"+
		"smtp.listen = \"\"\nsubmission = { listen = \"\", listen_tls = \"\" }\n"+
		"pop3 = { listen = \"\", listen_tls = \"\" }\nimap = { listen = \"\", listen_tls = \"\" }\n")
	code, stdout, stderr := runCmd(t, "serve", "-config", config)
	if code != exitFailure || !strings.HasPrefix(stderr, "postern: serve: ") || !strings.Contains(stderr, db) {
		t.Errorf("exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	if got, _ := os.ReadFile(db); string(got) != "not a database, just some text" {
		t.Errorf("the foreign file was changed: %q", got)
	}
}

// fakeServer returns err from Serve at once, or waits for ctx when block is set.
type fakeServer struct {
	block bool
	err   error
	done  chan struct{}
}

func (f *fakeServer) Serve(ctx context.Context) error {
	defer close(f.done)
	if f.block {
		<-ctx.Done()
		return nil
	}
	return f.err
}

func TestRunServers(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	t.Run("stop on cancel", func(t *testing.T) {
		a := &fakeServer{block: true, done: make(chan struct{})}
		b := &fakeServer{block: true, done: make(chan struct{})}
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			time.Sleep(10 * time.Millisecond)
			cancel()
		}()
		if err := runServers(ctx, log, []namedServer{{name: "a", srv: a}, {name: "b", srv: b}}); err != nil {
			t.Errorf("runServers: %v", err)
		}
		<-a.done
		<-b.done
	})

	t.Run("one fails", func(t *testing.T) {
		boom := errors.New("boom")
		a := &fakeServer{block: true, done: make(chan struct{})}
		b := &fakeServer{err: boom, done: make(chan struct{})}
		err := runServers(context.Background(), log, []namedServer{{name: "a", srv: a}, {name: "b", srv: b}})
		if !errors.Is(err, boom) || !strings.Contains(err.Error(), "b: boom") {
			t.Errorf("runServers: %v, want b: boom", err)
		}
		<-a.done // the other one was stopped
	})

	t.Run("one returns early", func(t *testing.T) {
		b := &fakeServer{done: make(chan struct{})}
		err := runServers(context.Background(), log, []namedServer{{name: "b", srv: b}})
		if err == nil || !strings.Contains(err.Error(), "b: stopped unexpectedly") {
			t.Errorf("runServers: %v", err)
		}
	})
}

func TestNewLogger(t *testing.T) {
	var buf bytes.Buffer
	l, err := newLogger(LogConfig{Level: "warn", Format: "json"}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	l.Info("hidden")
	l.Warn("shown", "k", "v")
	if got := buf.String(); strings.Contains(got, "hidden") || !strings.Contains(got, `"msg":"shown","k":"v"`) {
		t.Errorf("log output %q", got)
	}
	if _, err := newLogger(LogConfig{Level: "info", Format: "xml"}, &buf); err == nil {
		t.Error("format xml accepted")
	}
}

// imapLogin connects to the IMAP listener addr without TLS and logs in;
// the caller closes the client.
func imapLogin(t *testing.T, addr, user, password string, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, opts)
	if err != nil {
		t.Fatalf("IMAP %s: %v", addr, err)
	}
	if err := c.Login(user, password).Wait(); err != nil {
		c.Close()
		t.Fatalf("IMAP login of %s at %s: %v", user, addr, err)
	}
	return c
}

// inboxMessages lists the messages in user's INBOX in st.
func inboxMessages(t *testing.T, st *mailstore.Store, user string) []mailstore.Message {
	t.Helper()
	ctx := context.Background()
	u, err := st.UserByAddress(ctx, user)
	if err != nil {
		t.Fatalf("user %s: %v", user, err)
	}
	in, err := st.MailboxByName(ctx, u.ID, "INBOX")
	if err != nil {
		t.Fatalf("INBOX of %s: %v", user, err)
	}
	msgs, err := st.Messages(ctx, in.ID, nil)
	if err != nil {
		t.Fatalf("messages in the INBOX of %s: %v", user, err)
	}
	return msgs
}
