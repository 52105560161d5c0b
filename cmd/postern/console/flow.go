package console

// The live flow: /api/events streams the Hub's events as Server-Sent
// Events, each with where it belongs on the flow page (FlowItem), and
// /flow shows them as session rows and message timelines.

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
)

const (
	// eventBuffer is a stream's room for events; a client that falls
	// further behind is dropped by the Hub.
	eventBuffer = 1024
	// eventWriteTimeout bounds writing one event to a client.
	eventWriteTimeout = 10 * time.Second
	// maxStreamsPerUser bounds the /api/events streams one user holds
	// open at once (a few browser tabs); each holds a Hub subscription
	// with its buffer and one of the listener's connections.
	maxStreamsPerUser = 4
	// keepAlive is how often an idle stream gets a comment line, so that
	// proxies and the browser keep it open, and checks its session again.
	keepAlive = 15 * time.Second
)

// FlowItem says where an event goes on the flow page.
type FlowItem struct {
	// Session is the id of the session the event belongs to ("" for
	// none: the relay's queue work, the store).
	Session string `json:"session,omitempty"`
	// Kind is "open" (a session starts), "close" (it ends), "line" (a
	// protocol line of the trace) or "event" (anything else).
	Kind string `json:"kind"`
	// Proto names the server or protocol: smtp, pop3, imap, relay, http.
	Proto string `json:"proto,omitempty"`
	// Message is the id of the message the event is about, the SMTP
	// transaction id or the queue id, for its timeline.
	Message string `json:"message,omitempty"`
	// Dir and Line are a protocol line's direction (C or S) and text.
	Dir  string `json:"dir,omitempty"`
	Line string `json:"line,omitempty"`
}

// flowOf maps one log record to its place on the flow page. It is the one
// place that knows the servers' log vocabulary.
func flowOf(e Event) FlowItem {
	f := FlowItem{Session: e.Get("session"), Kind: "event", Proto: e.Get("proto")}
	if f.Proto == "" {
		f.Proto = e.Get("part")
	}
	switch e.Msg {
	case "session start":
		f.Kind = "open"
	case "session end":
		f.Kind = "close"
	case traceMsg:
		f.Kind, f.Dir, f.Line = "line", e.Get("dir"), e.Get("line")
	}
	if id := e.Get("queue_id"); id != "" {
		f.Message = "queue " + id
	} else if id := e.Get("id"); id != "" && f.Session != "" {
		f.Message = id
	}
	return f
}

// flowEvent is what /api/events sends for each event: the event's JSON
// with "flow" added.
type flowEvent struct {
	Event
	Flow FlowItem `json:"flow"`
}

func (fe flowEvent) MarshalJSON() ([]byte, error) { return json.Marshal(fe.Event.wire(&fe.Flow)) }

func (fe *flowEvent) UnmarshalJSON(b []byte) error {
	var w eventJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return fmt.Errorf("console flow event %.40q: %w", b, err)
	}
	fe.Event = Event{Seq: w.Seq, Time: w.Time, Level: w.Level, Msg: w.Msg, Attrs: w.Attrs}
	fe.Flow = FlowItem{}
	if w.Flow != nil {
		fe.Flow = *w.Flow
	}
	return nil
}

func (s *Server) flowRoutes(h func(string, http.HandlerFunc)) {
	h("GET /flow", s.authed(func(w http.ResponseWriter, r *http.Request, u *user) {
		s.render(w, http.StatusOK, "flow", u, s.cfg.Hub != nil)
	}))
	h("GET /api/events", s.authed(s.events))
}

// maxOwnSessions bounds the sessions an eventFilter remembers.
const maxOwnSessions = 1000

// eventFilter is what a user who is not an admin sees of the events: those
// of the sessions they logged in to (from their login on), and those that
// name their address as user, sender or recipient. It reads the servers'
// vocabulary: "auth" carries user= and result= in every server, and
// imapd's records after LOGIN carry user= too.
type eventFilter struct {
	addr     string
	sessions map[string]bool
	// received are the sessions that delivered mail to the user: of
	// those the user sees their end (that the row closes), without the
	// protocol lines, which name the other recipients.
	received map[string]bool
}

