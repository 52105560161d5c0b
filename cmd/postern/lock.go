package main

// The data directory lock: serve holds it while it runs, so that restore
// (and a second serve) can tell that the store is in use.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockFile is the lock's name inside data_dir. It holds the process ID of
// its holder, for messages only: the lock itself is flock(2), which the
// kernel drops when the process ends, however it ends.
const lockFile = "postern.lock"

// errStoreInUse: another process holds the data directory lock.
var errStoreInUse = errors.New("the mailstore is in use by a running postern serve")

// lockDataDir takes the lock of dir without waiting. It fails with
// errStoreInUse, naming the holder's process ID, when another process
// has it. unlock releases it.
func lockDataDir(dir string) (unlock func(), err error) {
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock data directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			holder := "another process"
			if b, rerr := os.ReadFile(path); rerr == nil {
				if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
					holder = fmt.Sprintf("process %d", pid)
				}
			}
			return nil, fmt.Errorf("%w (%s holds %s)", errStoreInUse, holder, path)
		}
		return nil, fmt.Errorf("lock data directory %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() {
		// The file stays: removing it would race with a process that
		// has just opened it and is about to lock it.
		f.Truncate(0)
		f.Close()
	}, nil
}
