package console

import (
	"bufio"
	"context"
	"encoding/xml"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/mailstore/limits"
)

var testServices = []Service{
	{"submission", 587, false}, {"submission", 465, true},
	{"imap", 143, false}, {"imap", 993, true},
	{"pop3", 995, true},
}

// start serves cfg on 127.0.0.1 and returns the base URL.
func start(t *testing.T, cfg Config) (string, *Server) {
	t.Helper()
	if cfg.Hostname == "" {
		cfg.Hostname = "mail.example.test"
	}
	if cfg.Domains == nil {
		cfg.Domains = func(context.Context) ([]string, error) { return []string{"example.test", "other.test"}, nil }
	}
	if cfg.Services == nil {
		cfg.Services = func() []Service { return testServices }
	}
	s := New(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return "http://" + ln.Addr().String(), s
}

func get(t *testing.T, url string) (int, http.Header, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(body)
}

func TestHealthAndReady(t *testing.T) {
	var broken atomic.Bool
	base, _ := start(t, Config{Ready: func(ctx context.Context) error {
		if broken.Load() {
			return errors.New("mailstore is closed")
		}
		return nil
	}})
	if code, _, body := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, _, _ := get(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz: %d", code)
	}
	broken.Store(true)
	if code, _, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "mailstore is closed") {
		t.Errorf("/readyz with a broken store: %d %q", code, body)
	}
	if code, _, _ := get(t, base+"/nothing"); code != 404 {
		t.Errorf("/nothing: %d", code)
	}
}

// The fields Thunderbird reads from config-v1.1.xml.
func TestAutoconfig(t *testing.T) {
	base, _ := start(t, Config{})
	for _, path := range []string{"/.well-known/autoconfig/mail/config-v1.1.xml", "/mail/config-v1.1.xml"} {
		code, hdr, body := get(t, base+path+"?emailaddress=ann%40Example.test")
		if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "application/xml") {
			t.Fatalf("%s: %d %s %q", path, code, hdr.Get("Content-Type"), body)
		}
		var cc clientConfig
		if err := xml.Unmarshal([]byte(body), &cc); err != nil {
			t.Fatalf("%s: %v\n%s", path, err, body)
		}
		p := cc.Provider
		if cc.Version != "1.1" || p.ID != "example.test" || p.Domain != "example.test" {
			t.Errorf("%s: provider %+v", path, p)
		}
		if len(p.Incoming) != 3 || p.Incoming[0] != (clientServer{"imap", "mail.example.test", 993, "SSL", "password-cleartext", "%EMAILADDRESS%"}) ||
			p.Incoming[1].Port != 143 || p.Incoming[1].SocketType != "STARTTLS" || p.Incoming[2].Type != "pop3" {
			t.Errorf("%s: incoming %+v", path, p.Incoming)
		}
		if len(p.Outgoing) != 2 || p.Outgoing[0] != (clientServer{"smtp", "mail.example.test", 465, "SSL", "password-cleartext", "%EMAILADDRESS%"}) ||
			p.Outgoing[1].Port != 587 {
			t.Errorf("%s: outgoing %+v", path, p.Outgoing)
		}
	}
	if code, _, _ := get(t, base+"/mail/config-v1.1.xml?emailaddress=ann%40elsewhere.test"); code != 404 {
		t.Errorf("foreign domain: %d, want 404", code)
	}
	// Without an address, the Host header names the domain.
	req, _ := http.NewRequest("GET", base+"/mail/config-v1.1.xml", nil)
	req.Host = "autoconfig.other.test"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "<domain>other.test</domain>") {
		t.Errorf("by Host: %d %s", resp.StatusCode, body)
	}
}

