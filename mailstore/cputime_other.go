//go:build !unix

package mailstore

import "time"

// ProcessCPU is not measured here: it reads 0, and the full-text indexer
// judges the load by the writer alone.
func ProcessCPU() time.Duration { return 0 }
