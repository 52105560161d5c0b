package main

// The MTA-STS policy's max_age and portNumber, for the HTTP listener and
// `postern dns DOMAIN` (which `postern autoconfig DOMAIN` now runs).

import (
	"net"
	"strconv"
	"time"
)

// mtaSTSMaxAge is the max_age of the MTA-STS policy serve publishes.
const mtaSTSMaxAge = 7 * 24 * time.Hour

// portNumber is the port of HOST:PORT, 0 when there is none.
func portNumber(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}
