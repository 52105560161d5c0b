package mailstore

import (
	"bufio"
	"bytes"
	"strings"

	"github.com/postern/postern/mime"
)

// textIndexVersion names the way bodyText extracts text; a change to it
// (or to what mime returns) must raise it, so that bodies indexed before
// are searched as unindexed until indexed again.
const textIndexVersion = 1

// minIndexedNeedle is the shortest needle, in characters, the trigram
// index can look up.
const minIndexedNeedle = 3

// searchedHeaderFields are the fields whose text goes into the hdr column:
// those IMAP SEARCH has keys for (RFC 3501 6.4.4).
var searchedHeaderFields = []string{"From", "To", "Cc", "Bcc", "Subject"}

// bodyText is what the full-text index keeps of a message, lower-cased:
// every text IMAP SEARCH TEXT and BODY look in (mime.MessageText with the
// header), and for the fields in searchedHeaderFields their raw and
// decoded values and, for addresses, every form mime.AddressSearchTexts
// gives. A substring found by SEARCH in any one of these texts is found
// in the index's text, which is what makes the index a safe prefilter.
func bodyText(msg []byte) (text, hdr string, ok bool) {
	var tb strings.Builder
	err := mime.MessageText(bytes.NewReader(msg), true, func(t string) bool {
		tb.WriteString(strings.ToLower(t))
		tb.WriteByte('\n')
		return true
	})
	if err != nil {
		return "", "", false
	}
	h, _, err := mime.ReadHeaderLoose(bufio.NewReader(bytes.NewReader(msg)))
	if err != nil {
		return "", "", false
	}
	var hb strings.Builder
	add := func(s string) {
		hb.WriteString(strings.ToLower(s))
		hb.WriteByte('\n')
	}
	for _, key := range searchedHeaderFields {
		for f := h.FieldsByKey(key); f.Next(); {
			raw := f.Value()
			add(raw)
			add(mime.HeaderText(raw))
			if key != "Subject" {
				for _, a := range mime.AddressSearchTexts(raw) {
					add(a)
				}
			}
		}
	}
	return tb.String(), hb.String(), true
}

// ftsPhrase quotes a lower-cased needle as an FTS5 phrase (RFC-free: FTS5
// query syntax doubles a double quote inside a string), or reports that
// the index cannot look it up.
func ftsPhrase(needle string) (string, bool) {
	if len([]rune(needle)) < minIndexedNeedle || strings.ContainsRune(needle, 0) {
		return "", false
	}
	return `"` + strings.ReplaceAll(needle, `"`, `""`) + `"`, true
}
