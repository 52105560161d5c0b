package main

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore/limits"
)

const (
	fail2banFilter = "../../configs/fail2ban/filter.d/postern.conf"
	fail2banJail   = "../../configs/fail2ban/jail.d/postern.conf"
)

// f2bHost is what fail2ban puts in place of <HOST> (failregex.py, R_HOST
// with usedns: an IPv4 address, an IPv6 address, or a DNS name), in Go
// syntax: fail2ban's IPv6 expression ends in the look-behind (?<=:):,
// which RE2 lacks; a plain ':' there is a little looser and equivalent on
// the addresses Postern writes.
const f2bHost = `(?:\[?(?:(?:::f{4,6}:)?(?P<ip4>(?:\d{1,3}\.){3}\d{1,3})|(?P<ip6>(?:[0-9a-fA-F]{1,4}::?|::){1,7}(?:[0-9a-fA-F]{1,4}|:)))\]?|(?P<dns>[\w\-.^_]*\w))`

// f2bDate stands for what fail2ban cuts out of a line before it applies
// the expressions: the time the datepattern finds.
var f2bDate = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)`)

// readFilter returns the failregex and ignoreregex lists of a fail2ban
// filter file: INI keys of the [Definition] section, whose values go on
// over indented lines, with %% for %.
func readFilter(t *testing.T, path string) (fail, ignore []*regexp.Regexp) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	values := make(map[string][]string)
	var section, key string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "" || strings.HasPrefix(trimmed, "#") || strings.HasPrefix(trimmed, ";"):
			continue
		case strings.HasPrefix(trimmed, "["):
			section, key = strings.Trim(trimmed, "[]"), ""
		case line[0] == ' ' || line[0] == '\t':
			if key != "" {
				values[section+"."+key] = append(values[section+"."+key], trimmed)
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: not a key = value line: %q", path, line)
			}
			key = strings.TrimSpace(k)
			if v = strings.TrimSpace(v); v != "" {
				values[section+"."+key] = append(values[section+"."+key], v)
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	compile := func(key string) []*regexp.Regexp {
		var out []*regexp.Regexp
		for _, v := range values["Definition."+key] {
			v = strings.ReplaceAll(v, "%%", "%")
			v = strings.ReplaceAll(v, "<HOST>", f2bHost)
			re, err := regexp.Compile(v)
			if err != nil {
				t.Fatalf("%s: %s %q: %v", path, key, v, err)
			}
			out = append(out, re)
		}
		return out
	}
	fail, ignore = compile("failregex"), compile("ignoreregex")
	if len(fail) == 0 {
		t.Fatalf("%s has no failregex", path)
	}
	return fail, ignore
}

// f2bMatch applies the filter to one log line as fail2ban does: the date
// cut out, ignored if an ignoreregex matches, else the host of the first
// failregex that matches. ok is false when the line does not count.
func f2bMatch(fail, ignore []*regexp.Regexp, line string) (host string, ok bool) {
	if loc := f2bDate.FindStringIndex(line); loc != nil {
		line = line[:loc[0]] + line[loc[1]:]
	}
	for _, re := range ignore {
		if re.MatchString(line) {
			return "", false
		}
	}
	for _, re := range fail {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		for _, g := range []string{"ip4", "ip6", "dns"} {
			if v := m[re.SubexpIndex(g)]; v != "" {
				return v, true
			}
		}
	}
	return "", false
}

// f2bCase is one login failure and whether (and with which host) the
// filter must count it.
type f2bCase struct {
	attempt limits.Attempt
	reason  string
	counts  bool
}

func f2bCases() []f2bCase {
	ip := netip.MustParseAddr
	hostile := []string{
		`x" remote=6.6.6.6 user="y`,
		`evil remote=6.6.6.6`,
		`"}","remote":"6.6.6.6","user":"`,
		`","protocol":"smtp","remote":"6.6.6.6","user":"`,
		"a\nlevel=WARN msg=\"login failed\" protocol=smtp remote=6.6.6.6 user=b",
		`bob reason=busy`,
		`bob" mechanism=PLAIN reason=busy`,
		`bob","mechanism":"PLAIN","reason":"busy`,
		`\" remote=6.6.6.6 \\" remote=6.6.6.6`,
	}
	var cases []f2bCase
	for i, proto := range []string{"smtp", "pop3", "imap"} {
		for _, remote := range []string{"192.0.2.10", "2001:db8:1:2::17", "2001:db8:a:b:c:d:e:f", "::1"} {
			cases = append(cases,
				f2bCase{limits.Attempt{Protocol: proto, Mechanism: "PLAIN", Remote: ip(remote), User: "alice@example.test"}, "wrong credentials", true},
				f2bCase{limits.Attempt{Protocol: proto, Mechanism: "LOGIN", Remote: ip(remote), User: hostile[i]}, "wrong credentials, address now blocked", true},
				f2bCase{limits.Attempt{Protocol: proto, Mechanism: "USER", Remote: ip(remote), User: ""}, "address blocked", true},
				// An honest user refused because others flood the
				// password checks is not banned.
				f2bCase{limits.Attempt{Protocol: proto, Mechanism: "PLAIN", Remote: ip(remote), User: "carol@example.test"}, "busy", false},
			)
		}
	}
	for _, u := range hostile {
		cases = append(cases, f2bCase{limits.Attempt{Protocol: "imap", Mechanism: "PLAIN", Remote: ip("198.51.100.23"), User: u}, "wrong credentials", true})
	}
	return cases
}

