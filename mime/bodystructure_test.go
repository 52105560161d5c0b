package mime

import (
	"bytes"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"

	"bufio"
	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-message/textproto"
)

// render writes a body structure in the IMAP syntax (RFC 3501 7.4.2,
// extension data included), close to what go-imap's writer sends, so
// that expected values can be checked by eye against the RFC.
func render(bs imap.BodyStructure) string {
	var b strings.Builder
	renderBS(&b, bs)
	return b.String()
}

func nstr(s string) string {
	if s == "" {
		return "NIL"
	}
	return fmt.Sprintf("%q", s)
}

func params(p map[string]string) string {
	if len(p) == 0 {
		return "NIL"
	}
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%q %q", k, p[k]))
	}
	return "(" + strings.Join(parts, " ") + ")"
}

func disp(d *imap.BodyStructureDisposition) string {
	if d == nil {
		return "NIL"
	}
	return fmt.Sprintf("(%q %s)", d.Value, params(d.Params))
}

func lang(l []string) string {
	if len(l) == 0 {
		return "NIL"
	}
	return fmt.Sprintf("%q", l)
}

func renderEnv(e *imap.Envelope) string {
	addrs := func(l []imap.Address) string {
		if len(l) == 0 {
			return "NIL"
		}
		var parts []string
		for _, a := range l {
			parts = append(parts, fmt.Sprintf("(%s NIL %s %s)", nstr(a.Name), nstr(a.Mailbox), nstr(a.Host)))
		}
		return "(" + strings.Join(parts, "") + ")"
	}
	date := "NIL"
	if !e.Date.IsZero() {
		date = fmt.Sprintf("%q", e.Date.Format("Mon, 02 Jan 2006 15:04:05 -0700"))
	}
	return fmt.Sprintf("(%s %s %s %s %s %s %s %s %v %s)", date, nstr(e.Subject), addrs(e.From), addrs(e.Sender), addrs(e.ReplyTo),
		addrs(e.To), addrs(e.Cc), addrs(e.Bcc), e.InReplyTo, nstr(e.MessageID))
}

func renderBS(b *strings.Builder, bs imap.BodyStructure) {
	b.WriteByte('(')
	switch bs := bs.(type) {
	case *imap.BodyStructureMultiPart:
		for _, c := range bs.Children {
			renderBS(b, c)
		}
		fmt.Fprintf(b, " %q %s %s %s %s", bs.Subtype, params(bs.Extended.Params), disp(bs.Extended.Disposition), lang(bs.Extended.Language), nstr(bs.Extended.Location))
	case *imap.BodyStructureSinglePart:
		enc := bs.Encoding
		if enc == "" {
			enc = "7bit"
		}
		fmt.Fprintf(b, "%q %q %s %s %s %q %d", bs.Type, bs.Subtype, params(bs.Params), nstr(bs.ID), nstr(bs.Description), enc, bs.Size)
		if m := bs.MessageRFC822; m != nil {
			b.WriteString(" " + renderEnv(m.Envelope) + " ")
			renderBS(b, m.BodyStructure)
			fmt.Fprintf(b, " %d", m.NumLines)
		} else if bs.Text != nil {
			fmt.Fprintf(b, " %d", bs.Text.NumLines)
		}
		fmt.Fprintf(b, " NIL %s %s %s", disp(bs.Extended.Disposition), lang(bs.Extended.Language), nstr(bs.Extended.Location))
	}
	b.WriteByte(')')
}

func crlf(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }

