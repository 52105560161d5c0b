package main

// The store-backed administration commands: user, domain, alias, mailbox.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"golang.org/x/term"

	"github.com/postern/postern/mailstore"
)

// maxPasswordLine bounds a password read from standard input.
const maxPasswordLine = 4096

// withStore parses the -config flag and positional arguments of a
// store-backed command that writes, opens the store (creating it, and
// saying so on stderr, if there is none) and runs fn with it. valid checks
// the positional arguments before anything is opened: its error is a
// usage error (exit 2).
func (c *cli) withStore(name, synopsis string, args []string, valid argCheck,
	fn func(st *mailstore.Store, args []string) error) int {
	return c.storeCommand(name, synopsis, args, valid, false, fn)
}

// withStoreRead is withStore for a command that only reads: it never
// creates a store. Without one it fails, naming the path it looked at
// and how to point it at the server's configuration.
func (c *cli) withStoreRead(name, synopsis string, args []string, valid argCheck,
	fn func(st *mailstore.Store, args []string) error) int {
	return c.storeCommand(name, synopsis, args, valid, true, fn)
}

func (c *cli) storeCommand(name, synopsis string, args []string, valid argCheck, readOnly bool,
	fn func(st *mailstore.Store, args []string) error) int {
	fs := c.flagSet(name, synopsis)
	path := configFlag(fs)
	if code, ok := c.parse(fs, args); !ok {
		return code
	}
	if err := valid(fs.Args()); err != nil {
		return c.usageError(fs, "%v", err)
	}
	file, from := resolveConfig(*path)
	cfg, err := loadConfig(file)
	if err != nil {
		return c.fail(name, err)
	}
	db, exists, err := storeExists(cfg)
	switch {
	case err != nil:
		return c.fail(name, err)
	case !exists && readOnly:
		return c.fail(name, fmt.Errorf("no mailstore at %s (data_dir of %s); point to the server's configuration with -config FILE or %s=FILE",
			db, from, configEnv))
	}
	st, err := openStore(cfg)
	if err != nil {
		return c.fail(name, err)
	}
	c.cfg = cfg
	if !exists {
		fmt.Fprintf(c.stderr, "postern: %s: created a new mailstore at %s (data_dir of %s)\n", name, db, from)
	}
	err = fn(st, fs.Args())
	if cerr := st.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close mailstore: %w", cerr)
	}
	if err != nil {
		return c.fail(name, err)
	}
	return exitOK
}

// argCheck checks a command's positional arguments.
type argCheck func(args []string) error

var errArgCount = errors.New("wrong number of arguments")

func count(ok func(int) bool) argCheck {
	return func(args []string) error {
		if !ok(len(args)) {
			return errArgCount
		}
		return nil
	}
}

func exactly(n int) argCheck { return count(func(got int) bool { return got == n }) }
func atLeast(n int) argCheck { return count(func(got int) bool { return got >= n }) }
func upTo(n int) argCheck    { return count(func(got int) bool { return got <= n }) }

// readPassword reads a new password: prompted twice without echo on a
// terminal, else the first line of standard input. It must have at least
// auth.min_password_length characters.
func (c *cli) readPassword(address string) (string, error) {
	pw, err := c.readPasswordText(address)
	if err != nil {
		return "", err
	}
	minLen := defaultMinPasswordLength
	if c.cfg != nil {
		minLen = c.cfg.Auth.MinPasswordLength
	}
	if n := utf8.RuneCountInString(pw); n < minLen {
		return "", fmt.Errorf("the password has %d characters; it needs at least %d (auth.min_password_length)", n, minLen)
	}
	return pw, nil
}

func (c *cli) readPasswordText(address string) (string, error) {
	if f, ok := c.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprintf(c.stderr, "Password for %s: ", address)
		p1, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(c.stderr)
		if err != nil {
			return "", fmt.Errorf("read password: %w", err)
		}
		fmt.Fprint(c.stderr, "Again: ")
		p2, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(c.stderr)
		if err != nil {
			return "", fmt.Errorf("read password: %w", err)
		}
		if string(p1) != string(p2) {
			return "", errors.New("the passwords differ")
		}
		if len(p1) == 0 {
			return "", errors.New("empty password")
		}
		return string(p1), nil
	}
	r := bufio.NewReaderSize(io.LimitReader(c.stdin, maxPasswordLine+1), maxPasswordLine+1)
	line, err := r.ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read password from standard input: %w", err)
	}
	if len(line) > maxPasswordLine {
		return "", fmt.Errorf("password on standard input is longer than %d bytes", maxPasswordLine)
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("no password on standard input")
	}
	return line, nil
}

func cmdUser(c *cli, args []string) int {
	return c.verbs("user", args, map[string]func(*cli, []string) int{
		"add":     cmdUserAdd,
		"passwd":  cmdUserPasswd,
		"del":     cmdUserDel,
		"list":    cmdUserList,
		"quota":   cmdUserQuota,
		"disable": func(c *cli, args []string) int { return cmdUserDisable(c, args, true) },
		"enable":  func(c *cli, args []string) int { return cmdUserDisable(c, args, false) },
		"admin":   cmdUserAdmin,
	})
}

