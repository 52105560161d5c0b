package mime

import (
	"bufio"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-message/textproto"
)

func header(t *testing.T, s string) textproto.Header {
	t.Helper()
	h, err := textproto.ReadHeader(bufio.NewReader(strings.NewReader(crlf(s) + "\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// Each case names what imapserver.ExtractEnvelope gets wrong and shows
// the ENVELOPE worked out by hand from RFC 3501 7.4.2 and RFC 5322.
func TestEnvelopeCorrections(t *testing.T) {
	for _, tc := range []struct {
		name, header, want, library string
	}{
		{
			name:    "an empty group is a start and an end marker",
			header:  "To: undisclosed-recipients:;\n",
			want:    `(NIL NIL NIL NIL NIL ((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) NIL NIL [] NIL)`,
			library: `(NIL NIL NIL NIL NIL NIL NIL NIL [] NIL)`,
		},
		{
			name:    "a group keeps its members between markers",
			header:  "Cc: Friends: \"Ann\" <ann@example.org>, bob@example.org;, carl@example.org\n",
			want:    `(NIL NIL NIL NIL NIL NIL ((NIL NIL "Friends" NIL)("Ann" NIL "ann" "example.org")(NIL NIL "bob" "example.org")(NIL NIL NIL NIL)(NIL NIL "carl" "example.org")) NIL [] NIL)`,
			library: `(NIL NIL NIL NIL NIL NIL (("Ann" NIL "ann" "example.org")(NIL NIL "bob" "example.org")(NIL NIL "carl" "example.org")) NIL [] NIL)`,
		},
		{
			name:    "one malformed address costs only itself",
			header:  "To: good@example.org, <broken@, Name Only, \"Dee\" <dee@example.org>\n",
			want:    `(NIL NIL NIL NIL NIL ((NIL NIL "good" "example.org")(NIL NIL "broken" "MISSING_DOMAIN")(NIL NIL "Name Only" "MISSING_DOMAIN")("Dee" NIL "dee" "example.org")) NIL NIL [] NIL)`,
			library: `(NIL NIL NIL NIL NIL NIL NIL NIL [] NIL)`,
		},
		{
			name:    "a Message-ID without brackets is kept",
			header:  "Message-ID: bare-id@example.org\n",
			want:    `(NIL NIL NIL NIL NIL NIL NIL NIL [] "bare-id@example.org")`,
			library: `(NIL NIL NIL NIL NIL NIL NIL NIL [] NIL)`,
		},
		{
			name:    "a Date with a named zone is understood",
			header:  "Date: Tue, 3 Jan 2006 10:00:00 CET\n",
			want:    `("Tue, 03 Jan 2006 10:00:00 +0100" NIL NIL NIL NIL NIL NIL NIL [] NIL)`,
			library: `(NIL NIL NIL NIL NIL NIL NIL NIL [] NIL)`,
		},
		{
			name:    "encoded words in names and subject are decoded",
			header:  "From: =?utf-8?b?SsO8cmdlbg==?= <j@example.org>\nSubject: =?iso-8859-1?q?caf=E9?=\n",
			want:    `(NIL "café" (("Jürgen" NIL "j" "example.org")) NIL NIL NIL NIL NIL [] NIL)`,
			library: `(NIL "café" (("Jürgen" NIL "j" "example.org")) NIL NIL NIL NIL NIL [] NIL)`,
		},
		{
			name:    "an unknown charset is left encoded for the client",
			header:  "Subject: =?x-unknown?q?abc?=\nFrom: =?x-unknown?q?abc?= <a@example.org>\n",
			want:    `(NIL "=?x-unknown?q?abc?=" (("=?x-unknown?q?abc?=" NIL "a" "example.org")) NIL NIL NIL NIL NIL [] NIL)`,
			library: `(NIL "=?x-unknown?q?abc?=" NIL NIL NIL NIL NIL NIL [] NIL)`,
		},
		{
			name:    "comments, quoted commas and source routes",
			header:  "To: \"Doe, John\" <john@example.org> (work), <@relay.example:jane@example.org>\n",
			want:    `(NIL NIL NIL NIL NIL (("Doe, John" NIL "john" "example.org")(NIL NIL "jane" "example.org")) NIL NIL [] NIL)`,
			library: `(NIL NIL NIL NIL NIL (("Doe, John" NIL "john" "example.org")(NIL NIL "jane" "example.org")) NIL NIL [] NIL)`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := header(t, tc.header)
			if got := renderEnv(Envelope(h)); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
			if got := renderEnv(imapserver.ExtractEnvelope(h)); got != tc.library {
				t.Logf("note: the library now gives %s (the test recorded %s)", got, tc.library)
			}
		})
	}
}

func TestEnvelopeAddressListBounded(t *testing.T) {
	v := strings.Repeat("a@example.org, ", 5000)
	if n := len(EnvelopeAddressList(v)); n != maxEnvelopeAddresses {
		t.Errorf("%d addresses kept, want %d", n, maxEnvelopeAddresses)
	}
	for _, s := range []string{"", ",,,", ";", ":", "\"unterminated", "(unterminated", "<", "a@", "@b", ":;:;"} {
		EnvelopeAddressList(s) // no panic
	}
}

func TestBinarySection(t *testing.T) {
	msg := crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\ncaf=E9\n--b\nContent-Type: message/rfc822\n\nSubject: in\nContent-Type: multipart/alternative; boundary=c\n\n--c\nContent-Transfer-Encoding: base64\n\naGk=\n--c--\n--b--\n")
	for _, tc := range []struct {
		part []int
		want string
		ok   bool
	}{
		{[]int{1}, "caf\xe9", true},
		{[]int{2, 1}, "hi", true},
		{[]int{2, 2}, "", false},
		{[]int{3}, "", false},
		{[]int{1, 2}, "", false},
	} {
		got, ok, err := BinarySection(strings.NewReader(msg), tc.part)
		if err != nil || ok != tc.ok || string(got) != tc.want {
			t.Errorf("BINARY%v = %q, %v, %v; want %q, %v", tc.part, got, ok, err, tc.want, tc.ok)
		}
	}
}
