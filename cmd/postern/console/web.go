package console

// The web console: login, server-side sessions, CSRF tokens and the
// security headers every page carries. Pages are server-rendered
// (html/template) with static assets embedded; the only scripts are the
// static files under static/, so the Content-Security-Policy allows no
// inline script.

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/limits"
)

// WebConfig is what the web console needs. It is embedded in Config; with
// Store nil the console's pages are not served (only the listener's
// endpoints are).
type WebConfig struct {
	// Store is the mailstore the console reads and changes.
	Store *mailstore.Store
	// Logins is the process's shared record of failed logins and the
	// password-check gate (limits.Shared.Logins); nil: a private one.
	Logins *limits.Logins
	// Hub is the event source of the live flow (/flow, /api/events);
	// nil: those pages answer 404.
	Hub *Hub
	// Submit sends a message through the submission pipeline of port 587
	// (smtpd.Server.Submit); nil: compose answers 503.
	Submit SubmitFunc
	// DNSRecords returns the records a local domain should publish, in
	// zone-file syntax (what `postern dns DOMAIN` prints); nil: the admin
	// page leaves them out.
	DNSRecords func(ctx context.Context, domain string) (string, error)
	// QueueKick tells the relay that a queue entry is due now (after
	// retry from the admin page); nil: the relay finds it at its next poll.
	QueueKick func()
	// AllowInsecure allows logging in over plain HTTP from addresses other
	// than loopback (auth.allow_insecure). Off loopback the console
	// otherwise requires TLS.
	AllowInsecure bool
	// SessionIdle and SessionMax bound a console session's idle time and
	// whole life; 0 takes DefaultSessionIdle and DefaultSessionMax.
	SessionIdle, SessionMax time.Duration
	// MaxSessions bounds the console sessions held at once; 0 takes
	// DefaultMaxSessions. When full, the least recently used is dropped.
	MaxSessions int
	// PasswordStamp returns, for the user with this address, something
	// that changes whenever their password changes (the stored password
	// hash will do). A session keeps only a keyed hash of what it was at
	// login, and a request whose user's stamp differs ends the session:
	// a password change (`postern user passwd`, on any frontend) logs
	// out every console session of that user. Nil takes
	// Store.PasswordStamp; tests may supply their own.
	PasswordStamp func(ctx context.Context, address string) ([]byte, error)

	// keepAlive, when set (tests), replaces the const keepAlive.
	keepAlive time.Duration
}

// SubmitFunc sends msg from the authenticated user as envelope sender from
// to rcpts, through the same checks, signing and delivery as the
// submission port. The error is the SMTP reply when the message was
// refused.
type SubmitFunc func(ctx context.Context, user, from string, rcpts []string, msg io.Reader) error

// Defaults of WebConfig's zero fields.
const (
	DefaultSessionIdle = 30 * time.Minute
	DefaultSessionMax  = 12 * time.Hour
	DefaultMaxSessions = 1000
)

