package mime

import (
	"fmt"
	"io"
	stdmime "mime"
	netmail "net/mail"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	message "github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
)

// Placeholders Dovecot also uses for an address without a local part or a
// domain: an empty host would turn the address into a group marker (RFC 3501
// 7.4.2), so it may never be left empty.
const (
	envMissingMailbox = "MISSING_MAILBOX"
	envMissingDomain  = "MISSING_DOMAIN"
)

// maxEnvelopeAddresses bounds one address list of an ENVELOPE; a header
// with more is cut short there.
const maxEnvelopeAddresses = 1000

// Envelope computes the IMAP ENVELOPE (RFC 3501 7.4.2) of a message header.
//
// It starts from imapserver.ExtractEnvelope and corrects it:
//   - address lists keep their groups as RFC 3501 group markers: a
//     "(NIL NIL name NIL)" start and a "(NIL NIL NIL NIL)" end, so
//     "undisclosed-recipients:;" is not lost;
//   - one malformed address costs only itself, not the whole list;
//   - a Message-ID that does not parse is kept as written rather than
//     dropped, and so is every In-Reply-To ID before a malformed one;
//   - a Date in one of the common broken forms is still understood.
func Envelope(h textproto.Header) *imap.Envelope {
	env := imapserver.ExtractEnvelope(h)
	env.From = EnvelopeAddressList(h.Get("From"))
	env.Sender = EnvelopeAddressList(h.Get("Sender"))
	env.ReplyTo = EnvelopeAddressList(h.Get("Reply-To"))
	env.To = EnvelopeAddressList(h.Get("To"))
	env.Cc = EnvelopeAddressList(h.Get("Cc"))
	env.Bcc = EnvelopeAddressList(h.Get("Bcc"))
	if env.MessageID == "" {
		env.MessageID = envLooseMsgID(h.Get("Message-Id"))
	}
	if env.Date.IsZero() {
		env.Date = envLooseDate(h.Get("Date"))
	} else {
		env.Date = envFixZone(env.Date)
	}
	return env
}

// looseMsgID keeps a Message-ID that is not a valid msg-id (RFC 5322
// 3.6.4), without its angle brackets, which the ENVELOPE writer adds back.
func envLooseMsgID(v string) string {
	v = strings.TrimSpace(envUnfold(v))
	if i := strings.IndexByte(v, '<'); i >= 0 {
		if j := strings.IndexByte(v[i:], '>'); j > 0 {
			v = v[i+1 : i+j]
		}
	}
	v = strings.Trim(v, "<> \t")
	if strings.ContainsAny(v, "<>\r\n") {
		return ""
	}
	return v
}

// envLooseDateLayouts are forms seen in real Date fields that net/mail's
// parser refuses.
var envLooseDateLayouts = []string{
	"Mon, 2 Jan 2006 15:04:05 -0700 (MST)",
	"Mon, 2 Jan 2006 15:04:05 MST",
	"Mon, 2 Jan 2006 15:04 -0700",
	"2 Jan 2006 15:04 -0700",
	"Mon, 2 Jan 06 15:04:05 -0700",
	"Mon Jan 2 15:04:05 2006",
	"Mon Jan 2 15:04:05 MST 2006",
	"Mon, 2 Jan 2006 15:04:05",
	time.RFC3339,
}

func envLooseDate(v string) time.Time {
	v = strings.Join(strings.Fields(envUnfold(v)), " ")
	if v == "" {
		return time.Time{}
	}
	if t, err := netmail.ParseDate(v); err == nil {
		return envFixZone(t)
	}
	for _, layout := range envLooseDateLayouts {
		if t, err := time.Parse(layout, v); err == nil {
			return envFixZone(t)
		}
	}
	return time.Time{}
}

// envFixZone gives a time parsed with a zone name Go does not know (it
// then takes offset 0) the zone's offset.
func envFixZone(t time.Time) time.Time {
	if name, off := t.Zone(); off == 0 && envZones[name] != 0 {
		return time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), time.FixedZone(name, envZones[name]))
	}
	return t
}

