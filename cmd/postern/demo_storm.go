package main

// The mailstorm scenario: two mailing lists on two domains, each with the
// other list and one person among its members. The person's address
// forwards to the list of her own domain, so every post a list sends comes
// back to the other list twice: the copies double with each hop. Without
// protection only the receiving MX's hop limit (its count of Received
// fields, RFC 5321 6.3) ends the storm; lists that mark what they send
// (List-Id, RFC 2919) and do not redistribute mail that comes from a list
// or an automatic sender (Auto-Submitted, RFC 3834 5) end it at the first
// hop.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mime"
)

const (
	// stormMaxReceived is both MX hosts' hop limit in the mailstorm
	// scenario. Postern's default is 50; with copies doubling at every
	// hop, 50 hops would be 2^50 copies, so the demo lowers it to keep the
	// storm to a few hundred real SMTP transactions.
	stormMaxReceived = 6
	// maxStormGenerations bounds the scenario's loop: the hop limit must
	// end the storm well before.
	maxStormGenerations = 2 * stormMaxReceived
)

// demoList is a mailing list run by the demo on a domain: a user of that
// domain whose INBOX the list's software empties, sending every post on
// to each member in a message of its own (as list software does, so that
// a bounce names the member).
type demoList struct {
	dom     *demoDomain
	addr    string
	id      string // the List-Id (RFC 2919)
	members []string
}

// stormGeneration is what one generation of the storm did.
type stormGeneration struct {
	list      string
	received  int // posts the list got
	hops      int // Received fields each carried
	sent      int // copies it sent
	dropped   int // posts it did not redistribute
	why       string
	arrived   int // copies that reached the other list
	refused   int // copies the other MX refused
	refusedBy string
}

// mailstorm sets up the two lists, lets the storm run without protection
// until the hop limit ends it, then again with lists that mark and check
// their mail.
func (d *demo) mailstorm(ctx context.Context) error {
	a, b := d.alpha, d.beta
	lists := []*demoList{
		{dom: a, addr: "list@" + a.name, id: "<list." + a.name + ">", members: []string{"list@" + b.name, "carol@" + b.name}},
		{dom: b, addr: "list@" + b.name, id: "<list." + b.name + ">", members: []string{"list@" + a.name, "dave@" + a.name}},
	}
	for _, l := range lists {
		if _, err := l.dom.store.AddUser(ctx, l.addr, randomPassword()); err != nil {
			return err
		}
	}
	// Each person's address forwards to the list of her own domain.
	if err := b.store.AddAlias(ctx, "carol@"+b.name, "list@"+b.name); err != nil {
		return err
	}
	if err := a.store.AddAlias(ctx, "dave@"+a.name, "list@"+a.name); err != nil {
		return err
	}
	d.intro()
	for _, l := range lists {
		d.out.note("mailing list %s: members %s", l.addr, strings.Join(l.members, " and "))
	}
	d.out.note("carol@%s forwards to list@%s, and dave@%s to list@%s (each reads the lists at home)", b.name, b.name, a.name, a.name)
	d.out.note("so each post a list sends reaches the other list twice: directly, and through the person's forwarding")
	d.out.note("both MX hosts refuse a message with more than %d Received fields (a loop, RFC 5321 6.3; Postern's default is 50)", stormMaxReceived)

	d.out.beginStep("2. Without protection: the copies double at every hop until the hop limit refuses them")
	gens, err := d.stormRound(ctx, lists, false)
	if err != nil {
		return fmt.Errorf("step 2: %w", err)
	}
	total := 0
	for _, g := range gens {
		total += g.sent
	}
	last := gens[len(gens)-1]
	if last.refused == 0 {
		return errors.New("step 2: the hop limit refused nothing")
	}
	d.out.note("-> %d copies in %d generations, stopped by the hop limit alone: it bounds how far a copy travels, not how many copies there are", total+1, len(gens))
	d.out.note("   (with the default limit of 50, the last generation would hold 2^50 copies: the storm would fill both queues long before)")
	reports, err := d.stormReports(ctx)
	if err != nil {
		return fmt.Errorf("step 2: %w", err)
	}
	d.out.note("-> alice, the sender in every copy's envelope, got %d delivery status reports (5.4.6) for the refused copies", reports)

	d.out.beginStep("3. With protection: lists mark what they send (List-Id, RFC 2919) and do not redistribute mail from a list or an automatic sender (Auto-Submitted, RFC 3834)")
	d.out.note("each copy a list sends now starts with List-Id: <list.DOMAIN> and List-Post: <mailto:list@DOMAIN>; a post that carries a List-Id, or Auto-Submitted other than \"no\", is not sent on (and an out-of-office responder would not answer it either, RFC 3834 2)")
	pgens, err := d.stormRound(ctx, lists, true)
	if err != nil {
		return fmt.Errorf("step 3: %w", err)
	}
	ptotal := 0
	for _, g := range pgens {
		ptotal += g.sent
	}
	if pgens[len(pgens)-1].dropped == 0 {
		return errors.New("step 3: no list dropped the looping post")
	}
	d.out.note("-> %d copies in %d generations: the storm ended at the first list that saw another list's mark, long before the hop limit", ptotal+1, len(pgens))
	if _, err := d.stormReports(ctx); err != nil {
		return fmt.Errorf("step 3: %w", err)
	}
	d.out.emit(event{Kind: "result", Text: fmt.Sprintf(
		"OK: unprotected, the copies doubled each hop (%d in all) until the hop limit refused them; with List-Id and Auto-Submitted checks the storm stopped after %d copies.",
		total+1, ptotal+1)})
	return nil
}

