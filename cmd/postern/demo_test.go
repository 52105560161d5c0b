package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/mailstore/storetest"
)

// demoFlowWant is what `postern demo` must show, in this order.
var demoFlowWant = []string{
	"== 1. Two mail domains",
	"[alpha smtp]     (listening) addr=127.0.0.2:", "service=MX",
	"[alpha smtp]     (listening) addr=127.0.0.2:", "service=submission",
	"[alpha pop3]     (listening) addr=127.0.0.2:", "service=POP3",
	"[alpha imap]     (listening) addr=127.0.0.2:", "service=IMAP",
	"[beta smtp]      (listening) addr=127.0.0.3:", "service=MX",
	"[beta smtp]      (listening) addr=127.0.0.3:", "service=submission",
	"[beta pop3]      (listening) addr=127.0.0.3:", "service=POP3",
	"[beta imap]      (listening) addr=127.0.0.3:", "service=IMAP",
	"== 2. alice submits",
	"MAIL FROM:<alice@alpha.test>", "RCPT TO:<bob@beta.test>",
	"[alice client]   C: STARTTLS", "certificate check: the server shows \"mx.alpha.test\"",
	"verified: signed by a certificate alice's mail program trusts", "TLS established (TLS 1.3)",
	"[alice client]   C: EHLO alice-laptop.alpha.test", "C: AUTH PLAIN [credentials redacted]",
	"size: ", "bytes as alice's mail program wrote them, announced as SIZE=",
	"Subject as sent:  =?utf-8?q?Gr=C3=BC=C3=9Fe", "Subject decoded:  Grüße from alpha — a demo message",
	"the message: multipart/mixed, its parts separated by lines \"--",
	"part 1: text/plain; charset=utf-8, Content-Transfer-Encoding: quoted-printable", "as sent | Gr=C3=BC=C3=9Fe,", "decoded | Grüße,",
	"part 2: text/plain; charset=utf-8, file notes.txt, Content-Transfer-Encoding: base64", "decoded | An attachment, as a second MIME part.",
	"(the closing boundary)",
	"== 3. The message waits in alpha's outbound queue", "to <bob@beta.test> (domain beta.test)",
	"bytes submitted -> ", "bytes in the queue (+", "alpha's submission server added DKIM-Signature (2), Received, Date, Message-ID",
	"signed it with alpha.test's keys", "+ DKIM-Signature: a=ed25519-sha256;", "d=alpha.test;", "+ DKIM-Signature: a=rsa-sha256;",
	"== 4. The relay looks up", "beta.test\tmail exchanger = 10 mx.beta.test.", "mx.beta.test\tinternet address = 127.0.0.3",
	"== 5. alpha's relay delivers", "[alpha relay]    C: EHLO mx.alpha.test", "C: STARTTLS", "verified=false", "(delivered)",
	"octets sent after DATA (+3): the line \".\" that ends the data",
	"verified=false: beta's certificate is self-signed", "opportunistic (RFC 3207, RFC 7435)", "MTA-STS (RFC 8461) or DANE (RFC 7672)",
	"== 6. The message in bob's INBOX", "bytes stored in bob's INBOX (+", "beta's MX added Return-Path, Authentication-Results, Received",
	"+ Return-Path: <alice@alpha.test>",
	"+ Authentication-Results: mx.beta.test; spf=pass smtp.mailfrom=alpha.test; dkim=pass", "dmarc=pass header.from=alpha.test",
	"+ Received: from mx.alpha.test ([127.0.0.2]) by mx.beta.test", "+ Received: from alice-laptop.alpha.test",
	"+ Date:", "+ Message-ID:", "  Subject:",
	"== 7. bob reads it over POP3", "state: AUTHORIZATION", "C: PASS ***", "state: TRANSACTION", "C: RETR 1", "state: UPDATE",
	"== 8. bob looks at it over IMAP", "C: T1 LOGIN ***", "FETCH 1 (BODYSTRUCTURE)", "part 2: text/plain", "file notes.txt",
	"FETCH 1 (BODY.PEEK[1])", "[beta imap]      S: * 1 FETCH (BODY[1] {", "[beta imap]      S: Hello Bob,",
	"[beta imap]      S: this message went through DNS, SMTP, a queue and a relay.", "[beta imap]      S: Alice",
	"[beta imap]      S: )", "S: * BYE",
	"OK: the message arrived intact",
}