const (
	sessionCookie = "postern_session"
	// maxFormBytes bounds a form without files; maxComposeBytes one with
	// attachments.
	maxFormBytes    = 64 << 10
	maxComposeBytes = 25 << 20
	// storeTimeout bounds the store calls of one request.
	storeTimeout = 10 * time.Second
	// pageCSP is the policy of every console page: scripts and styles only
	// from the console's own static files, frames only from itself (the
	// sandboxed message view), nothing may frame the console.
	pageCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
		"connect-src 'self'; form-action 'self'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)

//go:embed static tmpl
var staticFS embed.FS

var templates = template.Must(template.New("").Funcs(template.FuncMap{
	"join": strings.Join,
	"size": humanSize,
	"time": func(t time.Time) string { return t.Local().Format("2006-01-02 15:04") },
	"add":  func(a, b int) int { return a + b },
}).ParseFS(staticFS, "tmpl/*.html"))

// webSession is one logged-in browser.
type webSession struct {
	id      string // the cookie's value, hashed (the map key)
	csrf    string
	address string
	userID  int64 // the user logged in; the same address given to a new user is not them
	// stampMAC is the keyed hash (web.stampKey) of the user's
	// PasswordStamp at login; nil without WebConfig.PasswordStamp.
	stampMAC []byte
	created  time.Time
	lastSeen time.Time
}

// web is the console's state: its sessions.
type web struct {
	cfg    WebConfig
	logins *limits.Logins
	now    func() time.Time
	// stampKey keys the hash sessions keep of a password stamp, so that
	// the console's memory never holds the stamp (a password hash) itself.
	stampKey []byte

	stop     chan struct{} // closed at Shutdown: event streams end
	stopOnce sync.Once

	mu       sync.Mutex
	sessions map[string]*webSession
	streams  map[string]int // open /api/events streams by user address
}

// stopStreams ends the event streams, which would otherwise keep Shutdown
// waiting.
func (s *Server) stopStreams() {
	if s.web != nil {
		s.web.stopOnce.Do(func() { close(s.web.stop) })
	}
}

func newWeb(cfg WebConfig) *web {
	if cfg.SessionIdle <= 0 {
		cfg.SessionIdle = DefaultSessionIdle
	}
	if cfg.SessionMax <= 0 {
		cfg.SessionMax = DefaultSessionMax
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	if cfg.PasswordStamp == nil && cfg.Store != nil {
		cfg.PasswordStamp = cfg.Store.PasswordStamp
	}
	l := cfg.Logins
	if l == nil {
		l = limits.NewLogins(limits.LoginPolicy{})
	}
	key := make([]byte, 32)
	rand.Read(key) // never fails (crypto/rand)
	if cfg.keepAlive <= 0 {
		cfg.keepAlive = keepAlive
	}
	return &web{cfg: cfg, logins: l, now: time.Now, stampKey: key, stop: make(chan struct{}),
		sessions: make(map[string]*webSession), streams: make(map[string]int)}
}

// webRoutes registers the console's pages when it has a store.
func (s *Server) webRoutes() {
	if s.cfg.Store == nil {
		return
	}
	s.web = newWeb(s.cfg.WebConfig)
	h := func(pattern string, f http.HandlerFunc) { s.mux.Handle(pattern, secure(f)) }
	static, _ := fs.Sub(staticFS, "static")
	s.mux.Handle("GET /static/", secure(http.StripPrefix("/static/", http.FileServerFS(static)).ServeHTTP))
	h("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		if _, u := s.session(r); u != nil {
			http.Redirect(w, r, "/mail", http.StatusSeeOther)
			return
		}
		http.Redirect(w, r, "/login", http.StatusSeeOther)
	})
	h("GET /login", s.loginPage)
	h("POST /login", s.login)
	h("POST /logout", s.authed(s.logout))
	s.mailRoutes(h)
	s.flowRoutes(h)
	s.adminRoutes(h)
}

// secure sets the headers every console answer carries.
func secure(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", pageCSP)
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("X-Content-Type-Options", "nosniff")
		// same-origin, not no-referrer: under no-referrer browsers send
		// "Origin: null" with a form, and sameOrigin needs the real one.
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("Cache-Control", "no-store")
		next(w, r)
	})
}

// user is who a request comes from, looked up again on every request so
// that disabling a user or taking their admin flag acts at once.
type user struct {
	mailstore.User
	csrf string
	sess *webSession
}

// session returns the request's session and its user, or nils.
func (s *Server) session(r *http.Request) (*webSession, *user) {
	return s.lookup(r, true)
}

