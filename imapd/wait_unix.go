//go:build unix

package imapd

import (
	"errors"
	"syscall"
)

// waitReadable blocks, until the connection's read deadline, until its
// socket has input (or its end, or an error) to read, without reading
// any: the Go poller wakes it, and no buffer is held meanwhile.
func waitReadable(rc syscall.RawConn) error {
	return rc.Read(func(fd uintptr) bool {
		// Peek, rather than trust the poller alone: the poller reports
		// edges, and input may already be waiting.
		var b [1]byte
		for {
			_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
			switch {
			case errors.Is(err, syscall.EINTR):
				continue
			case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EWOULDBLOCK):
				return false // nothing yet: wait for the poller
			}
			return true // input, end of stream, or an error the read will report
		}
	})
}
