package main

// The configuration file: its keys (DESIGN.md, "Configuration file"), the two
// sets of defaults, and the checks that name the offending key.

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/postern/postern/cmd/postern/console"
)

// Config is the whole configuration file. serve turns it into one Config
// struct per protocol package; nothing outside cmd/postern sees this type.
type Config struct {
	Hostname string   `toml:"hostname"` // greeting, Received, HELO name
	DataDir  string   `toml:"data_dir"` // SQLite database and generated TLS certificate
	Domains  []string `toml:"domains"`  // local domains, lower-cased, without trailing dot

	SMTP       SMTPConfig     `toml:"smtp"`
	Submission ListenerConfig `toml:"submission"`
	POP3       ListenerConfig `toml:"pop3"`
	IMAP       ListenerConfig `toml:"imap"`
	TLS        TLSConfig      `toml:"tls"`
	Auth       AuthConfig     `toml:"auth"`
	Relay      RelayConfig    `toml:"relay"`
	Log        LogConfig      `toml:"log"`
	Limits     LimitsConfig   `toml:"limits"`
	HTTP       HTTPConfig     `toml:"http"`
	DNS        DNSConfig      `toml:"dns"`
	Checks     ChecksConfig   `toml:"checks"`
	Store      StoreConfig    `toml:"store"`

	// warnings are keys that work but should change, such as the
	// deprecated relay.dns: config check prints them, serve logs them.
	warnings []*configError

	// source says where the values came from: a file name, or "" for the
	// embedded default. The TOML decoder skips unexported fields.
	source string
}

// SMTPConfig is the inbound MX service.
type SMTPConfig struct {
	Listen          string `toml:"listen"`
	MaxMessageBytes int64  `toml:"max_message_bytes"`
	MaxRecipients   int    `toml:"max_recipients"`
}

// ListenerConfig is a service offered both with STARTTLS/STLS (Listen) and
// with TLS from the first byte (ListenTLS). An empty address disables it.
type ListenerConfig struct {
	Listen    string `toml:"listen"`
	ListenTLS string `toml:"listen_tls"`
}

// TLSConfig names the certificate. Both empty means a self-signed
// certificate generated into the data directory, unless ACME is on.
type TLSConfig struct {
	Cert string `toml:"cert"`
	Key  string `toml:"key"`
	// ACME gets and renews certificates from an ACME CA (acme.go).
	ACME          bool   `toml:"acme"`
	ACMEEmail     string `toml:"acme_email"`     // contact for the CA account
	ACMEDirectory string `toml:"acme_directory"` // empty: Let's Encrypt production
	ACMECA        string `toml:"acme_ca"`        // PEM file: another root for the CA's HTTPS (tests, private CAs)
}

// AuthConfig holds login policy.
type AuthConfig struct {
	// AllowInsecure permits plaintext logins on connections that are neither
	// TLS nor from a loopback address (loopback always counts as secure).
	AllowInsecure bool `toml:"allow_insecure"`
	// MinPasswordLength is the fewest characters a password set by
	// `postern user add` or `user passwd` may have.
	MinPasswordLength int `toml:"min_password_length"`
}

// defaultMinPasswordLength is auth.min_password_length when not set.
const defaultMinPasswordLength = 8

// HTTPConfig is the HTTP listener (cmd/postern/console): health,
// readiness, client autoconfiguration and the MTA-STS policy.
type HTTPConfig struct {
	Listen    string `toml:"listen"`     // plain HTTP
	ListenTLS string `toml:"listen_tls"` // HTTPS with the mail listeners' certificate
	// ListenACME answers ACME HTTP-01 checks (port 80) and redirects
	// everything else to https; only with tls.acme.
	ListenACME string `toml:"listen_acme"`
	// MTASTSMode is the mode of the policy at /.well-known/mta-sts.txt:
	// testing, enforce or none (RFC 8461 5).
	MTASTSMode string `toml:"mta_sts_mode"`
	// Connections and ConnectionsPerAddress bound the listener's
	// connections, inside limits.connections.
	Connections           int `toml:"connections"`
	ConnectionsPerAddress int `toml:"connections_per_address"`
	// MetricsNetworks may read /metrics besides loopback: CIDR
	// prefixes ("10.0.0.0/8") or single addresses.
	MetricsNetworks []string `toml:"metrics_networks"`
}

