//go:debug rsa1024min=0

package msgauth

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-msgauth/dmarc"

	"github.com/postern/postern/smtpd/msgauth/msgauthtest"
)

func TestGenerateKeys(t *testing.T) {
	keys := keysFor(t, "alpha.test")
	if len(keys) != 2 {
		t.Fatalf("%d keys", len(keys))
	}
	want := []struct {
		sel  string
		alg  Algorithm
		kTag string
	}{{"p20261201e", Ed25519, "k=ed25519"}, {"p20261201r", RSA, "k=rsa"}}
	for i, w := range want {
		k := keys[i]
		if k.Selector != w.sel || k.Algorithm != w.alg || k.Domain != "alpha.test" {
			t.Errorf("key %d: %s %s %s", i, k.Domain, k.Selector, k.Algorithm)
		}
		rec := k.DNSRecord()
		if !strings.HasPrefix(rec, "v=DKIM1; "+w.kTag+"; p=") {
			t.Errorf("record %q", rec)
		}
		pemData, err := k.MarshalPrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParsePrivateKey(k.Domain, k.Selector, k.Created, pemData)
		if err != nil {
			t.Fatal(err)
		}
		if back.Algorithm != k.Algorithm || back.DNSRecord() != rec {
			t.Errorf("key %d after PEM round trip: %s %q", i, back.Algorithm, back.DNSRecord())
		}
	}
	if k := keys[1].Private.(*rsa.PrivateKey); k.N.BitLen() != 2048 {
		t.Errorf("RSA key of %d bits", k.N.BitLen())
	}
	if _, err := ParsePrivateKey("alpha.test", "x", day, []byte("not a key")); err == nil {
		t.Error("garbage parsed as a key")
	}
}

func TestSignFields(t *testing.T) {
	keys := keysFor(t, "alpha.test")
	fields, err := Sign(message("alice@alpha.test"), keys, day)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(fields, "DKIM-Signature:"); n != 2 {
		t.Fatalf("%d signatures:\n%s", n, fields)
	}
	unfolded := strings.NewReplacer("\r\n", "", " ", "", "\t", "").Replace(fields)
	for _, want := range []string{"c=relaxed/relaxed", "a=ed25519-sha256", "a=rsa-sha256", "s=p20261201e", "d=alpha.test",
		"h=From:To:Subject:Date:Message-ID:MIME-Version:Content-Type:From;"} {
		if !strings.Contains(unfolded, want) {
			t.Errorf("signatures lack %q:\n%s", want, fields)
		}
	}
	// A key made for a later rotation is not used yet.
	later := keys[0]
	later.Created = day.Add(time.Hour)
	if fields, err := Sign(message("alice@alpha.test"), []Key{later}, day); err != nil || fields != "" {
		t.Errorf("future key signed: %q, %v", fields, err)
	}
	// The Signer asks its KeyStore; a domain without keys is not signed.
	ks := &MemKeyStore{}
	ks.Add(keys...)
	s := &Signer{Keys: ks}
	if f, err := s.Sign(context.Background(), "ALPHA.test", message("alice@alpha.test")); err != nil || strings.Count(f, "DKIM-Signature:") != 2 {
		t.Errorf("Signer for alpha.test: %q, %v", f, err)
	}
	if f, err := s.Sign(context.Background(), "gamma.test", message("carol@gamma.test")); err != nil || f != "" {
		t.Errorf("Signer for gamma.test: %q, %v", f, err)
	}
}

// TestSignVerify verifies our signatures with go-msgauth's verifier, and
// sees the over-signed From refuse a From added later.
func TestSignVerify(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	keys := keysFor(t, "alpha.test")
	publish(t, d, keys...)
	c := newChecker(t, d.Addr)
	for _, k := range keys {
		t.Run(string(k.Algorithm), func(t *testing.T) {
			msg := signed(t, message("alice@alpha.test"), k)
			verifs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{LookupTXT: c.Resolver.TXTFunc(context.Background())})
			if err != nil || len(verifs) != 1 || verifs[0].Err != nil {
				t.Fatalf("verify: %v %+v", err, verifs)
			}
			forged := append([]byte("From: mallory@alpha.test\r\n"), msg...)
			verifs, err = dkim.VerifyWithOptions(bytes.NewReader(forged), &dkim.VerifyOptions{LookupTXT: c.Resolver.TXTFunc(context.Background())})
			if err != nil || len(verifs) != 1 || verifs[0].Err == nil {
				t.Fatalf("a second From did not break the signature: %v %+v", err, verifs)
			}
		})
	}
}