// stormRound has alice post to the first list, then lets the lists and
// the relays work generation by generation until no copy is left, one
// line per generation.
func (d *demo) stormRound(ctx context.Context, lists []*demoList, protect bool) ([]stormGeneration, error) {
	a := d.alpha
	subject := "Storm warning"
	if protect {
		subject = "Storm warning, again"
	}
	if !protect {
		if err := d.submitPlain(ctx, lists[0].addr, subject); err != nil {
			return nil, fmt.Errorf("submission: %w", err)
		}
	} else if err := d.submitQuiet(ctx, lists[0].addr, subject); err != nil {
		return nil, fmt.Errorf("submission: %w", err)
	} else {
		d.out.note("alice posts %q to %s once more (submission as before)", subject, lists[0].addr)
	}
	var gens []stormGeneration
	for gen := 0; ; gen++ {
		if gen == maxStormGenerations {
			return gens, fmt.Errorf("the storm was not stopped after %d generations", gen)
		}
		var g *stormGeneration
		var from, to *demoList
		for i, l := range lists {
			posts, err := l.posts(ctx)
			if err != nil {
				return gens, err
			}
			if len(posts) == 0 {
				continue
			}
			from, to = l, lists[1-i]
			g, err = from.redistribute(ctx, a.user, posts, protect)
			if err != nil {
				return gens, err
			}
			break
		}
		if g == nil {
			break
		}
		if g.sent > 0 {
			if err := from.dom.relay.RunOnce(ctx); err != nil {
				return gens, fmt.Errorf("relay of %s: %w", from.dom.name, err)
			}
			n, err := to.count(ctx)
			if err != nil {
				return gens, err
			}
			g.arrived, g.refused, g.refusedBy = n, g.sent-n, to.dom.name
		}
		d.out.note("%s", g.line(gen))
		gens = append(gens, *g)
	}
	if len(gens) == 0 {
		return nil, errors.New("the first list got no post")
	}
	return gens, nil
}

// line describes generation gen in one line.
func (g *stormGeneration) line(gen int) string {
	s := fmt.Sprintf("generation %d: %s got %d %s, each with %d Received fields", gen, g.list, g.received, plural(g.received, "copy", "copies"), g.hops)
	if g.dropped > 0 {
		s += fmt.Sprintf(" -> dropped %d (%s)", g.dropped, g.why)
	}
	if g.sent > 0 {
		s += fmt.Sprintf(" -> sent %d, one per member per post", g.sent)
		s += fmt.Sprintf("; %d arrived", g.arrived)
		if g.refused > 0 {
			s += fmt.Sprintf(", %d refused by %s's MX (554 5.4.6: over %d Received fields)", g.refused, g.refusedBy, stormMaxReceived)
		}
	}
	return s
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// posts are the messages waiting in the list's INBOX, oldest first.
func (l *demoList) posts(ctx context.Context) ([][]byte, error) {
	id, uids, err := l.inbox(ctx)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for _, m := range uids {
		body, err := l.dom.store.ReadBody(ctx, m.BodyID)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", l.addr, err)
		}
		out = append(out, body)
	}
	var del []uint32
	for _, m := range uids {
		del = append(del, m.UID)
	}
	if len(del) > 0 {
		if _, err := l.dom.store.DeleteMessages(ctx, id, del); err != nil {
			return nil, fmt.Errorf("%s: %w", l.addr, err)
		}
	}
	return out, nil
}

