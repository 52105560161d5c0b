// Command postern is the Postern mail server and its administration tool:
// `postern serve` runs SMTP, submission, POP3 and IMAP from one process.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"text/tabwriter"
)

// version is set at build time with
//
//	go build -ldflags "-X main.version=1.2.3" ./cmd/postern
var version = "dev"

// Exit codes, the same for every subcommand (DESIGN.md, "Contract").
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run runs the command line args (without the program name) and returns the
// exit code. Tests call it directly instead of executing a binary.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return runContext(context.Background(), args, stdin, stdout, stderr)
}

// runContext is run with a context: cancelling ctx stops long-running
// subcommands such as serve, as SIGINT does.
func runContext(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c := &cli{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		c.printUsage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		c.printUsage(stdout)
		return exitOK
	}
	for _, cmd := range commands() {
		if cmd.name == args[0] {
			return cmd.run(c, args[1:])
		}
	}
	fmt.Fprintf(stderr, "postern: unknown command %q\n\n", args[0])
	c.printUsage(stderr)
	return exitUsage
}

// A command is one subcommand of postern.
type command struct {
	name string
	// usage holds one line per form of the command: the text after
	// "postern ", a tab, and what it does.
	usage []string
	// run gets the arguments after the command name and returns the exit code.
	run func(c *cli, args []string) int
}

// commands lists the subcommands in the order the usage text shows them.
// To add one, write `func cmdX(c *cli, args []string) int` (see cmdVersion
// for the simplest case and cmdConfig for one with verbs) and add it here.
// This is a function rather than a variable so that commands may refer to
// the table, for example to print their own usage, without an
// initialisation cycle.
func commands() []command {
	return []command{
		{"serve", []string{
			"serve [-config FILE] [-trace]\trun the mail servers; without -config, the embedded default on loopback",
		}, cmdServe},
		{"config", []string{
			"config check -config FILE\tcheck a configuration file; the error names the key",
		}, cmdConfig},
		{"user", []string{
			"user add [-config FILE] ADDRESS\tadd a user; the password is read from standard input or asked for",
			"user passwd [-config FILE] ADDRESS\tchange a user's password",
			"user del [-config FILE] ADDRESS\tdelete a user with all its mail",
			"user list [-config FILE]\tlist the users",
			"user quota [-config FILE] ADDRESS SIZE|none\tset a user's storage quota (such as 500M or 2G)",
			"user disable|enable [-config FILE] ADDRESS\tstop or allow a user's logins and incoming mail; the mail is kept",
		}, cmdUser},
		{"domain", []string{
			"domain add|del [-config FILE] DOMAIN\tadd or delete a local domain",
			"domain list [-config FILE]\tlist the local domains",
		}, cmdDomain},
		{"alias", []string{
			"alias add [-config FILE] ALIAS ADDRESS...\tdeliver mail for ALIAS to the addresses",
			"alias del [-config FILE] ALIAS [ADDRESS...]\tdelete an alias, or some of its addresses",
			"alias list [-config FILE] [ALIAS]\tlist aliases",
		}, cmdAlias},
		{"mailbox", []string{
			"mailbox list [-config FILE] ADDRESS\tlist a user's mailboxes: name, messages, unseen",
		}, cmdMailbox},
		{"queue", []string{
			"queue list [-config FILE] [ID]\tlist the outbound queue: next attempt, attempts, sender, recipient, last error",
			"queue retry [-config FILE] [ID]\tmake one entry, or every entry, due now",
			"queue delete [-config FILE] ID\tdelete an entry without telling its sender",
		}, cmdQueue},
		{"mx", []string{
			"mx [-dns HOST:PORT] DOMAIN\tshow where mail for DOMAIN goes: MX records by preference, with addresses",
		}, cmdMX},
		{"send", []string{
			"send [-server HOST:PORT] [-tls|-plain] [-user ADDRESS] -from ADDRESS -to ADDRESS... [-subject S] [-attach FILE]... [-v]\tcompose a message (body from standard input) and submit it",
		}, cmdSend},
		{"demo", []string{
			"demo [-json] [-keep] [-web]\tthe whole mail flow on loopback, traced: DNS, SMTP, queue, relay, POP3, IMAP",
		}, cmdDemo},
		{"backup", []string{
			"backup [-config FILE] DEST\ta consistent copy of the running store into the new file DEST, checked",
		}, cmdBackup},
		{"restore", []string{
			"restore [-config FILE] SRC\tmake the backup SRC the store (serve must be stopped); the old store is kept",
		}, cmdRestore},
		{"import", []string{
			"import [-config FILE] [-mailbox NAME] [-jobs N] ADDRESS PATH\tadd the mail of a Maildir, an mbox file or a tree of them to a user's mailboxes",
		}, cmdImport},
		{"export", []string{
			"export [-config FILE] [-format maildir|mbox] ADDRESS DEST\twrite a user's mailboxes to the new directory DEST as Maildir++ or mbox files",
		}, cmdExport},
		{"dkim", []string{
			"dkim list [-config FILE] DOMAIN\tlist a domain's DKIM keys: selector, algorithm, created, retired, DNS name",
			"dkim rotate [-config FILE] [-retire] DOMAIN\tadd a new key pair; older keys retire at the next rotate (or now with -retire)",
			"dkim export [-config FILE] DOMAIN [SELECTOR]\tprint private keys as PEM (the active ones, or SELECTOR's)",
		}, cmdDKIM},
		{"dns", []string{
			"dns [-config FILE] DOMAIN\tprint every DNS record DOMAIN should publish (zone-file syntax): MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, SRV",
			"dns check [-config FILE] DOMAIN\tlook each record up through the configured DNS server: ok, missing or different",
		}, cmdDNS},
		{"store", []string{
			"store copy [-config FILE] -to-dsn DSN\tcopy the stopped SQLite store into an empty PostgreSQL database, verified; then switch [store] to it",
		}, cmdStore},
		{"reindex", []string{
			"reindex [-config FILE] ADDRESS|all\trebuild the full-text search index of one user's mail, or of all",
		}, cmdReindex},
		{"autoconfig", []string{
			"autoconfig [-config FILE] DOMAIN\tthe old name of postern dns DOMAIN",
		}, cmdDNS},
		{"version", []string{
			"version\tprint the version of postern and of Go",
		}, cmdVersion},
	}
}