// The fail2ban filter matches every failed-login line Postern writes, in
// both log formats, and yields the client's address, whatever the client
// put in its user name.
func TestFail2banFilter(t *testing.T) {
	fail, ignore := readFilter(t, fail2banFilter)
	for _, format := range logFormats {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			base, err := newLogger(LogConfig{Level: "info", Format: format}, &buf)
			if err != nil {
				t.Fatal(err)
			}
			// As the servers log: the part, then the session's
			// attributes, here with a remote of another address.
			session := base.With("part", "pop3").With("session", "k3x9", "remote", "203.0.113.99:40000")
			for _, c := range f2bCases() {
				buf.Reset()
				c.attempt.Log = session
				limits.LogFailure(c.attempt, c.reason)
				line := strings.TrimSuffix(buf.String(), "\n")
				if strings.Contains(line, "\n") {
					t.Fatalf("one failure gave several lines: %q", line)
				}
				host, ok := f2bMatch(fail, ignore, line)
				switch {
				case ok != c.counts:
					t.Errorf("counted %v, want %v: %s", ok, c.counts, line)
				case ok && host != c.attempt.Remote.String():
					t.Errorf("host %q, want %s: %s", host, c.attempt.Remote, line)
				}
			}
			// Lines that are not failed logins never count, even when
			// a client's words in them look like one.
			buf.Reset()
			session.Info("login", "user", "alice@example.test")
			session.Info("command", "line", `level=WARN msg="login failed" protocol=smtp remote=6.6.6.6 user=x`)
			session.Info("command", "line", `"level":"WARN","msg":"login failed","protocol":"smtp","remote":"6.6.6.6","user":"x"`)
			session.Warn("login failed") // without the attempt's attributes
			for line := range strings.Lines(buf.String()) {
				if host, ok := f2bMatch(fail, ignore, strings.TrimSuffix(line, "\n")); ok {
					t.Errorf("counted with host %q: %s", host, line)
				}
			}
		})
	}
}

// The real fail2ban-regex agrees with the Go reading of the filter.
func TestFail2banRegexInterop(t *testing.T) {
	prog, err := exec.LookPath("fail2ban-regex")
	if err != nil {
		if os.Getenv("POSTERN_REQUIRE_INTEROP") == "1" {
			t.Fatalf("fail2ban-regex is required (POSTERN_REQUIRE_INTEROP=1): %v", err)
		}
		t.Skipf("fail2ban-regex not installed: %v", err)
	}
	filter, err := filepath.Abs(fail2banFilter)
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range logFormats {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			base, err := newLogger(LogConfig{Level: "info", Format: format}, &buf)
			if err != nil {
				t.Fatal(err)
			}
			session := base.With("part", "smtp").With("session", "k3x9", "remote", "203.0.113.99:40000")
			var want []string
			for _, c := range f2bCases() {
				c.attempt.Log = session
				limits.LogFailure(c.attempt, c.reason)
				if c.counts {
					want = append(want, c.attempt.Remote.String())
				}
			}
			session.Info("command", "line", `level=WARN msg="login failed" protocol=smtp remote=6.6.6.6 user=x`)
			logFile := filepath.Join(t.TempDir(), "postern.log")
			if err := os.WriteFile(logFile, buf.Bytes(), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(prog, "-o", "ip", logFile, filter).CombinedOutput()
			var exitErr *exec.ExitError
			if err != nil && !errors.As(err, &exitErr) {
				t.Fatal(err)
			}
			got := strings.Fields(string(out))
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("fail2ban-regex -o ip gave\n%s\nwant\n%s\nlog:\n%s", out, strings.Join(want, "\n"), buf.String())
			}
		})
	}
}

