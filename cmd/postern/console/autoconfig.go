package console

// Client autoconfiguration and the MTA-STS policy, and the DNS records
// that point clients and senders at them.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/mail"
	"strings"
	"time"
)

// Thunderbird's format: https://wiki.mozilla.org/Thunderbird:Autoconfiguration:ConfigFileFormat
type clientConfig struct {
	XMLName  xml.Name      `xml:"clientConfig"`
	Version  string        `xml:"version,attr"`
	Provider emailProvider `xml:"emailProvider"`
}

type emailProvider struct {
	ID       string         `xml:"id,attr"`
	Domain   string         `xml:"domain"`
	Display  string         `xml:"displayName"`
	Short    string         `xml:"displayShortName"`
	Incoming []clientServer `xml:"incomingServer"`
	Outgoing []clientServer `xml:"outgoingServer"`
}

type clientServer struct {
	Type       string `xml:"type,attr"`
	Hostname   string `xml:"hostname"`
	Port       int    `xml:"port"`
	SocketType string `xml:"socketType"`
	Auth       string `xml:"authentication"`
	Username   string `xml:"username"`
}

// domainOf finds the domain a client asks about: from the address in the
// query (Thunderbird's emailaddress), else from the Host header
// (autoconfig.DOMAIN), else the only local domain.
func (s *Server) domainOf(r *http.Request, address string) (string, error) {
	if at := strings.LastIndexByte(address, '@'); at >= 0 {
		return s.localDomain(r.Context(), address[at+1:])
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	for _, prefix := range []string{"autoconfig.", "autodiscover.", "mta-sts."} {
		if d, ok := strings.CutPrefix(strings.ToLower(host), prefix); ok {
			return s.localDomain(r.Context(), d)
		}
	}
	domains, err := s.cfg.Domains(r.Context())
	if err != nil || len(domains) != 1 {
		return "", err
	}
	return domains[0], nil
}

// socketType is Thunderbird's name for how TLS starts.
func socketType(sv Service) string {
	if sv.ImplicitTLS {
		return "SSL"
	}
	return "STARTTLS"
}

// preferred orders services as clients should prefer them: implicit TLS
// first (RFC 8314 3.3), then STARTTLS.
func preferred(all []Service, proto string) []Service {
	var tlsFirst, starttls []Service
	for _, sv := range all {
		switch {
		case sv.Proto != proto:
		case sv.ImplicitTLS:
			tlsFirst = append(tlsFirst, sv)
		default:
			starttls = append(starttls, sv)
		}
	}
	return append(tlsFirst, starttls...)
}

func (s *Server) autoconfig(w http.ResponseWriter, r *http.Request) {
	domain, err := s.domainOf(r, r.URL.Query().Get("emailaddress"))
	if err != nil {
		s.log.Error("autoconfig: cannot list domains", "err", err)
		text(w, http.StatusServiceUnavailable, "cannot list domains\n")
		return
	}
	if domain == "" {
		text(w, http.StatusNotFound, "not a local domain\n")
		return
	}
	services := s.cfg.Services()
	cc := clientConfig{Version: "1.1", Provider: emailProvider{
		ID: domain, Domain: domain, Display: domain, Short: domain,
	}}
	for _, proto := range []string{"imap", "pop3"} {
		for _, sv := range preferred(services, proto) {
			cc.Provider.Incoming = append(cc.Provider.Incoming, clientServer{
				Type: proto, Hostname: s.cfg.Hostname, Port: sv.Port, SocketType: socketType(sv),
				Auth: "password-cleartext", Username: "%EMAILADDRESS%",
			})
		}
	}
	for _, sv := range preferred(services, "submission") {
		cc.Provider.Outgoing = append(cc.Provider.Outgoing, clientServer{
			Type: "smtp", Hostname: s.cfg.Hostname, Port: sv.Port, SocketType: socketType(sv),
			Auth: "password-cleartext", Username: "%EMAILADDRESS%",
		})
	}
	writeXML(w, "application/xml", cc)
}

// Outlook's autodiscover (the POX protocol): the request names the
// address, the answer lists the servers.
const (
	autodiscoverRequestNS  = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
	autodiscoverResponseNS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
	autodiscoverOutlookNS  = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
)

type autodiscoverRequest struct {
	XMLName xml.Name `xml:"Autodiscover"`
	Request struct {
		EMailAddress string `xml:"EMailAddress"`
	} `xml:"Request"`
}

type autodiscoverResponse struct {
	XMLName  xml.Name `xml:"Autodiscover"`
	XMLNS    string   `xml:"xmlns,attr"`
	Response struct {
		XMLNS   string `xml:"xmlns,attr"`
		Account struct {
			AccountType string                 `xml:"AccountType"`
			Action      string                 `xml:"Action"`
			Protocols   []autodiscoverProtocol `xml:"Protocol"`
		} `xml:"Account"`
	} `xml:"Response"`
}

type autodiscoverProtocol struct {
	Type           string `xml:"Type"`
	Server         string `xml:"Server"`
	Port           int    `xml:"Port"`
	LoginName      string `xml:"LoginName"`
	DomainRequired string `xml:"DomainRequired"`
	SPA            string `xml:"SPA"`
	SSL            string `xml:"SSL"`
	Encryption     string `xml:"Encryption"`
	AuthRequired   string `xml:"AuthRequired"`
}

func (s *Server) autodiscover(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			text(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes\n", maxBodyBytes))
			return
		}
		text(w, http.StatusBadRequest, "cannot read the request body\n")
		return
	}
	var req autodiscoverRequest
	if err := xml.Unmarshal(body, &req); err != nil {
		text(w, http.StatusBadRequest, "not an autodiscover request: "+err.Error()+"\n")
		return
	}
	addr, err := mail.ParseAddress(req.Request.EMailAddress)
	if err != nil {
		text(w, http.StatusBadRequest, "EMailAddress: "+err.Error()+"\n")
		return
	}
	domain, err := s.domainOf(r, addr.Address)
	if err != nil {
		s.log.Error("autodiscover: cannot list domains", "err", err)
		text(w, http.StatusServiceUnavailable, "cannot list domains\n")
		return
	}
	if domain == "" {
		text(w, http.StatusNotFound, "not a local domain\n")
		return
	}
	var resp autodiscoverResponse
	resp.XMLNS = autodiscoverResponseNS
	resp.Response.XMLNS = autodiscoverOutlookNS
	resp.Response.Account.AccountType = "email"
	resp.Response.Account.Action = "settings"
	services := s.cfg.Services()
	for _, p := range []struct{ proto, typ string }{{"imap", "IMAP"}, {"pop3", "POP3"}, {"submission", "SMTP"}} {
		list := preferred(services, p.proto)
		if len(list) == 0 {
			continue
		}
		sv := list[0]
		enc := "TLS" // STARTTLS, in Outlook's words
		if sv.ImplicitTLS {
			enc = "SSL"
		}
		resp.Response.Account.Protocols = append(resp.Response.Account.Protocols, autodiscoverProtocol{
			Type: p.typ, Server: s.cfg.Hostname, Port: sv.Port, LoginName: addr.Address,
			DomainRequired: "off", SPA: "off", SSL: "on", Encryption: enc, AuthRequired: "on",
		})
	}
	writeXML(w, "text/xml", resp)
}