func newEventFilter(u *user) *eventFilter {
	if u.Admin {
		return nil
	}
	return &eventFilter{addr: u.Address, sessions: make(map[string]bool), received: make(map[string]bool)}
}

// view returns what the user may see of e, and whether they may see it
// at all. An event they see only as one recipient among others shows
// them as its only recipient: the others (Bcc ones included) are not
// theirs to know.
func (f *eventFilter) view(e Event) (Event, bool) {
	if f == nil {
		return e, true
	}
	sess := e.Get("session")
	if sess != "" && f.sessions[sess] {
		if flowOf(e).Kind == "close" {
			delete(f.sessions, sess)
		}
		return e, true
	}
	if sess != "" && f.received[sess] && flowOf(e).Kind == "close" {
		delete(f.received, sess)
		out := e
		out.Attrs, out.logger = nil, nil
		for _, a := range e.AllAttrs() {
			switch a.Key {
			case "session", "proto", "part":
				out.Attrs = append(out.Attrs, a)
			}
		}
		return out, true
	}
	asRecipient := false
	for _, a := range e.AllAttrs() {
		if !mentions(a.Value, f.addr) {
			continue
		}
		switch a.Key {
		case "user":
			// Only a successful login makes the session the
			// user's: a failed one ("auth" result=fail, "login
			// failed") names the address somebody tried.
			if e.Msg == "auth" && e.Get("result") == "ok" && sess != "" && len(f.sessions) < maxOwnSessions {
				f.sessions[sess] = true
			}
			return e, true
		case "from", "sender", "to", "rcpt", "recipient":
			// A sender address is whatever the client said (MAIL
			// FROM on port 25 is not checked), so it shows no more
			// than being a recipient does.
			asRecipient = true
		}
	}
	if !asRecipient {
		return e, false
	}
	if sess != "" && len(f.received) < maxOwnSessions {
		f.received[sess] = true
	}
	all := e.AllAttrs()
	out := e
	out.Attrs, out.logger = make([]Attr, len(all)), nil
	for i, a := range all {
		switch a.Key {
		case "to", "rcpt", "recipient":
			if mentions(a.Value, f.addr) {
				a.Value = f.addr
			} else {
				a.Value = ""
			}
		}
		out.Attrs[i] = a
	}
	return out, true
}

// mentions reports whether the comma-separated address list v holds addr.
func mentions(v, addr string) bool {
	for p := range strings.SplitSeq(v, ",") {
		if strings.EqualFold(strings.Trim(strings.TrimSpace(p), "<>"), addr) {
			return true
		}
	}
	return false
}