// envZones are the zone names of RFC 5322 4.3 and the European ones that
// are common in Date fields, in seconds east of UTC.
var envZones = map[string]int{
	"EST": -5 * 3600, "EDT": -4 * 3600, "CST": -6 * 3600, "CDT": -5 * 3600,
	"MST": -7 * 3600, "MDT": -6 * 3600, "PST": -8 * 3600, "PDT": -7 * 3600,
	"CET": 3600, "CEST": 2 * 3600, "EET": 2 * 3600, "EEST": 3 * 3600, "WEST": 3600, "BST": 3600,
}

func envUnfold(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	return strings.NewReplacer("\r\n", "", "\n", "", "\r", "").Replace(s)
}

// EnvelopeAddressList parses an address-list header value (RFC 5322 3.4) for an
// IMAP ENVELOPE. Groups become start and end markers; an address that
// does not parse is kept as well as it can be (its local part and domain,
// or placeholders), and an empty item is skipped. Nil means no addresses.
func EnvelopeAddressList(v string) []imap.Address {
	v = strings.TrimSpace(envUnfold(v))
	if v == "" {
		return nil
	}
	var out []imap.Address
	for _, it := range envSplitList(v) {
		if len(out) >= maxEnvelopeAddresses {
			break
		}
		if it.group {
			out = append(out, imap.Address{Mailbox: envGroupName(it.text)})
			for _, m := range it.members {
				if a, ok := envParseMailbox(m); ok {
					out = append(out, a)
				}
			}
			out = append(out, imap.Address{})
			continue
		}
		if a, ok := envParseMailbox(it.text); ok {
			out = append(out, a)
		}
	}
	return out
}

// envItem is one top-level item of an address list: a mailbox, or a
// group with its members.
type envItem struct {
	text    string // the mailbox, or the group's display name
	group   bool
	members []string
}

// splitAddressList cuts a list at the commas, colons and semicolons that
// are not inside quotes, comments, angle brackets or domain literals.
func envSplitList(v string) []envItem {
	var items []envItem
	var cur *envItem // the open group, if any
	start := 0
	depth := 0 // comment nesting
	inQuote, inAngle, inLiteral := false, false, false
	flush := func(end int) {
		text := strings.TrimSpace(v[start:end])
		start = end + 1
		if text == "" {
			return
		}
		if cur != nil {
			cur.members = append(cur.members, text)
		} else {
			items = append(items, envItem{text: text})
		}
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case inQuote:
			if c == '\\' {
				i++
			} else if c == '"' {
				inQuote = false
			}
		case depth > 0:
			if c == '\\' {
				i++
			} else if c == '(' {
				depth++
			} else if c == ')' {
				depth--
			}
		case inLiteral:
			if c == ']' {
				inLiteral = false
			}
		case c == '"':
			inQuote = true
		case c == '(':
			depth++
		case c == '[':
			inLiteral = true
		case c == '<':
			inAngle = true
		case c == '>':
			inAngle = false
		case inAngle && c == ',' && !strings.HasPrefix(strings.TrimLeft(v[i+1:], " \t"), "@"):
			// A comma that does not start another hop of a source route:
			// the bracket was never closed.
			inAngle = false
			flush(i)
		case inAngle:
			// '@', ':' and ',' of a source route belong to the address.
		case c == ',':
			flush(i)
		case c == ':' && cur == nil:
			items = append(items, envItem{text: strings.TrimSpace(v[start:i]), group: true})
			cur = &items[len(items)-1]
			start = i + 1
		case c == ';' && cur != nil:
			flush(i)
			cur = nil
		}
	}
	flush(len(v))
	return items
}

// groupName is a group's display name as the ENVELOPE carries it: the
// phrase without quotes and comments, encoded words left for the client.
func envGroupName(s string) string {
	s = strings.Join(strings.Fields(envStripComments(s)), " ")
	if strings.HasPrefix(s, `"`) && strings.HasSuffix(s, `"`) && len(s) >= 2 {
		s = envUnquote(s[1 : len(s)-1])
	}
	if s == "" {
		return envMissingMailbox
	}
	return s
}

