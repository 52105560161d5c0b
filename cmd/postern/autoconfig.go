package main

// `postern autoconfig DOMAIN`: the DNS records that point mail clients and
// sending servers at this server's HTTP listener and mail services.

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/cmd/postern/console"
)

// mtaSTSMaxAge is the max_age of the MTA-STS policy serve publishes.
const mtaSTSMaxAge = 7 * 24 * time.Hour

func cmdAutoconfig(c *cli, args []string) int {
	const name = "autoconfig"
	fs := c.flagSet(name, "[-config FILE] DOMAIN")
	path := configFlag(fs)
	if code, ok := c.parse(fs, args); !ok {
		return code
	}
	if fs.NArg() != 1 {
		return c.usageError(fs, "want one DOMAIN")
	}
	domain := strings.ToLower(strings.TrimSuffix(fs.Arg(0), "."))
	if err := checkDNSName(domain); err != nil {
		return c.usageError(fs, "domain %q %v", domain, err)
	}
	file, _ := resolveConfig(*path)
	cfg, err := loadConfig(file)
	if err != nil {
		return c.fail(name, err)
	}
	// The services as configured: clients connect to the configured
	// ports (a port 0 is only for tests and is left out).
	var services []console.Service
	for _, l := range cfg.listeners() {
		port := portNumber(l.Addr)
		if port == 0 {
			continue
		}
		switch l.Proto {
		case "submission", "imap", "pop3":
			services = append(services, console.Service{Proto: l.Proto, Port: port})
		case "submissions", "imaps", "pop3s":
			services = append(services, console.Service{Proto: strings.TrimSuffix(l.Proto, "s"), Port: port, ImplicitTLS: true})
		}
	}
	httpsPort := portNumber(cfg.HTTP.ListenTLS)
	if cfg.HTTP.Listen == "" && cfg.HTTP.ListenTLS == "" {
		fmt.Fprintf(c.stderr, "postern: %s: note: http.listen and http.listen_tls are empty; the autoconfig and MTA-STS names need the HTTP listener\n", name)
	}
	policy := console.MTASTSPolicy(cfg.HTTP.MTASTSMode, cfg.Hostname, mtaSTSMaxAge)
	fmt.Fprint(c.stdout, console.Records(domain, cfg.Hostname, services, httpsPort, policy))
	return exitOK
}

// portNumber is the port of HOST:PORT, 0 when there is none.
func portNumber(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}
