package storetest

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

func TestMain(m *testing.M) {
	DispatchChild(map[string]ChildMain{
		"echo": func(args []string) int {
			for _, a := range args {
				fmt.Println(a)
			}
			fmt.Fprintln(os.Stderr, "echo to stderr")
			return 7
		},
		"hang": func(args []string) int {
			if len(args) == 1 && args[0] == "term" {
				ch := make(chan os.Signal, 1)
				signal.Notify(ch, syscall.SIGTERM)
				fmt.Println("ready")
				<-ch
				return 0
			}
			signal.Ignore(syscall.SIGTERM)
			fmt.Println("ready")
			time.Sleep(time.Minute)
			return 5
		},
	})
	os.Exit(m.Run())
}

// The child plays the role named, gets its arguments in order, and its
// output, standard error and exit code reach the test.
func TestChildRunsRole(t *testing.T) {
	c := StartChild(t, "echo", "one", "two words", "")
	var lines []string
	sc := bufio.NewScanner(c.Stdout)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if got := strings.Join(lines, "|"); got != "one|two words|" {
		t.Errorf("child printed %q, want the three arguments", got)
	}
	var exit *exec.ExitError
	if err := c.Wait(); !errors.As(err, &exit) || exit.ExitCode() != 7 {
		t.Errorf("child exit: %v, want code 7", err)
	}
	if got := c.Stderr(); got != "echo to stderr\n" {
		t.Errorf("child stderr %q", got)
	}
}

// Kill ends a child that ignores SIGTERM; Stop asks first and kills after
// the grace period; a child that ends on SIGTERM stops on its own.
func TestChildKillAndStop(t *testing.T) {
	ready := func(c *Child) {
		t.Helper()
		line, err := bufio.NewReader(c.Stdout).ReadString('\n')
		if line != "ready\n" {
			t.Fatalf("child: %q %v", line, err)
		}
	}
	c := StartChild(t, "hang")
	ready(c)
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	var exit *exec.ExitError
	if err := c.Wait(); !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("after Kill: %v, want killed by SIGKILL", err)
	}
	if err := c.Kill(); err != nil {
		t.Errorf("Kill of an exited child: %v", err)
	}

	c = StartChild(t, "hang")
	ready(c)
	if c.Stop(100 * time.Millisecond) {
		t.Error("Stop reports a child that ignores SIGTERM as ending on its own")
	}

	c = StartChild(t, "hang", "term")
	ready(c)
	if !c.Stop(30 * time.Second) {
		t.Error("a child that ends on SIGTERM was killed")
	}
	if err := c.Wait(); err != nil {
		t.Errorf("after Stop: %v, want exit 0", err)
	}
}

// What the child wrote before it was killed is still there to read.
func TestChildOutputSurvivesKill(t *testing.T) {
	c := StartChild(t, "echo", strings.Split(strings.Repeat("line ", 2000), " ")...)
	<-c.Done()
	n := 0
	sc := bufio.NewScanner(c.Stdout)
	for sc.Scan() {
		n++
	}
	if n != 2001 {
		t.Errorf("read %d lines after the child exited, want 2001", n)
	}
}

// A tab cannot pass as an argument.
func TestChildRejectsTab(t *testing.T) {
	f := &fakeTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		StartChild(f, "echo", "a\tb")
	}()
	<-done
	if !f.failed {
		t.Error("an argument with a tab was accepted")
	}
}

func TestSyncBufferConcurrent(t *testing.T) {
	var b SyncBuffer
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				b.Write([]byte("x"))
				_ = b.String()
			}
		}()
	}
	wg.Wait()
	if n := len(b.String()); n != 800 {
		t.Errorf("%d bytes, want 800", n)
	}
}

// A client trusting the certificate completes a handshake for each of its
// names, IP address or DNS name, and not for another.
func TestSelfSigned(t *testing.T) {
	c := SelfSigned(t, "mail.example.test", "127.0.0.1")
	if c.Leaf().Subject.CommonName != "mail.example.test" || len(c.Leaf().IPAddresses) != 1 || len(c.Leaf().DNSNames) != 1 {
		t.Fatalf("certificate names: %s %v %v", c.Leaf().Subject.CommonName, c.Leaf().DNSNames, c.Leaf().IPAddresses)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", c.Server())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.(*tls.Conn).Handshake()
			conn.Close()
		}
	}()
	for name, ok := range map[string]bool{"mail.example.test": true, "127.0.0.1": true, "other.example.test": false} {
		conn, err := tls.Dial("tcp", ln.Addr().String(), c.Client(name))
		if err == nil {
			conn.Close()
		}
		if (err == nil) != ok {
			t.Errorf("handshake for %s: %v, want success %v", name, err, ok)
		}
	}
	b, err := os.ReadFile(c.WritePEM(t))
	if err != nil || !strings.HasPrefix(string(b), "-----BEGIN CERTIFICATE-----") {
		t.Errorf("PEM file: %.40q %v", b, err)
	}
}

// IMAPUpdates records what the handler is given, wakes WaitFor, and
// WaitFor fails the test when the condition never holds.
func TestIMAPUpdates(t *testing.T) {
	u := NewIMAPUpdates()
	h := u.Handler()
	go func() {
		for i := uint32(1); i <= 50; i++ {
			h.Expunge(i)
		}
		n := uint32(7)
		h.Mailbox(&imapclient.UnilateralDataMailbox{NumMessages: &n, Flags: []imap.Flag{"NewKeyword"}})
	}()
	u.WaitFor(t, "EXISTS 7", 10*time.Second, func(u *IMAPUpdates) bool { return slices.Contains(u.Exists, 7) })
	u.Mu.Lock()
	if len(u.Expunges) != 50 || len(u.MailboxFlags) != 1 || u.MailboxFlags[0][0] != "NewKeyword" {
		t.Errorf("recorded expunges %v, flags %v", u.Expunges, u.MailboxFlags)
	}
	u.Mu.Unlock()

	f := &fakeTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		u.WaitFor(f, "EXISTS 8", 50*time.Millisecond, func(u *IMAPUpdates) bool { return slices.Contains(u.Exists, 8) })
	}()
	<-done
	if !f.failed {
		t.Error("WaitFor returned for a condition that never held")
	}
}