// metricsNetworks parses http.metrics_networks; a single address is its
// own /32 or /128.
func (h HTTPConfig) metricsNetworks() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, n := range h.MetricsNetworks {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			a, aerr := netip.ParseAddr(n)
			if aerr != nil {
				return nil, fmt.Errorf("%q is neither a network (10.0.0.0/8) nor an address: %w", n, err)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// RelayConfig is outbound delivery to other domains.
type RelayConfig struct {
	// DNS is the deprecated alias of dns.server, used when that is empty.
	DNS  string `toml:"dns"`
	Port int    `toml:"port"` // port dialled on MX hosts; only tests change it
	// Hold keeps outbound mail in the queue instead of delivering it
	// (test environments); `postern queue retry ID` releases one entry.
	Hold bool `toml:"hold"`
	// MTASTS honours the recipient domains' MTA-STS policies (RFC 8461):
	// in enforce mode mail goes only to the listed MX hosts over verified
	// TLS, else it waits in the queue.
	MTASTS bool `toml:"mta_sts"`
	// Lease is how long the relay holds a queue entry or a connection slot
	// without renewing it (it renews every third of it): how long the
	// entries of a frontend that died wait for another frontend.
	Lease string `toml:"lease"`
}

// LogConfig selects the log/slog handler.
type LogConfig struct {
	Level  string `toml:"level"`  // debug | info | warn | error
	Format string `toml:"format"` // text | json
	Trace  bool   `toml:"trace"`  // log every protocol line, secrets redacted
}

const (
	// defaultMaxMessageBytes is 32 MiB: large enough for ordinary
	// attachments once base64 has grown them by a third.
	defaultMaxMessageBytes = 32 << 20

	// minRecipients is the floor RFC 5321 4.5.3.1.8 sets for the number of
	// recipients a server must accept in one transaction; it is also our default.
	minRecipients = 100

	// defaultRelayLease is relay.lease: the relay's own default, long
	// enough that a slow store never costs a lease.
	defaultRelayLease = "5m"
)

// defaultConfig is the embedded default that `postern serve` uses without
// -config: everything on loopback so that it is safe to start anywhere, on
// unprivileged ports so that it needs no root. The ports are the standard
// ones times ten, except SMTP, which takes the customary 2525:
//
//	smtp 2525, submission 5870, submissions 4650,
//	pop3 1100, pop3s 9950, imap 1430, imaps 9930.
func defaultConfig() *Config {
	return &Config{
		Hostname: "localhost",
		DataDir:  "./postern-data",
		Domains:  []string{"localhost"},
		SMTP: SMTPConfig{
			Listen:          "127.0.0.1:2525",
			MaxMessageBytes: defaultMaxMessageBytes,
			MaxRecipients:   minRecipients,
		},
		Submission: ListenerConfig{Listen: "127.0.0.1:5870", ListenTLS: "127.0.0.1:4650"},
		POP3:       ListenerConfig{Listen: "127.0.0.1:1100", ListenTLS: "127.0.0.1:9950"},
		IMAP:       ListenerConfig{Listen: "127.0.0.1:1430", ListenTLS: "127.0.0.1:9930"},
		Relay:      RelayConfig{Port: 25, MTASTS: true, Lease: defaultRelayLease},
		Log:        LogConfig{Level: "info", Format: "text"},
		Limits:     defaultLimits(),
		Auth:       AuthConfig{MinPasswordLength: defaultMinPasswordLength},
		HTTP:       defaultHTTP("127.0.0.1:8025"),
		DNS:        defaultDNS(),
		Checks:     defaultChecks(),
		Store:      defaultStore(),
	}
}

// defaultHTTP is [http] with listen set to addr.
func defaultHTTP(addr string) HTTPConfig {
	return HTTPConfig{
		Listen:                addr,
		MTASTSMode:            console.ModeTesting,
		Connections:           console.DefaultConnections,
		ConnectionsPerAddress: console.DefaultConnectionsPerAddress,
		MetricsNetworks:       []string{},
	}
}

// fileDefaults is what a key left out of a configuration file means. A file
// describes a production server, so these are the values written in
// configs/postern.toml: the standard ports on every address. Two keys have
// no sensible value to fall back on: hostname must be set by the file, and
// domains starts empty (domains can also be added with `postern domain add`).
// The HTTP listener is the exception to the rule: it is off unless the file
// sets http.listen or http.listen_tls, so that a configuration written
// before it existed opens no new port.
func fileDefaults() *Config {
	return &Config{
		DataDir: "/var/lib/postern",
		SMTP: SMTPConfig{
			Listen:          ":25",
			MaxMessageBytes: defaultMaxMessageBytes,
			MaxRecipients:   minRecipients,
		},
		Submission: ListenerConfig{Listen: ":587", ListenTLS: ":465"},
		POP3:       ListenerConfig{Listen: ":110", ListenTLS: ":995"},
		IMAP:       ListenerConfig{Listen: ":143", ListenTLS: ":993"},
		Relay:      RelayConfig{Port: 25, MTASTS: true, Lease: defaultRelayLease},
		Log:        LogConfig{Level: "info", Format: "text"},
		Limits:     defaultLimits(),
		Auth:       AuthConfig{MinPasswordLength: defaultMinPasswordLength},
		HTTP:       defaultHTTP(""),
		DNS:        defaultDNS(),
		Checks:     defaultChecks(),
		Store:      defaultStore(),
	}
}

// loadConfig reads and checks the configuration file at path. An empty path
// gives the embedded default. Keys missing from the file take the values of
// fileDefaults. Every error names the file, the key and, when known, the line.
func loadConfig(path string) (*Config, error) {
	if path == "" {
		cfg := defaultConfig()
		if err := joinProblems(cfg.validate(), "", nil); err != nil {
			return nil, err // only possible if defaultConfig itself is wrong
		}
		return cfg, nil
	}
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err) // the PathError names the file
	}
	return parseConfig(path, src)
}