// TestSignVerifyDkimpy has Debian's python3-dkim (dkimpy), a verifier
// written apart from ours, check our Ed25519 and RSA signatures with the
// records DNSRecord prints.
func TestSignVerifyDkimpy(t *testing.T) {
	const python = "/usr/bin/python3"
	if err := exec.Command(python, "-c", "import dkim, nacl").Run(); err != nil {
		if os.Getenv("POSTERN_REQUIRE_INTEROP") == "1" {
			t.Fatalf("python3-dkim is required: %v", err)
		}
		t.Skipf("python3-dkim (with python3-nacl) not installed: %v", err)
	}
	keys := keysFor(t, "alpha.test")
	records := map[string]string{}
	for _, k := range keys {
		records[k.DNSName()+"."] = k.DNSRecord()
	}
	dir := t.TempDir()
	recJSON, _ := json.Marshal(records)
	script := `
import dkim, json, sys
records = json.load(open(sys.argv[1]))
def dnsfunc(name, timeout=5):
    return records.get(name.decode() if isinstance(name, bytes) else name, "").encode()
msg = open(sys.argv[2], "rb").read()
d = dkim.DKIM(msg)
try:
    ok = all(d.verify(idx=i, dnsfunc=dnsfunc) for i in range(msg.count(b"DKIM-Signature:")))
except dkim.ValidationError as e:
    ok = False
print("ok" if ok else "bad")
`
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "rec.json"), recJSON, 0o600))
	must(os.WriteFile(filepath.Join(dir, "verify.py"), []byte(script), 0o600))
	run := func(name string, msg []byte) string {
		path := filepath.Join(dir, name)
		must(os.WriteFile(path, msg, 0o600))
		out, err := exec.Command(python, filepath.Join(dir, "verify.py"), filepath.Join(dir, "rec.json"), path).CombinedOutput()
		if err != nil {
			t.Fatalf("dkimpy: %v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for _, k := range keys {
		if got := run(k.Selector, signed(t, message("alice@alpha.test"), k)); got != "ok" {
			t.Errorf("dkimpy on the %s signature: %s", k.Algorithm, got)
		}
	}
	if got := run("both", signed(t, message("alice@alpha.test"), keys...)); got != "ok" {
		t.Errorf("dkimpy on both signatures: %s", got)
	}
	tampered := bytes.Replace(signed(t, message("alice@alpha.test"), keys...), []byte("noon"), []byte("one"), 1)
	if got := run("tampered", tampered); got != "bad" {
		t.Errorf("dkimpy on a changed body: %s", got)
	}
}

func TestSPF(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	d.Add(t,
		`pass.test. 300 TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`fail.test. 300 TXT "v=spf1 ip4:203.0.113.0/24 -all"`,
		`soft.test. 300 TXT "v=spf1 ip4:203.0.113.0/24 ~all"`,
		`neutral.test. 300 TXT "v=spf1 ?all"`,
		`none.test. 300 TXT "some other record"`,
		`none.test. 300 MX 10 mx.none.test.`,
		`helo.test. 300 TXT "v=spf1 a -all"`,
		`helo.test. 300 A 192.0.2.1`,
	)
	// RFC 7208 4.6.4: more than 10 mechanisms that look up DNS.
	var many []string
	for i := range 11 {
		name := "a" + string(rune('a'+i)) + ".many.test"
		many = append(many, "a:"+name)
		d.Add(t, name+`. 300 A 203.0.113.9`)
	}
	d.AddTXT(t, "many.test", "v=spf1 "+strings.Join(many, " ")+" ip4:192.0.2.1 -all")
	c := newChecker(t, d.Addr)
	cases := []struct {
		from, helo string
		want       authres.ResultValue
	}{
		{"a@pass.test", "x.test", authres.ResultPass},
		{"a@fail.test", "x.test", authres.ResultFail},
		{"a@soft.test", "x.test", authres.ResultSoftFail},
		{"a@neutral.test", "x.test", authres.ResultNeutral},
		{"a@none.test", "x.test", authres.ResultNone},
		{"a@nxdomain.test", "x.test", authres.ResultNone},
		{"a@many.test", "x.test", authres.ResultPermError},
		{"", "helo.test", authres.ResultPass}, // null sender: HELO checked
	}
	for _, tc := range cases {
		r := check(t, c, CheckInput{IP: alphaIP, HELO: tc.helo, MailFrom: tc.from, Message: message("x@x.test")})
		if r.SPF.Value != tc.want {
			t.Errorf("MAIL FROM <%s> HELO %s: spf=%s (%v), want %s", tc.from, tc.helo, r.SPF.Value, r.SPF.Err, tc.want)
		}
	}
	r := check(t, c, CheckInput{IP: alphaIP, HELO: "helo.test", Message: message("x@x.test")})
	if f := r.Field("mx.beta.test"); !strings.Contains(f, "spf=pass smtp.helo=helo.test") {
		t.Errorf("HELO result field:\n%s", f)
	}
}

// TestTempError: a DNS server that never answers gives temperror within
// the timeouts, for SPF, DKIM and DMARC alike.
func TestTempError(t *testing.T) {
	keys := keysFor(t, "alpha.test")
	c := newChecker(t, msgauthtest.Silent(t))
	start := time.Now()
	r := check(t, c, CheckInput{IP: alphaIP, HELO: "mx.alpha.test", MailFrom: "alice@alpha.test",
		Message: signed(t, message("alice@alpha.test"), keys[0])})
	if took := time.Since(start); took > c.Timeout+time.Second {
		t.Errorf("checks took %v, past the %v timeout", took, c.Timeout)
	}
	if r.SPF.Value != authres.ResultTempError || len(r.DKIM) != 1 || r.DKIM[0].Value != authres.ResultTempError ||
		r.DMARC.Value != authres.ResultTempError || !r.TempError() {
		t.Errorf("against a silent server: %s", r.Field("mx"))
	}
	// SERVFAIL is temporary too.
	d := msgauthtest.NewDNS(t)
	d.Fail("alpha.test")
	r = check(t, newChecker(t, d.Addr), CheckInput{IP: alphaIP, HELO: "x.test", MailFrom: "alice@alpha.test", Message: message("alice@alpha.test")})
	if r.SPF.Value != authres.ResultTempError {
		t.Errorf("SERVFAIL: spf=%s", r.SPF.Value)
	}
}

// TestDMARC covers alignment (relaxed and strict, SPF and DKIM), the
// organisational domain and the subdomain policy.
func TestDMARC(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	keys := keysFor(t, "alpha.test")
	publish(t, d, keys...)
	d.Add(t,
		`alpha.test. 300 TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`bounce.alpha.test. 300 TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`_dmarc.alpha.test. 300 TXT "v=DMARC1; p=reject; sp=quarantine"`,
		`strict.test. 300 TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`mail.strict.test. 300 TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`_dmarc.strict.test. 300 TXT "v=DMARC1; p=reject; aspf=s; adkim=s"`,
		`_dmarc.none.test. 300 TXT "v=DMARC1; p=none"`,
	)
	c := newChecker(t, d.Addr)
	cases := []struct {
		name     string
		ip       string
		mailFrom string
		msg      []byte
		want     authres.ResultValue
		policy   dmarc.Policy
	}{
		{"SPF aligned", "192.0.2.1", "a@alpha.test", message("alice@alpha.test"), authres.ResultPass, dmarc.PolicyReject},
		{"SPF relaxed subdomain", "192.0.2.1", "a@bounce.alpha.test", message("alice@alpha.test"), authres.ResultPass, dmarc.PolicyReject},
		{"SPF from elsewhere", "198.51.100.7", "a@alpha.test", message("alice@alpha.test"), authres.ResultFail, dmarc.PolicyReject},
		{"SPF unaligned", "192.0.2.1", "a@strict.test", message("alice@alpha.test"), authres.ResultFail, dmarc.PolicyReject},
		{"DKIM aligned", "198.51.100.7", "a@other.test", signed(t, message("alice@alpha.test"), keys[0]), authres.ResultPass, dmarc.PolicyReject},
		{"subdomain policy", "198.51.100.7", "a@other.test", message("alice@news.alpha.test"), authres.ResultFail, dmarc.PolicyQuarantine},
		{"subdomain DKIM relaxed", "198.51.100.7", "", signed(t, message("alice@news.alpha.test"), keys[1]), authres.ResultPass, dmarc.PolicyQuarantine},
		{"strict SPF same domain", "192.0.2.1", "a@strict.test", message("bob@strict.test"), authres.ResultPass, dmarc.PolicyReject},
		{"strict SPF subdomain", "192.0.2.1", "a@mail.strict.test", message("bob@strict.test"), authres.ResultFail, dmarc.PolicyReject},
		{"no record", "192.0.2.1", "a@alpha.test", message("x@nodmarc.test"), authres.ResultNone, ""},
		{"p=none", "198.51.100.7", "a@alpha.test", message("x@none.test"), authres.ResultFail, dmarc.PolicyNone},
	}
	for _, tc := range cases {
		r := check(t, c, CheckInput{IP: mustAddr(tc.ip), HELO: "client.test", MailFrom: tc.mailFrom, Message: tc.msg})
		if r.DMARC.Value != tc.want || r.DMARC.Policy != tc.policy {
			t.Errorf("%s: dmarc=%s policy %q (%v), want %s %q\n%s", tc.name, r.DMARC.Value, r.DMARC.Policy, r.DMARC.Err, tc.want, tc.policy, r.Field("mx"))
		}
	}
}

// TestTwoSignaturesOneBroken: a broken signature beside a good one fails
// alone; DMARC passes on the good one.
func TestTwoSignaturesOneBroken(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	keys := keysFor(t, "alpha.test")
	publish(t, d, keys...)
	d.Add(t, `_dmarc.alpha.test. 300 TXT "v=DMARC1; p=reject"`)
	msg := signed(t, message("alice@alpha.test"), keys[1])
	// A signature by the Ed25519 key over another body: its bh= is wrong here.
	other := signed(t, bytes.Replace(message("alice@alpha.test"), []byte("noon"), []byte("one"), 1), keys[0])
	broken := other[:bytes.Index(other, []byte("From: Alice"))]
	msg = append(append([]byte{}, broken...), msg...)
	r := check(t, newChecker(t, d.Addr), CheckInput{IP: otherIP, HELO: "client.test", MailFrom: "a@other.test", Message: msg})
	if len(r.DKIM) != 2 {
		t.Fatalf("%d DKIM results", len(r.DKIM))
	}
	if r.DKIM[0].Value != authres.ResultFail || r.DKIM[0].Selector != "p20261201e" ||
		r.DKIM[1].Value != authres.ResultPass || r.DKIM[1].Selector != "p20261201r" || r.DMARC.Value != authres.ResultPass {
		t.Errorf("results:\n%s", r.Field("mx.beta.test"))
	}
	f := r.Field("mx.beta.test")
	for _, want := range []string{"Authentication-Results: mx.beta.test;\r\n\tspf=none smtp.mailfrom=other.test;\r\n\tdkim=fail ",
		"dkim=pass header.a=rsa-sha256 header.d=alpha.test header.i=@alpha.test header.s=p20261201r;", "\tdmarc=pass header.from=alpha.test\r\n"} {
		if !strings.Contains(f, want) {
			t.Errorf("field lacks %q:\n%s", want, f)
		}
	}
	if _, _, err := authres.Parse(strings.TrimPrefix(strings.ReplaceAll(f, "\r\n\t", " "), "Authentication-Results: ")); err != nil {
		t.Errorf("field does not parse: %v", err)
	}
}

// TestTooManySignatures: only the first MaxSignatures are verified.
func TestTooManySignatures(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	keys := keysFor(t, "alpha.test")
	publish(t, d, keys...)
	msg := message("alice@alpha.test")
	for range 4 {
		msg = signed(t, msg, keys[0])
	}
	c := newChecker(t, d.Addr)
	c.MaxSignatures = 2
	r := check(t, c, CheckInput{IP: otherIP, HELO: "client.test", MailFrom: "a@other.test", Message: msg})
	if len(r.DKIM) != 2 {
		t.Errorf("%d signatures verified, want 2", len(r.DKIM))
	}
}

// TestWeakRSAKey: a signature by an RSA key under 1024 bits fails (RFC
// 8301 3.2).
func TestWeakRSAKey(t *testing.T) {
	weak, err := rsa.GenerateKey(rand.Reader, 768)
	if err != nil {
		t.Skipf("cannot make a 768-bit key here: %v", err)
	}
	k := Key{Domain: "alpha.test", Selector: "weak", Algorithm: RSA, Private: weak, Created: day}
	d := msgauthtest.NewDNS(t)
	publish(t, d, k)
	r := check(t, newChecker(t, d.Addr), CheckInput{IP: otherIP, HELO: "client.test", MailFrom: "a@other.test",
		Message: signed(t, message("alice@alpha.test"), k)})
	if len(r.DKIM) != 1 || r.DKIM[0].Value != authres.ResultFail {
		t.Errorf("weak key: %s", r.Field("mx"))
	}
}

func TestRemoveAuthResults(t *testing.T) {
	msg := []byte("Authentication-Results: mx.beta.test;\r\n\tspf=pass smtp.mailfrom=alpha.test\r\n" +
		"Received: from x\r\n" +
		"authentication-results: (forged) MX.Beta.Test 1; dkim=pass header.d=beta.test\r\n" +
		"Authentication-Results: mx.alpha.test; dkim=pass header.d=alpha.test\r\n" +
		"Authentication-Results: mx.beta.test.evil; none\r\n" +
		"Subject: hi\r\n\r\n" +
		"Authentication-Results: mx.beta.test; in the body\r\n")
	got := string(RemoveAuthResults(msg, "mx.beta.test"))
	want := "Received: from x\r\n" +
		"Authentication-Results: mx.alpha.test; dkim=pass header.d=alpha.test\r\n" +
		"Authentication-Results: mx.beta.test.evil; none\r\n" +
		"Subject: hi\r\n\r\n" +
		"Authentication-Results: mx.beta.test; in the body\r\n"
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	plain := message("a@b.test")
	if out := RemoveAuthResults(plain, "mx.beta.test"); &out[0] != &plain[0] {
		t.Error("a message without the field was copied")
	}
}

// TestResolverCache: answers are kept for their TTL, within the bound.
func TestResolverCache(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	d.Add(t, `a.test. 60 TXT "one"`, `b.test. 60 TXT "two"`, `c.test. 60 TXT "three"`)
	now := day
	r, err := NewResolver(ResolverConfig{Server: d.Addr, CacheEntries: 2, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 3 {
		if txt, err := r.LookupTXT(ctx, "A.test."); err != nil || len(txt) != 1 || txt[0] != "one" {
			t.Fatalf("TXT a.test: %q, %v", txt, err)
		}
	}
	if q := d.Queries(); q != 1 {
		t.Errorf("%d queries for three lookups within the TTL", q)
	}
	now = now.Add(61 * time.Second)
	r.LookupTXT(ctx, "a.test")
	if q := d.Queries(); q != 2 {
		t.Errorf("%d queries after the TTL, want 2", q)
	}
	r.LookupTXT(ctx, "b.test")
	r.LookupTXT(ctx, "c.test")
	if n := r.CacheLen(); n > 2 {
		t.Errorf("cache holds %d answers, bound 2", n)
	}
	if _, err := r.LookupTXT(ctx, "missing.test"); err == nil {
		t.Error("NXDOMAIN gave no error")
	}
}

// TestResolverLogsLookups: one "dns lookup" line per query sent, with
// type and result, none for a cached answer.
func TestResolverLogsLookups(t *testing.T) {
	d := msgauthtest.NewDNS(t)
	d.Add(t, `a.test. 60 TXT "one"`)
	var buf bytes.Buffer
	r, err := NewResolver(ResolverConfig{Server: d.Addr, Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r.LookupTXT(ctx, "a.test")
	r.LookupTXT(ctx, "a.test") // cached
	r.LookupTXT(ctx, "missing.test")
	bad, err := NewResolver(ResolverConfig{Server: "127.0.0.1:1", Timeout: time.Second, Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	bad.LookupMX(ctx, "b.test")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{
		`msg="dns lookup" type=TXT name=a.test. result=ok answers=1`,
		`msg="dns lookup" type=TXT name=missing.test. result=nxdomain answers=0`,
		`msg="dns lookup" type=MX name=b.test. result=fail answers=0`,
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) {
			t.Errorf("line %d: %s\nwant %s", i, lines[i], w)
		}
	}
}

// BenchmarkSign is the signing cost per submitted message (4 KiB) for
// each key type.
func BenchmarkSign(b *testing.B) {
	keys := keysFor(b, "alpha.test")
	msg := message("alice@alpha.test")
	for len(msg) < 4096 {
		msg = append(msg, strings.Repeat("0123456789abcdef", 4)+"\r\n"...)
	}
	for _, k := range keys {
		name := string(k.Algorithm)
		if k.Algorithm == RSA {
			name = "rsa2048"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				if _, err := Sign(msg, []Key{k}, day); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