// count is the number of posts waiting for the list.
func (l *demoList) count(ctx context.Context) (int, error) {
	_, msgs, err := l.inbox(ctx)
	return len(msgs), err
}

func (l *demoList) inbox(ctx context.Context) (int64, []mailstore.Message, error) {
	u, err := l.dom.store.UserByAddress(ctx, l.addr)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: %w", l.addr, err)
	}
	in, err := l.dom.store.MailboxByName(ctx, u.ID, "INBOX")
	if err != nil {
		return 0, nil, fmt.Errorf("%s: %w", l.addr, err)
	}
	msgs, err := l.dom.store.Messages(ctx, in.ID, nil)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: %w", l.addr, err)
	}
	return in.ID, msgs, nil
}

// redistribute sends each post on to every member, in a message of its
// own, keeping the envelope sender (so that reports go to the author) and
// the trace fields. The Return-Path of the final delivery goes (RFC 5321
// 4.4: a message sent on must not carry it). Protected, the list refuses
// a post marked by a list or an automatic sender and marks what it sends.
func (l *demoList) redistribute(ctx context.Context, sender string, posts [][]byte, protect bool) (*stormGeneration, error) {
	g := &stormGeneration{list: l.addr, received: len(posts)}
	for _, post := range posts {
		h, err := mime.ReadHeader(post)
		if err != nil {
			return g, fmt.Errorf("%s: post: %w", l.addr, err)
		}
		g.hops = mime.CountReceived(h)
		if protect {
			if id := h.Get("List-Id"); id != "" {
				g.dropped++
				g.why = "it carries List-Id: " + id + ", so it comes from a list, and lists do not take automatic posts"
				continue
			}
			// RFC 3834 5.1: anything but "no" marks an automatic message.
			if as := strings.TrimSpace(h.Get("Auto-Submitted")); as != "" && !strings.EqualFold(as, "no") {
				g.dropped++
				g.why = "Auto-Submitted: " + as + " (RFC 3834 5.1)"
				continue
			}
		}
		out := dropFields(post, "Return-Path")
		if protect {
			mark := "List-Id: " + l.id + "\r\nList-Post: <mailto:" + l.addr + ">\r\n"
			out = append([]byte(mark), out...)
		}
		for _, m := range l.members {
			if _, err := l.dom.store.Deliver(ctx, sender, []string{m}, out); err != nil {
				return g, fmt.Errorf("%s: send to %s: %w", l.addr, m, err)
			}
			g.sent++
		}
	}
	return g, nil
}

// stormReports delivers the reports the refusals produced and counts the
// new ones in alice's INBOX; they are removed, so that each round counts
// its own.
func (d *demo) stormReports(ctx context.Context) (int, error) {
	for i := 0; i < 5; i++ {
		n, err := d.queued(ctx)
		if err != nil {
			return 0, err
		}
		if n == 0 {
			break
		}
		for _, dom := range []*demoDomain{d.alpha, d.beta} {
			if err := dom.relay.RunOnce(ctx); err != nil {
				return 0, fmt.Errorf("relay of %s: %w", dom.name, err)
			}
		}
	}
	alice := &demoList{dom: d.alpha, addr: d.alpha.user}
	id, msgs, err := alice.inbox(ctx)
	if err != nil {
		return 0, err
	}
	reports := 0
	var uids []uint32
	for _, m := range msgs {
		body, err := d.alpha.store.ReadBody(ctx, m.BodyID)
		if err != nil {
			return 0, err
		}
		if bytes.Contains(body, []byte("Status: 5.4.6")) {
			reports++
		}
		uids = append(uids, m.UID)
	}
	if len(uids) > 0 {
		if _, err := d.alpha.store.DeleteMessages(ctx, id, uids); err != nil {
			return 0, err
		}
	}
	return reports, nil
}

// queued counts the entries in both domains' queues.
func (d *demo) queued(ctx context.Context) (int, error) {
	n := 0
	for _, dom := range []*demoDomain{d.alpha, d.beta} {
		q, err := dom.store.Queue(ctx, time.Time{}, 0)
		if err != nil {
			return 0, err
		}
		n += len(q)
	}
	return n, nil
}