// parseConfig decodes and checks src, the contents of the file called name.
func parseConfig(name string, src []byte) (*Config, error) {
	cfg := fileDefaults()
	cfg.source = name
	lines := keyLines(string(src))

	md, err := toml.Decode(string(src), cfg)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			// Not valid TOML at all. LastKey is the key before the
			// mistake, which would mislead, so only the line is given.
			return nil, &configError{File: name, Line: perr.Position.Line, Msg: perr.Message, Err: err}
		}
		// Valid TOML, but some value has the wrong type. The decoder stops
		// at the first one; look at all of them to name each key.
		if problems := typeProblems(md); len(problems) > 0 {
			return nil, joinProblems(problems, name, lines)
		}
		if problems := elementProblems(src); len(problems) > 0 {
			return nil, joinProblems(problems, name, lines)
		}
		// Nothing we know of; the decoder's message has the line and key.
		return nil, &configError{File: name, Msg: err.Error(), Err: err}
	}

	// Unknown keys and bad values are reported together, in file order.
	var problems []*configError
	undecoded := md.Undecoded()
	for _, key := range undecoded {
		// For an unknown table, report the table and not each key in it.
		if len(key) > 1 && slices.ContainsFunc(undecoded, func(k toml.Key) bool {
			return slices.Equal(k, key[:len(key)-1])
		}) {
			continue
		}
		problems = append(problems, &configError{Key: strings.Join(key, "."), Unknown: true})
	}
	problems = append(problems, cfg.validate()...)
	if err := joinProblems(problems, name, lines); err != nil {
		return nil, err
	}
	for _, w := range cfg.warnings {
		w.File = name
		w.Line = lineOf(lines, w.Key)
	}
	return cfg, nil
}

