package main

// DKIM keys of the local domains: made by `postern domain add` and, for
// domains without keys, by serve at start; `postern dkim list|rotate|
// export DOMAIN`.
//
// Rotation: `postern dkim rotate DOMAIN` adds a new Ed25519 and RSA pair
// that signs at once, beside the keys that signed until then, so that
// mail stays verifiable while the new TXT records (postern dns DOMAIN)
// reach the resolvers. The keys of earlier generations are retired by the
// next rotate (so at most two generations sign), or at once with -retire
// (after the new records are published). Keep a retired key's record
// published for a few days more: mail signed with it may still be in
// transit or be verified late.

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/smtpd/msgauth"
)

// ensureDKIMKeys makes keys for every local domain without active ones:
// an installation from before Postern signed mail, or a domain listed in
// the configuration.
func ensureDKIMKeys(ctx context.Context, st *mailstore.Store, log *slog.Logger, now time.Time) error {
	domains, err := st.Domains(ctx)
	if err != nil {
		return fmt.Errorf("dkim keys: %w", err)
	}
	for _, d := range domains {
		active, err := st.DKIMKeys(ctx, d, true)
		if err != nil {
			return fmt.Errorf("dkim keys: %w", err)
		}
		if len(active) > 0 {
			continue
		}
		keys, rows, err := newKeyRows(ctx, st, d, now)
		if err != nil {
			return fmt.Errorf("dkim keys of %s: %w", d, err)
		}
		// Another frontend of a shared store may have made the pair
		// meanwhile: then this one is dropped.
		added, err := st.AddDKIMKeysIfNone(ctx, d, rows...)
		if err != nil {
			return fmt.Errorf("dkim keys of %s: %w", d, err)
		}
		if !added {
			continue
		}
		for _, k := range keys {
			log.Info("dkim key generated; publish its record (postern dns)", "domain", d, "selector", k.Selector,
				"algorithm", k.Algorithm, "dns_name", k.DNSName())
		}
	}
	return nil
}

// addKeys generates a new pair of keys for domain and stores it. The
// selectors come from the date (msgauth.GenerateKeys); a second pair made
// the same day gets "-2", "-3"... before the algorithm letter, since a
// selector is never reused.
func addKeys(ctx context.Context, st *mailstore.Store, domain string, now time.Time) ([]msgauth.Key, error) {
	keys, rows, err := newKeyRows(ctx, st, domain, now)
	if err != nil {
		return nil, err
	}
	if err := st.AddDKIMKeys(ctx, rows...); err != nil {
		return nil, err
	}
	return keys, nil
}

// newKeyRows generates a new pair of keys for domain with selectors it
// has not used, as the store keeps them.
func newKeyRows(ctx context.Context, st *mailstore.Store, domain string, now time.Time) ([]msgauth.Key, []mailstore.DKIMKey, error) {
	keys, err := msgauth.GenerateKeys(domain, now)
	if err != nil {
		return nil, nil, err
	}
	old, err := st.DKIMKeys(ctx, domain, false)
	if err != nil {
		return nil, nil, err
	}
	taken := make(map[string]bool, len(old))
	for _, k := range old {
		taken[k.Selector] = true
	}
	rows := make([]mailstore.DKIMKey, len(keys))
	for i := range keys {
		k := &keys[i]
		base, letter := k.Selector[:len(k.Selector)-1], k.Selector[len(k.Selector)-1:]
		for n := 2; taken[k.Selector]; n++ {
			k.Selector = fmt.Sprintf("%s-%d%s", base, n, letter)
		}
		pem, err := k.MarshalPrivateKey()
		if err != nil {
			return nil, nil, err
		}
		rows[i] = mailstore.DKIMKey{Domain: k.Domain, Selector: k.Selector, Algorithm: string(k.Algorithm),
			PrivatePEM: pem, Created: k.Created}
	}
	return keys, rows, nil
}

func cmdDKIM(c *cli, args []string) int {
	return c.verbs("dkim", args, map[string]func(*cli, []string) int{
		"list": func(c *cli, args []string) int {
			return c.withStoreRead("dkim list", "[-config FILE] DOMAIN", args, exactly(1), func(st *mailstore.Store, args []string) error {
				return c.dkimList(st, args[0])
			})
		},
		"rotate": cmdDKIMRotate,
		"export": func(c *cli, args []string) int {
			return c.withStoreRead("dkim export", "[-config FILE] DOMAIN [SELECTOR]", args, count(func(n int) bool { return n == 1 || n == 2 }), func(st *mailstore.Store, args []string) error {
				return c.dkimExport(st, args)
			})
		},
	})
}

