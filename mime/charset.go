package mime

// Every charset go-message knows decodes, not only UTF-8, US-ASCII and
// ISO-8859-1: IMAP SEARCH and the header decoding of ENVELOPE need them.
import _ "github.com/emersion/go-message/charset"