// A configError is one problem with one key of a configuration.
type configError struct {
	File    string // file name; "" for the embedded default
	Line    int    // 1-based line of the key in File; 0 when not known
	Key     string // dotted key such as "smtp.listen"; "" for syntax errors
	Unknown bool   // Key is not a Postern setting
	Msg     string // what is wrong, e.g. "must be at least 100"
	Err     error  // underlying cause, if any
}

// Error gives `config: FILE:LINE: key "smtp.listen": must be HOST:PORT`.
func (e *configError) Error() string {
	var b strings.Builder
	b.WriteString("config: ")
	switch {
	case e.File == "":
		b.WriteString("embedded default: ")
	case e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	default:
		fmt.Fprintf(&b, "%s: ", e.File)
	}
	switch {
	case e.Unknown:
		fmt.Fprintf(&b, "unknown key %q", e.Key)
	case e.Key != "":
		fmt.Fprintf(&b, "key %q: %s", e.Key, e.Msg)
	default:
		b.WriteString(e.Msg)
	}
	return b.String()
}

func (e *configError) Unwrap() error { return e.Err }

// joinProblems places each problem in file (lines maps keys to where they
// are set) and joins them in file order, one per line of the error text.
func joinProblems(problems []*configError, file string, lines map[string]int) error {
	if len(problems) == 0 {
		return nil
	}
	for _, p := range problems {
		p.File = file
		if p.Line == 0 && p.Key != "" {
			p.Line = lineOf(lines, p.Key)
		}
	}
	slices.SortStableFunc(problems, func(a, b *configError) int { return a.Line - b.Line })
	errs := make([]error, len(problems))
	for i, p := range problems {
		errs[i] = p
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}

// typeProblems compares the TOML type of every key in md with the type the
// Config field for that key expects.
func typeProblems(md toml.MetaData) []*configError {
	want := make(map[string]string)
	schemaTypes(reflect.TypeFor[Config](), "", want)
	var problems []*configError
	for _, key := range md.Keys() {
		name := strings.Join(key, ".")
		w, known := want[name]
		if !known {
			continue // unknown keys are reported once the types are right
		}
		if got := md.Type(key...); got != w {
			problems = append(problems, &configError{
				Key: name,
				Msg: fmt.Sprintf("must be %s, not %s", tomlTypeName(w), tomlTypeName(got)),
			})
		}
	}
	return problems
}

// elementProblems finds arrays in src whose elements are not all strings,
// the one type mistake that MetaData.Type cannot show. src has already been
// parsed once, so it is valid TOML.
func elementProblems(src []byte) []*configError {
	var raw map[string]any
	if _, err := toml.Decode(string(src), &raw); err != nil {
		return nil
	}
	want := make(map[string]string)
	schemaTypes(reflect.TypeFor[Config](), "", want)
	var problems []*configError
	for key, typ := range want {
		if typ != "Array" {
			continue
		}
		// Walk down the tables to the value of key.
		var v any = raw
		for part := range strings.SplitSeq(key, ".") {
			m, ok := v.(map[string]any)
			if !ok {
				v = nil
				break
			}
			v = m[part]
		}
		elems, _ := v.([]any)
		for _, e := range elems {
			if _, ok := e.(string); !ok {
				problems = append(problems, &configError{
					Key: key,
					Msg: fmt.Sprintf("must be an array of strings; %v is not a string", e),
				})
				break
			}
		}
	}
	return problems
}

// schemaTypes records, for each key of the struct type t, the TOML type name
// that toml.MetaData.Type reports for a value of the right kind.
func schemaTypes(t reflect.Type, prefix string, out map[string]string) {
	for f := range t.Fields() {
		tag := f.Tag.Get("toml")
		if tag == "" || tag == "-" {
			continue
		}
		key := prefix + tag
		switch f.Type.Kind() {
		case reflect.Struct:
			out[key] = "Hash"
			schemaTypes(f.Type, key+".", out)
		case reflect.String:
			out[key] = "String"
		case reflect.Int, reflect.Int64:
			out[key] = "Integer"
		case reflect.Bool:
			out[key] = "Bool"
		case reflect.Slice:
			out[key] = "Array"
		default:
			panic("config: no TOML type for field " + f.Name) // a programming error in Config
		}
	}
}

// tomlTypeName turns MetaData.Type names into words for error messages.
func tomlTypeName(t string) string {
	switch t {
	case "String":
		return "a string"
	case "Integer":
		return "an integer"
	case "Bool":
		return "true or false"
	case "Array":
		return "an array"
	case "Hash":
		return "a table"
	case "Float":
		return "a float"
	case "":
		return "unknown"
	}
	return "a " + strings.ToLower(t)
}

// validate checks every value and normalises the domain names. Problems come
// back with Key and Msg set; the caller adds the file and line.
func (c *Config) validate() []*configError {
	var problems []*configError
	bad := func(key, format string, args ...any) {
		problems = append(problems, &configError{Key: key, Msg: fmt.Sprintf(format, args...)})
	}
	badErr := func(key string, err error) {
		problems = append(problems, &configError{Key: key, Msg: err.Error(), Err: err})
	}

	c.Hostname = strings.TrimSuffix(c.Hostname, ".")
	if c.Hostname == "" {
		bad("hostname", "must be set: it is the name this server gives in greetings and Received lines")
	} else if err := checkDNSName(c.Hostname); err != nil {
		badErr("hostname", fmt.Errorf("%q %w", c.Hostname, err))
	}

	if c.DataDir == "" {
		bad("data_dir", "must be set")
	}

	var domains []string
	for _, d := range c.Domains {
		d = strings.ToLower(strings.TrimSuffix(d, "."))
		if err := checkDNSName(d); err != nil {
			badErr("domains", fmt.Errorf("%q %w", d, err))
			continue
		}
		if !slices.Contains(domains, d) {
			domains = append(domains, d)
		}
	}
	c.Domains = domains

	// Each address may be used by one listener only. Port 0 asks the
	// system for a free port, so several listeners can share it.
	usedBy := make(map[string]string)
	for _, l := range c.listeners() {
		if err := checkHostPort(l.Addr, 0); err != nil {
			badErr(l.Key, err)
			continue
		}
		if _, port, _ := net.SplitHostPort(l.Addr); port == "0" {
			continue
		}
		if other, dup := usedBy[l.Addr]; dup {
			bad(l.Key, "address %s is already used by %q", l.Addr, other)
			continue
		}
		usedBy[l.Addr] = l.Key
	}

	if c.SMTP.MaxMessageBytes <= 0 {
		bad("smtp.max_message_bytes", "must be greater than 0")
	}
	// RFC 5321 4.5.3.1.8: a server must accept at least 100 recipients.
	if c.SMTP.MaxRecipients < minRecipients {
		bad("smtp.max_recipients", "must be at least %d (RFC 5321 4.5.3.1.8)", minRecipients)
	}

	switch {
	case (c.TLS.Cert == "") != (c.TLS.Key == ""):
		if c.TLS.Cert == "" {
			bad("tls.key", "tls.cert must be set too, or neither")
		} else {
			bad("tls.cert", "tls.key must be set too, or neither")
		}
	case c.TLS.Cert != "":
		// Check now what serve would find out only at start.
		if _, err := tls.LoadX509KeyPair(c.TLS.Cert, c.TLS.Key); err != nil {
			badErr("tls.cert", fmt.Errorf("cannot be loaded with tls.key: %w", err))
		}
	}

	c.validateACME(bad)

	if c.Relay.DNS != "" {
		if err := checkHostPort(c.Relay.DNS, 1); err != nil {
			badErr("relay.dns", err)
		}
	}
	c.validateDNS(bad, badErr)
	c.validateChecks(bad)
	c.validateStore(bad)
	if c.Relay.Port < 1 || c.Relay.Port > 65535 {
		bad("relay.port", "must be between 1 and 65535")
	}
	if d, err := time.ParseDuration(c.Relay.Lease); err != nil {
		bad("relay.lease", "must be a duration such as \"90s\" or \"5m\", not %q", c.Relay.Lease)
	} else if d < time.Second {
		bad("relay.lease", "must be at least 1s (the lease is renewed every third of it)")
	}

	if !slices.Contains(logLevels, c.Log.Level) {
		bad("log.level", "must be one of %s, not %q", strings.Join(logLevels, ", "), c.Log.Level)
	}
	if !slices.Contains(logFormats, c.Log.Format) {
		bad("log.format", "must be one of %s, not %q", strings.Join(logFormats, ", "), c.Log.Format)
	}
	c.validateLimits(bad)

	if c.Auth.MinPasswordLength < 1 {
		bad("auth.min_password_length", "must be at least 1")
	}
	if _, err := c.HTTP.metricsNetworks(); err != nil {
		bad("http.metrics_networks", "%v", err)
	}
	if !slices.Contains(console.Modes, c.HTTP.MTASTSMode) {
		bad("http.mta_sts_mode", "must be one of %s, not %q", strings.Join(console.Modes, ", "), c.HTTP.MTASTSMode)
	}
	if c.HTTP.Connections < 1 {
		bad("http.connections", "must be at least 1")
	}
	if c.HTTP.ConnectionsPerAddress < 1 {
		bad("http.connections_per_address", "must be at least 1")
	} else if c.HTTP.ConnectionsPerAddress > c.HTTP.Connections && c.HTTP.Connections > 0 {
		bad("http.connections_per_address", "must not be more than http.connections (%d)", c.HTTP.Connections)
	}
	return problems
}

var (
	logLevels  = []string{"debug", "info", "warn", "error"}
	logFormats = []string{"text", "json"}
)

// listener is one configured endpoint: a protocol on an address.
type listener struct {
	Proto string // the name serve prints: smtp, submission, submissions, pop3, pop3s, imap, imaps
	Key   string // the configuration key it comes from
	Addr  string // HOST:PORT
	TLS   string // how TLS starts: "STARTTLS", "STLS", "implicit TLS", or "" for inbound MX
}

// listeners returns every listener of c whose address is not empty, in the
// order of the configuration file.
func (c *Config) listeners() []listener {
	all := []listener{
		{"smtp", "smtp.listen", c.SMTP.Listen, ""}, // STARTTLS offered, never required
		{"submission", "submission.listen", c.Submission.Listen, "STARTTLS"},
		{"submissions", "submission.listen_tls", c.Submission.ListenTLS, "implicit TLS"},
		{"pop3", "pop3.listen", c.POP3.Listen, "STLS"},
		{"pop3s", "pop3.listen_tls", c.POP3.ListenTLS, "implicit TLS"},
		{"imap", "imap.listen", c.IMAP.Listen, "STARTTLS"},
		{"imaps", "imap.listen_tls", c.IMAP.ListenTLS, "implicit TLS"},
		{"http", "http.listen", c.HTTP.Listen, ""},
		{"https", "http.listen_tls", c.HTTP.ListenTLS, "implicit TLS"},
		{"acme-http", "http.listen_acme", c.HTTP.ListenACME, ""},
	}
	return slices.DeleteFunc(all, func(l listener) bool { return l.Addr == "" })
}

// checkHostPort checks that addr is HOST:PORT with a numeric port of at
// least minPort, and a host that is empty, an IP address or a DNS name.
func checkHostPort(addr string, minPort int) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("must be HOST:PORT: %w", err)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < minPort || n > 65535 {
		return fmt.Errorf("%q: port %q must be a number from %d to 65535", addr, port, minPort)
	}
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if err := checkDNSName(host); err != nil {
		return fmt.Errorf("%q: host %q %w", addr, host, err)
	}
	return nil
}