func writeXML(w http.ResponseWriter, contentType string, v any) {
	out, err := xml.MarshalIndent(v, "", "  ")
	if err != nil {
		text(w, http.StatusInternalServerError, "cannot encode XML\n")
		return
	}
	w.Header().Set("Content-Type", contentType+"; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, xml.Header)
	w.Write(out)
	io.WriteString(w, "\n")
}

// MTASTSPolicy is the policy text (RFC 8461 3.2): CRLF line ends, the mail
// hostname as the one mx.
func MTASTSPolicy(mode, hostname string, maxAge time.Duration) string {
	return "version: STSv1\r\n" +
		"mode: " + mode + "\r\n" +
		"mx: " + hostname + "\r\n" +
		fmt.Sprintf("max_age: %d\r\n", int64(maxAge/time.Second))
}

// MTASTSID is the id of the _mta-sts TXT record for a policy: it must
// change whenever the policy does (RFC 8461 3.1), so it is taken from the
// policy's hash; 1 to 32 letters and digits.
func MTASTSID(policy string) string {
	sum := sha256.Sum256([]byte(policy))
	return hex.EncodeToString(sum[:10])
}

func (s *Server) mtaSTS(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, MTASTSPolicy(s.cfg.MTASTSMode, s.cfg.Hostname, s.cfg.MTASTSMaxAge))
}

// Records are the DNS records, in zone-file syntax, that point mail
// clients and senders at a server for domain: the autoconfig and mta-sts
// names (CNAME to the host that serves HTTPS), the RFC 6186 and RFC 8314
// SRV records for each service (a "." target, RFC 6186 3.4 / RFC 2782, for
// one not offered), the autodiscover SRV when httpsPort is not 0, and the
// _mta-sts TXT record for policy.
func Records(domain, hostname string, services []Service, httpsPort int, policy string) string {
	var b strings.Builder
	d, h := fqdn(domain), fqdn(hostname)
	ttl := 3600
	fmt.Fprintf(&b, "; mail client autoconfiguration and MTA-STS for %s\n", domain)
	fmt.Fprintf(&b, "autoconfig.%s\t%d\tIN\tCNAME\t%s\n", d, ttl, h)
	fmt.Fprintf(&b, "mta-sts.%s\t%d\tIN\tCNAME\t%s\n", d, ttl, h)
	fmt.Fprintf(&b, "_mta-sts.%s\t%d\tIN\tTXT\t\"v=STSv1; id=%s\"\n", d, ttl, MTASTSID(policy))
	if httpsPort != 0 {
		fmt.Fprintf(&b, "_autodiscover._tcp.%s\t%d\tIN\tSRV\t0 1 %d %s\n", d, ttl, httpsPort, h)
	}
	fmt.Fprintln(&b, "; RFC 6186 service records (RFC 8314: implicit TLS preferred)")
	for _, name := range []struct {
		proto string
		tls   bool
		srv   string
	}{
		{"submission", true, "_submissions"},
		{"submission", false, "_submission"},
		{"imap", true, "_imaps"},
		{"imap", false, "_imap"},
		{"pop3", true, "_pop3s"},
		{"pop3", false, "_pop3"},
	} {
		port, prio := 0, 0
		for _, sv := range services {
			if sv.Proto == name.proto && sv.ImplicitTLS == name.tls {
				port = sv.Port
				break
			}
		}
		// Priorities: implicit TLS before STARTTLS, IMAP before POP3
		// (lower is preferred).
		switch name.proto {
		case "pop3":
			prio = 10
		}
		if !name.tls {
			prio += 5
		}
		if port == 0 {
			fmt.Fprintf(&b, "%s._tcp.%s\t%d\tIN\tSRV\t0 0 0 .\n", name.srv, d, ttl)
			continue
		}
		fmt.Fprintf(&b, "%s._tcp.%s\t%d\tIN\tSRV\t%d 1 %d %s\n", name.srv, d, ttl, prio, port, h)
	}
	return b.String()
}

func fqdn(name string) string { return strings.TrimSuffix(name, ".") + "." }
