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