// checkDNSName checks that name is an ASCII host name (RFC 1123 2.1: letters,
// digits and hyphens; labels of 1 to 63 characters; 253 characters in all).
// The error reads as the end of a sentence about name: "is too long".
func checkDNSName(name string) error {
	if name == "" {
		return errors.New("is empty")
	}
	if len(name) > 253 {
		return errors.New("is longer than 253 characters")
	}
	labels := strings.Split(name, ".")
	for _, label := range labels {
		if label == "" {
			return errors.New("has an empty label")
		}
		if len(label) > 63 {
			return fmt.Errorf("has a label longer than 63 characters")
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("is not a valid DNS name: %q is not allowed (use punycode for international names)", r)
			}
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("is not a valid DNS name: label %q starts or ends with a hyphen", label)
		}
	}
	// RFC 1123 2.1: a name whose last label is all digits would be taken
	// for an IP address.
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return errors.New("is not a valid DNS name: it looks like an IP address")
	}
	return nil
}

// lineOf returns the line where key, or failing that the nearest table that
// contains it, is set. Keys inside inline tables are found this way.
func lineOf(lines map[string]int, key string) int {
	for {
		if n, ok := lines[key]; ok {
			return n
		}
		i := strings.LastIndexByte(key, '.')
		if i < 0 {
			return 0
		}
		key = key[:i]
	}
}