// wantInOrder fails t unless out contains each of want, in order.
func wantInOrder(t *testing.T, out string, want []string) {
	t.Helper()
	rest := out
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("output lacks %q (in order):\n%s", w, out)
		}
		rest = rest[i+len(w):]
	}
}

// noPasswords fails t if out shows a demo user's password.
func noPasswords(t *testing.T, out string) {
	t.Helper()
	for _, secret := range []string{"alice-demo-password", "bob-demo-password"} {
		if strings.Contains(out, secret) {
			t.Errorf("demo output shows the password %q", secret)
		}
	}
}

// demoEvents parses the output of `postern demo -json`.
func demoEvents(t *testing.T, out string) []event {
	t.Helper()
	var events []event
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("not a JSON line: %q: %v", sc.Text(), err)
		}
		events = append(events, e)
	}
	return events
}

// demoJSONText renders the events of `postern demo -json` as the text
// output prints them.
func demoJSONText(events []event) string {
	var b strings.Builder
	for _, e := range events {
		writeEventText(&b, e)
	}
	return b.String()
}

// listenersInStep1 checks that the lines of out between the step 1 and
// step 2 headings hold all eight listeners, and that no listener is
// announced elsewhere.
func listenersInStep1(t *testing.T, out string) {
	t.Helper()
	_, after, _ := strings.Cut(out, "\n== 1. ")
	step1, rest, _ := strings.Cut(after, "\n== 2. ")
	if n := strings.Count(step1, "(listening)"); n != 8 {
		t.Errorf("step 1 announces %d listeners, want 8:\n%s", n, step1)
	}
	if strings.Contains(rest, "(listening)") || strings.Contains(strings.Split(out, "\n== 1. ")[0], "(listening)") {
		t.Errorf("a listener is announced outside step 1:\n%s", out)
	}
}

// sessionsEndInStep checks that every session a step's heading is
// followed by ends in that step: its disconnect line is not printed under
// the next heading.
func sessionsEndInStep(t *testing.T, out string) {
	t.Helper()
	for _, step := range strings.Split(out, "\n== ") {
		title, _, _ := strings.Cut(step, "\n")
		for _, part := range []string{"alpha smtp", "beta smtp", "alpha imap", "beta imap"} {
			p := fmt.Sprintf("%-16s", "["+part+"]")
			opened, closed := strings.Count(step, p+" (session start)"), strings.Count(step, p+" (session end)")
			if opened != closed {
				t.Errorf("step %q: %s logs %d connects and %d disconnects:\n%s", title, part, opened, closed, out)
			}
		}
	}
}

func TestDemo(t *testing.T) {
	code, out, errOut := runIn(t, "", "demo")
	if code != exitOK {
		t.Fatalf("demo: exit %d\n%s\n%s", code, out, errOut)
	}
	wantInOrder(t, out, demoFlowWant)
	listenersInStep1(t, out)
	sessionsEndInStep(t, out)
	noPasswords(t, out)
	sizesAgree(t, out)
}

// sizesAgree checks the demo's size lines against what the sessions
// themselves said: the SIZE parameter alice sent, the octets alpha's relay
// wrote after DATA, the size beta's MX stored and POP3 reported.
func sizesAgree(t *testing.T, out string) {
	t.Helper()
	find := func(pattern string) []string {
		t.Helper()
		m := regexp.MustCompile(pattern).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("output lacks %s:\n%s", pattern, out)
		}
		return m[1:]
	}
	submitted := find(`\[alice client\]   C: MAIL FROM:<alice@alpha.test> BODY=8BITMIME SIZE=(\d+)`)[0]
	line := find(`size: (\d+) bytes as alice's mail program wrote them, announced as SIZE=(\d+)`)
	queuedLine := find(`size: (\d+) bytes submitted -> (\d+) bytes in the queue \(\+(\d+)\)`)
	queued := find(`\[alpha smtp\]     \(message accepted\) .* size=(\d+)`)[0]
	relayed := find(`\[alpha relay\]    C: MAIL FROM:<alice@alpha.test> BODY=8BITMIME SIZE=(\d+)`)[0]
	wire := find(`\[alpha relay\]    C: <(\d+) octets of message data>`)[0]
	wireLine := find(`size: (\d+) bytes in the queue, announced as SIZE=(\d+) -> (\d+) octets sent after DATA`)
	stored := find(`\[beta smtp\]      \(message accepted\) .* size=(\d+)`)[0]
	storedLine := find(`size: (\d+) bytes received \(the (\d+) octets without what SMTP added\) -> (\d+) bytes stored`)
	popped := find(`\[beta pop3\]      S: \+OK (\d+) octets`)[0]
	for _, c := range [][2]string{
		{line[0], submitted}, {line[1], submitted}, {queuedLine[0], submitted},
		{queuedLine[1], queued}, {wireLine[0], queued}, {wireLine[1], relayed}, {relayed, queued},
		{wireLine[2], wire}, {storedLine[0], queued}, {storedLine[1], wire},
		{storedLine[2], stored}, {popped, stored},
	} {
		if c[0] != c[1] {
			t.Errorf("a size line says %s where the session says %s", c[0], c[1])
		}
	}
	a, _ := strconv.Atoi(queuedLine[0])
	b, _ := strconv.Atoi(queuedLine[1])
	if d, _ := strconv.Atoi(queuedLine[2]); d != b-a {
		t.Errorf("%d -> %d is not +%d", a, b, d)
	}
}

