// Package msgauthtest is a DNS server on loopback for tests of msgauth
// and of the packages that use it: it answers from a table of records
// given in zone-file syntax.
package msgauthtest

import (
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
)

// DNS is a DNS server on 127.0.0.1 (UDP and TCP on the same port).
type DNS struct {
	Addr string // HOST:PORT

	queries atomic.Int64

	mu       sync.Mutex
	records  map[string][]dns.RR // "name./TYPE"
	names    map[string]bool     // names that exist (NXDOMAIN for others)
	servfail map[string]bool
}

// NewDNS starts a server that t's cleanup stops.
func NewDNS(t testing.TB) *DNS {
	t.Helper()
	d := &DNS{records: map[string][]dns.RR{}, names: map[string]bool{}, servfail: map[string]bool{}}
	// UDP and TCP on one port number: the UDP port the system chose may
	// be taken for TCP, so try a few.
	var pc net.PacketConn
	var ln net.Listener
	for attempt := 0; ; attempt++ {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		if attempt == 20 {
			t.Fatal(err)
		}
	}
	for _, srv := range []*dns.Server{{PacketConn: pc}, {Listener: ln}} {
		started := make(chan struct{})
		srv.Handler = dns.HandlerFunc(d.serve)
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	d.Addr = pc.LocalAddr().String()
	return d
}

// Add adds records in zone-file syntax, such as
// `alpha.test. 300 TXT "v=spf1 -all"`. A long TXT value may be given as
// one string: it is split into strings of 255 octets (RFC 1035 3.3.14).
func (d *DNS) Add(t testing.TB, records ...string) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, s := range records {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatalf("record %q: %v", s, err)
		}
		if txt, ok := rr.(*dns.TXT); ok {
			txt.Txt = splitTXT(strings.Join(txt.Txt, ""))
		}
		h := rr.Header()
		h.Name = strings.ToLower(h.Name)
		k := h.Name + "/" + dns.TypeToString[h.Rrtype]
		d.records[k] = append(d.records[k], rr)
		d.names[h.Name] = true
	}
}

// AddTXT adds a TXT record of value at name with a TTL of an hour.
func (d *DNS) AddTXT(t testing.TB, name, value string) {
	t.Helper()
	rr := &dns.TXT{Hdr: dns.RR_Header{Name: dns.Fqdn(strings.ToLower(name)), Rrtype: dns.TypeTXT,
		Class: dns.ClassINET, Ttl: 3600}, Txt: splitTXT(value)}
	d.mu.Lock()
	defer d.mu.Unlock()
	k := rr.Hdr.Name + "/TXT"
	d.records[k] = append(d.records[k], rr)
	d.names[rr.Hdr.Name] = true
}

func splitTXT(s string) []string {
	var out []string
	for len(s) > 255 {
		out = append(out, s[:255])
		s = s[255:]
	}
	return append(out, s)
}

// Exists makes name exist without records of its own: queries for it
// answer NOERROR with an empty answer (NODATA, RFC 2308 2.2) instead of
// NXDOMAIN. Names given to Add or AddTXT exist already.
func (d *DNS) Exists(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.names[dns.Fqdn(strings.ToLower(name))] = true
}

// Fail makes lookups of name answer SERVFAIL.
func (d *DNS) Fail(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.servfail[dns.Fqdn(strings.ToLower(name))] = true
}

// Queries is the number of queries answered so far.
func (d *DNS) Queries() int64 { return d.queries.Load() }

func (d *DNS) serve(w dns.ResponseWriter, req *dns.Msg) {
	d.queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	d.mu.Lock()
	for _, q := range req.Question {
		name := strings.ToLower(q.Name)
		switch {
		case d.servfail[name]:
			m.Rcode = dns.RcodeServerFailure
		case !d.names[name]:
			m.Rcode = dns.RcodeNameError
		default:
			m.Answer = append(m.Answer, d.records[name+"/"+dns.TypeToString[q.Qtype]]...)
		}
	}
	d.mu.Unlock()
	if _, isUDP := w.RemoteAddr().(*net.UDPAddr); isUDP {
		m.Truncate(dnsUDPSize(req))
	}
	w.WriteMsg(m)
}

func dnsUDPSize(req *dns.Msg) int {
	if o := req.IsEdns0(); o != nil {
		return int(o.UDPSize())
	}
	return dns.MinMsgSize
}

// Silent returns the address of a UDP socket that reads queries and never
// answers, for timeouts; t's cleanup closes it.
func Silent(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	return pc.LocalAddr().String()
}
