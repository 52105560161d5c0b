package storetest

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// EnvChildRole and EnvChildArgs make a re-executed test binary play a child
// role instead of running tests: the role's name, and its arguments joined
// by tabs.
const (
	EnvChildRole = "POSTERN_TEST_CHILD"
	EnvChildArgs = "POSTERN_TEST_CHILD_ARGS"
)

// ChildMain is what a re-executed test binary runs for one role: it gets the
// arguments StartChild was given and returns the process's exit code.
type ChildMain func(args []string) int

// DispatchChild is called first in a package's TestMain. When the
// environment names one of roles (this process was started by StartChild),
// it runs that role and exits with its code; otherwise it returns and
// TestMain runs the tests. An unknown role exits with code 2.
func DispatchChild(roles map[string]ChildMain) {
	role := os.Getenv(EnvChildRole)
	if role == "" {
		return
	}
	main, ok := roles[role]
	if !ok {
		fmt.Fprintf(os.Stderr, "storetest: unknown child role %q\n", role)
		os.Exit(2)
	}
	var args []string
	if a := os.Getenv(EnvChildArgs); a != "" {
		args = strings.Split(a, "\t")
	}
	os.Exit(main(args))
}

// Child is this test binary re-executed in a child process to play one
// role (see DispatchChild), so that a test can kill it at any moment or
// measure it alone.
type Child struct {
	Cmd    *exec.Cmd
	Stdout io.Reader // the child's standard output, to be read by the test; EOF once it exits
	stderr *SyncBuffer
	role   string
	done   chan struct{}
	err    error
}

// StartChild starts the test binary as a child playing role with args (no
// arg may hold a tab). Its standard error is kept (Stderr) and logged if
// the test fails; at Cleanup a child still running is killed and waited
// for.
func StartChild(tb testing.TB, role string, args ...string) *Child {
	tb.Helper()
	for _, a := range args {
		if strings.Contains(a, "\t") {
			tb.Fatalf("storetest: child %s: argument %q holds a tab", role, a)
		}
	}
	// -test.run=^$: should the package's TestMain not dispatch, the child
	// runs no tests instead of starting itself again.
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), EnvChildRole+"="+role, EnvChildArgs+"="+strings.Join(args, "\t"))
	// An os.Pipe, not cmd.StdoutPipe: Wait closes the latter as soon as
	// the process exits, losing what the test has not read yet, such as
	// the last lines a killed child wrote.
	r, w, err := os.Pipe()
	if err != nil {
		tb.Fatalf("storetest: child %s: stdout pipe: %v", role, err)
	}
	cmd.Stdout = w
	c := &Child{Cmd: cmd, Stdout: r, stderr: &SyncBuffer{}, role: role, done: make(chan struct{})}
	cmd.Stderr = c.stderr
	err = cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		tb.Fatalf("storetest: start child %s: %v", role, err)
	}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	tb.Cleanup(func() {
		c.Kill()
		r.Close()
		if tb.Failed() {
			tb.Logf("child %s (pid %d) standard error:\n%s", role, cmd.Process.Pid, c.Stderr())
		}
	})
	return c
}

// Pid is the child's process id.
func (c *Child) Pid() int { return c.Cmd.Process.Pid }

// Stderr is what the child has written to its standard error so far.
func (c *Child) Stderr() string { return c.stderr.String() }

// Done is closed once the child has exited.
func (c *Child) Done() <-chan struct{} { return c.done }

// Kill sends SIGKILL (the child gets no chance to clean up) and waits for
// it to exit. Killing an exited child does nothing.
func (c *Child) Kill() error {
	select {
	case <-c.done:
		return nil
	default:
	}
	if err := c.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		select {
		case <-c.done: // it exited meanwhile
			return nil
		default:
			return fmt.Errorf("kill child %s (pid %d): %w", c.role, c.Pid(), err)
		}
	}
	<-c.done
	return nil
}

// Stop sends SIGTERM and waits up to grace for the child to exit, then
// kills it. It reports whether the child exited on its own.
func (c *Child) Stop(grace time.Duration) bool {
	select {
	case <-c.done:
		return true
	default:
	}
	_ = c.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return true
	case <-time.After(grace):
		c.Kill()
		return false
	}
}

// Wait waits for the child to exit and returns what exec.Cmd.Wait did.
func (c *Child) Wait() error {
	<-c.done
	return c.err
}
