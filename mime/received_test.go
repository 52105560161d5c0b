package mime

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message/textproto"
)

func TestReceivedField(t *testing.T) {
	date := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	v4 := netip.MustParseAddr("192.0.2.1")
	tests := []struct {
		name string
		r    Received
		want string
	}{
		{
			"mx", Received{Helo: "client.example", ClientIP: v4, By: "mx.example.com", With: "ESMTP", ID: "A1B2", For: "user@example.com", Date: date},
			"Received: from client.example ([192.0.2.1])\r\n\tby mx.example.com with ESMTP id A1B2\r\n\tfor <user@example.com>; Tue, 24 Nov 2026 10:00:00 +0000\r\n",
		},
		{
			"tls, several recipients", Received{Helo: "client.example", ClientIP: v4, By: "mx.example.com", With: "ESMTPSA", TLS: "TLS1.3 TLS_AES_128_GCM_SHA256", ID: "A1B2", Date: date},
			"Received: from client.example ([192.0.2.1])\r\n\tby mx.example.com with ESMTPSA (TLS1.3 TLS_AES_128_GCM_SHA256) id A1B2; Tue, 24 Nov 2026 10:00:00 +0000\r\n",
		},
		{
			"ipv6 and literal helo", Received{Helo: "[IPv6:2001:db8::1]", ClientIP: netip.MustParseAddr("2001:db8::1"), By: "mx", With: "ESMTP", ID: "x", Date: date},
			"Received: from [IPv6:2001:db8::1] ([IPv6:2001:db8::1])\r\n\tby mx with ESMTP id x; Tue, 24 Nov 2026 10:00:00 +0000\r\n",
		},
		{
			"mapped ipv4", Received{Helo: "[192.0.2.1]", ClientIP: netip.MustParseAddr("::ffff:192.0.2.1"), By: "mx", With: "SMTP", Date: date},
			"Received: from [192.0.2.1] ([192.0.2.1])\r\n\tby mx with SMTP; Tue, 24 Nov 2026 10:00:00 +0000\r\n",
		},
		{
			"bad helo", Received{Helo: "evil) (by\r\nInjected: yes", ClientIP: v4, By: "mx", With: "ESMTP", Date: date},
			"Received: from [192.0.2.1] ([192.0.2.1] helo=evilbyInjected:yes)\r\n\tby mx with ESMTP; Tue, 24 Nov 2026 10:00:00 +0000\r\n",
		},
		{
			"quoted local part", Received{Helo: "c.example", ClientIP: v4, By: "mx", With: "ESMTP", For: `john doe@example.com`, Date: date},
			"Received: from c.example ([192.0.2.1])\r\n\tby mx with ESMTP\r\n\tfor <\"john doe\"@example.com>; Tue, 24 Nov 2026 10:00:00 +0000\r\n",
		},
		{
			"unwritable recipient dropped", Received{Helo: "c.example", ClientIP: v4, By: "mx", With: "ESMTP", For: "a\nb@example.com", Date: date},
			"Received: from c.example ([192.0.2.1])\r\n\tby mx with ESMTP; Tue, 24 Nov 2026 10:00:00 +0000\r\n",
		},
		{
			"utf8", Received{Helo: "c.example", ClientIP: v4, By: "mx", With: "UTF8SMTPS", For: "josé@example.com", Date: date},
			"Received: from c.example ([192.0.2.1])\r\n\tby mx with UTF8SMTPS\r\n\tfor <josé@example.com>; Tue, 24 Nov 2026 10:00:00 +0000\r\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.r.Field()
			if got != tt.want {
				t.Errorf("got\n%q\nwant\n%q", got, tt.want)
			}
			// It must parse back as exactly one Received field.
			h, err := ReadHeader([]byte(got + "\r\n"))
			if err != nil {
				t.Fatal(err)
			}
			if CountReceived(h) != 1 || h.Len() != 1 {
				t.Errorf("parsed as %d fields, %d Received", h.Len(), CountReceived(h))
			}
		})
	}
}

func TestReturnPath(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "Return-Path: <>\r\n"},
		{"a@b.example", "Return-Path: <a@b.example>\r\n"},
		{"first.last+tag@b.example", "Return-Path: <first.last+tag@b.example>\r\n"},
		{`a"b@c.example`, "Return-Path: <\"a\\\"b\"@c.example>\r\n"},
		{"a..b@c.example", "Return-Path: <\"a..b\"@c.example>\r\n"},
		{"a\nb@c.example", ""},
		{strings.Repeat("a", 250) + "@c.example", ""},
	}
	for _, tt := range tests {
		if got := ReturnPath(tt.in); got != tt.want {
			t.Errorf("ReturnPath(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestSubmissionFields(t *testing.T) {
	now := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		header    string
		date, mid bool
	}{
		{"both missing", "From: a@b.example\r\n\r\n", true, true},
		{"date present", "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n", false, true},
		{"message-id present", "Message-ID: <x@y>\r\n\r\n", true, false},
		{"both present, any case", "date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMESSAGE-ID: <x@y>\r\n\r\n", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ReadHeader([]byte(tt.header))
			if err != nil {
				t.Fatal(err)
			}
			got, err := SubmissionFields(h, "mail.example.com", now)
			if err != nil {
				t.Fatal(err)
			}
			if hasDate := strings.Contains(got, "Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n"); hasDate != tt.date {
				t.Errorf("Date added = %v, want %v: %q", hasDate, tt.date, got)
			}
			if hasID := strings.Contains(got, "Message-ID: <") && strings.Contains(got, "@mail.example.com>\r\n"); hasID != tt.mid {
				t.Errorf("Message-ID added = %v, want %v: %q", hasID, tt.mid, got)
			}
			var added textproto.Header
			if got != "" {
				if added, err = ReadHeader([]byte(got + "\r\n")); err != nil {
					t.Fatalf("added fields do not parse: %v", err)
				}
			}
			if added.Len() != btoi(tt.date)+btoi(tt.mid) {
				t.Errorf("added %d fields: %q", added.Len(), got)
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
