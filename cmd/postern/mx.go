package main

// `postern mx`: where mail for a domain goes, as the relay sees it.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/postern/postern/smtpd/relay"
)

// mxTimeout bounds the lookups of `postern mx`: a few DNS queries, each
// allowed the resolver's own timeout.
const mxTimeout = 30 * time.Second

// errNXDomain is the failure of `postern mx` for a domain that does not exist.
var errNXDomain = errors.New("NXDOMAIN: no such domain")

func cmdMX(c *cli, args []string) int {
	const name = "mx"
	fs := c.flagSet(name, "[-dns HOST:PORT] DOMAIN")
	server := fs.String("dns", "", "ask the DNS server at `HOST:PORT` (default: the system resolver in /etc/resolv.conf)")
	if code, ok := c.parse(fs, args); !ok {
		return code
	}
	if fs.NArg() != 1 {
		return c.usageError(fs, "wrong number of arguments")
	}
	if *server != "" {
		if _, _, err := net.SplitHostPort(*server); err != nil {
			return c.usageError(fs, "-dns %q: want HOST:PORT", *server)
		}
	}
	r, err := relay.ResolverFor(*server)
	if err != nil {
		return c.fail(name, err)
	}
	ctx, cancel := context.WithTimeout(c.ctx, mxTimeout)
	defer cancel()
	res, err := relay.LookupMX(ctx, r, fs.Arg(0))
	if err != nil {
		return c.fail(name, err)
	}
	if err := printMX(c.stdout, *server, res); err != nil {
		return c.fail(name, err)
	}
	return exitOK
}

// printMX writes a lookup in the manner of `nslookup -type=MX`: the MX
// records in the order the relay tries them (equal preferences shuffled),
// then each host's addresses.
func printMX(w io.Writer, server string, res relay.MXResult) error {
	if server == "" {
		server = "system resolver (/etc/resolv.conf)"
	}
	fmt.Fprintf(w, "Server:\t\t%s\n\n", server)
	domain := res.Domain
	switch {
	case res.NXDomain:
		return fmt.Errorf("%s: %w", domain, errNXDomain)
	case res.NullMX:
		fmt.Fprintf(w, "%s\tmail exchanger = 0 .\n\n", domain)
		fmt.Fprintf(w, "%s accepts no mail (null MX, RFC 7505)\n", domain)
		return nil
	case res.Implicit:
		fmt.Fprintf(w, "%s has no MX records: mail goes to the domain's own addresses (implicit MX, RFC 5321 5.1)\n\n", domain)
	default:
		tw := tabwriter.NewWriter(w, 0, 8, 1, '\t', 0)
		for _, h := range res.Hosts {
			fmt.Fprintf(tw, "%s\tmail exchanger = %d %s.\n", domain, h.Preference, h.Host)
		}
		tw.Flush()
		fmt.Fprintln(w)
	}
	tw := tabwriter.NewWriter(w, 0, 8, 1, '\t', 0)
	for _, h := range res.Hosts {
		if h.Err != nil {
			fmt.Fprintf(tw, "%s\tno address: %s\n", h.Host, strings.Join(strings.Fields(h.Err.Error()), " "))
			continue
		}
		for _, a := range h.Addrs {
			if a.Is4() {
				fmt.Fprintf(tw, "%s\tinternet address = %s\n", h.Host, a)
			} else {
				fmt.Fprintf(tw, "%s\thas AAAA address %s\n", h.Host, a)
			}
		}
	}
	return tw.Flush()
}
