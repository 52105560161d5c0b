package main

// A small authoritative DNS server for `postern demo`: it answers for the
// demo's domains on loopback (MX, A, and the SPF, DKIM and DMARC TXT
// records), so the relay's MX lookups and the MX's checks are real DNS
// queries and answers.

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// zoneServer serves fixed resource records over UDP.
type zoneServer struct {
	srv     *dns.Server
	addr    string
	mu      sync.Mutex
	records map[string][]dns.RR // "name./TYPE"
	names   map[string]bool     // names that exist, with or without records
}

// startZone serves records (in zone file syntax) on 127.0.0.1.
func startZone(records ...string) (*zoneServer, error) {
	z := &zoneServer{records: map[string][]dns.RR{}, names: map[string]bool{}}
	for _, r := range records {
		rr, err := dns.NewRR(r)
		if err != nil {
			return nil, fmt.Errorf("demo zone record %q: %w", r, err)
		}
		h := rr.Header()
		key := strings.ToLower(h.Name) + "/" + dns.TypeToString[h.Rrtype]
		z.records[key] = append(z.records[key], rr)
		z.names[strings.ToLower(h.Name)] = true
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("demo DNS server: %w", err)
	}
	started := make(chan struct{})
	z.srv = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(z.serve), NotifyStartedFunc: func() { close(started) }}
	z.addr = pc.LocalAddr().String()
	go z.srv.ActivateAndServe()
	<-started
	return z, nil
}

// add serves more records (in zone file syntax).
func (z *zoneServer) add(records ...string) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	for _, r := range records {
		rr, err := dns.NewRR(r)
		if err != nil {
			return fmt.Errorf("demo zone record %q: %w", r, err)
		}
		h := rr.Header()
		key := strings.ToLower(h.Name) + "/" + dns.TypeToString[h.Rrtype]
		z.records[key] = append(z.records[key], rr)
		z.names[strings.ToLower(h.Name)] = true
	}
	return nil
}

func (z *zoneServer) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	z.mu.Lock()
	for _, q := range req.Question {
		name := strings.ToLower(q.Name)
		if !z.names[name] {
			m.Rcode = dns.RcodeNameError
			continue
		}
		m.Answer = append(m.Answer, z.records[name+"/"+dns.TypeToString[q.Qtype]]...)
	}
	z.mu.Unlock()
	w.WriteMsg(m)
}

func (z *zoneServer) close() { z.srv.ShutdownContext(context.Background()) }