// lookup is session; touch counts the request as the session's activity
// (an open event stream checking its session again does not).
func (s *Server) lookup(r *http.Request, touch bool) (*webSession, *user) {
	c, err := r.Cookie(sessionCookie)
	if err != nil || len(c.Value) > 100 {
		return nil, nil
	}
	key := hashToken(c.Value)
	wb := s.web
	now := wb.now()
	wb.mu.Lock()
	ws := wb.sessions[key]
	if ws != nil && (now.Sub(ws.lastSeen) > wb.cfg.SessionIdle || now.Sub(ws.created) > wb.cfg.SessionMax) {
		delete(wb.sessions, key)
		ws = nil
	}
	if ws != nil && touch {
		ws.lastSeen = now
	}
	var sc webSession
	if ws != nil {
		sc = *ws
	}
	wb.mu.Unlock()
	if ws == nil {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	u, err := s.cfg.Store.UserByAddress(ctx, sc.address)
	if err != nil || u.Disabled || u.ID != sc.userID {
		return nil, nil
	}
	if wb.cfg.PasswordStamp != nil {
		// Read after the user: an address given to a new user between the
		// two reads has a new stamp, and the session ends.
		mac, err := wb.passwordMAC(ctx, sc.address)
		if err != nil {
			s.log.Warn("console session: cannot read the password stamp", "user", sc.address, "err", err)
			return nil, nil
		}
		if !hmac.Equal(mac, sc.stampMAC) {
			// The password changed since this session logged in: whoever
			// changed it wants the sessions opened with the old one gone.
			wb.end(key)
			s.log.Info("console session ended", "user", sc.address, "reason", "password changed")
			return nil, nil
		}
	}
	return ws, &user{User: u, csrf: sc.csrf, sess: ws}
}

// passwordMAC is the keyed hash of address's password stamp, or nil
// without WebConfig.PasswordStamp.
func (wb *web) passwordMAC(ctx context.Context, address string) ([]byte, error) {
	if wb.cfg.PasswordStamp == nil {
		return nil, nil
	}
	stamp, err := wb.cfg.PasswordStamp(ctx, address)
	if err != nil {
		return nil, fmt.Errorf("password stamp of %s: %w", address, err)
	}
	h := hmac.New(sha256.New, wb.stampKey)
	h.Write(stamp)
	return h.Sum(nil), nil
}

// authed wraps a handler that needs a logged-in user; a state-changing
// request must also carry the session's CSRF token and come from the
// console's own origin.
func (s *Server) authed(f func(http.ResponseWriter, *http.Request, *user)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, u := s.session(r)
		if u == nil {
			if r.Method == http.MethodGet && !strings.HasPrefix(r.URL.Path, "/api/") {
				http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			text(w, http.StatusUnauthorized, "not logged in\n")
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if !sameOrigin(r) || !s.checkCSRF(r, u) {
				text(w, http.StatusForbidden, "missing or wrong CSRF token\n")
				return
			}
		}
		f(w, r, u)
	}
}

// admin wraps a handler for administrators only.
func (s *Server) admin(f func(http.ResponseWriter, *http.Request, *user)) http.HandlerFunc {
	return s.authed(func(w http.ResponseWriter, r *http.Request, u *user) {
		if !u.Admin {
			text(w, http.StatusForbidden, "administrators only\n")
			return
		}
		f(w, r, u)
	})
}

// checkCSRF compares the token of the form (field "csrf") or of the
// X-CSRF-Token header with the session's. Multipart forms are parsed by
// the handler first (ParseMultipartForm) so that FormValue finds it.
func (s *Server) checkCSRF(r *http.Request, u *user) bool {
	if strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/form-data") {
		r.Body = http.MaxBytesReader(nil, r.Body, maxComposeBytes)
		if err := r.ParseMultipartForm(1 << 20); err != nil {
			return false
		}
	} else {
		r.Body = http.MaxBytesReader(nil, r.Body, maxFormBytes)
		if err := r.ParseForm(); err != nil {
			return false
		}
	}
	tok := r.Header.Get("X-CSRF-Token")
	if tok == "" {
		tok = r.PostFormValue("csrf")
	}
	return tok != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(u.csrf)) == 1
}

// sameOrigin refuses a request whose Origin (or, lacking it, Referer)
// names another site; browsers send Origin with every POST.
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		o = r.Header.Get("Referer")
	}
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	if err != nil {
		return false
	}
	return strings.EqualFold(u.Host, r.Host)
}

func hashToken(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return string(sum[:])
}

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

// remoteAddr is the client's address from the connection.
func remoteAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// insecure reports whether a password may not be sent on r: plain HTTP
// from an address other than loopback, unless AllowInsecure.
func (s *Server) insecure(r *http.Request) bool {
	return r.TLS == nil && !s.cfg.AllowInsecure && !remoteAddr(r).IsLoopback()
}

type loginData struct {
	Error, Next, Address string
	Insecure             bool
}

func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	s.render(w, http.StatusOK, "login", nil, loginData{Next: safeNext(r.URL.Query().Get("next")), Insecure: s.insecure(r)})
}

