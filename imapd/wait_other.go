//go:build !unix

package imapd

import "syscall"

// waitReadable returns at once where sockets cannot be polled without a
// read: the input buffer is taken back and the read itself waits.
func waitReadable(syscall.RawConn) error { return nil }
