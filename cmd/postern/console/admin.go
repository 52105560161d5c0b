package console

// Administration, for users with the admin flag: users, domains, aliases,
// the outbound queue, what each domain should publish in DNS, and the
// live connection counts. Every change goes through the mailstore API.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
)

func (s *Server) adminRoutes(h func(string, http.HandlerFunc)) {
	h("GET /admin", s.admin(s.adminPage))
	h("POST /admin/users", s.admin(s.adminUsers))
	h("POST /admin/domains", s.admin(s.adminDomains))
	h("POST /admin/aliases", s.admin(s.adminAliases))
	h("POST /admin/queue", s.admin(s.adminQueue))
	h("GET /admin/dns", s.admin(s.adminDNS))
	h("POST /admin/unblock", s.admin(s.adminUnblock))
}

type userRow struct {
	mailstore.User
	Used int64
}

type adminData struct {
	Users         []userRow
	Domains       []string
	Aliases       []mailstore.Alias
	Queue         []mailstore.QueueEntry
	ConnsOpen     int
	ConnsMax      int
	HTTPOpen      int
	Sessions      int
	Notice, Error string
	HasDNS        bool
	Blocked       []limits.BlockedKey // the latest blocks, up to maxAdminRows
	BlockedTotal  int
}

// maxAdminRows bounds the rows of each admin list.
const maxAdminRows = 1000

func (s *Server) adminPage(w http.ResponseWriter, r *http.Request, u *user) {
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	st := s.cfg.Store
	d := adminData{Notice: r.URL.Query().Get("ok"), Error: r.URL.Query().Get("err"),
		HasDNS: s.cfg.DNSRecords != nil, Sessions: s.Sessions(), HTTPOpen: s.conns.Open()}
	if s.cfg.Conns != nil {
		d.ConnsOpen, d.ConnsMax = s.cfg.Conns.Open(), s.cfg.Conns.Max()
	}
	d.Blocked, d.BlockedTotal = s.web.logins.BlockedList(maxAdminRows)
	slices.Reverse(d.Blocked) // the latest block first
	users, err := st.Users(ctx)
	if err != nil {
		s.fail(w, "list users", err)
		return
	}
	for _, x := range users[:min(len(users), maxAdminRows)] {
		used, _, _ := st.Usage(ctx, x.ID)
		d.Users = append(d.Users, userRow{User: x, Used: used})
	}
	if d.Domains, err = st.Domains(ctx); err != nil {
		s.fail(w, "list domains", err)
		return
	}
	aliases, err := st.Aliases(ctx)
	if err != nil {
		s.fail(w, "list aliases", err)
		return
	}
	d.Aliases = aliases[:min(len(aliases), maxAdminRows)]
	if d.Queue, err = st.Queue(ctx, time.Time{}, maxAdminRows); err != nil {
		s.fail(w, "list queue", err)
		return
	}
	s.render(w, http.StatusOK, "admin", u, d)
}

// adminUnblock lifts the login block of a client address (and the rest
// of its IPv6 /64).
func (s *Server) adminUnblock(w http.ResponseWriter, r *http.Request, u *user) {
	ip, err := netip.ParseAddr(strings.TrimSpace(r.PostFormValue("address")))
	if err != nil {
		done(w, r, "unblock", errString("not an IP address"))
		return
	}
	if !s.web.logins.Unblock(ip.Unmap()) {
		done(w, r, "unblock "+ip.String(), errString("not blocked"))
		return
	}
	s.log.Info("console admin", "admin", u.Address, "op", "unblock", "remote", ip.String())
	done(w, r, "unblock "+ip.String(), nil)
}

// done goes back to the admin page with a notice or an error.
func done(w http.ResponseWriter, r *http.Request, what string, err error) {
	q := "ok=" + url.QueryEscape(what)
	if err != nil {
		q = "err=" + url.QueryEscape(what+": "+err.Error())
	}
	http.Redirect(w, r, "/admin?"+q, http.StatusSeeOther)
}

