package main

// The few lines of systemd's notification protocol (sd_notify(3)) that
// Type=notify needs: one datagram to the socket named by $NOTIFY_SOCKET.

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// sdNotify sends state (such as "READY=1") to systemd. Without
// $NOTIFY_SOCKET (not started by systemd, or not Type=notify) it does
// nothing. An abstract socket is written with a leading "@".
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if !strings.HasPrefix(path, "/") && !strings.HasPrefix(path, "@") {
		return fmt.Errorf("sd_notify: NOTIFY_SOCKET %q is not a socket path", path)
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify %s: %w", state, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify %s: %w", state, err)
	}
	return nil
}
