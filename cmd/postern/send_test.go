package main

import (
	"bytes"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// recorder is a go-smtp backend that keeps what it is sent.
type recorder struct {
	mu       sync.Mutex
	user     string
	pass     string
	tls      bool
	from     string
	to       []string
	messages [][]byte
}

func (r *recorder) NewSession(c *smtp.Conn) (smtp.Session, error) {
	_, isTLS := c.TLSConnectionState()
	r.mu.Lock()
	r.tls = r.tls || isTLS
	r.mu.Unlock()
	return &recSession{r: r}, nil
}

type recSession struct{ r *recorder }

func (s *recSession) AuthMechanisms() []string { return []string{sasl.Plain} }
func (s *recSession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		if user != "alice@alpha.test" || pass != "s3cret pass" {
			return errors.New("bad credentials")
		}
		s.r.mu.Lock()
		s.r.user, s.r.pass = user, pass
		s.r.mu.Unlock()
		return nil
	}), nil
}
func (s *recSession) Mail(from string, _ *smtp.MailOptions) error {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	s.r.from = from
	return nil
}
func (s *recSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	s.r.to = append(s.r.to, to)
	return nil
}
func (s *recSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	s.r.messages = append(s.r.messages, b)
	return err
}
func (s *recSession) Reset()        {}
func (s *recSession) Logout() error { return nil }

func TestSendOverSTARTTLS(t *testing.T) {
	cfg := &Config{Hostname: "localhost", DataDir: t.TempDir()}
	tlsConfig, err := loadTLS(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	srv := smtp.NewServer(rec)
	srv.Domain = "localhost"
	srv.TLSConfig = tlsConfig
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()

	attachment := writeFile(t, "photo.png", "\x89PNG\r\n\x1a\nnot really a picture")
	var out, errOut bytes.Buffer
	stdin := "s3cret pass\nHello Bob,\n.leading dot\nbye\n"
	code := run([]string{"send", "-server", ln.Addr().String(), "-cafile", filepath.Join(cfg.DataDir, selfSignedCert),
		"-user", "alice@alpha.test", "-to", "Bob <bob@beta.test>", "-cc", "carol@gamma.test",
		"-subject", "Überraschung", "-attach", attachment, "-v"}, strings.NewReader(stdin), &out, &errOut)
	if code != exitOK {
		t.Fatalf("send: exit %d\n%s\n%s", code, out.String(), errOut.String())
	}
	rec.mu.Lock()
	recorded := struct {
		tls        bool
		user, from string
		to         []string
		messages   [][]byte
	}{rec.tls, rec.user, rec.from, rec.to, rec.messages}
	rec.mu.Unlock()
	if !recorded.tls || recorded.user != "alice@alpha.test" || recorded.from != "alice@alpha.test" || strings.Join(recorded.to, " ") != "bob@beta.test carol@gamma.test" {
		t.Fatalf("recorded %+v", &recorded)
	}
	trace := out.String()
	if strings.Contains(trace, "s3cret") || strings.Contains(trace, "czNjcmV0") {
		t.Fatalf("trace shows the password:\n%s", trace)
	}
	for _, want := range []string{"C: STARTTLS", "S: 220", "-- TLS established", "C: AUTH PLAIN [credentials redacted]", "C: MAIL FROM:<alice@alpha.test>", "C: RCPT TO:<bob@beta.test>", "C: DATA", "Subject: =?utf-8?", "[message body:", "C: ."} {
		if !strings.Contains(trace, want) {
			t.Errorf("trace lacks %q:\n%s", want, trace)
		}
	}
	r, err := mail.CreateReader(bytes.NewReader(recorded.messages[0]))
	if err != nil {
		t.Fatal(err)
	}
	if subj, _ := r.Header.Subject(); subj != "Überraschung" {
		t.Errorf("subject %q", subj)
	}
	p, err := r.NextPart()
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(p.Body)
	if string(body) != "Hello Bob,\r\n.leading dot\r\nbye\r\n" {
		t.Errorf("body %q", body)
	}
	p, err = r.NextPart()
	if err != nil {
		t.Fatal(err)
	}
	if ct, _, _ := p.Header.(*mail.AttachmentHeader).ContentType(); ct != "image/png" {
		t.Errorf("attachment type %q", ct)
	}

	// A wrong password fails with exit 1 and the server's reason.
	code = run([]string{"send", "-v", "-server", ln.Addr().String(), "-insecure", "-user", "alice@alpha.test", "-to", "b@beta.test"},
		strings.NewReader("wrong\nbody\n"), &out, &errOut)
	if code != exitFailure || !strings.Contains(errOut.String(), "AUTH as alice@alpha.test") {
		t.Errorf("bad password: exit %d, %s", code, errOut.String())
	}
	if code := run([]string{"send", "-server", ln.Addr().String()}, strings.NewReader(""), &out, &errOut); code != exitUsage {
		t.Errorf("send without recipients: exit %d", code)
	}
}