// keyLines maps each dotted key in a TOML document to the line that sets it,
// and each [table] to its header line. The TOML library keeps positions to
// itself, so this is a small scanner of our own. It understands the
// constructs a configuration file uses (tables, bare and quoted keys, dotted
// keys, multi-line strings and arrays); anything it misses just loses its
// line number in error messages.
func keyLines(src string) map[string]int {
	lines := make(map[string]int)
	table := ""
	inString := "" // the closing delimiter while inside a multi-line string
	for i, line := range strings.Split(src, "\n") {
		n := i + 1
		if inString != "" {
			if strings.Count(line, inString)%2 == 1 {
				inString = ""
			}
			continue
		}
		s := strings.TrimSpace(line)
		switch {
		case s == "" || s[0] == '#':
			continue
		case s[0] == '[':
			name := strings.TrimLeft(s, "[")
			end := strings.IndexByte(name, ']')
			if end < 0 {
				continue
			}
			parts, rest := scanKey(name[:end])
			if parts == nil || strings.TrimSpace(rest) != "" {
				continue
			}
			table = strings.Join(parts, ".")
			if _, seen := lines[table]; !seen {
				lines[table] = n
			}
			continue
		}
		parts, rest := scanKey(s)
		if parts == nil || !strings.HasPrefix(rest, "=") {
			continue
		}
		key := strings.Join(parts, ".")
		if table != "" {
			key = table + "." + key
		}
		if _, seen := lines[key]; !seen {
			lines[key] = n
		}
		value := rest[1:]
		for _, delim := range []string{`"""`, `'''`} {
			if strings.Count(value, delim)%2 == 1 {
				inString = delim
			}
		}
	}
	return lines
}

// scanKey reads a possibly dotted, possibly quoted TOML key from the start
// of s. It returns the key's parts and what follows, with leading blanks
// removed, or nil if s does not start with a key.
func scanKey(s string) (parts []string, rest string) {
	for {
		s = strings.TrimLeft(s, " \t")
		var part string
		switch {
		case s == "":
			return nil, ""
		case s[0] == '"' || s[0] == '\'':
			end := strings.IndexByte(s[1:], s[0])
			if end < 0 {
				return nil, ""
			}
			quote := s[0]
			part, s = s[1:1+end], s[2+end:]
			if quote == '"' && strings.ContainsRune(part, '\\') {
				if unq, err := strconv.Unquote(`"` + part + `"`); err == nil {
					part = unq
				}
			}
		default:
			end := strings.IndexFunc(s, func(r rune) bool {
				return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
			})
			if end == 0 {
				return nil, ""
			}
			if end < 0 {
				end = len(s)
			}
			part, s = s[:end], s[end:]
		}
		parts = append(parts, part)
		s = strings.TrimLeft(s, " \t")
		if !strings.HasPrefix(s, ".") {
			return parts, s
		}
		s = s[1:]
	}
}
