package main

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

const exampleConfig = "../../configs/postern.toml"

func TestDefaultConfig(t *testing.T) {
	cfg, err := loadConfig("")
	if err != nil {
		t.Fatalf("embedded default: %v", err)
	}
	if cfg.DataDir != "./postern-data" || cfg.Hostname != "localhost" || !slices.Equal(cfg.Domains, []string{"localhost"}) {
		t.Errorf("default hostname/data_dir/domains = %q %q %q", cfg.Hostname, cfg.DataDir, cfg.Domains)
	}
	if cfg.Auth.AllowInsecure {
		t.Error("the default allows plaintext logins from everywhere")
	}
	want := map[string]string{
		"smtp":        "127.0.0.1:2525",
		"submission":  "127.0.0.1:5870",
		"submissions": "127.0.0.1:4650",
		"pop3":        "127.0.0.1:1100",
		"pop3s":       "127.0.0.1:9950",
		"imap":        "127.0.0.1:1430",
		"imaps":       "127.0.0.1:9930",
		"http":        "127.0.0.1:8025",
	}
	got := make(map[string]string)
	for _, l := range cfg.listeners() {
		got[l.Proto] = l.Addr
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("default listeners = %v, want %v", got, want)
	}
}

// The example file shows every key with the value a file gets when the key
// is left out, apart from hostname and domains. This keeps the two in step.
func TestExampleConfig(t *testing.T) {
	cfg, err := loadConfig(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	want := fileDefaults()
	want.Hostname = "mail.example.com"
	want.Domains = []string{"example.com"}
	want.source = exampleConfig
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("example config differs from fileDefaults:\n got %+v\nwant %+v", cfg, want)
	}

	src, err := os.ReadFile(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	lines := keyLines(string(src))
	schema := make(map[string]string)
	schemaTypes(reflect.TypeFor[Config](), "", schema)
	for key := range schema {
		if _, ok := lines[key]; !ok {
			t.Errorf("key %q is missing from %s", key, exampleConfig)
		}
	}
	for key := range lines {
		if _, ok := schema[key]; !ok {
			t.Errorf("%s sets %q, which Config does not have", exampleConfig, key)
		}
	}
}

func TestOmittedKeysTakeFileDefaults(t *testing.T) {
	cfg, err := parseConfig("t.toml", []byte(`hostname = "mx.example.org"`))
	if err != nil {
		t.Fatal(err)
	}
	want := fileDefaults()
	want.Hostname = "mx.example.org"
	want.source = "t.toml"
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got %+v\nwant %+v", cfg, want)
	}
}