// cli is what every subcommand gets besides its arguments: the context and
// the standard streams. Subcommands never touch os.Stdin/Stdout/Stderr.
type cli struct {
	ctx    context.Context
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	// cfg is the configuration a store-backed command loaded, for its
	// function to read (such as auth.min_password_length).
	cfg *Config
}

// printUsage writes the usage text listing every command to w.
func (c *cli) printUsage(w io.Writer) {
	fmt.Fprint(w, "Postern is a mail server: SMTP, submission, POP3 and IMAP in one program.\n\nUsage:\n\n")
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	for _, cmd := range commands() {
		for _, line := range cmd.usage {
			fmt.Fprintf(tw, "  postern %s\n", line)
		}
	}
	fmt.Fprintf(tw, "  postern help\tshow this text\n")
	tw.Flush()
	fmt.Fprint(w, "\nRun 'postern COMMAND -h' for the flags of a command.\n"+
		"Exit status: 0 success, 1 failure, 2 usage error.\n")
}

// flagSet returns an empty FlagSet for the subcommand name (such as
// "config check"). synopsis is what follows the name in its usage line.
// Parse errors and -h print to stderr.
func (c *cli) flagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: postern %s %s\n", name, synopsis)
		var hasFlags bool
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprintln(fs.Output(), "flags:")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parse parses args with fs. If it returns ok false, the command must return
// code at once: exitUsage after a bad flag (the flag package has printed the
// problem and the usage), or exitOK after -h.
//
//	if code, ok := c.parse(fs, args); !ok {
//		return code
//	}
func (c *cli) parse(fs *flag.FlagSet, args []string) (code int, ok bool) {
	switch err := fs.Parse(args); {
	case err == nil:
		return exitOK, true
	case errors.Is(err, flag.ErrHelp):
		return exitOK, false
	default:
		return exitUsage, false
	}
}

// usageError reports a wrong use of the command fs belongs to, such as a
// missing argument, followed by its usage, and returns exitUsage.
func (c *cli) usageError(fs *flag.FlagSet, format string, args ...any) int {
	fmt.Fprintf(c.stderr, "postern: %s: %s\n", fs.Name(), fmt.Sprintf(format, args...))
	fs.Usage()
	return exitUsage
}