// The corpus: each message with its BODYSTRUCTURE worked out by hand from
// RFC 2045-2046, RFC 2231 and RFC 3501 7.4.2.
var structureCorpus = []struct {
	name, msg, want string
}{
	{
		name: "no Content-Type: text/plain; charset=us-ascii (RFC 2045 5.2)",
		msg:  "Subject: plain\n\nline one\nline two\n",
		want: `("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 20 2 NIL NIL NIL NIL)`,
	},
	{
		name: "malformed Content-Type is text/plain too",
		msg:  "Content-Type: text\n\nx\n",
		want: `("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 1 NIL NIL NIL NIL)`,
	},
	{
		name: "one bad parameter does not cost the others",
		msg:  "Content-Type: Text/HTML; charset=\"UTF-8\"; bogus; format=flowed\nContent-Transfer-Encoding: 8BIT (comment)\nContent-Language: en, (cmt) de\n\n<p>\n",
		want: `("text" "html" ("charset" "UTF-8" "format" "flowed") NIL NIL "8bit" 5 1 NIL NIL ["en" "de"] NIL)`,
	},
	{
		name: "nested multipart with message/rfc822 holding a multipart",
		msg: `Content-Type: multipart/mixed; boundary=A

--A
Content-Type: multipart/alternative; boundary=B

--B
Content-Type: text/plain

hello
--B
Content-Type: text/html; charset=utf-8
Content-ID: <h1@x>
Content-Description: the html

<b>hello</b>
--B--
--A
Content-Type: message/rfc822
Content-Disposition: inline

From: Inner <inner@example.org>
To: "Group": a@example.org, b@example.org;
Subject: inner
Content-Type: multipart/mixed; boundary=C

--C

no type here
--C--
--A--
`,
		// The CRLF before a boundary belongs to the boundary (RFC 2046
		// 5.1.1): "hello" is 5 octets and no line end.
		want: `((("text" "plain" NIL NIL NIL "7bit" 5 0 NIL NIL NIL NIL)("text" "html" ("charset" "utf-8") "<h1@x>" "the html" "7bit" 12 0 NIL NIL NIL NIL) "alternative" ("boundary" "B") NIL NIL NIL)` +
			`("message" "rfc822" NIL NIL NIL "7bit" 164 (NIL "inner" (("Inner" NIL "inner" "example.org")) NIL NIL ((NIL NIL "Group" NIL)(NIL NIL "a" "example.org")(NIL NIL "b" "example.org")(NIL NIL NIL NIL)) NIL NIL [] NIL) ` +
			`(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 12 0 NIL NIL NIL NIL) "mixed" ("boundary" "C") NIL NIL NIL) 8 NIL ("inline" NIL) NIL NIL) "mixed" ("boundary" "A") NIL NIL NIL)`,
	},
	{
		name: "multipart/digest parts default to message/rfc822 (RFC 2046 5.1.5)",
		msg:  "Content-Type: multipart/digest; boundary=D\n\n--D\n\nSubject: one\n\nbody\n--D--\n",
		want: `(("message" "rfc822" NIL NIL NIL "7bit" 20 (NIL "one" NIL NIL NIL NIL NIL NIL [] NIL) ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 4 0 NIL NIL NIL NIL) 2 NIL NIL NIL NIL) "digest" ("boundary" "D") NIL NIL NIL)`,
	},
	{
		name: "multipart without parts gets one empty text part",
		msg:  "Content-Type: multipart/mixed; boundary=E\n\nno parts at all\n",
		want: `(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL) "mixed" ("boundary" "E") NIL NIL NIL)`,
	},
	{
		name: "multipart without boundary is text/plain",
		msg:  "Content-Type: multipart/mixed\n\nx\n",
		want: `("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 1 NIL NIL NIL NIL)`,
	},
	{
		name: "RFC 2231 continuations and charsets are joined, not dropped",
		msg: "Content-Type: application/pdf; name*0*=iso-8859-1''caf%E9; name*1*=%20menu; name*2=.pdf\n" +
			"Content-Disposition: attachment; filename*=UTF-8''%E2%82%AC.pdf; size=3\n" +
			"Content-Transfer-Encoding: base64\n\nQUJD\n",
		want: `("application" "pdf" ("name*" "iso-8859-1''caf%E9%20menu.pdf") NIL NIL "base64" 6 NIL ("attachment" ("filename*" "UTF-8''%E2%82%AC.pdf" "size" "3")) NIL NIL)`,
	},
	{
		name: "RFC 2047 words in a parameter are left for the client",
		msg:  "Content-Type: text/plain; name=\"=?utf-8?q?caf=C3=A9.txt?=\"\n\nx\n",
		want: `("text" "plain" ("name" "=?utf-8?q?caf=C3=A9.txt?=") NIL NIL "7bit" 3 1 NIL NIL NIL NIL)`,
	},
	{
		name: "base64 message/rfc822 cannot be opened: application/octet-stream",
		msg:  "Content-Type: multipart/mixed; boundary=F\n\n--F\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\nU3ViamVjdDogeAoKeQo=\n--F--\n",
		want: `(("application" "octet-stream" NIL NIL NIL "base64" 20 NIL NIL NIL NIL) "mixed" ("boundary" "F") NIL NIL NIL)`,
	},
	{
		name: "bad charset is kept as written",
		msg:  "Content-Type: text/plain; charset=x-no-such-charset\n\n\xff\xfe\n",
		want: `("text" "plain" ("charset" "x-no-such-charset") NIL NIL "7bit" 4 1 NIL NIL NIL NIL)`,
	},
	{
		name: "header without body",
		msg:  "Subject: only a header\n",
		want: `("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)`,
	},
}