func TestConfigNormalises(t *testing.T) {
	cfg, err := parseConfig("t.toml", []byte(`
hostname = "Mail.Example.COM."
domains = ["Example.COM.", "example.com", "other.example"]
[smtp]
listen = ""    # disabled
[imap]
listen = "127.0.0.1:0"
listen_tls = "127.0.0.1:0" # port 0 may be shared
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Hostname != "Mail.Example.COM" {
		t.Errorf("hostname = %q", cfg.Hostname)
	}
	if want := []string{"example.com", "other.example"}; !slices.Equal(cfg.Domains, want) {
		t.Errorf("domains = %q, want %q", cfg.Domains, want)
	}
	for _, l := range cfg.listeners() {
		if l.Proto == "smtp" {
			t.Errorf("empty smtp.listen still gives listener %+v", l)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string // each must appear in the error text
		not  []string // none may appear
	}{
		{"syntax", "hostname = \"a.example\nx", []string{"config: t.toml:1: "}, nil},
		{"unknown key", "hostname = \"a.example\"\nhostnme = \"b\"\n",
			[]string{`config: t.toml:2: unknown key "hostnme"`}, nil},
		{"unknown key in table", "hostname = \"a.example\"\n[smtp]\nlisten = \":25\"\nmax_recipient = 100\n",
			[]string{`config: t.toml:4: unknown key "smtp.max_recipient"`}, nil},
		{"unknown table", "hostname = \"a.example\"\n\n[smtpd]\nlisten = \":25\"\n",
			[]string{`config: t.toml:3: unknown key "smtpd"`}, []string{"smtpd.listen"}},
		{"unknown dotted key", "hostname = \"a.example\"\nsmtp.port = 25\n",
			[]string{`config: t.toml:2: unknown key "smtp.port"`}, nil},
		{"two unknown keys", "hostname = \"a.example\"\nfoo = 1\n[log]\nbar = 2\n",
			[]string{`t.toml:2: unknown key "foo"`, `t.toml:4: unknown key "log.bar"`}, nil},
		{"wrong type", "hostname = \"a.example\"\n[smtp]\nmax_recipients = \"100\"\n",
			[]string{`config: t.toml:3: key "smtp.max_recipients": must be an integer, not a string`}, nil},
		{"wrong types", "hostname = 1\ndomains = \"example.com\"\n[auth]\nallow_insecure = \"yes\"\n",
			[]string{`t.toml:1: key "hostname": must be a string, not an integer`,
				`t.toml:2: key "domains": must be an array, not a string`,
				`t.toml:4: key "auth.allow_insecure": must be true or false, not a string`}, nil},
		{"table as value", "hostname = \"a.example\"\nsmtp = 25\n",
			[]string{`t.toml:2: key "smtp": must be a table, not an integer`}, nil},
		{"number in domains", "hostname = \"a.example\"\ndomains = [\"a.example\", 3]\n",
			[]string{`config: t.toml:2: key "domains": must be an array of strings; 3 is not a string`}, nil},
		{"unknown key and bad value", "hostname = \"a.example\"\n[smtp]\nlisten = \"25\"\nfoo = 1\n",
			[]string{`t.toml:3: key "smtp.listen": must be HOST:PORT`, "\nconfig: t.toml:4: unknown key \"smtp.foo\""}, nil},
		{"hostname missing", "data_dir = \"/tmp/x\"\n",
			[]string{`config: t.toml: key "hostname": must be set`}, nil},
		{"hostname invalid", "hostname = \"mail_server\"\n",
			[]string{`config: t.toml:1: key "hostname": "mail_server" is not a valid DNS name`}, nil},
		{"hostname hyphen", "hostname = \"-mail.example\"\n",
			[]string{`key "hostname": "-mail.example" is not a valid DNS name: label "-mail" starts or ends with a hyphen`}, nil},
		{"hostname is an IP address", "hostname = \"192.0.2.1\"\n",
			[]string{`key "hostname": "192.0.2.1" is not a valid DNS name: it looks like an IP address`}, nil},
		{"hostname too long", "hostname = \"" + strings.Repeat("a", 64) + ".example\"\n",
			[]string{`key "hostname": `, "longer than 63"}, nil},
		{"domain invalid", "hostname = \"a.example\"\ndomains = [\"ok.example\", \"bad domain\"]\n",
			[]string{`config: t.toml:2: key "domains": "bad domain" is not a valid DNS name`}, nil},
		{"data_dir empty", "hostname = \"a.example\"\ndata_dir = \"\"\n",
			[]string{`config: t.toml:2: key "data_dir": must be set`}, nil},
		{"listen without port", "hostname = \"a.example\"\n[smtp]\nlisten = \"25\"\n",
			[]string{`config: t.toml:3: key "smtp.listen": must be HOST:PORT`}, nil},
		{"listen port too big", "hostname = \"a.example\"\n[pop3]\nlisten_tls = \":99500\"\n",
			[]string{`config: t.toml:3: key "pop3.listen_tls": ":99500": port "99500" must be a number from 0 to 65535`}, nil},
		{"listen named port", "hostname = \"a.example\"\n[imap]\nlisten = \":imap\"\n",
			[]string{`config: t.toml:3: key "imap.listen": ":imap": port "imap" must be a number`}, nil},
		{"listen bad host", "hostname = \"a.example\"\n[submission]\nlisten = \"bad_host:587\"\n",
			[]string{`config: t.toml:3: key "submission.listen": "bad_host:587": host "bad_host" is not a valid DNS name`}, nil},
		{"listen twice", "hostname = \"a.example\"\n[pop3]\nlisten = \"127.0.0.1:1100\"\n[imap]\nlisten = \"127.0.0.1:1100\"\n",
			[]string{`config: t.toml:5: key "imap.listen": address 127.0.0.1:1100 is already used by "pop3.listen"`}, nil},
		{"listen in inline table", "hostname = \"a.example\"\nsmtp = { listen = \"nope\" }\n",
			[]string{`config: t.toml:2: key "smtp.listen": must be HOST:PORT`}, nil},
		{"max_message_bytes", "hostname = \"a.example\"\n[smtp]\nmax_message_bytes = 0\n",
			[]string{`config: t.toml:3: key "smtp.max_message_bytes": must be greater than 0`}, nil},
		{"max_recipients", "hostname = \"a.example\"\n[smtp]\nmax_recipients = 99\n",
			[]string{`config: t.toml:3: key "smtp.max_recipients": must be at least 100 (RFC 5321 4.5.3.1.8)`}, nil},
		{"dotted max_recipients", "hostname = \"a.example\"\nsmtp.max_recipients = 10\n",
			[]string{`config: t.toml:2: key "smtp.max_recipients": must be at least 100`}, nil},
		{"tls cert alone", "hostname = \"a.example\"\n[tls]\ncert = \"/etc/c.pem\"\n",
			[]string{`config: t.toml:3: key "tls.cert": tls.key must be set too, or neither`}, nil},
		{"tls key alone", "hostname = \"a.example\"\n[tls]\nkey = \"/etc/k.pem\"\n",
			[]string{`config: t.toml:3: key "tls.key": tls.cert must be set too, or neither`}, nil},
		{"tls files missing", "hostname = \"a.example\"\n[tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n",
			[]string{`config: t.toml:3: key "tls.cert": cannot be loaded with tls.key: open /nonexistent/c.pem: no such file or directory`}, nil},
		{"relay port 0", "hostname = \"a.example\"\n[relay]\nport = 0\n",
			[]string{`config: t.toml:3: key "relay.port": must be between 1 and 65535`}, nil},
		{"relay port too big", "hostname = \"a.example\"\n[relay]\nport = 65536\n",
			[]string{`key "relay.port": must be between 1 and 65535`}, nil},
		{"relay dns without port", "hostname = \"a.example\"\n[relay]\ndns = \"127.0.0.1\"\n",
			[]string{`config: t.toml:3: key "relay.dns": must be HOST:PORT`}, nil},
		{"relay dns port 0", "hostname = \"a.example\"\n[relay]\ndns = \"127.0.0.1:0\"\n",
			[]string{`key "relay.dns": "127.0.0.1:0": port "0" must be a number from 1 to 65535`}, nil},
		{"log level", "hostname = \"a.example\"\n[log]\nlevel = \"verbose\"\n",
			[]string{`config: t.toml:3: key "log.level": must be one of debug, info, warn, error, not "verbose"`}, nil},
		{"log level case", "hostname = \"a.example\"\n[log]\nlevel = \"INFO\"\n",
			[]string{`key "log.level"`}, nil},
		{"log format", "hostname = \"a.example\"\n[log]\nformat = \"xml\"\n",
			[]string{`config: t.toml:3: key "log.format": must be one of text, json, not "xml"`}, nil},
		{"several problems in file order", "hostname = \"a.example\"\n[log]\nformat = \"xml\"\n[smtp]\nmax_recipients = 1\n",
			[]string{"t.toml:3: key \"log.format\"", "\nconfig: t.toml:5: key \"smtp.max_recipients\""}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseConfig("t.toml", []byte(tt.src))
			if err == nil {
				t.Fatalf("no error; config %+v", cfg)
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q\ndoes not contain %q", msg, w)
				}
			}
			for _, n := range tt.not {
				if strings.Contains(msg, n) {
					t.Errorf("error %q\ncontains %q", msg, n)
				}
			}
		})
	}
}

func TestConfigErrorValues(t *testing.T) {
	_, err := parseConfig("t.toml", []byte("hostname = \"a.example\"\n[smtp]\nmax_recipients = 5\n"))
	var ce *configError
	if !errors.As(err, &ce) {
		t.Fatalf("error %v (%T) is not a *configError", err, err)
	}
	if ce.File != "t.toml" || ce.Line != 3 || ce.Key != "smtp.max_recipients" {
		t.Errorf("got file %q line %d key %q", ce.File, ce.Line, ce.Key)
	}
}

func TestLoadConfigFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := loadConfig(filepath.Join(dir, "missing.toml")); err == nil || !errors.Is(err, os.ErrNotExist) ||
		!strings.Contains(err.Error(), "missing.toml") {
		t.Errorf("missing file: got %v", err)
	}

	path := filepath.Join(dir, "p.toml")
	if err := os.WriteFile(path, []byte("hostname = \"a.example\"\n\n[relay]\nport = -1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := loadConfig(path)
	if want := "config: " + path + `:4: key "relay.port": must be between 1 and 65535`; err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
}

func TestKeyLines(t *testing.T) {
	src := `# comment = 1
hostname = "x" # a = 1
"data_dir" = 'y'
domains = [
  "a = b",
  "c",
]
note = """
fake = 1
"""
[ smtp ]
listen = ":25"
a.b . c = 1
[log]
level = 'info'
`
	want := map[string]int{
		"hostname": 2, "data_dir": 3, "domains": 4, "note": 8,
		"smtp": 11, "smtp.listen": 12, "smtp.a.b.c": 13,
		"log": 14, "log.level": 15,
	}
	if got := keyLines(src); !reflect.DeepEqual(got, want) {
		t.Errorf("keyLines = %v\nwant %v", got, want)
	}
}
