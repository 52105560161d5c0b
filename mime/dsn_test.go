package mime

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
)

const dsnOriginal = "Received: from client by mail.alpha.test\r\n" +
	"From: Alice <alice@alpha.test>\r\n" +
	"To: bob@beta.test\r\n" +
	"Subject: hello\r\n" +
	"Message-ID: <m1@alpha.test>\r\n" +
	"\r\n" +
	"The body, which a headers-only report leaves out.\r\n"

// dsnParts parses a report and returns its top-level header and the
// header and body of each part.
func dsnParts(t *testing.T, report []byte) (message.Header, []message.Header, [][]byte) {
	t.Helper()
	e, err := message.Read(bytes.NewReader(report))
	if err != nil {
		t.Fatalf("parse report: %v\n%s", err, report)
	}
	mr := e.MultipartReader()
	if mr == nil {
		t.Fatalf("report is not multipart:\n%s", report)
	}
	var headers []message.Header
	var bodies [][]byte
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("next part: %v", err)
		}
		b, err := io.ReadAll(p.Body)
		if err != nil {
			t.Fatalf("read part: %v", err)
		}
		headers = append(headers, p.Header)
		bodies = append(bodies, b)
	}
	return e.Header, headers, bodies
}

// statusGroups splits a message/delivery-status body into its field
// groups, unfolding continuation lines; group 0 is the per-message one.
func statusGroups(t *testing.T, body []byte) []map[string]string {
	t.Helper()
	if !bytes.HasSuffix(body, []byte("\r\n")) || bytes.Contains(bytes.ReplaceAll(body, []byte("\r\n"), nil), []byte("\n")) {
		t.Fatalf("delivery-status lines are not all CRLF: %q", body)
	}
	var groups []map[string]string
	for _, g := range strings.Split(strings.TrimSuffix(string(body), "\r\n"), "\r\n\r\n") {
		fields := map[string]string{}
		var last string
		for _, line := range strings.Split(g, "\r\n") {
			if strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t") {
				fields[last] += line
				continue
			}
			name, value, ok := strings.Cut(line, ":")
			if !ok {
				t.Fatalf("bad field line %q", line)
			}
			last = name
			fields[name] = strings.TrimSpace(value)
		}
		groups = append(groups, fields)
	}
	return groups
}

func TestComposeDSNFailure(t *testing.T) {
	arrival := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	d := DSN{
		ReportingMTA: "mail.alpha.test",
		Sender:       "alice@alpha.test",
		EnvID:        "QQ314159",
		Arrival:      arrival,
		Date:         arrival.Add(time.Minute),
		Original:     []byte(dsnOriginal),
		Recipients: []DSNRecipient{{
			Recipient:         "bob@beta.test",
			OriginalRecipient: "rfc822;Bob@beta.test",
			Action:            ActionFailed,
			Status:            "5.1.1",
			RemoteMTA:         "mx.beta.test",
			Diagnostic:        "550 5.1.1 No such user here\nplease check the address",
			LastAttempt:       arrival.Add(30 * time.Second),
		}, {
			Recipient:      "carol@beta.test",
			Action:         ActionFailed,
			Status:         "5.1.10",
			Diagnostic:     "Domain beta.test does not accept mail (null MX)",
			DiagnosticType: "X-Postern",
		}},
	}
	report, err := ComposeDSN(d)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(bytes.ReplaceAll(report, []byte("\r\n"), nil), []byte("\n")) {
		t.Errorf("report has bare LF line ends")
	}
	h, parts, bodies := dsnParts(t, report)
	mt, params, err := h.ContentType()
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("Content-Type %s %v %v", mt, params, err)
	}
	for name, want := range map[string]string{
		"Auto-Submitted": "auto-replied",
		"To":             "<alice@alpha.test>",
		"In-Reply-To":    "<m1@alpha.test>",
		"Subject":        "Undelivered Mail Returned to Sender",
		"Date":           "Sat, 01 Mar 2025 10:01:00 +0000",
	} {
		if got := h.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if from := h.Get("From"); !strings.Contains(from, "<MAILER-DAEMON@mail.alpha.test>") {
		t.Errorf("From = %q", from)
	}
	if len(parts) != 3 {
		t.Fatalf("%d parts, want 3", len(parts))
	}
	wantTypes := []string{"text/plain", "message/delivery-status", "text/rfc822-headers"}
	for i, want := range wantTypes {
		if mt, _, _ := parts[i].ContentType(); mt != want {
			t.Errorf("part %d is %s, want %s", i, mt, want)
		}
	}
	text := string(bodies[0])
	if !strings.Contains(text, "<bob@beta.test>: 550 5.1.1 No such user here please check the address (mx.beta.test)") {
		t.Errorf("human part lacks bob's line:\n%s", text)
	}

	groups := statusGroups(t, bodies[1])
	if len(groups) != 3 {
		t.Fatalf("%d field groups, want 3:\n%s", len(groups), bodies[1])
	}
	for name, want := range map[string]string{
		"Reporting-MTA":        "dns; mail.alpha.test",
		"Original-Envelope-Id": "QQ314159",
		"Arrival-Date":         "Sat, 01 Mar 2025 10:00:00 +0000",
	} {
		if got := groups[0][name]; got != want {
			t.Errorf("per-message %s = %q, want %q", name, got, want)
		}
	}
	for name, want := range map[string]string{
		"Original-Recipient": "rfc822;Bob@beta.test",
		"Final-Recipient":    "rfc822;bob@beta.test",
		"Action":             "failed",
		"Status":             "5.1.1",
		"Remote-MTA":         "dns; mx.beta.test",
		"Diagnostic-Code":    "smtp; 550 5.1.1 No such user here please check the address",
		"Last-Attempt-Date":  "Sat, 01 Mar 2025 10:00:30 +0000",
	} {
		if got := groups[1][name]; got != want {
			t.Errorf("bob's %s = %q, want %q", name, got, want)
		}
	}
	if groups[2]["Status"] != "5.1.10" || groups[2]["Final-Recipient"] != "rfc822;carol@beta.test" {
		t.Errorf("carol's group: %v", groups[2])
	}
	if got := groups[2]["Diagnostic-Code"]; got != "X-Postern; Domain beta.test does not accept mail (null MX)" {
		t.Errorf("carol's Diagnostic-Code %q", got)
	}
	if _, ok := groups[2]["Remote-MTA"]; ok {
		t.Errorf("carol's group has a Remote-MTA without one given: %v", groups[2])
	}

	if !strings.Contains(string(bodies[2]), "Subject: hello\r\n") || strings.Contains(string(bodies[2]), "The body") {
		t.Errorf("headers part:\n%s", bodies[2])
	}
}