func cmdUserAdd(c *cli, args []string) int {
	return c.withStore("user add", "[-config FILE] ADDRESS", args, exactly(1), func(st *mailstore.Store, args []string) error {
		// Refuse what AddUser would refuse before asking for a password.
		if u, err := st.UserByAddress(c.ctx, args[0]); err == nil {
			return fmt.Errorf("add user %s: %w", u.Address, mailstore.ErrExists)
		}
		if at := strings.LastIndexByte(args[0], '@'); at >= 0 {
			if local, err := st.IsLocalDomain(c.ctx, args[0][at+1:]); err == nil && !local {
				return fmt.Errorf("add user %s: %w (add the domain to domains in the configuration, or run postern domain add)", args[0], mailstore.ErrNotLocal)
			}
		}
		pw, err := c.readPassword(args[0])
		if err != nil {
			return err
		}
		u, err := st.AddUser(c.ctx, args[0], pw)
		if errors.Is(err, mailstore.ErrNotLocal) {
			return fmt.Errorf("%w (add the domain to domains in the configuration, or run postern domain add)", err)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "added %s\n", u.Address)
		return nil
	})
}

func cmdUserPasswd(c *cli, args []string) int {
	return c.withStore("user passwd", "[-config FILE] ADDRESS", args, exactly(1), func(st *mailstore.Store, args []string) error {
		if _, err := st.UserByAddress(c.ctx, args[0]); err != nil {
			return err
		}
		pw, err := c.readPassword(args[0])
		if err != nil {
			return err
		}
		if err := st.SetPassword(c.ctx, args[0], pw); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "password of %s changed\n", args[0])
		return nil
	})
}

func cmdUserDel(c *cli, args []string) int {
	return c.withStore("user del", "[-config FILE] ADDRESS", args, exactly(1), func(st *mailstore.Store, args []string) error {
		if err := st.DeleteUser(c.ctx, args[0]); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "deleted %s and all its mail\n", args[0])
		return nil
	})
}

func cmdUserList(c *cli, args []string) int {
	return c.withStoreRead("user list", "[-config FILE]", args, exactly(0), func(st *mailstore.Store, _ []string) error {
		users, err := st.Users(c.ctx)
		if err != nil {
			return err
		}
		for _, u := range users {
			var notes []string
			if u.Disabled {
				notes = append(notes, "disabled")
			}
			if u.Admin {
				notes = append(notes, "admin")
			}
			if u.QuotaBytes > 0 {
				notes = append(notes, fmt.Sprintf("quota %d bytes", u.QuotaBytes))
			}
			fmt.Fprintln(c.stdout, strings.TrimSpace(u.Address+" "+strings.Join(notes, " ")))
		}
		return nil
	})
}

func cmdDomain(c *cli, args []string) int {
	return c.verbs("domain", args, map[string]func(*cli, []string) int{
		"add": func(c *cli, args []string) int {
			return c.withStore("domain add", "[-config FILE] DOMAIN", args, exactly(1), func(st *mailstore.Store, args []string) error {
				if err := st.AddDomain(c.ctx, args[0]); err != nil {
					return err
				}
				fmt.Fprintf(c.stdout, "added %s\n", strings.ToLower(args[0]))
				// The domain signs its mail from the start; its
				// records are in postern dns DOMAIN.
				keys, err := addKeys(c.ctx, st, args[0], time.Now())
				if err != nil {
					return err
				}
				for _, k := range keys {
					fmt.Fprintf(c.stdout, "dkim key %s (%s): publish %s TXT (see postern dns %s)\n",
						k.Selector, k.Algorithm, k.DNSName(), k.Domain)
				}
				return nil
			})
		},
		"del": func(c *cli, args []string) int {
			return c.withStore("domain del", "[-config FILE] DOMAIN", args, exactly(1), func(st *mailstore.Store, args []string) error {
				if err := st.DeleteDomain(c.ctx, args[0]); err != nil {
					return err
				}
				fmt.Fprintf(c.stdout, "deleted %s\n", strings.ToLower(args[0]))
				return nil
			})
		},
		"list": func(c *cli, args []string) int {
			return c.withStoreRead("domain list", "[-config FILE]", args, exactly(0), func(st *mailstore.Store, _ []string) error {
				domains, err := st.Domains(c.ctx)
				for _, d := range domains {
					fmt.Fprintln(c.stdout, d)
				}
				return err
			})
		},
	})
}