// The example jail uses the filter and guards every Postern port.
func TestFail2banJail(t *testing.T) {
	src, err := os.ReadFile(fail2banJail)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"[postern]", "filter   = postern", "backend  = systemd", "port     = 25,465,587,110,995,143,993",
		"maxretry = ", "findtime = ", "bantime  = ", "logpath = /var/log/postern.log"} {
		if !strings.Contains(string(src), want) {
			t.Errorf("%s does not contain %q", fail2banJail, want)
		}
	}
}

// The systemd unit is hardened, lets serve raise its file-descriptor
// limit, and names the unit the fail2ban filter reads.
func TestSystemdUnit(t *testing.T) {
	const unit = "../../configs/postern.service"
	src, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	directives := make(map[string][]string)
	for line := range strings.Lines(string(src)) {
		line = strings.TrimSpace(line)
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			directives[k] = append(directives[k], v)
		}
	}
	for k, want := range map[string]string{
		"NoNewPrivileges":     "true",
		"ProtectSystem":       "strict",
		"ReadWritePaths":      "/var/lib/postern",
		"AmbientCapabilities": "CAP_NET_BIND_SERVICE",
		"LimitNOFILE":         "65536",
		"ExecStart":           "/usr/local/bin/postern serve -config /etc/postern/postern.toml",
		"User":                "postern",
	} {
		if got := directives[k]; len(got) != 1 || got[0] != want {
			t.Errorf("%s: %s=%q, want %q", unit, k, got, want)
		}
	}
	if fileDefaults().DataDir != "/var/lib/postern" {
		t.Errorf("ReadWritePaths does not follow data_dir %q", fileDefaults().DataDir)
	}
	filter, err := os.ReadFile(fail2banFilter)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(filter), "_SYSTEMD_UNIT="+filepath.Base(unit)) {
		t.Errorf("the fail2ban filter's journalmatch does not name %s", filepath.Base(unit))
	}
}

// TestServeFailedLoginsAcrossProtocols runs serve, fails logins over
// submission, POP3 and IMAP from one address until it is blocked, checks
// that the right password is then refused on every protocol, and that
// every "login failed" line serve logged, in text and in JSON, is counted
// by the shipped fail2ban filter with the client's address.
func TestServeFailedLoginsAcrossProtocols(t *testing.T) {
	fail, ignore := readFilter(t, fail2banFilter)
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			r := startServe(t, "[limits]\nlogin_failures = 4\nlogin_failure_delay = \"0s\"\n[log]\nformat = \""+format+"\"\n")
			r.addUser(t, "user@example.test", "right-password")
			try := func(p loginProto, pass string) bool {
				t.Helper()
				conn, err := net.DialTimeout("tcp", r.addrs[p.service], 10*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(20 * time.Second))
				br := bufio.NewReader(conn)
				if err := p.greet(br, conn); err != nil {
					t.Fatalf("%s greeting: %v", p.service, err)
				}
				ok, _, err := p.login(br, conn, "user@example.test", pass)
				if err != nil {
					t.Fatalf("%s login: %v", p.service, err)
				}
				return ok
			}
			// Four failures spread over the protocols block 127.0.0.1.
			for i, p := range []loginProto{loginProtos[0], loginProtos[1], loginProtos[2], loginProtos[0]} {
				if try(p, "wrong") {
					t.Fatalf("failure %d: a wrong password was accepted over %s", i, p.service)
				}
			}
			for _, p := range loginProtos {
				if try(p, "right-password") {
					t.Errorf("%s accepted the right password from a blocked address", p.service)
				}
			}
			// Every failed login gave one line the filter counts.
			seen := map[string]int{}
			lines := 0
			for _, line := range strings.Split(r.stderr.String(), "\n") {
				if !strings.Contains(line, "login failed") {
					continue
				}
				lines++
				host, ok := f2bMatch(fail, ignore, line)
				if !ok || host != "127.0.0.1" {
					t.Errorf("filter gave %q, %v for %s", host, ok, line)
				}
				for _, proto := range []string{"smtp", "pop3", "imap"} {
					if strings.Contains(line, `protocol=`+proto+` `) || strings.Contains(line, `"protocol":"`+proto+`"`) {
						seen[proto]++
					}
				}
			}
			if lines != 7 || seen["smtp"] != 3 || seen["pop3"] != 2 || seen["imap"] != 2 {
				t.Fatalf("%d login-failed lines, per protocol %v; want 7 (smtp 3, pop3 2, imap 2):\n%s", lines, seen, r.stderr.String())
			}
		})
	}
}
