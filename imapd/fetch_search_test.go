package imapd

import (
	"strings"
	"testing"
)

// binaryMessage has a Latin-1 text part in base64, a part in an unknown
// charset in quoted-printable, and an attached message with a base64
// body.
const binaryMessage = "From: a@remote.test\r\nSubject: binary\r\nMIME-Version: 1.0\r\n" +
	"Content-Type: multipart/mixed; boundary=XX\r\n\r\n" +
	"--XX\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
	"Q2Fm6SBub2lyLCBjYWbpIGF1IGxhaXQ=\r\n" + // "Café noir, café au lait" in Latin-1: 23 octets
	"--XX\r\nContent-Type: text/plain; charset=x-unknown\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" +
	"abc=3Ddef=\r\nghi\r\n" +
	"--XX\r\nContent-Type: message/rfc822\r\n\r\n" +
	"Subject: inner\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
	"MDEyMzQ1Njc4OQ==\r\n" +
	"--XX--\r\n"

// RFC 3516 4.2: BINARY gives a part decoded from its transfer encoding
// only, and <partial> counts on the decoded octets.
func TestBinaryPartial(t *testing.T) {
	env := newEnv(t)
	env.deliver(t, binaryMessage)
	env.deliver(t, "From: a@remote.test\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: base64\r\n\r\nQ2Fm6SBub2ly\r\n")
	rc := rawLogin(t, env)
	rc.cmd("s", "SELECT INBOX")
	for _, tc := range []struct{ fetch, want string }{
		// The Latin-1 é is one octet (0xE9), not converted to UTF-8.
		{"1 (BINARY.PEEK[1]<0.5>)", "* 1 FETCH (BINARY[1] ~{5}\r\nCaf\xe9 )"},
		{"1 (BINARY.PEEK[1]<11.4>)", "* 1 FETCH (BINARY[1] ~{4}\r\ncaf\xe9)"},
		{"1 (BINARY.SIZE[1])", "* 1 FETCH (BINARY.SIZE[1] 23)"},
		{"1 (BINARY.PEEK[1]<20.10>)", "* 1 FETCH (BINARY[1] ~{3}\r\nait)"},
		{"1 (BINARY.PEEK[1]<23.10>)", "* 1 FETCH (BINARY[1] ~{0}\r\n)"},
		// An unknown charset does not matter to BINARY.
		{"1 (BINARY.PEEK[2]<2.6>)", "* 1 FETCH (BINARY[2] ~{6}\r\nc=defg)"},
		{"1 (BINARY.SIZE[2])", "* 1 FETCH (BINARY.SIZE[2] 10)"},
		// Inside an attached message.
		{"1 (BINARY.PEEK[3.1]<3.4>)", "* 1 FETCH (BINARY[3.1] ~{4}\r\n3456)"},
		{"1 (BINARY.SIZE[3.1])", "* 1 FETCH (BINARY.SIZE[3.1] 10)"},
		// A message that is not multipart: its body is part 1.
		{"2 (BINARY.PEEK[1]<1.4>)", "* 2 FETCH (BINARY[1] ~{4}\r\naf\xe9 )"},
		{"2 (BINARY.SIZE[1])", "* 2 FETCH (BINARY.SIZE[1] 9)"},
		// No such part: empty.
		{"1 (BINARY.PEEK[9]<0.4>)", "* 1 FETCH (BINARY[9] ~{0}\r\n)"},
	} {
		got := strings.Join(rc.cmd("f", "FETCH "+tc.fetch), "\r\n")
		if !strings.HasPrefix(got, tc.want+"\r\nf OK") {
			t.Errorf("FETCH %s:\n got %q\nwant %q", tc.fetch, got, tc.want)
		}
	}
}

// RFC 3501 6.4.4: FROM, TO, CC and BCC match any part of an address, as
// a case-insensitive substring: the display name (encoded words decoded,
// quotes and folding gone), the mailbox, the host, and the whole
// "name <mailbox@host>".
func TestSearchAddressParts(t *testing.T) {
	env := newEnv(t)
	env.deliver(t, "From: \"Doe, John\" <John.Doe@Example.ORG>\r\nTo: \"Very Long\r\n Display Name\" <vl@example.net> (work)\r\nSubject: one\r\n\r\nx\r\n")
	env.deliver(t, "From: \"=?utf-8?q?J=C3=BCrgen_M=C3=BCller?=\" <jm@example.de>\r\nCc: Team: ann@example.org, <@relay.example:bob@example.org>;\r\nBcc: =?iso-8859-1?q?Andr=E9?= <andre@example.fr>\r\nSubject: two\r\n\r\nx\r\n")
	rc := rawLogin(t, env)
	rc.cmd("s", "SELECT INBOX")
	for _, tc := range []struct{ key, want string }{
		{`FROM "doe, john <john.doe@example.org>"`, "* SEARCH 1"},
		{`FROM "Doe, John"`, "* SEARCH 1"},
		{`FROM "john.doe"`, "* SEARCH 1"},
		{`FROM "EXAMPLE.ORG"`, "* SEARCH 1"},
		{`TO "very long display name <vl@"`, "* SEARCH 1"},
		{`TO "long display"`, "* SEARCH 1"},
		{`FROM "jürgen müller <jm@example.de>"`, "* SEARCH 2"},
		{`FROM "MÜLLER"`, "* SEARCH 2"},
		{`CC "team"`, "* SEARCH 2"},
		{`CC "bob@example.org"`, "* SEARCH 2"},
		{`BCC "andré <andre@example.fr>"`, "* SEARCH 2"},
		{`FROM "nobody"`, "* SEARCH"},
	} {
		r := rc.cmd("f", "SEARCH CHARSET UTF-8 "+tc.key)
		if len(r) < 2 || r[len(r)-2] != tc.want {
			t.Errorf("SEARCH %s = %q, want %q", tc.key, r, tc.want)
		}
	}
}