func cmdAlias(c *cli, args []string) int {
	return c.verbs("alias", args, map[string]func(*cli, []string) int{
		"add": func(c *cli, args []string) int {
			return c.withStore("alias add", "[-config FILE] ALIAS ADDRESS...", args, atLeast(2), func(st *mailstore.Store, args []string) error {
				if err := st.AddAlias(c.ctx, args[0], args[1:]...); err != nil {
					return err
				}
				fmt.Fprintf(c.stdout, "%s -> %s\n", strings.ToLower(args[0]), strings.ToLower(strings.Join(args[1:], ", ")))
				return nil
			})
		},
		"del": func(c *cli, args []string) int {
			return c.withStore("alias del", "[-config FILE] ALIAS [ADDRESS...]", args, atLeast(1), func(st *mailstore.Store, args []string) error {
				if err := st.DeleteAlias(c.ctx, args[0], args[1:]...); err != nil {
					return err
				}
				fmt.Fprintf(c.stdout, "deleted %s\n", strings.ToLower(strings.Join(args, " ")))
				return nil
			})
		},
		"list": func(c *cli, args []string) int {
			return c.withStoreRead("alias list", "[-config FILE] [ALIAS]", args, upTo(1), func(st *mailstore.Store, args []string) error {
				aliases, err := st.Aliases(c.ctx)
				if err != nil {
					return err
				}
				for _, a := range aliases {
					if len(args) == 1 && !strings.EqualFold(a.Address, args[0]) {
						continue
					}
					fmt.Fprintf(c.stdout, "%s -> %s\n", a.Address, strings.Join(a.Targets, ", "))
				}
				return nil
			})
		},
	})
}

func cmdMailbox(c *cli, args []string) int {
	return c.verbs("mailbox", args, map[string]func(*cli, []string) int{
		"list": func(c *cli, args []string) int {
			return c.withStoreRead("mailbox list", "[-config FILE] ADDRESS", args, exactly(1), func(st *mailstore.Store, args []string) error {
				u, err := st.UserByAddress(c.ctx, args[0])
				if err != nil {
					return err
				}
				boxes, err := st.Mailboxes(c.ctx, u.ID)
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(c.stdout, 0, 8, 2, ' ', 0)
				fmt.Fprintln(tw, "MAILBOX\tMESSAGES\tUNSEEN")
				for _, mb := range boxes {
					if mb.NoSelect {
						fmt.Fprintf(tw, "%s\t-\t-\n", mb.Name)
						continue
					}
					status, err := st.Status(c.ctx, mb.ID)
					if err != nil {
						return err
					}
					fmt.Fprintf(tw, "%s\t%d\t%d\n", mb.Name, status.Messages, status.Unseen)
				}
				return tw.Flush()
			})
		},
	})
}

// parseSize reads a quota: "none" or 0 for none, else bytes with an
// optional K, M, G or T suffix (powers of 1024; a trailing B or iB is
// allowed: 500M, 500MB, 500MiB).
func parseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	if t == "NONE" {
		return 0, nil
	}
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := int64(1)
	if n := len(t); n > 0 {
		if i := strings.IndexByte("KMGT", t[n-1]); i >= 0 {
			mult = int64(1) << (10 * (i + 1))
			t = t[:n-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a number of bytes, optionally with K, M, G or T (such as 500M or 2G), or none", s)
	}
	return n * mult, nil
}

func cmdUserQuota(c *cli, args []string) int {
	valid := func(args []string) error {
		if len(args) != 2 {
			return errArgCount
		}
		_, err := parseSize(args[1])
		return err
	}
	return c.withStore("user quota", "[-config FILE] ADDRESS SIZE|none", args, valid, func(st *mailstore.Store, args []string) error {
		size, _ := parseSize(args[1])
		if err := st.SetQuota(c.ctx, args[0], size); err != nil {
			return err
		}
		if size == 0 {
			fmt.Fprintf(c.stdout, "%s has no quota\n", args[0])
			return nil
		}
		fmt.Fprintf(c.stdout, "quota of %s is %d bytes\n", args[0], size)
		return nil
	})
}

// cmdUserDisable disables (or enables) a user: a disabled user can neither
// log in nor receive mail; the mail is kept.
func cmdUserDisable(c *cli, args []string, disable bool) int {
	verb := "enable"
	if disable {
		verb = "disable"
	}
	return c.withStore("user "+verb, "[-config FILE] ADDRESS", args, exactly(1), func(st *mailstore.Store, args []string) error {
		if err := st.SetDisabled(c.ctx, args[0], disable); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "%sd %s\n", verb, args[0])
		return nil
	})
}

// cmdUserAdmin grants or takes away the web console's administration pages.
func cmdUserAdmin(c *cli, args []string) int {
	valid := func(args []string) error {
		if len(args) != 2 {
			return errArgCount
		}
		if args[1] != "on" && args[1] != "off" {
			return fmt.Errorf("%q: want on or off", args[1])
		}
		return nil
	}
	return c.withStore("user admin", "[-config FILE] ADDRESS on|off", args, valid, func(st *mailstore.Store, args []string) error {
		on := args[1] == "on"
		if err := st.SetAdmin(c.ctx, args[0], on); err != nil {
			return err
		}
		if on {
			fmt.Fprintf(c.stdout, "%s is an administrator\n", args[0])
		} else {
			fmt.Fprintf(c.stdout, "%s is not an administrator\n", args[0])
		}
		return nil
	})
}
