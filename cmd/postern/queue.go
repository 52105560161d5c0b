package main

// `postern queue`: the outbound queue that smtpd/relay works through.

import (
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/smtpd/relay"
)

// queueTimeLayout shows next-attempt times in the queue listing.
const queueTimeLayout = "2006-01-02 15:04:05Z07:00"

func cmdQueue(c *cli, args []string) int {
	return c.verbs("queue", args, map[string]func(*cli, []string) int{
		"list":   cmdQueueList,
		"retry":  cmdQueueRetry,
		"delete": cmdQueueDelete,
	})
}

// queueIDs checks the number of arguments with n, then that each is a
// queue entry ID.
func queueIDs(n argCheck) argCheck {
	return func(args []string) error {
		if err := n(args); err != nil {
			return err
		}
		for _, a := range args {
			if _, err := parseQueueID(a); err != nil {
				return err
			}
		}
		return nil
	}
}

// parseQueueID reads an entry ID given on the command line.
func parseQueueID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, fmt.Errorf("queue entry ID %q is not a positive number", s)
	}
	return id, nil
}

func cmdQueueList(c *cli, args []string) int {
	return c.withStoreRead("queue list", "[-config FILE] [ID]", args, queueIDs(upTo(1)), func(st *mailstore.Store, args []string) error {
		entries, err := st.Queue(c.ctx, time.Time{}, 0)
		if err != nil {
			return err
		}
		if len(args) == 1 {
			id, err := parseQueueID(args[0])
			if err != nil {
				return err
			}
			var found []mailstore.QueueEntry
			for _, e := range entries {
				if e.ID == id {
					found = append(found, e)
				}
			}
			if len(found) == 0 {
				return fmt.Errorf("queue entry %d: %w", id, mailstore.ErrNotFound)
			}
			entries = found
		}
		if len(entries) == 0 {
			fmt.Fprintln(c.stdout, "the queue is empty")
			return nil
		}
		tw := tabwriter.NewWriter(c.stdout, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNEXT ATTEMPT\tATTEMPTS\tSIZE\tFROM\tTO\tLAST ERROR")
		for _, e := range entries {
			from := e.Sender
			if from == "" {
				from = "<>"
			}
			next := e.NextAttempt.Local().Format(queueTimeLayout)
			switch now := time.Now(); {
			case e.Leased(now):
				// A relay (the frontend it names) is delivering it.
				next = "leased by " + e.LeaseOwner
			case relay.IsHeld(e, now):
				next = "held" // relay.hold; queue retry ID releases it
			}
			fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%s\t%s\t%s\n", e.ID, next,
				e.Attempts, e.Size, from, e.Recipient, e.LastError)
		}
		return tw.Flush()
	})
}

func cmdQueueRetry(c *cli, args []string) int {
	return c.withStore("queue retry", "[-config FILE] [ID]", args, queueIDs(upTo(1)), func(st *mailstore.Store, args []string) error {
		if len(args) == 0 {
			entries, err := st.Queue(c.ctx, time.Time{}, 0)
			if err != nil {
				return err
			}
			if err := st.QueueRetry(c.ctx, 0); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "%d entries are due now\n", len(entries))
			return nil
		}
		id, err := parseQueueID(args[0])
		if err != nil {
			return err
		}
		if err := st.QueueRetry(c.ctx, id); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "entry %d is due now\n", id)
		return nil
	})
}

// cmdQueueDelete takes one entry out of the queue without a report to its
// sender. It wants an ID: emptying the whole queue by mistake would lose
// mail.
func cmdQueueDelete(c *cli, args []string) int {
	return c.withStore("queue delete", "[-config FILE] ID", args, queueIDs(exactly(1)), func(st *mailstore.Store, args []string) error {
		id, err := parseQueueID(args[0])
		if err != nil {
			return err
		}
		if err := st.QueueRemove(c.ctx, id); err != nil {
			return err // "remove queue entry ID: not found"
		}
		fmt.Fprintf(c.stdout, "deleted entry %d\n", id)
		return nil
	})
}