func (s *Server) adminUsers(w http.ResponseWriter, r *http.Request, u *user) {
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	st := s.cfg.Store
	addr := strings.TrimSpace(r.PostFormValue("address"))
	op := r.PostFormValue("op")
	var err error
	switch op {
	case "add":
		pw := r.PostFormValue("password")
		if len(pw) < 8 {
			done(w, r, "add "+addr, errString("the password needs at least 8 characters"))
			return
		}
		_, err = st.AddUser(ctx, addr, pw)
	case "disable", "enable":
		if op == "disable" && strings.EqualFold(addr, u.Address) {
			done(w, r, op+" "+addr, errString("you cannot disable yourself"))
			return
		}
		err = st.SetDisabled(ctx, addr, op == "disable")
	case "admin", "unadmin":
		if op == "unadmin" && strings.EqualFold(addr, u.Address) {
			done(w, r, op+" "+addr, errString("you cannot take your own admin flag"))
			return
		}
		err = st.SetAdmin(ctx, addr, op == "admin")
	case "quota":
		var mb float64
		mb, err = strconv.ParseFloat(strings.TrimSpace(r.PostFormValue("quota_mib")), 64)
		if err == nil && (mb < 0 || mb > 1<<40) {
			err = errString("out of range")
		}
		if err == nil {
			err = st.SetQuota(ctx, addr, int64(mb*(1<<20)))
		}
	default:
		err = errUnknownOp
	}
	s.adminDone(w, r, u, "user", op, "user", addr, err)
}

func (s *Server) adminDomains(w http.ResponseWriter, r *http.Request, u *user) {
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	dom := strings.TrimSpace(r.PostFormValue("domain"))
	var err error
	switch op := r.PostFormValue("op"); op {
	case "add":
		err = s.cfg.Store.AddDomain(ctx, dom)
	case "del":
		err = s.cfg.Store.DeleteDomain(ctx, dom)
	default:
		err = errUnknownOp
	}
	s.adminDone(w, r, u, "domain", r.PostFormValue("op"), "domain", dom, err)
}

func (s *Server) adminAliases(w http.ResponseWriter, r *http.Request, u *user) {
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	alias := strings.TrimSpace(r.PostFormValue("alias"))
	var targets []string
	for _, t := range strings.FieldsFunc(r.PostFormValue("targets"), func(r rune) bool { return r == ',' || r == ' ' }) {
		if len(targets) < 100 {
			targets = append(targets, t)
		}
	}
	var err error
	switch r.PostFormValue("op") {
	case "add":
		err = s.cfg.Store.AddAlias(ctx, alias, targets...)
	case "del":
		err = s.cfg.Store.DeleteAlias(ctx, alias, targets...)
	default:
		err = errUnknownOp
	}
	s.adminDone(w, r, u, "alias", r.PostFormValue("op"), "alias", alias, err)
}

func (s *Server) adminQueue(w http.ResponseWriter, r *http.Request, u *user) {
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	id, err := strconv.ParseInt(r.PostFormValue("id"), 10, 64)
	if err != nil {
		done(w, r, "queue entry", errString("bad id"))
		return
	}
	op := r.PostFormValue("op")
	switch op {
	case "retry":
		if err = s.cfg.Store.QueueRetry(ctx, id); err == nil && s.cfg.QueueKick != nil {
			s.cfg.QueueKick()
		}
	case "delete":
		err = s.cfg.Store.QueueRemove(ctx, id)
	default:
		err = errUnknownOp
	}
	s.adminDone(w, r, u, "queue", op, "queue_id", id, err)
}

func (s *Server) adminDNS(w http.ResponseWriter, r *http.Request, u *user) {
	if s.cfg.DNSRecords == nil {
		text(w, http.StatusNotFound, "no DNS records on this server\n")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	dom := strings.ToLower(strings.TrimSpace(r.URL.Query().Get("domain")))
	local, err := s.cfg.Store.IsLocalDomain(ctx, dom)
	if err != nil || !local {
		text(w, http.StatusNotFound, "not a local domain\n")
		return
	}
	zone, err := s.cfg.DNSRecords(ctx, dom)
	if err != nil {
		s.fail(w, "DNS records of "+dom, err)
		return
	}
	text(w, http.StatusOK, zone)
}

// errUnknownOp is an admin form's op that names no operation.
var errUnknownOp = errors.New("unknown operation")

// adminDone answers an admin form after its operation op on subject ran
// with the result err: 400 for an unknown op; else the change is logged
// when it succeeded (with subject under key) and done redirects with the
// outcome.
func (s *Server) adminDone(w http.ResponseWriter, r *http.Request, u *user, kind, op, key string, subject any, err error) {
	if errors.Is(err, errUnknownOp) {
		text(w, http.StatusBadRequest, "unknown operation\n")
		return
	}
	if err == nil {
		s.log.Info("console admin", "admin", u.Address, "op", kind+" "+op, key, subject)
	}
	done(w, r, fmt.Sprint(kind, " ", op, " ", subject), err)
}

type errString string

func (e errString) Error() string { return string(e) }
