package console

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"
)

// Event is one log record as the hub hands it out: the servers' structured
// records (sessions, deliveries, relay attempts and, with tracing on, every
// protocol line) are the event stream of the live view and the metrics.
//
// An event's attributes are those of the logger it came from (its With
// calls), which all the events of that logger share, followed by the
// record's own (Attrs). AllAttrs and Get see both, in that order, and so
// does the JSON form ("attrs").
type Event struct {
	// Seq numbers events in the order the hub saw them, from 1.
	Seq   uint64
	Time  time.Time
	Level slog.Level
	Msg   string
	// Attrs are the record's own attributes, flattened: a group's keys
	// are prefixed with its name and a dot, values are their text form.
	Attrs []Attr
	// logger are the flattened attributes of the logger the record came
	// from: shared by all its events, never modified (cap == len, so an
	// append copies).
	logger []Attr
}

// Attr is one attribute of an Event.
type Attr struct {
	Key   string `json:"k"`
	Value string `json:"v"`
}

// AllAttrs returns the event's attributes, the logger's first. The slice
// may be shared with other events: do not modify its elements.
func (e Event) AllAttrs() []Attr {
	switch {
	case len(e.logger) == 0:
		return e.Attrs
	case len(e.Attrs) == 0:
		return e.logger
	}
	all := make([]Attr, 0, len(e.logger)+len(e.Attrs))
	return append(append(all, e.logger...), e.Attrs...)
}

// Get returns the value of the last attribute named key, or "".
func (e Event) Get(key string) string {
	for i := len(e.Attrs) - 1; i >= 0; i-- {
		if e.Attrs[i].Key == key {
			return e.Attrs[i].Value
		}
	}
	for i := len(e.logger) - 1; i >= 0; i-- {
		if e.logger[i].Key == key {
			return e.logger[i].Value
		}
	}
	return ""
}

// eventJSON is the JSON form of an Event (and, with Flow, of a flowEvent).
type eventJSON struct {
	Seq   uint64     `json:"seq"`
	Time  time.Time  `json:"time"`
	Level slog.Level `json:"level"`
	Msg   string     `json:"msg"`
	Attrs []Attr     `json:"attrs"`
	Flow  *FlowItem  `json:"flow,omitempty"`
}

func (e Event) wire(flow *FlowItem) eventJSON {
	all := e.AllAttrs()
	if all == nil {
		all = []Attr{}
	}
	return eventJSON{Seq: e.Seq, Time: e.Time, Level: e.Level, Msg: e.Msg, Attrs: all, Flow: flow}
}

// MarshalJSON writes the event as {"seq","time","level","msg","attrs"},
// attrs holding all its attributes (AllAttrs).
func (e Event) MarshalJSON() ([]byte, error) { return json.Marshal(e.wire(nil)) }

// UnmarshalJSON reads what MarshalJSON writes; every attribute becomes
// one of Attrs.
func (e *Event) UnmarshalJSON(b []byte) error {
	var w eventJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return fmt.Errorf("console event %.40q: %w", b, err)
	}
	*e = Event{Seq: w.Seq, Time: w.Time, Level: w.Level, Msg: w.Msg, Attrs: w.Attrs}
	return nil
}

// DefaultRing is the number of recent events a Hub keeps when NewHub is
// given no size.
const DefaultRing = 4096

// Hub is a slog.Handler that passes every record on to the next handler
// (the log output) and also fans it out to subscribers. It never blocks a
// server: a subscriber whose buffer is full is dropped (its channel is
// closed) rather than waited for. It keeps a ring of recent events for
// subscribers that arrive later.
type Hub struct {
	next  slog.Handler
	level slog.Leveler // records below it are neither kept nor fanned out
	// dropsTrace: next is a TraceFilter that drops trace records, so
	// they need not be handed to it.
	dropsTrace bool

	mu   sync.Mutex
	seq  uint64
	ring []Event
	// attrs is where events' own attributes are kept (keepLocked): one
	// allocation for many events instead of one each.
	attrs []Attr
	head  int // next slot of ring to write
	full  bool
	subs  map[*Subscription]struct{}
}

// NewHub returns a hub in front of next that keeps the last ring events
// (DefaultRing when ring <= 0) at level and above.
func NewHub(next slog.Handler, level slog.Leveler, ring int) *Hub {
	if ring <= 0 {
		ring = DefaultRing
	}
	if level == nil {
		level = slog.LevelInfo
	}
	_, dropsTrace := next.(traceFilter)
	return &Hub{next: next, level: level, dropsTrace: dropsTrace, ring: make([]Event, ring), subs: map[*Subscription]struct{}{}}
}

// Subscription receives the events published after Subscribe.
type Subscription struct {
	// C carries the events; it is closed when the subscription ends:
	// by Close, or because the subscriber fell behind by more than its
	// buffer (Dropped then reports true).
	C       <-chan Event
	c       chan Event
	hub     *Hub
	dropped bool
}