func TestComposeDSNReturnFull(t *testing.T) {
	report, err := ComposeDSN(DSN{
		ReportingMTA: "mail.alpha.test",
		Sender:       "alice@alpha.test",
		Original:     []byte(strings.ReplaceAll(dsnOriginal, "\r\n", "\n") + "Gr\xc3\xbc\xc3\x9fe\n"),
		ReturnFull:   true,
		Recipients:   []DSNRecipient{{Recipient: "bob@beta.test", Action: ActionFailed, Status: "4.4.7"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	_, parts, bodies := dsnParts(t, report)
	if mt, _, _ := parts[2].ContentType(); mt != "message/rfc822" {
		t.Fatalf("returned part is %s", mt)
	}
	if cte := parts[2].Get("Content-Transfer-Encoding"); cte != "8bit" {
		t.Errorf("8-bit original returned with Content-Transfer-Encoding %q", cte)
	}
	want := strings.ReplaceAll(strings.ReplaceAll(dsnOriginal, "\r\n", "\n")+"Gr\xc3\xbc\xc3\x9fe\n", "\n", "\r\n")
	if string(bodies[2]) != want {
		t.Errorf("returned message:\n%q\nwant\n%q", bodies[2], want)
	}
}

func TestComposeDSNDelayAndSuccess(t *testing.T) {
	until := time.Date(2025, 3, 6, 10, 0, 0, 0, time.UTC)
	report, err := ComposeDSN(DSN{
		ReportingMTA: "mail.alpha.test",
		Sender:       "alice@alpha.test",
		Original:     []byte(dsnOriginal),
		Recipients: []DSNRecipient{
			{Recipient: "bob@beta.test", Action: ActionDelayed, Status: "4.4.1", Diagnostic: "connection refused", WillRetryUntil: until},
			{Recipient: "dave@gamma.test", Action: ActionRelayed, Status: "2.0.0", RemoteMTA: "mx.gamma.test"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	h, _, bodies := dsnParts(t, report)
	if s := h.Get("Subject"); s != "Delayed Mail (still being retried)" {
		t.Errorf("Subject %q", s)
	}
	g := statusGroups(t, bodies[1])
	if g[1]["Action"] != "delayed" || g[1]["Will-Retry-Until"] != "Thu, 06 Mar 2025 10:00:00 +0000" {
		t.Errorf("delayed group %v", g[1])
	}
	if g[2]["Action"] != "relayed" || g[2]["Status"] != "2.0.0" {
		t.Errorf("relayed group %v", g[2])
	}
	if !strings.Contains(string(bodies[0]), "not been delivered yet") || !strings.Contains(string(bodies[0]), "passed on") {
		t.Errorf("human part:\n%s", bodies[0])
	}
}

func TestComposeDSNFoldsAndStaysASCII(t *testing.T) {
	long := "550 5.7.1 " + strings.Repeat("policy words that go on and on ", 8)
	report, err := ComposeDSN(DSN{
		ReportingMTA: "mail.alpha.test",
		Sender:       "alice@alpha.test",
		Original:     []byte(dsnOriginal),
		Recipients: []DSNRecipient{{
			Recipient:  "j\u00f6rg@beta.test",
			Action:     ActionFailed,
			Status:     "5.7.1",
			Diagnostic: long + "\u00fcber",
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	_, _, bodies := dsnParts(t, report)
	for _, line := range strings.Split(string(bodies[1]), "\r\n") {
		if len(line) > dsnMaxLine {
			t.Errorf("line longer than %d: %q", dsnMaxLine, line)
		}
	}
	if !dsnIsASCIIBytes(bodies[1]) {
		t.Errorf("delivery-status part is not ASCII:\n%s", bodies[1])
	}
	g := statusGroups(t, bodies[1])
	if got := g[1]["Final-Recipient"]; got != `utf-8;j\x{F6}rg@beta.test` {
		t.Errorf("Final-Recipient %q", got)
	}
	if got, want := g[1]["Diagnostic-Code"], "smtp; "+strings.TrimSpace(long)+" ?ber"; strings.Join(strings.Fields(got), " ") != strings.Join(strings.Fields(want), " ") {
		t.Errorf("Diagnostic-Code %q", got)
	}
}

func TestComposeDSNRefuses(t *testing.T) {
	ok := DSN{
		ReportingMTA: "mail.alpha.test",
		Sender:       "alice@alpha.test",
		Original:     []byte(dsnOriginal),
		Recipients:   []DSNRecipient{{Recipient: "bob@beta.test", Action: ActionFailed, Status: "5.1.1"}},
	}
	if _, err := ComposeDSN(ok); err != nil {
		t.Fatalf("valid report refused: %v", err)
	}
	tests := []struct {
		name   string
		change func(*DSN)
		want   string
	}{
		{"null sender", func(d *DSN) { d.Sender = "" }, "null sender"},
		{"no reporting MTA", func(d *DSN) { d.ReportingMTA = "" }, "reporting MTA"},
		{"no recipients", func(d *DSN) { d.Recipients = nil }, "no recipients"},
		{"bad status", func(d *DSN) { d.Recipients[0].Status = "550" }, "not an RFC 3463 code"},
		{"failed with success", func(d *DSN) { d.Recipients[0].Status = "2.0.0" }, "success status"},
		{"delayed with 5xx", func(d *DSN) { d.Recipients[0].Action = ActionDelayed }, "needs a 4.x.x"},
		{"unknown action", func(d *DSN) { d.Recipients[0].Action = "lost" }, "unknown action"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := ok
			d.Recipients = append([]DSNRecipient(nil), ok.Recipients...)
			tt.change(&d)
			_, err := ComposeDSN(d)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestDSNSplitHeader(t *testing.T) {
	tests := []struct{ msg, header string }{
		{"A: 1\r\nB: 2\r\n\r\nbody\r\n", "A: 1\r\nB: 2\r\n\r\n"},
		{"A: 1\n\nbody\n", "A: 1\n\n"},
		{"A: 1\r\n", "A: 1\r\n"},
		{"A: 1", "A: 1\r\n"},
	}
	for _, tt := range tests {
		if h, _ := dsnSplitHeader([]byte(tt.msg)); string(h) != tt.header {
			t.Errorf("dsnSplitHeader(%q) = %q, want %q", tt.msg, h, tt.header)
		}
	}
}

// A server's reply of any length, spaces or not, never makes a report
// line longer than RFC 5322 allows.
func TestDSNLongDiagnostic(t *testing.T) {
	for _, diag := range []string{strings.Repeat("x", 1800), "550 " + strings.Repeat("word ", 400)} {
		msg, err := ComposeDSN(DSN{
			ReportingMTA: "mx.alpha.test", Sender: "alice@alpha.test",
			Recipients: []DSNRecipient{{Recipient: "bob@beta.test", Action: ActionFailed, Status: "5.0.0", Diagnostic: diag}},
			Original:   []byte("Subject: x\r\n\r\nbody\r\n"),
		})
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(msg), "\r\n") {
			if len(line) > 998 {
				t.Fatalf("line %d has %d octets", i+1, len(line))
			}
		}
		if !strings.Contains(string(msg), "...") {
			t.Errorf("the long diagnostic was not shortened")
		}
	}
}
