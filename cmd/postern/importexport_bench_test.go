package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/mailstore/storetest"
)

// benchImportMessages is the size of the generated mbox.
const benchImportMessages = 20000

// writeBenchMbox writes an mbox of n messages of 1 to 9 KB (every 1000th
// of 512 KB) and returns its size.
func writeBenchMbox(tb testing.TB, path string, n int) int64 {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	line := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 1) + "\n"
	date := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		fmt.Fprintf(w, "From sender@example.org %s\n", date.Add(time.Duration(i)*time.Minute).Format(mboxFromDate))
		fmt.Fprintf(w, "From: sender@example.org\nTo: user@example.test\nSubject: message %d\nMessage-ID: <%d@example.org>\n", i, i)
		if i%3 == 0 {
			w.WriteString("Status: RO\n")
		}
		w.WriteString("\n")
		lines := 20 + (i%8)*20
		if i%1000 == 999 {
			lines = 512 << 10 / len(line)
		}
		for j := range lines {
			if j == 5 {
				w.WriteString(">From a quoted line\n")
			}
			w.WriteString(line)
		}
		w.WriteString("\n")
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	fi, _ := f.Stat()
	f.Close()
	return fi.Size()
}

// runChild runs postern with args in a child process (this test binary)
// and returns how long it took and its peak resident set in bytes, read
// from VmHWM in /proc while it runs (the rusage of a child started by Go
// counts the parent's memory from before exec).
func runChild(tb testing.TB, args ...string) (time.Duration, int64) {
	tb.Helper()
	start := time.Now()
	c := storetest.StartChild(tb, "postern", args...)
	var out strings.Builder
	copied := make(chan struct{})
	go func() { io.Copy(&out, c.Stdout); close(copied) }()
	var peak atomic.Int64
	stop := make(chan struct{})
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		status := fmt.Sprintf("/proc/%d/status", c.Pid())
		for {
			if hwm := vmHWM(status); hwm > peak.Load() {
				peak.Store(hwm)
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	err := c.Wait()
	el := time.Since(start)
	close(stop)
	<-polled
	<-copied
	if err != nil {
		tb.Fatalf("postern %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), c.Stderr())
	}
	if peak.Load() == 0 {
		tb.Skip("no VmHWM in /proc for the child")
	}
	return el, peak.Load()
}

// vmHWM is the VmHWM of a /proc status file in bytes, or 0.
func vmHWM(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// BenchmarkImport imports a generated mbox of 20,000 messages in a child
// process (one message at a time, then with -jobs 8 for a second user),
// then exports it to mbox and to Maildir, reporting the rates
// and each child's peak RSS. Both directions stream, so the peak RSS is
// about the same for a tenth of the messages (msgs=2000) as for all of
// them, and far below the mbox size.
func BenchmarkImport(b *testing.B) {
	for _, n := range []int{benchImportMessages / 10, benchImportMessages} {
		b.Run(fmt.Sprint("msgs=", n), func(b *testing.B) { benchImport(b, n) })
	}
}

func benchImport(b *testing.B, messages int) {
	dir := b.TempDir()
	mbox := filepath.Join(dir, "big.mbox")
	size := writeBenchMbox(b, mbox, messages)
	b.SetBytes(size)
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		dataDir := filepath.Join(dir, fmt.Sprint("data", i))
		config := filepath.Join(dir, fmt.Sprint("c", i, ".toml"))
		os.WriteFile(config, []byte(`hostname = "mail.example.test"
data_dir = "`+dataDir+`"
domains = ["example.test"]
`), 0o600)
		for _, u := range []string{"user@example.test", "jobs@example.test"} {
			if code := run([]string{"user", "add", "-config", config, u}, strings.NewReader("bench-password\n"), io.Discard, os.Stderr); code != exitOK {
				b.Fatal("user add failed")
			}
		}
		b.StartTimer()
		el, rss := runChild(b, "import", "-config", config, "user@example.test", mbox)
		b.StopTimer()
		b.ReportMetric(float64(messages)/el.Seconds(), "import_msgs/s")
		b.ReportMetric(float64(size)/1e6/el.Seconds(), "import_MB/s")
		b.ReportMetric(float64(rss)/(1<<20), "import_peak_RSS_MiB")

		// -jobs 8: appends share the store's group commits.
		el, rss = runChild(b, "import", "-config", config, "-jobs", "8", "jobs@example.test", mbox)
		b.ReportMetric(float64(messages)/el.Seconds(), "import_jobs8_msgs/s")
		b.ReportMetric(float64(size)/1e6/el.Seconds(), "import_jobs8_MB/s")
		b.ReportMetric(float64(rss)/(1<<20), "import_jobs8_peak_RSS_MiB")

		el, rss = runChild(b, "export", "-config", config, "-format", "mbox", "user@example.test", filepath.Join(dir, fmt.Sprint("out-mbox", i)))
		b.ReportMetric(float64(messages)/el.Seconds(), "export_mbox_msgs/s")
		b.ReportMetric(float64(size)/1e6/el.Seconds(), "export_mbox_MB/s")
		b.ReportMetric(float64(rss)/(1<<20), "export_mbox_peak_RSS_MiB")

		el, rss = runChild(b, "export", "-config", config, "user@example.test", filepath.Join(dir, fmt.Sprint("out-maildir", i)))
		b.ReportMetric(float64(messages)/el.Seconds(), "export_maildir_msgs/s")
		b.ReportMetric(float64(rss)/(1<<20), "export_maildir_peak_RSS_MiB")
		b.ReportMetric(float64(size)/(1<<20), "mbox_MiB")
		os.RemoveAll(dataDir)
		os.RemoveAll(filepath.Join(dir, fmt.Sprint("out-mbox", i)))
		os.RemoveAll(filepath.Join(dir, fmt.Sprint("out-maildir", i)))
		b.StartTimer()
	}
}