// Subscribe starts a subscription with room for buf events (at least 1).
// recent is a copy of the events the ring holds, oldest first, so that a
// subscriber can show what happened just before it came.
func (h *Hub) Subscribe(buf int) (sub *Subscription, recent []Event) {
	if buf < 1 {
		buf = 1
	}
	c := make(chan Event, buf)
	sub = &Subscription{C: c, c: c, hub: h}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.subs[sub] = struct{}{}
	return sub, h.recentLocked()
}

// Recent returns a copy of the events the ring holds, oldest first.
func (h *Hub) Recent() []Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.recentLocked()
}

func (h *Hub) recentLocked() []Event {
	if !h.full {
		return append([]Event(nil), h.ring[:h.head]...)
	}
	out := make([]Event, 0, len(h.ring))
	out = append(out, h.ring[h.head:]...)
	return append(out, h.ring[:h.head]...)
}

// Close ends the subscription; C is closed. Safe to call more than once.
func (s *Subscription) Close() {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	if _, ok := s.hub.subs[s]; ok {
		delete(s.hub.subs, s)
		close(s.c)
	}
}

// Dropped reports whether the hub ended the subscription because the
// subscriber did not keep up.
func (s *Subscription) Dropped() bool {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	return s.dropped
}

// attrChunk is how many events' own attributes share one allocation;
// maxChunked is the most attributes of one event kept there.
const (
	attrChunk  = 256
	maxChunked = 16
)

// keepLocked returns a copy of own that the event keeps, cut from a chunk
// shared with other events (cap == len, so an append by a reader copies
// rather than writing over the next event's attributes).
func (h *Hub) keepLocked(own []Attr) []Attr {
	switch {
	case len(own) == 0:
		return nil
	case len(own) > maxChunked:
		return append([]Attr(nil), own...)
	case cap(h.attrs)-len(h.attrs) < len(own):
		h.attrs = make([]Attr, 0, attrChunk)
	}
	i := len(h.attrs)
	h.attrs = append(h.attrs, own...)
	return h.attrs[i:len(h.attrs):len(h.attrs)]
}

// publish numbers e, with own as its own attributes (copied), keeps it in
// the ring and sends it to the subscribers.
func (h *Hub) publish(e Event, own []Attr) {
	h.mu.Lock()
	defer h.mu.Unlock()
	e.Attrs = h.keepLocked(own)
	h.seq++
	e.Seq = h.seq
	h.ring[h.head] = e
	h.head++
	if h.head == len(h.ring) {
		h.head, h.full = 0, true
	}
	for s := range h.subs {
		select {
		case s.c <- e:
		default:
			s.dropped = true
			delete(h.subs, s)
			close(s.c)
		}
	}
}

// handler is the Hub as seen through a logger's With and WithGroup.
type handler struct {
	hub  *Hub
	next slog.Handler
	// attrs are those from With, flattened once there and shared by
	// every event of the logger: never modified, cap == len.
	attrs  []Attr
	prefix string // open groups, "a.b."
}

// Handler returns the slog.Handler to build the process's logger on.
func (h *Hub) Handler() slog.Handler {
	return &handler{hub: h, next: h.next}
}

func (h *handler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.hub.level.Level() || h.next.Enabled(ctx, l)
}

func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= h.hub.level.Level() {
		var buf [8]Attr // the usual record's own attributes, not allocated
		own := buf[:0]
		r.Attrs(func(a slog.Attr) bool {
			own = appendAttr(own, h.prefix, a)
			return true
		})
		h.hub.publish(Event{Time: r.Time, Level: r.Level, Msg: r.Message, logger: h.attrs}, own)
	}
	if h.hub.dropsTrace && r.Message == traceMsg {
		return nil // what the TraceFilter behind would do
	}
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	if len(as) == 0 {
		return h
	}
	n := *h
	attrs := append([]Attr(nil), h.attrs...)
	for _, a := range as {
		attrs = appendAttr(attrs, h.prefix, a)
	}
	n.attrs = attrs[:len(attrs):len(attrs)]
	n.next = h.next.WithAttrs(as)
	return &n
}

func (h *handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	n := *h
	n.prefix = h.prefix + name + "."
	n.next = h.next.WithGroup(name)
	return &n
}

// appendAttr flattens a into out under prefix.
func appendAttr(out []Attr, prefix string, a slog.Attr) []Attr {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range v.Group() {
			out = appendAttr(out, p, g)
		}
		return out
	}
	if a.Key == "" {
		return out
	}
	var s string
	switch v.Kind() {
	case slog.KindString:
		s = v.String()
	case slog.KindInt64:
		s = strconv.FormatInt(v.Int64(), 10)
	case slog.KindTime:
		s = v.Time().UTC().Format(time.RFC3339Nano)
	default:
		s = v.String()
	}
	return append(out, Attr{Key: prefix + a.Key, Value: s})
}
