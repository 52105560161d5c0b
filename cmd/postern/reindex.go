package main

// `postern reindex ADDRESS|all`: rebuild the full-text index that IMAP
// SEARCH narrows with.

import (
	"fmt"
	"time"

	"github.com/postern/postern/mailstore"
)

// reindexPoll is how often reindex reports what is left.
const reindexPoll = time.Second

func cmdReindex(c *cli, args []string) int {
	return c.withStoreRead("reindex", "[-config FILE] ADDRESS|all", args, exactly(1), func(st *mailstore.Store, args []string) error {
		address := args[0]
		if address == "all" {
			address = ""
		}
		n, err := st.Reindex(c.ctx, address)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "%d messages to index again\n", n)
		// The store's indexer (this process's, and a running serve's)
		// builds the index in the background; searches stay right
		// meanwhile. Wait until it is done, saying what is left.
		t := time.NewTicker(reindexPoll)
		defer t.Stop()
		for {
			left, err := st.IndexBacklog(c.ctx)
			if err != nil {
				return err
			}
			if left == 0 {
				fmt.Fprintln(c.stdout, "index complete")
				return nil
			}
			fmt.Fprintf(c.stderr, "%d messages left to index\n", left)
			select {
			case <-c.ctx.Done():
				return fmt.Errorf("stopped with %d messages left to index; the server goes on with them: %w", left, c.ctx.Err())
			case <-t.C:
			}
		}
	})
}