// TestDemoJSON checks that -json carries the same events, in the same
// order, as the text output: rendered as text, the JSON events show the
// same lines.
func TestDemoJSON(t *testing.T) {
	code, out, errOut := runIn(t, "", "demo", "-json")
	if code != exitOK {
		t.Fatalf("demo -json: exit %d\n%s", code, errOut)
	}
	events := demoEvents(t, out)
	kinds := map[string]int{}
	for _, e := range events {
		kinds[e.Kind]++
		if e.Kind == "trace" && (e.Part == "" || (e.Dir != "C" && e.Dir != "S")) {
			t.Errorf("trace event without part or direction: %+v", e)
		}
		if e.Kind == "event" && e.Text == "listening" && !strings.HasPrefix(e.Step, "1. ") {
			t.Errorf("listener announced in step %q: %+v", e.Step, e)
		}
	}
	if kinds["step"] < 8 || kinds["trace"] < 30 || kinds["result"] != 1 {
		t.Errorf("event counts %v", kinds)
	}
	text := demoJSONText(events)
	wantInOrder(t, text, demoFlowWant)
	listenersInStep1(t, text)
	sessionsEndInStep(t, text)
	noPasswords(t, out)
	sizesAgree(t, text)
}

func TestDemoKeep(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr storetest.SyncBuffer
	exited := make(chan int, 1)
	go func() {
		exited <- runContext(ctx, []string{"demo", "-keep"}, strings.NewReader(""), &stdout, &stderr)
	}()
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(stdout.String(), "keep running") {
		if time.Now().After(deadline) {
			t.Fatalf("demo -keep never said the servers keep running:\n%s", stdout.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	out := stdout.String()
	wantInOrder(t, out, []string{"keep running",
		"alice's login (submission at 127.0.0.2:", "alice@alpha.test  password alice-demo-password",
		"bob's login (POP3 at 127.0.0.3:", "bob@beta.test  password bob-demo-password",
		"swaks --server 127.0.0.2:", "--tls --auth PLAIN --auth-user alice@alpha.test",
		"smtplib.SMTP('127.0.0.2'", "s.starttls(", "s.login('alice@alpha.test'",
		"poplib.POP3('127.0.0.3'", "curl --user 'bob@beta.test:bob-demo-password' pop3://127.0.0.3:",
		"imap://127.0.0.3:", "mutt -f imap://bob%40beta.test@127.0.0.3:", "swaks --server 127.0.0.3:"})
	// The printed logins work: alice submits as the commands would, the
	// running relay delivers, and bob finds the message over POP3.
	sub := regexp.MustCompile(`alice's login \(submission at (\S+), STARTTLS\)`).FindStringSubmatch(out)
	pop := regexp.MustCompile(`bob's login \(POP3 at (\S+),`).FindStringSubmatch(out)
	if sub == nil || pop == nil {
		t.Fatalf("demo -keep does not give the addresses:\n%s", out)
	}
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	if _, err := submit(sctx, submission{
		addr: sub[1], mode: tlsStartTLS, tls: &tls.Config{InsecureSkipVerify: true}, helo: "keep-test",
		user: "alice@alpha.test", password: "alice-demo-password", from: "alice@alpha.test",
		to: []string{"bob@beta.test"}, msg: []byte("Subject: by hand\r\n\r\nHello Bob\r\n"),
	}); err != nil {
		t.Fatalf("submission with alice's printed login: %v", err)
	}
	bob := &demoDomain{pop3Addr: pop[1], user: "bob@beta.test", password: "bob-demo-password"}
	for i := 0; ; i++ {
		p, err := pop3Login(bob)
		if err != nil {
			t.Fatalf("POP3 with bob's printed login: %v", err)
		}
		stat, err := p.cmd("STAT")
		p.cmd("QUIT")
		p.conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		// The demo's own message is the first.
		if !strings.HasPrefix(stat, "+OK 2 ") {
			if i == 300 {
				t.Fatalf("the message alice submitted never reached bob: %s", stat)
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		break
	}
	cancel()
	select {
	case code := <-exited:
		if code != exitOK {
			t.Errorf("demo -keep exit %d", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("demo -keep did not stop")
	}
}

func TestDemoScenarios(t *testing.T) {
	code, out, _ := runIn(t, "", "demo", "-scenario", "list")
	if code != exitOK {
		t.Fatalf("-scenario list: exit %d", code)
	}
	for _, sc := range scenarios() {
		if !strings.Contains(out, sc.name) {
			t.Errorf("-scenario list lacks %s", sc.name)
		}
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, sc := range scenarios() {
		if sc.name != "flow" && !strings.Contains(string(readme), "| `"+sc.name+"` |") {
			t.Errorf("the README's scenario table lacks %s", sc.name)
		}
	}
	if code, _, _ := runIn(t, "", "demo", "-scenario", "no-such"); code != exitUsage {
		t.Errorf("unknown scenario: exit %d, want %d", code, exitUsage)
	}
	for name, want := range map[string][]string{
		"big-message":       {"over 64 KiB", "OK: the message arrived intact"},
		"dead-mx":           {"mail exchanger = 5 mx1.beta.test.", "(mail exchanger unusable)", "connection refused", "[alpha relay]    C: EHLO mx.alpha.test", "OK: the message arrived intact"},
		"unknown-recipient": {"[alice client]   C: STARTTLS", "verified: signed by", "C: AUTH PLAIN [credentials redacted]", "RCPT TO:<nobody@beta.test>", "550 5.1.1", "| Action: failed", "| Status: 5.1.1", "OK: the refusal came back"},
		"spoof": {"_dmarc.alpha.test. 300 IN TXT \"v=DMARC1; p=reject\"", "A forger at 127.0.0.66",
			"[forger client]  C: MAIL FROM:<alice@alpha.test>", "(message refused)", "S: 550 5.7.1",
			"_dmarc.alpha.test\tTXT\t\"v=DMARC1; p=reject\"", "OK: the forgery was refused with 550 5.7.1"},
		"null-mx": {"gamma.test. 300 IN MX 0 .", "C: RCPT TO:<carol@gamma.test>", "gamma.test\tmail exchanger = 0 .",
			"accepts no mail (null MX, RFC 7505)", "(no route) domain=gamma.test", "status=5.1.10", "| Status: 5.1.10", "OK: the null MX was refused"},
		"implicit-mx": {"gamma.test. 300 IN A 127.0.0.3", "C: RCPT TO:<bob@gamma.test>", "gamma.test has no MX records",
			"gamma.test\tinternet address = 127.0.0.3", "[alpha relay]    C: RCPT TO:<bob@gamma.test>", "(delivered)", "verified=false: the certificate beta's machine shows is self-signed", "To: <bob@gamma.test>",
			"OK: with no MX record"},
		"bcc": {"Bcc: carol@beta.test", "RCPT TO:<bob@beta.test>  RCPT TO:<carol@beta.test>",
			"[alice client]   C: RCPT TO:<carol@beta.test>", "[alice client]   C: To: <bob@beta.test>",
			"[alpha relay]    C: RCPT TO:<bob@beta.test>", "[alpha relay]    C: RCPT TO:<carol@beta.test>",
			"carol@beta.test's copy: To: <bob@beta.test>", "mentions carol in its header: false", "OK: carol got the message"},
		"pop3-update": {"3 messages from alice put in bob@beta.test's INBOX", "== 2. DELE then QUIT", "S: +OK 3 ", "C: DELE 1", "C: QUIT",
			"(1 messages deleted)", "(session end) deleted=1", "-> bob's INBOX holds 2 messages",
			"== 3. DELE then a dropped connection", "C: DELE 1", "(session end) ", "detail=session ended without QUIT, nothing removed", "-> bob's INBOX holds 2 messages",
			"== 4. TOP 1 0", "C: TOP 1 0", "| Subject: Second", "OK: only DELE followed by QUIT removed a message"},
		"imap": {"== 2. BODY.PEEK[]", "C: T3 FETCH 1 (BODY.PEEK[])", "S: Subject: First", "S: * 1 FETCH (FLAGS (\\Recent))",
			"-> after BODY.PEEK[], message 1 is \\Seen: false", "FETCH 1 (BODY[])", "S: * 1 FETCH (FLAGS (\\Seen",
			"-> after BODY[], message 1 is \\Seen: true",
			"== 3. UIDs against sequence numbers", "-> sequence number -> UID: 1 -> UID 1, 2 -> UID 2, 3 -> UID 3",
			"STORE 1 +FLAGS.SILENT (\\Deleted)", "S: * 1 EXPUNGE", "-> sequence number -> UID: 1 -> UID 2, 2 -> UID 3",
			"UID FETCH 3", "S: * 2 FETCH (UID 3", "-> UID 3 is message 2 now: \"Third\"",
			"== 4. IDLE", "C: T12 IDLE", "S: + idling", "[beta imap]      S: * 3 EXISTS",
			"C: DONE", "-> * 3 EXISTS arrived during IDLE", "OK: BODY.PEEK[] left the message unread", "IDLE announced the new message with EXISTS"},
		"greylist": {"greylisting front", "== 2. alice writes to bob", "C: RCPT TO:<bob@beta.test>",
			"== 3. alpha's relay tries beta's MX: greylisted", "[alpha relay]    S: 220 mx.beta.test ESMTP (greylisting front)",
			"(greylisted) client=127.0.0.2 from=<alice@alpha.test> rcpt=<bob@beta.test>",
			"[alpha relay]    S: 451 4.7.1 Greylisted", "(deferred) attempts=1", "status=4.7.1",
			"queue entry 1: to <bob@beta.test>, attempts 1, last error \"mx.beta.test said: 451 4.7.1", "next attempt ",
			"== 4. The retry", "demo clock now", "(greylist passed) client=127.0.0.2", "[beta smtp]      (session start)",
			"[alpha relay]    S: 220 mx.beta.test ESMTP Postern", "[alpha relay]    C: STARTTLS", "[alpha relay]    S: 250 2.0.0 OK: queued",
			"(delivered) attempts=2", "[beta smtp]      (session end)",
			"== 5. The message in bob's INBOX, on the second attempt", "Subject: Greetings through the greylist",
			"OK: greylisted with 451 4.7.1"},
		"mailstorm": {"mailing list list@alpha.test: members list@beta.test and carol@beta.test",
			"== 2. Without protection", "C: RCPT TO:<list@alpha.test>",
			"generation 0: list@alpha.test got 1 copy, each with 1 Received fields -> sent 2",
			"generation 1: list@beta.test got 2 copies, each with 2 Received fields -> sent 4",
			"generation 2: list@alpha.test got 4 copies, each with 3 Received fields -> sent 8",
			"generation 3: list@beta.test got 8 copies", "generation 4: list@alpha.test got 16 copies", "generation 5: list@beta.test got 32 copies",
			"generation 6: list@alpha.test got 64 copies, each with 7 Received fields -> sent 128, one per member per post; 0 arrived, 128 refused by beta.test's MX (554 5.4.6",
			"-> 255 copies in 7 generations", "got 128 delivery status reports (5.4.6)",
			"== 3. With protection", "generation 0: list@alpha.test got 1 copy, each with 1 Received fields -> sent 2",
			"generation 1: list@beta.test got 2 copies, each with 2 Received fields -> dropped 2 (it carries List-Id: <list.alpha.test>",
			"-> 3 copies in 2 generations", "OK: unprotected, the copies doubled"},
	} {
		t.Run(name, func(t *testing.T) {
			code, out, errOut := runIn(t, "", "demo", "-scenario", name)
			if code != exitOK {
				t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
			}
			wantInOrder(t, out, want)
			if name == "imap" {
				// The delivery's line and the EXISTS it causes come in
				// either order (the server may speak before the
				// delivery returns); both come during IDLE.
				wantInOrder(t, out, []string{"C: T12 IDLE", "1 message from alice put in bob@beta.test's INBOX", "C: DONE"})
			}
			listenersInStep1(t, out)
			if name != "imap" { // its one session spans steps 2 to 4 on purpose
				sessionsEndInStep(t, out)
			}
			noPasswords(t, out)
			// -json carries the same events, in the same order.
			code, jsonOut, errOut := runIn(t, "", "demo", "-json", "-scenario", name)
			if code != exitOK {
				t.Fatalf("-json: exit %d\n%s\n%s", code, jsonOut, errOut)
			}
			text := demoJSONText(demoEvents(t, jsonOut))
			wantInOrder(t, text, want)
			listenersInStep1(t, text)
			if name != "imap" {
				sessionsEndInStep(t, text)
			}
			noPasswords(t, jsonOut)
			if name == "unknown-recipient" && strings.Contains(out, "[alpha relay]    C: RSET") {
				// QUIT ends the refused transaction; an RSET before it
				// would make go-smtp's client greet again.
				t.Errorf("the relay sent RSET just before QUIT:\n%s", out)
			}
			if name == "null-mx" && strings.Contains(out, "[alpha relay]    C: ") {
				t.Errorf("the relay connected somewhere for a null MX domain:\n%s", out)
			}
			if name == "bcc" && strings.Contains(out, "C: Bcc:") {
				t.Errorf("a Bcc field was sent:\n%s", out)
			}
			if name == "mailstorm" && strings.Contains(out, "generation 7") {
				t.Errorf("the hop limit did not stop the storm at generation 6:\n%s", out)
			}
		})
	}
}

// TestDemoSubmissionChecksCertificate shows that alice's certificate check
// is real: trusting beta's certificate only, she cannot start TLS with
// alpha's submission server, and no password is sent.
func TestDemoSubmissionChecksCertificate(t *testing.T) {
	var buf storetest.SyncBuffer
	sc, _ := findScenario("flow")
	d, err := startDemo(&demoOut{w: &buf}, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	tw := &traceWriter{out: d.out, part: "alice client"}
	wrongTLS, err := d.submissionTLS(d.beta, tw)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = submit(ctx, submission{
		addr: d.alpha.submission, mode: tlsStartTLS, tls: wrongTLS, helo: "alice-laptop.alpha.test",
		user: d.alpha.user, password: d.alpha.password, from: d.alpha.user, to: []string{d.beta.user},
		msg: []byte("Subject: x\r\n\r\nx\r\n"), trace: tw,
	})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("submission trusting the wrong certificate: %v, want a certificate error", err)
	}
	out := buf.String()
	if strings.Contains(out, "verified: signed by") || strings.Contains(out, "C: AUTH") {
		t.Errorf("the check passed or credentials were sent:\n%s", out)
	}
}

// TestDemoLiteralTap feeds the tap a server's FETCH responses in small
// pieces: each literal is found whole, and a long one is printed cut, with
// the count of the bytes not shown.
func TestDemoLiteralTap(t *testing.T) {
	long := strings.Repeat("0123456789abcdefghij0123456789abcdefghij0123456789abcdefghij0123456789\r\n", 40)
	stream := "* OK ready\r\n* 1 FETCH (BODY[1] {12}\r\nHello\r\nBob\r\n)\r\nT1 OK done\r\n" +
		"* 2 FETCH (BODY[] {" + strconv.Itoa(len(long)) + "}\r\n" + long + ")\r\nT2 OK done\r\n"
	found := make(chan literal, 4)
	tap := &literalTap{found: found}
	for b := []byte(stream); len(b) > 0; {
		n := min(len(b), 7)
		tap.scan(b[:n])
		b = b[n:]
	}
	close(found)
	var lits []literal
	for l := range found {
		lits = append(lits, l)
	}
	if len(lits) != 2 {
		t.Fatalf("found %d literals, want 2", len(lits))
	}
	if got := literalLines(lits[0]); strings.Join(got, "|") != "Hello|Bob" {
		t.Errorf("short literal shown as %q", got)
	}
	got := literalLines(lits[1])
	if len(got) < 2 || len(got) > maxLiteralLines+1 || got[0] != long[:strings.Index(long, "\r")] {
		t.Fatalf("long literal shown as %q", got)
	}
	rest := len(long) - maxLiteralShown
	want := "[... " + strconv.Itoa(rest) + " more bytes of the " + strconv.Itoa(len(long)) + "-byte literal]"
	if got[len(got)-1] != want {
		t.Errorf("long literal ends %q, want %q", got[len(got)-1], want)
	}
}

// TestDemoListChecks: a protected list does not send on a post marked by
// another list or by an automatic sender (RFC 3834 5.1), and an
// unprotected one has no such check.
func TestDemoListChecks(t *testing.T) {
	l := &demoList{addr: "list@alpha.test", id: "<list.alpha.test>"}
	for _, c := range []struct{ field, why string }{
		{"List-Id: <list.beta.test>", "List-Id: <list.beta.test>"},
		{"Auto-Submitted: auto-replied", "Auto-Submitted: auto-replied (RFC 3834 5.1)"},
	} {
		post := []byte("Received: from x by y; Tue, 1 Dec 2026 10:00:00 +0000\r\n" + c.field + "\r\nSubject: s\r\n\r\nbody\r\n")
		g, err := l.redistribute(context.Background(), "alice@alpha.test", [][]byte{post}, true)
		if err != nil {
			t.Fatal(err)
		}
		if g.dropped != 1 || g.sent != 0 || !strings.Contains(g.why, c.why) || g.hops != 1 {
			t.Errorf("%s: %+v", c.field, g)
		}
	}
}

// TestDemoStepPause: with -step's pause, a step heading waits for a line
// of input, and once the input ends the demo no longer waits.
func TestDemoStepPause(t *testing.T) {
	pr, pw := io.Pipe()
	var buf, prompt storetest.SyncBuffer
	o := &demoOut{w: &buf, pause: stepPause(pr, &prompt)}
	o.beginStep("0. first") // the first heading does not wait
	done := make(chan struct{})
	go func() {
		o.beginStep("1. second")
		close(done)
	}()
	select {
	case <-done:
		t.Fatal("the step began without input")
	case <-time.After(200 * time.Millisecond):
	}
	if strings.Contains(buf.String(), "1. second") {
		t.Fatalf("heading printed before Enter:\n%s", buf.String())
	}
	if _, err := io.WriteString(pw, "\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Enter did not start the step")
	}
	if !strings.Contains(buf.String(), "== 1. second") || !strings.Contains(prompt.String(), "Enter") {
		t.Errorf("output %q, prompt %q", buf.String(), prompt.String())
	}
	pw.Close()
	o.beginStep("2. third") // input ended: reads EOF, then never waits again
	o.beginStep("3. fourth")
	if !strings.Contains(buf.String(), "== 3. fourth") {
		t.Errorf("steps after the end of input missing:\n%s", buf.String())
	}
}

// TestDemoStepWithoutTerminal: -step with stdin not a terminal does not
// wait for input.
func TestDemoStepWithoutTerminal(t *testing.T) {
	code, out, errOut := runIn(t, "", "demo", "-step", "-scenario", "bcc")
	if code != exitOK || !strings.Contains(out, "OK: carol got the message") {
		t.Fatalf("demo -step: exit %d\n%s\n%s", code, out, errOut)
	}
	if strings.Contains(errOut, "Enter") {
		t.Errorf("demo -step prompted without a terminal: %s", errOut)
	}
}

// TestDemoShowBody: by default long parts are cut with a count of the
// lines left out; -show-body prints every line of every part, and IMAP
// literals whole.
func TestDemoShowBody(t *testing.T) {
	code, out, errOut := runIn(t, "", "demo", "-scenario", "big-message")
	if code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	wantInOrder(t, out, []string{"file random.bin, Content-Transfer-Encoding: base64", "more lines]", "decoded: 102400 bytes of application/octet-stream"})
	code, full, errOut := runIn(t, "", "demo", "-show-body", "-scenario", "big-message")
	if code != exitOK {
		t.Fatalf("-show-body: exit %d\n%s\n%s", code, full, errOut)
	}
	if strings.Contains(full, "more lines]") || strings.Contains(full, "more bytes of the") {
		t.Errorf("-show-body cut a part or a literal")
	}
	// 102400 bytes in base64 lines of 76 characters (57 bytes each).
	if n := strings.Count(full, "as sent | "); n < 102400/57 {
		t.Errorf("-show-body printed %d lines of the parts, want all %d of the attachment and more", n, 102400/57)
	}
	noPasswords(t, full)
}

// TestDemoLoopbackFallback: where 127.0.0.2 and 127.0.0.3 cannot be bound
// (simulated here by refusing them), the demo says so in one line and runs
// both domains on 127.0.0.1 with ports of their own.
func TestDemoLoopbackFallback(t *testing.T) {
	defer func(l func(string, string) (net.Listener, error)) { demoListen = l }(demoListen)
	demoListen = func(network, addr string) (net.Listener, error) {
		if !strings.HasPrefix(addr, "127.0.0.1:") {
			return nil, fmt.Errorf("listen %s %s: can't assign requested address (simulated)", network, addr)
		}
		return net.Listen(network, addr)
	}
	for _, c := range []struct {
		scenario string
		want     []string
	}{
		{"flow", []string{"127.0.0.2 and 127.0.0.3 cannot be bound here", "== 1. Two mail domains",
			"[alpha smtp]     (listening) addr=127.0.0.1:", "[beta smtp]      (listening) addr=127.0.0.1:",
			"the MX hosts listen on ports", "mx.beta.test. 300 IN A 127.0.0.1",
			"== 5. alpha's relay delivers", "(delivered)", "dmarc=pass", "+ Received: from mx.alpha.test ([127.0.0.1]) by mx.beta.test",
			"OK: the message arrived intact"}},
		{"implicit-mx", []string{"cannot be bound here", "gamma.test. 300 IN A 127.0.0.1", "(delivered)", "OK: with no MX record"}},
		{"greylist", []string{"cannot be bound here", "S: 451 4.7.1", "(greylist passed) client=127.0.0.1", "(delivered) attempts=2", "OK: greylisted"}},
	} {
		t.Run(c.scenario, func(t *testing.T) {
			code, out, errOut := runIn(t, "", "demo", "-scenario", c.scenario)
			if code != exitOK {
				t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
			}
			wantInOrder(t, out, c.want)
			listenersInStep1(t, out)
			if regexp.MustCompile(`127\.0\.0\.[23][^ ]`).MatchString(out) {
				t.Errorf("the fallback run uses 127.0.0.2 or 127.0.0.3:\n%s", out)
			}
			if n := strings.Count(out, "cannot be bound here"); n != 1 {
				t.Errorf("the fallback is announced %d times, want once", n)
			}
		})
	}
}

// stepShape is, per step heading in order, how many lines each part (or
// the demo's own notes) printed: what must not differ between two runs.
func stepShape(out string) []string {
	var shape []string
	for _, step := range strings.Split(out, "\n== ")[1:] {
		title, body, _ := strings.Cut(step, "\n")
		counts := map[string]int{}
		for _, line := range strings.Split(body, "\n") {
			switch {
			case strings.HasPrefix(line, "   ["):
				part, _, _ := strings.Cut(line[3:], "]")
				counts[part+"]"]++
			case strings.HasPrefix(line, "   "):
				counts["note"]++
			}
		}
		var kv []string
		for k, v := range counts {
			kv = append(kv, fmt.Sprintf("%s=%d", k, v))
		}
		sortStrings(kv)
		shape = append(shape, title+": "+strings.Join(kv, " "))
	}
	return shape
}

// TestDemoTextJSONSame: the text output and the -json output, rendered as
// text, have the same steps, and in each step the same number of lines
// from each part.
func TestDemoTextJSONSame(t *testing.T) {
	for _, name := range []string{"flow", "greylist"} {
		code, text, errOut := runIn(t, "", "demo", "-scenario", name)
		if code != exitOK {
			t.Fatalf("%s: exit %d\n%s", name, code, errOut)
		}
		code, jsonOut, errOut := runIn(t, "", "demo", "-json", "-scenario", name)
		if code != exitOK {
			t.Fatalf("%s -json: exit %d\n%s", name, code, errOut)
		}
		a, b := stepShape(text), stepShape(demoJSONText(demoEvents(t, jsonOut)))
		if strings.Join(a, "\n") != strings.Join(b, "\n") {
			t.Errorf("%s: text and -json differ:\ntext:\n%s\njson:\n%s", name, strings.Join(a, "\n"), strings.Join(b, "\n"))
		}
	}
}