// events streams the hub's events (text/event-stream): with ?since=SEQ
// (or the Last-Event-ID a reconnecting EventSource sends) first those of
// the ring after SEQ, then each new one. A client that does not keep up
// is dropped by the Hub and gets an "dropped" event before the end.
// Admins get every event; other users those of eventFilter.
func (s *Server) events(w http.ResponseWriter, r *http.Request, u *user) {
	hub := s.cfg.Hub
	if hub == nil {
		text(w, http.StatusNotFound, "no event source\n")
		return
	}
	since, replay := uint64(0), false
	if v := r.URL.Query().Get("since"); v != "" {
		since, _ = strconv.ParseUint(v, 10, 64)
		replay = true
	}
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		if n, err := strconv.ParseUint(v, 10, 64); err == nil {
			since, replay = n, true
		}
	}
	if !s.web.openStream(u.Address) {
		text(w, http.StatusTooManyRequests, "too many event streams open for this user\n")
		return
	}
	defer s.web.closeStream(u.Address)
	sub, recent := hub.Subscribe(eventBuffer)
	defer sub.Close()
	rc := http.NewResponseController(w)
	// The listener's read timeout is for reading requests: left in place
	// it would end the stream (net/http's background read fails and
	// cancels the request). A gone client is found by the writes, which
	// the keep-alive makes regular.
	rc.SetReadDeadline(time.Time{})
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream; charset=utf-8")
	hd.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	filter := newEventFilter(u)
	send := func(e Event) bool {
		e, ok := filter.view(e)
		if !ok {
			return true
		}
		data, err := json.Marshal(flowEvent{Event: e, Flow: flowOf(e)})
		if err != nil {
			return true
		}
		rc.SetWriteDeadline(time.Now().Add(eventWriteTimeout))
		b := make([]byte, 0, len(data)+40)
		b = append(b, "id: "...)
		b = strconv.AppendUint(b, e.Seq, 10)
		b = append(b, "\ndata: "...)
		b = append(b, data...)
		b = append(b, "\n\n"...)
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	last := since
	if replay {
		for _, e := range recent {
			if e.Seq > since {
				if !send(e) {
					return
				}
				last = e.Seq
			}
		}
	} else if n := len(recent); n > 0 {
		last = recent[n-1].Seq
	}
	rc.SetWriteDeadline(time.Now().Add(eventWriteTimeout))
	if _, err := w.Write([]byte(": stream\n\n")); err != nil || rc.Flush() != nil {
		return
	}
	tick := time.NewTicker(s.web.cfg.keepAlive)
	defer tick.Stop()
	for {
		select {
		case e, ok := <-sub.C:
			if !ok {
				if sub.Dropped() {
					rc.SetWriteDeadline(time.Now().Add(eventWriteTimeout))
					w.Write([]byte("event: dropped\ndata: {}\n\n"))
					rc.Flush()
				}
				return
			}
			if e.Seq <= last {
				continue // already sent from the ring
			}
			if !send(e) {
				return
			}
			last = e.Seq
		case <-tick.C:
			// A session ended since (logout elsewhere, a password
			// change, the user disabled) takes its stream with it.
			if _, u := s.lookup(r, false); u == nil {
				return
			}
			rc.SetWriteDeadline(time.Now().Add(eventWriteTimeout))
			if _, err := w.Write([]byte(": keepalive\n\n")); err != nil || rc.Flush() != nil {
				return
			}
		case <-r.Context().Done():
			return
		case <-s.web.stop:
			return
		}
	}
}

// openStream counts a new event stream of address, if it has room.
func (wb *web) openStream(address string) bool {
	wb.mu.Lock()
	defer wb.mu.Unlock()
	if wb.streams[address] >= maxStreamsPerUser {
		return false
	}
	wb.streams[address]++
	return true
}

func (wb *web) closeStream(address string) {
	wb.mu.Lock()
	defer wb.mu.Unlock()
	if wb.streams[address]--; wb.streams[address] <= 0 {
		delete(wb.streams, address)
	}
}

// TraceFilter is the handler to put behind a Hub (its next) when the
// console is on: the servers then trace every protocol line so that the
// Hub sees them, and the log output keeps the records with message
// "trace" only when trace is true (log.trace).
func TraceFilter(next slog.Handler, trace bool) slog.Handler {
	if trace {
		return next
	}
	return traceFilter{next}
}

// traceMsg is the message of the servers' protocol trace records.
const traceMsg = "trace"

type traceFilter struct{ next slog.Handler }

func (f traceFilter) Enabled(ctx context.Context, l slog.Level) bool { return f.next.Enabled(ctx, l) }

func (f traceFilter) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == traceMsg {
		return nil
	}
	return f.next.Handle(ctx, r)
}

func (f traceFilter) WithAttrs(as []slog.Attr) slog.Handler { return traceFilter{f.next.WithAttrs(as)} }
func (f traceFilter) WithGroup(name string) slog.Handler    { return traceFilter{f.next.WithGroup(name)} }