// fail reports that the subcommand name failed because of err and returns
// exitFailure. The message is `postern: NAME: ERR`; an error of several lines
// (such as a configuration with several mistakes) gives one such line each.
func (c *cli) fail(name string, err error) int {
	for line := range strings.SplitSeq(err.Error(), "\n") {
		fmt.Fprintf(c.stderr, "postern: %s: %s\n", name, line)
	}
	return exitFailure
}

// verbs runs the verb in args[0] for a command that has verbs, such as
// "config check" or "user add". table maps each verb to its function.
// Without a verb, or with an unknown one, it prints the command's usage
// lines and returns exitUsage; with -h it prints them to stdout.
func (c *cli) verbs(name string, args []string, table map[string]func(*cli, []string) int) int {
	w, code := c.stderr, exitUsage
	switch {
	case len(args) == 0:
		fmt.Fprintf(c.stderr, "postern: %s: missing verb\n", name)
	case args[0] == "-h" || args[0] == "-help" || args[0] == "--help":
		w, code = c.stdout, exitOK
	case table[args[0]] != nil:
		return table[args[0]](c, args[1:])
	default:
		fmt.Fprintf(c.stderr, "postern: %s: unknown verb %q\n", name, args[0])
	}
	fmt.Fprintln(w, "usage:")
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	for _, cmd := range commands() {
		if cmd.name == name {
			for _, line := range cmd.usage {
				fmt.Fprintf(tw, "  postern %s\n", line)
			}
		}
	}
	tw.Flush()
	return code
}

// configEnv is the environment variable naming the configuration file of
// the commands for which -config is optional (DESIGN.md, "Contract").
const configEnv = "POSTERN_CONFIG"

// configFlag defines the -config flag of the commands for which it is
// optional (serve, and the store-backed user, domain, alias, mailbox and
// queue commands): without it they use $POSTERN_CONFIG, and without that
// the embedded default (see resolveConfig).
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", "", "configuration `FILE` (default: $"+configEnv+", else the embedded default with data in ./postern-data)")
}

// resolveConfig picks the configuration file: the -config flag's value,
// then $POSTERN_CONFIG, then "" for the embedded default. from describes
// the choice for messages ("/etc/postern/postern.toml (from POSTERN_CONFIG)").
func resolveConfig(flagValue string) (file, from string) {
	switch env := os.Getenv(configEnv); {
	case flagValue != "":
		return flagValue, flagValue
	case env != "":
		return env, env + " (from " + configEnv + ")"
	}
	return "", "the embedded default"
}

func cmdVersion(c *cli, args []string) int {
	fs := c.flagSet("version", "")
	if code, ok := c.parse(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return c.usageError(fs, "unexpected argument %q", fs.Arg(0))
	}
	v := version
	// `go install github.com/postern/postern/cmd/postern@v1.2.3` records
	// the module version; use it when no -ldflags version was given.
	if info, ok := debug.ReadBuildInfo(); ok && v == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		v = info.Main.Version
	}
	fmt.Fprintf(c.stdout, "postern %s (%s %s/%s)\n", v, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return exitOK
}

func cmdConfig(c *cli, args []string) int {
	return c.verbs("config", args, map[string]func(*cli, []string) int{
		"check": cmdConfigCheck,
	})
}

func cmdConfigCheck(c *cli, args []string) int {
	const name = "config check"
	fs := c.flagSet(name, "-config FILE")
	path := fs.String("config", "", "configuration `FILE` to check (default: $"+configEnv+")")
	if code, ok := c.parse(fs, args); !ok {
		return code
	}
	file, _ := resolveConfig(*path)
	if file == "" {
		return c.usageError(fs, "-config FILE is required (or %s=FILE)", configEnv)
	}
	if fs.NArg() > 0 {
		return c.usageError(fs, "unexpected argument %q", fs.Arg(0))
	}
	cfg, err := loadConfig(file)
	if err != nil {
		return c.fail(name, err)
	}
	for _, w := range cfg.warnings {
		fmt.Fprintf(c.stderr, "postern: %s: warning: %s\n", name, w.warningText())
	}
	if err := checkStore(c.ctx, c.stdout, cfg); err != nil {
		return c.fail(name, err)
	}
	fmt.Fprintf(c.stdout, "%s: ok\n", file)
	return exitOK
}