// parseMailbox parses one mailbox (name-addr or addr-spec), falling back
// to a lenient reading when it is not valid RFC 5322.
func envParseMailbox(s string) (imap.Address, bool) {
	if a, err := mail.ParseAddress(s); err == nil {
		mb, host := envSplitAddr(a.Address)
		return imap.Address{Name: a.Name, Mailbox: mb, Host: host}, true
	}
	var name, addr string
	if i := strings.LastIndexByte(s, '<'); i >= 0 {
		name = s[:i]
		addr = s[i+1:]
		if j := strings.IndexByte(addr, '>'); j >= 0 {
			addr = addr[:j]
		}
		// A source route (RFC 5322 4.4 obs-route) is dropped.
		if j := strings.LastIndexByte(addr, ':'); j >= 0 && strings.HasPrefix(strings.TrimSpace(addr), "@") {
			addr = addr[j+1:]
		}
	} else {
		addr = envStripComments(s)
	}
	name = strings.Join(strings.Fields(envStripComments(name)), " ")
	if len(name) >= 2 && name[0] == '"' && name[len(name)-1] == '"' {
		name = envUnquote(name[1 : len(name)-1])
	}
	name = envDecodeWords(name)
	if strings.Contains(addr, "@") {
		addr = strings.Join(strings.Fields(addr), "")
	} else {
		addr = strings.Join(strings.Fields(addr), " ")
	}
	if addr == "" && name == "" {
		return imap.Address{}, false
	}
	mb, host := envSplitAddr(addr)
	return imap.Address{Name: name, Mailbox: mb, Host: host}, true
}

// splitAddr splits an address at its last '@', putting placeholders where
// a part is missing.
func envSplitAddr(addr string) (mailbox, host string) {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		mailbox, host = addr, ""
	} else {
		mailbox, host = addr[:i], addr[i+1:]
	}
	if len(mailbox) >= 2 && mailbox[0] == '"' && mailbox[len(mailbox)-1] == '"' {
		mailbox = envUnquote(mailbox[1 : len(mailbox)-1])
	}
	if mailbox == "" {
		mailbox = envMissingMailbox
	}
	if host == "" {
		host = envMissingDomain
	}
	return mailbox, host
}

// stripComments removes RFC 5322 comments (nested parentheses) outside
// quoted strings.
func envStripComments(s string) string {
	if !strings.Contains(s, "(") {
		return s
	}
	var b strings.Builder
	depth := 0
	inQuote := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case depth == 0 && inQuote:
			b.WriteByte(c)
			if c == '\\' && i+1 < len(s) {
				i++
				b.WriteByte(s[i])
			} else if c == '"' {
				inQuote = false
			}
		case depth > 0:
			if c == '\\' {
				i++
			} else if c == '(' {
				depth++
			} else if c == ')' {
				depth--
			}
		case c == '(':
			depth++
			b.WriteByte(' ')
		case c == '"':
			inQuote = true
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// unquote undoes quoted-pair escapes.
func envUnquote(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// envWordDecoder decodes RFC 2047 encoded words, in every charset that
// go-message knows (all of them once github.com/emersion/go-message/charset
// is linked in, else UTF-8, US-ASCII and ISO-8859-1).
var envWordDecoder = &stdmime.WordDecoder{CharsetReader: func(charset string, r io.Reader) (io.Reader, error) {
	if message.CharsetReader == nil {
		return nil, fmt.Errorf("mime: unknown charset %q", charset)
	}
	return message.CharsetReader(charset, r)
}}

// envDecodeWords decodes the encoded words of a phrase; on failure the
// phrase is kept as it is, for the client to decode.
func envDecodeWords(s string) string {
	if !strings.Contains(s, "=?") {
		return s
	}
	d, err := envWordDecoder.DecodeHeader(s)
	if err != nil {
		return s
	}
	return d
}
