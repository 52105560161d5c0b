package pop3d

import "testing"

func TestParseCommand(t *testing.T) {
	tests := []struct {
		line, name, arg string
		valid           bool
	}{
		{"STAT", "STAT", "", true},
		{"stat", "STAT", "", true},
		{"LIST 1", "LIST", "1", true},
		{"TOP 1 10", "TOP", "1 10", true},
		{"PASS two words ", "PASS", "two words ", true},
		{"PASS pässwörd", "PASS", "pässwörd", true},
		{"XYZZY 1", "XYZZY", "1", true},
		{"", "", "", false},
		{" STAT", "", "", false},
		{"STAT\t1", "", "", false},
		{"PASS a\x00b", "", "", false},
		{"NOOP\x7f", "", "", false},
	}
	for _, tt := range tests {
		name, arg, valid := parseCommand([]byte(tt.line))
		if name != tt.name || arg != tt.arg || valid != tt.valid {
			t.Errorf("parseCommand(%q) = %q, %q, %v; want %q, %q, %v", tt.line, name, arg, valid, tt.name, tt.arg, tt.valid)
		}
	}
}

func TestParseNumber(t *testing.T) {
	tests := []struct {
		s     string
		n     int64
		valid bool
	}{
		{"1", 1, true},
		{"0", 0, true},
		{"0042", 42, true},
		{"9999999999", 9999999999, true},
		{"99999999999", 0, false},
		{"", 0, false},
		{"-1", 0, false},
		{"+1", 0, false},
		{"1x", 0, false},
		{"１", 0, false},
	}
	for _, tt := range tests {
		n, valid := parseNumber(tt.s)
		if n != tt.n || valid != tt.valid {
			t.Errorf("parseNumber(%q) = %d, %v; want %d, %v", tt.s, n, valid, tt.n, tt.valid)
		}
	}
}

func TestRedactCommand(t *testing.T) {
	tests := map[string]string{
		"PASS secret":            "PASS ***",
		"pass secret":            "PASS ***",
		"PASS\x00secret":         "PASS ***",
		"PASSsecret":             "PASS ***",
		"AUTH PLAIN AGFsaWNlAHg": "AUTH PLAIN ***",
		"auth plain AGFsaWNlAHg": "auth plain ***",
		"AUTH PLAIN":             "AUTH PLAIN",
		"AUTH AGFsaWNlAHg=":      "AUTH ***", // credentials in the mechanism's place
		"AUTH dXNlcg+ more":      "AUTH ***",
		"AUTH hunter2":           "AUTH ***",
		"AUTH login":             "AUTH login",
		" PASS hunter2":          "PASS ***",
		"\tpass hunter2":         "PASS ***",
		"AUTH":                   "AUTH",
		"USER alice":             "USER alice",
		"RETR 1":                 "RETR 1",
	}
	for line, want := range tests {
		if got := redactCommand(line); got != want {
			t.Errorf("redactCommand(%q) = %q, want %q", line, got, want)
		}
	}
}

func TestReplyString(t *testing.T) {
	tests := map[reply]string{
		ok(""):           "+OK",
		ok("2 320"):      "+OK 2 320",
		errSyntax:        "-ERR syntax error in arguments",
		errInUse:         "-ERR [IN-USE] maildrop is in use by another POP3 session",
		errAuthFailed:    "-ERR [AUTH] authentication failed",
		errTemporary:     "-ERR [SYS/TEMP] temporary server problem, try again later",
		errReply(""):     "-ERR",
		errNotRemoved:    "-ERR [SYS/TEMP] some deleted messages not removed",
		errLineTooLong:   "-ERR line too long (at most 255 octets)",
		errMessageGone:   "-ERR message was removed by another session",
		errPlaintext:     "-ERR [AUTH] plaintext authentication needs TLS: use STLS first",
		errWrongState:    "-ERR command not valid in this state",
		errNoSuchMessage: "-ERR no such message",
	}
	for r, want := range tests {
		if got := r.String(); got != want {
			t.Errorf("%#v.String() = %q, want %q", r, got, want)
		}
	}
}