func TestBodyStructureCorpus(t *testing.T) {
	for _, tc := range structureCorpus {
		t.Run(tc.name, func(t *testing.T) {
			bs, err := BodyStructure(strings.NewReader(crlf(tc.msg)))
			if err != nil {
				t.Fatal(err)
			}
			if got := render(bs); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

// For well-formed messages, the result is imapserver.ExtractBodyStructure's
// (but for the corrections): the library stays the reference.
func TestBodyStructureAgreesWithLibrary(t *testing.T) {
	msg := crlf(structureCorpus[3].msg)
	ours, err := BodyStructure(strings.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	theirs := imapserver.ExtractBodyStructure(strings.NewReader(msg))
	// The library leaves out the default charset of a part without
	// Content-Type (our correction 1) and flattens groups; align those.
	inner := theirs.(*imap.BodyStructureMultiPart).Children[1].(*imap.BodyStructureSinglePart).MessageRFC822
	inner.BodyStructure.(*imap.BodyStructureMultiPart).Children[0].(*imap.BodyStructureSinglePart).Params = map[string]string{"charset": "us-ascii"}
	inner.BodyStructure.(*imap.BodyStructureMultiPart).Children[0].(*imap.BodyStructureSinglePart).Type = "text"
	inner.BodyStructure.(*imap.BodyStructureMultiPart).Children[0].(*imap.BodyStructureSinglePart).Subtype = "plain"
	oursInner := ours.(*imap.BodyStructureMultiPart).Children[1].(*imap.BodyStructureSinglePart).MessageRFC822
	inner.Envelope = oursInner.Envelope
	if render(ours) != render(theirs) {
		t.Errorf("ours\n%s\nlibrary\n%s", render(ours), render(theirs))
	}
}

func TestBodyStructureLimits(t *testing.T) {
	// 200 levels of message/rfc822: bounded depth, bounded memory.
	var b strings.Builder
	for i := 0; i < 200; i++ {
		b.WriteString("Content-Type: message/rfc822\r\n\r\n")
	}
	b.WriteString("Subject: bottom\r\n\r\nx\r\n")
	bs, err := BodyStructure(strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	depth := 0
	for {
		sp, ok := bs.(*imap.BodyStructureSinglePart)
		if !ok || sp.MessageRFC822 == nil {
			break
		}
		bs = sp.MessageRFC822.BodyStructure
		depth++
	}
	if depth != maxStructureDepth {
		t.Errorf("depth %d, want %d", depth, maxStructureDepth)
	}
	if sp := bs.(*imap.BodyStructureSinglePart); sp.Type != "application" {
		t.Errorf("the part past the limit is %s/%s, want application/octet-stream", sp.Type, sp.Subtype)
	}

	// Many parts: cut at maxStructureParts.
	b.Reset()
	b.WriteString("Content-Type: multipart/mixed; boundary=X\r\n\r\n")
	for i := 0; i < maxStructureParts+100; i++ {
		b.WriteString("--X\r\n\r\nx\r\n")
	}
	b.WriteString("--X--\r\n")
	bs, err = BodyStructure(strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(bs.(*imap.BodyStructureMultiPart).Children); n >= maxStructureParts {
		t.Errorf("%d parts kept", n)
	}
}

func TestIMAPDataRoundTrip(t *testing.T) {
	for _, tc := range structureCorpus {
		d, err := ParseIMAPData(strings.NewReader(crlf(tc.msg)))
		if err != nil {
			t.Fatal(err)
		}
		raw, err := d.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var back IMAPData
		if err := back.UnmarshalBinary(raw); err != nil {
			t.Fatal(err)
		}
		if render(back.BodyStructure) != render(d.BodyStructure) || back.HeaderSize != d.HeaderSize || back.Size != d.Size ||
			renderEnv(back.Envelope) != renderEnv(d.Envelope) {
			t.Errorf("%s: round trip changed the data:\n%s\n%s", tc.name, render(d.BodyStructure), render(back.BodyStructure))
		}
	}
	var d IMAPData
	if err := d.UnmarshalBinary([]byte(`{"v":99}`)); err != ErrIMAPDataVersion {
		t.Errorf("other version: %v", err)
	}
	msg := crlf("Subject: x\n\nbody\n")
	got, _ := ParseIMAPData(strings.NewReader(msg))
	if got.HeaderSize != int64(len("Subject: x\r\n\r\n")) || got.Size != int64(len(msg)) {
		t.Errorf("HeaderSize %d Size %d", got.HeaderSize, got.Size)
	}
}

func TestMessageText(t *testing.T) {
	msg := crlf(`Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=
Content-Type: multipart/mixed; boundary=A

--A
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

caf=C3=A9
--A
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: base64

Q2Fm6SBub2ly
--A
Content-Type: image/png
Content-Transfer-Encoding: base64

aGlkZGVu
--A
Content-Type: message/rfc822

Subject: inner

inner text
--A--
`)
	var texts []string
	if err := MessageText(strings.NewReader(msg), true, func(s string) bool { texts = append(texts, s); return true }); err != nil {
		t.Fatal(err)
	}
	want := []string{"Subject: Grüße", "Content-Type: multipart/mixed; boundary=A", "café", "Café noir", "Subject: inner", "inner text"}
	if !reflect.DeepEqual(texts, want) {
		t.Errorf("MessageText =\n%q\nwant\n%q", texts, want)
	}
	texts = nil
	MessageText(strings.NewReader(msg), false, func(s string) bool { texts = append(texts, s); return false })
	if len(texts) != 1 || texts[0] != "café" {
		t.Errorf("stopping early: %q", texts)
	}
}

func TestReadHeaderLooseSkipsJunk(t *testing.T) {
	raw := crlf("Subject: ok\nthis is not a field\n continuation of nothing?\nFrom: a@b\n\nbody")
	h, size, err := ReadHeaderLoose(bufio.NewReader(bytes.NewReader([]byte(raw))))
	if err != nil {
		t.Fatal(err)
	}
	if h.Get("Subject") != "ok" || h.Get("From") != "a@b" || size != int64(strings.Index(raw, "body")) {
		t.Errorf("header %v, size %d", h, size)
	}
	var _ textproto.Header = h
}