// login checks the address and password through the shared login gate
// (the same failed-login record and block as the mail protocols) and
// starts a session.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil || !sameOrigin(r) {
		text(w, http.StatusBadRequest, "bad login form\n")
		return
	}
	address, password := r.PostFormValue("address"), r.PostFormValue("password")
	next := safeNext(r.PostFormValue("next"))
	data := loginData{Next: next, Address: address}
	if s.insecure(r) {
		data.Insecure = true
		data.Error = "This console needs HTTPS from here."
		s.render(w, http.StatusForbidden, "login", nil, data)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	var (
		u        mailstore.User
		stampMAC []byte
	)
	a := limits.Attempt{Protocol: "http", Mechanism: "FORM", Remote: remoteAddr(r), User: address, Log: s.log}
	err := s.web.logins.Check(ctx, a, func(ctx context.Context) (bool, error) {
		// The stamp is read before the password is checked: a password
		// changed in between gives the session the old stamp, so that
		// its next request ends it, never the other way round.
		var err error
		stampMAC, err = s.web.passwordMAC(ctx, address)
		if err != nil && !errors.Is(err, mailstore.ErrNotFound) && !errors.Is(err, mailstore.ErrInvalidAddress) {
			return false, err
		}
		u, err = s.cfg.Store.Authenticate(ctx, address, password)
		switch {
		case errors.Is(err, mailstore.ErrAuthFailed):
			return false, nil
		case err != nil:
			return false, err
		}
		return true, nil
	})
	switch {
	case err == nil:
	case errors.Is(err, limits.ErrLoginFailed):
		data.Error = "Wrong address or password."
		s.render(w, http.StatusUnauthorized, "login", nil, data)
		return
	case errors.Is(err, limits.ErrBlocked), errors.Is(err, limits.ErrBusy):
		data.Error = "Too many attempts; try again later."
		s.render(w, http.StatusTooManyRequests, "login", nil, data)
		return
	default:
		s.log.Error("console login failed", "user", address, "err", err)
		data.Error = "The server could not check the login."
		s.render(w, http.StatusInternalServerError, "login", nil, data)
		return
	}
	// A new session with a new token, whatever cookie came with the
	// form: a token planted before login (session fixation) never
	// becomes a logged-in session, and an older session of this browser
	// ends.
	if c, err := r.Cookie(sessionCookie); err == nil {
		s.web.end(hashToken(c.Value))
	}
	tok := s.web.start(u.Address, u.ID, stampMAC)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: tok, Path: "/", HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode, MaxAge: int(s.web.cfg.SessionMax / time.Second)})
	s.log.Info("console login", "user", u.Address, "remote", remoteAddr(r).String())
	if next == "" {
		next = "/mail"
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// safeNext keeps a redirect target only when it is a path on this site:
// one slash, then no second slash or backslash (browsers read "/\x" as
// "//x"), and no control character at all (browsers drop tabs and line
// breaks from a URL, so "/\t/evil.example" would become "//evil.example").
func safeNext(n string) string {
	if len(n) > 2000 || !strings.HasPrefix(n, "/") {
		return ""
	}
	for i := 0; i < len(n); i++ {
		if n[i] < 0x20 || n[i] == 0x7f || n[i] == '\\' {
			return ""
		}
	}
	if strings.HasPrefix(n, "//") {
		return ""
	}
	return n
}

// start makes a session for a user and returns its cookie value; the
// map holds only the token's hash. When full it drops expired sessions,
// then the least recently used.
func (wb *web) start(address string, userID int64, stampMAC []byte) string {
	tok := randomToken()
	now := wb.now()
	wb.mu.Lock()
	defer wb.mu.Unlock()
	if len(wb.sessions) >= wb.cfg.MaxSessions {
		for k, ws := range wb.sessions {
			if now.Sub(ws.lastSeen) > wb.cfg.SessionIdle || now.Sub(ws.created) > wb.cfg.SessionMax {
				delete(wb.sessions, k)
			}
		}
		for len(wb.sessions) >= wb.cfg.MaxSessions {
			var oldest *webSession
			for _, ws := range wb.sessions {
				if oldest == nil || ws.lastSeen.Before(oldest.lastSeen) {
					oldest = ws
				}
			}
			delete(wb.sessions, oldest.id)
		}
	}
	key := hashToken(tok)
	wb.sessions[key] = &webSession{id: key, csrf: randomToken(), address: address, userID: userID, stampMAC: stampMAC, created: now, lastSeen: now}
	return tok
}

// Sessions is the number of console sessions held.
func (s *Server) Sessions() int {
	if s.web == nil {
		return 0
	}
	s.web.mu.Lock()
	defer s.web.mu.Unlock()
	return len(s.web.sessions)
}

// end drops the session whose token hashes to key.
func (wb *web) end(key string) {
	wb.mu.Lock()
	delete(wb.sessions, key)
	wb.mu.Unlock()
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request, u *user) {
	s.web.end(u.sess.id)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// page is what every template gets.
type page struct {
	Title string
	User  *user
	CSRF  string
	Data  any
}

// render executes the template name inside the layout.
func (s *Server) render(w http.ResponseWriter, code int, name string, u *user, data any) {
	p := page{Title: name, User: u, Data: data}
	if u != nil {
		p.CSRF = u.csrf
	}
	var b strings.Builder
	if err := templates.ExecuteTemplate(&b, name, p); err != nil {
		s.log.Error("console page failed", "page", name, "err", err)
		text(w, http.StatusInternalServerError, "page failed\n")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	io.WriteString(w, b.String())
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<20:
		return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB"
	case n >= 1<<10:
		return strconv.FormatFloat(float64(n)/(1<<10), 'f', 1, 64) + " KiB"
	}
	return strconv.FormatInt(n, 10) + " B"
}