// dkimList prints one line per key, newest last: selector, algorithm,
// created, retired (or "active") and the name its TXT record goes at.
func (c *cli) dkimList(st *mailstore.Store, domain string) error {
	if err := localDomain(c.ctx, st, domain); err != nil {
		return err
	}
	keys, err := st.DKIMKeys(c.ctx, domain, false)
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		fmt.Fprintf(c.stderr, "postern: dkim list: %s has no keys yet: postern serve makes them at start, or run postern dkim rotate %s\n", domain, domain)
		return nil
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "SELECTOR\tALGORITHM\tCREATED\tRETIRED\tDNS NAME")
	for _, k := range keys {
		retired := "active"
		if !k.Retired.IsZero() {
			retired = k.Retired.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s._domainkey.%s\n", k.Selector, k.Algorithm,
			k.Created.UTC().Format(time.RFC3339), retired, k.Selector, k.Domain)
	}
	return tw.Flush()
}

func cmdDKIMRotate(c *cli, args []string) int {
	// -retire is a flag of its own, parsed before withStore's.
	fs := c.flagSet("dkim rotate", "[-config FILE] [-retire] DOMAIN")
	path := configFlag(fs)
	retireNow := fs.Bool("retire", false, "retire every older key now, not at the next rotate (publish the new records first)")
	if code, ok := c.parse(fs, args); !ok {
		return code
	}
	rest := fs.Args()
	if *path != "" {
		rest = append([]string{"-config", *path}, rest...)
	}
	return c.withStore("dkim rotate", "[-config FILE] [-retire] DOMAIN", rest, exactly(1), func(st *mailstore.Store, args []string) error {
		return c.dkimRotate(st, args[0], *retireNow, time.Now())
	})
}

// dkimRotate adds a new pair of keys and retires the older generations:
// with retireNow every key that signed before, else those older than the
// newest generation before this rotate.
func (c *cli) dkimRotate(st *mailstore.Store, domain string, retireNow bool, now time.Time) error {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	if err := localDomain(c.ctx, st, domain); err != nil {
		return err
	}
	active, err := st.DKIMKeys(c.ctx, domain, true)
	if err != nil {
		return err
	}
	// The newest generation: the latest created, and among keys made in
	// the same second the highest "-N" of their selectors.
	newest := generation{}
	for _, k := range active {
		if g := generationOf(k); newest.before(g) {
			newest = g
		}
	}
	keys, err := addKeys(c.ctx, st, domain, now)
	if err != nil {
		return err
	}
	for _, k := range keys {
		fmt.Fprintf(c.stdout, "added %s (%s): publish %s TXT \"%s\"\n", k.Selector, k.Algorithm, k.DNSName(), k.DNSRecord())
	}
	for _, k := range active {
		if !retireNow && !generationOf(k).before(newest) {
			fmt.Fprintf(c.stdout, "kept %s (%s): it signs too until the next rotate (or dkim rotate -retire)\n", k.Selector, k.Algorithm)
			continue
		}
		if err := st.RetireDKIMKey(c.ctx, domain, k.Selector, now); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "retired %s (%s): keep its record published for a few days\n", k.Selector, k.Algorithm)
	}
	return nil
}

// dkimExport prints the private key of a selector, or of every active key,
// as PEM: the one way Postern ever shows a private key.
func (c *cli) dkimExport(st *mailstore.Store, args []string) error {
	domain := args[0]
	if err := localDomain(c.ctx, st, domain); err != nil {
		return err
	}
	keys, err := st.DKIMKeys(c.ctx, domain, len(args) == 1)
	if err != nil {
		return err
	}
	found := false
	for _, k := range keys {
		if len(args) == 2 && k.Selector != args[1] {
			continue
		}
		found = true
		fmt.Fprintf(c.stdout, "# %s._domainkey.%s (%s)\n%s", k.Selector, k.Domain, k.Algorithm, k.PrivatePEM)
	}
	if !found {
		if len(args) == 2 {
			return fmt.Errorf("dkim key %s of %s: %w", args[1], domain, mailstore.ErrNotFound)
		}
		return fmt.Errorf("dkim keys of %s: none active", domain)
	}
	return nil
}

// localDomain fails unless domain is one of st's local domains.
func localDomain(ctx context.Context, st *mailstore.Store, domain string) error {
	local, err := st.IsLocalDomain(ctx, domain)
	if err != nil {
		return err
	}
	if !local {
		return fmt.Errorf("%s: %w", domain, mailstore.ErrNotLocal)
	}
	return nil
}

// generation orders key pairs: by creation time in seconds (the store's
// precision), then by the "-N" of selectors made the same day.
type generation struct {
	created int64
	n       int
}

func (g generation) before(h generation) bool {
	return g.created < h.created || g.created == h.created && g.n < h.n
}

func generationOf(k mailstore.DKIMKey) generation {
	g := generation{created: k.Created.Unix(), n: 1}
	if i := strings.LastIndexByte(k.Selector, '-'); i >= 0 && len(k.Selector) > i+2 {
		if n, err := strconv.Atoi(k.Selector[i+1 : len(k.Selector)-1]); err == nil {
			g.n = n
		}
	}
	return g
}