// An Outlook-style POX request.
func TestAutodiscover(t *testing.T) {
	base, _ := start(t, Config{})
	req := `<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>ann@example.test</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>`
	resp, err := http.Post(base+"/autodiscover/autodiscover.xml", "text/xml", strings.NewReader(req))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	var got struct {
		XMLName  xml.Name `xml:"http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006 Autodiscover"`
		Response struct {
			XMLName xml.Name `xml:"http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a Response"`
			Account struct {
				AccountType, Action string
				Protocol            []autodiscoverProtocol
			}
		}
	}
	if err := xml.Unmarshal(body, &got); err != nil {
		t.Fatalf("%v\n%s", err, body)
	}
	a := got.Response.Account
	if a.AccountType != "email" || a.Action != "settings" || len(a.Protocol) != 3 {
		t.Fatalf("account %+v\n%s", a, body)
	}
	if p := a.Protocol[0]; p.Type != "IMAP" || p.Server != "mail.example.test" || p.Port != 993 || p.SSL != "on" || p.LoginName != "ann@example.test" {
		t.Errorf("IMAP %+v", p)
	}
	if p := a.Protocol[2]; p.Type != "SMTP" || p.Port != 465 || p.Encryption != "SSL" || p.AuthRequired != "on" {
		t.Errorf("SMTP %+v", p)
	}
	// Bounded body.
	resp, err = http.Post(base+"/autodiscover/autodiscover.xml", "text/xml", strings.NewReader(strings.Repeat("x", maxBodyBytes+1)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("large body: %d", resp.StatusCode)
	}
	resp, err = http.Post(base+"/autodiscover/autodiscover.xml", "text/xml", strings.NewReader("<Autodiscover><Request><EMailAddress>x@nowhere.test</EMailAddress></Request></Autodiscover>"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("foreign domain: %d", resp.StatusCode)
	}
}

func TestMTASTSPolicy(t *testing.T) {
	base, _ := start(t, Config{MTASTSMode: ModeEnforce, MTASTSMaxAge: 24 * time.Hour})
	code, hdr, body := get(t, base+"/.well-known/mta-sts.txt")
	want := "version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\nmax_age: 86400\r\n"
	if code != 200 || body != want || hdr.Get("Content-Type") != "text/plain" {
		t.Errorf("%d %q %q", code, hdr.Get("Content-Type"), body)
	}
}

// A connection beyond the budget is closed at once; one within it works.
func TestConnectionBudget(t *testing.T) {
	parent := limits.NewConns(10, 0, nil)
	base, _ := start(t, Config{Conns: parent, MaxConnections: 1})
	addr := strings.TrimPrefix(base, "http://")
	first, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if _, err := io.WriteString(first, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	first.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(first).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Fatalf("first: %q %v", line, err)
	}
	if parent.Open() != 1 {
		t.Errorf("parent budget holds %d, want 1", parent.Open())
	}
	second, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	second.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := second.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the connection beyond the budget was kept open")
	}
	if n != 0 || err == nil {
		t.Fatalf("the connection beyond the budget read %d bytes, err %v", n, err)
	}
	first.Close()
	deadline := time.Now().Add(5 * time.Second)
	for parent.Open() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if parent.Open() != 0 {
		t.Errorf("parent budget holds %d after close", parent.Open())
	}
}

// Headers beyond maxHeaderBytes are refused.
func TestHeaderLimit(t *testing.T) {
	base, _ := start(t, Config{})
	req, _ := http.NewRequest("GET", base+"/healthz", nil)
	req.Header.Set("X-Big", strings.Repeat("a", maxHeaderBytes+8192))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("large header: %d", resp.StatusCode)
	}
}

func TestRecords(t *testing.T) {
	policy := MTASTSPolicy(ModeTesting, "mail.example.test", 7*24*time.Hour)
	got := Records("example.test", "mail.example.test", testServices, 443, policy)
	for _, want := range []string{
		"autoconfig.example.test.\t3600\tIN\tCNAME\tmail.example.test.\n",
		"mta-sts.example.test.\t3600\tIN\tCNAME\tmail.example.test.\n",
		"_mta-sts.example.test.\t3600\tIN\tTXT\t\"v=STSv1; id=" + MTASTSID(policy) + "\"\n",
		"_autodiscover._tcp.example.test.\t3600\tIN\tSRV\t0 1 443 mail.example.test.\n",
		"_submissions._tcp.example.test.\t3600\tIN\tSRV\t0 1 465 mail.example.test.\n",
		"_submission._tcp.example.test.\t3600\tIN\tSRV\t5 1 587 mail.example.test.\n",
		"_imaps._tcp.example.test.\t3600\tIN\tSRV\t0 1 993 mail.example.test.\n",
		"_pop3s._tcp.example.test.\t3600\tIN\tSRV\t10 1 995 mail.example.test.\n",
		"_pop3._tcp.example.test.\t3600\tIN\tSRV\t0 0 0 .\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("records lack %q:\n%s", want, got)
		}
	}
	if id := MTASTSID(policy); len(id) > 32 || id == MTASTSID(MTASTSPolicy(ModeEnforce, "mail.example.test", 7*24*time.Hour)) {
		t.Errorf("id %q does not follow the policy", id)
	}
}
