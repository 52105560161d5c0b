package main

// `postern import ADDRESS PATH` and `postern export ADDRESS DEST`: moving a
// user's mail in from, and out to, the two file formats every mail tool
// knows: Maildir (one file per message, flags in the file name) and mbox
// (messages one after another, each starting with a "From " line).
//
// Both directions stream: one message at a time is in memory, bounded on
// import by smtp.max_message_bytes. The store keeps messages with CRLF line
// ends (as POP3 and IMAP send them); the files hold LF, as on every Unix
// system, so import turns LF into CRLF the same way the store does and
// export turns it back: a file with LF line ends round-trips byte for byte.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/mailstore"
)

// maxImportJobs bounds -jobs: each job holds one message in memory.
const maxImportJobs = 64

// importProgressEvery is how often a long import or export says how far
// it is (a variable for tests).
var importProgressEvery = 2 * time.Second

func cmdImport(c *cli, args []string) int {
	const name = "import"
	fs := c.flagSet(name, "[-config FILE] [-mailbox NAME] [-jobs N] ADDRESS PATH")
	path := configFlag(fs)
	mailbox := fs.String("mailbox", "", "mailbox `NAME` for a single Maildir or mbox file (default INBOX), or the parent of the mailboxes of a tree")
	jobs := fs.Int("jobs", 1, "append `N` messages at once: they share the store's commits, which is several times faster, "+
		"but messages close together may get their UIDs out of the source's order (their dates are kept)")
	if code, ok := c.parse(fs, args); !ok {
		return code
	}
	if fs.NArg() != 2 {
		return c.usageError(fs, "want ADDRESS and PATH")
	}
	if *jobs < 1 || *jobs > maxImportJobs {
		return c.usageError(fs, "-jobs must be from 1 to %d", maxImportJobs)
	}
	if *mailbox != "" {
		if _, err := mailstore.NormalizeMailboxName(*mailbox); err != nil {
			return c.usageError(fs, "-mailbox: %v", err)
		}
	}
	return c.withExistingStore(name, *path, func(st *mailstore.Store, cfg *Config) error {
		imp := &importer{
			ctx: c.ctx, st: st, maxSize: cfg.SMTP.MaxMessageBytes, jobs: *jobs,
			progress: c.stderr, start: time.Now(),
		}
		if err := imp.run(fs.Arg(0), fs.Arg(1), *mailbox); err != nil {
			return err
		}
		fmt.Fprint(c.stdout, imp.summary())
		return nil
	})
}

func cmdExport(c *cli, args []string) int {
	const name = "export"
	fs := c.flagSet(name, "[-config FILE] [-format maildir|mbox] ADDRESS DEST")
	path := configFlag(fs)
	format := fs.String("format", "maildir", "`FORMAT` of DEST: maildir (one Maildir++ tree) or mbox (one file NAME.mbox per mailbox)")
	if code, ok := c.parse(fs, args); !ok {
		return code
	}
	if fs.NArg() != 2 {
		return c.usageError(fs, "want ADDRESS and DEST")
	}
	if *format != "maildir" && *format != "mbox" {
		return c.usageError(fs, "-format must be maildir or mbox, not %q", *format)
	}
	return c.withExistingStore(name, *path, func(st *mailstore.Store, cfg *Config) error {
		exp := &exporter{ctx: c.ctx, st: st, progress: c.stderr, start: time.Now()}
		if err := exp.run(fs.Arg(0), fs.Arg(1), *format); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "exported %d messages (%d bytes) from %d mailboxes to %s (%s)\n",
			exp.messages, exp.bytes, exp.mailboxes, fs.Arg(1), *format)
		return nil
	})
}

// withExistingStore loads the configuration named by flagValue and runs fn
// with its store, which must exist: import needs a user, export has
// nothing to read without one.
func (c *cli) withExistingStore(name, flagValue string, fn func(*mailstore.Store, *Config) error) int {
	file, from := resolveConfig(flagValue)
	cfg, err := loadConfig(file)
	if err != nil {
		return c.fail(name, err)
	}
	db := filepath.Join(cfg.DataDir, storeFile)
	if _, err := os.Stat(db); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return c.fail(name, fmt.Errorf("no mailstore at %s (data_dir of %s); point to the server's configuration with -config FILE or %s=FILE", db, from, configEnv))
		}
		return c.fail(name, fmt.Errorf("mailstore: %w", err))
	}
	st, err := openStore(cfg)
	if err != nil {
		return c.fail(name, err)
	}
	c.cfg = cfg
	err = fn(st, cfg)
	if cerr := st.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close mailstore: %w", cerr)
	}
	if err != nil {
		return c.fail(name, err)
	}
	return exitOK
}

// ---- import ----

// importer adds the messages of a Maildir, an mbox file or a tree of them
// to one user's mailboxes.
type importer struct {
	ctx      context.Context
	st       *mailstore.Store
	maxSize  int64
	jobs     int
	progress io.Writer
	start    time.Time

	user  mailstore.User
	boxes map[string]*importBox // by normalized mailbox name

	totalBytes int64 // of the source files, for the ETA
	readBytes  int64 // source bytes consumed
	lastReport time.Time

	messages, bytes atomic.Int64 // added so far (workers add to them)
	present         int64

	// With -jobs N > 1, work feeds N goroutines that append at once.
	work     chan appendJob
	workers  sync.WaitGroup
	failed   atomic.Pointer[error]
	oversize []string // where each skipped oversize message was
	touched  []string // mailbox names, in the order first used
}

// importBox is a target mailbox with the messages it already held, by
// content, so that importing the same source twice adds nothing.
type importBox struct {
	mb      mailstore.Mailbox
	present map[messageKey]int // how many copies of each are still unmatched
}

// messageKey identifies a message by its stored bytes.
type messageKey struct {
	size int64
	sum  [sha256.Size]byte
}

// A source is one folder of the input: a Maildir or an mbox file, and the
// mailbox it goes into.
type importSource struct {
	path    string
	maildir bool
	mailbox string
}

func (imp *importer) run(address, path, mailbox string) error {
	u, err := imp.st.UserByAddress(imp.ctx, address)
	if err != nil {
		return fmt.Errorf("import for %s: %w", address, err)
	}
	imp.user = u
	imp.boxes = make(map[string]*importBox)
	sources, err := findSources(path, mailbox)
	if err != nil {
		return err
	}
	if len(sources) == 0 {
		return fmt.Errorf("import %s: no Maildir or mbox file found", path)
	}
	for _, src := range sources {
		imp.totalBytes += sourceSize(src)
	}
	if imp.jobs > 1 {
		imp.startWorkers(imp.jobs)
	}
	for _, src := range sources {
		var err error
		if src.maildir {
			err = imp.maildir(src)
		} else {
			err = imp.mboxFile(src)
		}
		if err != nil {
			return errors.Join(err, imp.stopWorkers())
		}
	}
	return imp.stopWorkers()
}

// summary is what the import did, for stdout.
func (imp *importer) summary() string {
	var b strings.Builder
	el := time.Since(imp.start)
	fmt.Fprintf(&b, "imported %d messages (%d bytes) into %d mailboxes in %v (%.0f messages/s)\n",
		imp.messages.Load(), imp.bytes.Load(), len(imp.touched), el.Round(time.Millisecond), float64(imp.messages.Load())/max(el.Seconds(), 1e-3))
	if len(imp.touched) > 0 {
		fmt.Fprintf(&b, "  mailboxes: %s\n", strings.Join(imp.touched, ", "))
	}
	fmt.Fprintf(&b, "  skipped: %d already present, %d larger than smtp.max_message_bytes (%d)\n",
		imp.present, len(imp.oversize), imp.maxSize)
	for _, where := range imp.oversize {
		fmt.Fprintf(&b, "  too large: %s\n", where)
	}
	return b.String()
}

// report writes a progress line at most every importProgressEvery.
func (imp *importer) report() {
	now := time.Now()
	if now.Sub(imp.lastReport) < importProgressEvery {
		return
	}
	if imp.lastReport.IsZero() && now.Sub(imp.start) < importProgressEvery {
		return
	}
	imp.lastReport = now
	el := now.Sub(imp.start).Seconds()
	rate := float64(imp.readBytes) / el
	line := fmt.Sprintf("import: %d messages, %.1f MB of %.1f MB, %.0f messages/s",
		imp.messages.Load(), float64(imp.readBytes)/1e6, float64(imp.totalBytes)/1e6, float64(imp.messages.Load())/el)
	if rate > 0 && imp.totalBytes > imp.readBytes {
		eta := time.Duration(float64(imp.totalBytes-imp.readBytes) / rate * float64(time.Second))
		line += fmt.Sprintf(", about %v left", eta.Round(time.Second))
	}
	fmt.Fprintln(imp.progress, line)
}

// findSources looks at path: a Maildir (with its Maildir++ ".Sub.Folder"
// and "Sub/" folders), an mbox file, or a directory tree holding either.
// base is the mailbox of path itself ("" means INBOX for a single folder,
// and no prefix for the folders of a tree).
func findSources(path, base string) ([]importSource, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	if !fi.IsDir() {
		if base == "" {
			base = "INBOX"
		}
		return []importSource{{path: path, mailbox: base}}, nil
	}
	var out []importSource
	err = walkSources(path, base, true, 0, &out)
	return out, err
}

// maxImportDepth bounds how deep findSources descends.
const maxImportDepth = 16

// walkSources adds dir (a Maildir when it has cur or new) and what is
// inside it to out. mailbox is the name of dir's folder; top says dir is
// the root, where Maildir++ folders (".A.B") live.
func walkSources(dir, mailbox string, top bool, depth int, out *[]importSource) error {
	if depth > maxImportDepth {
		return fmt.Errorf("import: %s: folders nested more than %d deep", dir, maxImportDepth)
	}
	maildir := isMaildir(dir)
	if maildir {
		*out = append(*out, importSource{path: dir, maildir: true, mailbox: orInbox(mailbox)})
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	for _, e := range entries {
		n := e.Name()
		full := filepath.Join(dir, n)
		switch {
		case maildir && (n == "cur" || n == "new" || n == "tmp"):
			continue
		case maildir && top && strings.HasPrefix(n, ".") && len(n) > 1 && n != "..":
			// Maildir++: ".Sub.Folder" is Sub/Folder; Dovecot's
			// listescape writes a dot inside a name as \2e.
			if e.IsDir() && isMaildir(full) {
				parts := strings.Split(n[1:], ".")
				for i, p := range parts {
					parts[i] = strings.ReplaceAll(p, `\2e`, ".")
				}
				*out = append(*out, importSource{path: full, maildir: true, mailbox: joinMailbox(mailbox, strings.Join(parts, "/"))})
			}
			continue
		case strings.HasPrefix(n, "."):
			continue // hidden files: indexes, locks
		}
		fi, err := os.Stat(full) // follows symbolic links
		if err != nil {
			return fmt.Errorf("import: %w", err)
		}
		child := strings.TrimSuffix(n, ".sbd") // Thunderbird keeps A's children in A.sbd/
		if fi.IsDir() {
			if err := walkSources(full, joinMailbox(mailbox, child), false, depth+1, out); err != nil {
				return err
			}
			continue
		}
		if !fi.Mode().IsRegular() || !looksLikeMbox(full) {
			continue
		}
		child = strings.TrimSuffix(strings.TrimSuffix(n, ".mbox"), ".mbx")
		*out = append(*out, importSource{path: full, mailbox: joinMailbox(mailbox, child)})
	}
	return nil
}

func orInbox(name string) string {
	if name == "" {
		return "INBOX"
	}
	return name
}

func joinMailbox(parent, child string) string {
	if parent == "" {
		return child
	}
	return parent + mailstore.Separator + child
}

// isMaildir reports whether dir has a cur or new subdirectory.
func isMaildir(dir string) bool {
	for _, sub := range []string{"cur", "new"} {
		if fi, err := os.Stat(filepath.Join(dir, sub)); err == nil && fi.IsDir() {
			return true
		}
	}
	return false
}

// looksLikeMbox reports whether the file starts with "From " (an empty
// file is an empty mbox too).
func looksLikeMbox(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	head := make([]byte, 5)
	n, _ := io.ReadFull(f, head)
	return n == 0 || string(head[:n]) == "From "
}

// sourceSize is the bytes a source holds, for progress.
func sourceSize(src importSource) int64 {
	if !src.maildir {
		fi, err := os.Stat(src.path)
		if err != nil {
			return 0
		}
		return fi.Size()
	}
	var total int64
	for _, sub := range []string{"new", "cur"} {
		entries, _ := os.ReadDir(filepath.Join(src.path, sub))
		for _, e := range entries {
			if fi, err := e.Info(); err == nil {
				total += fi.Size()
			}
		}
	}
	return total
}

// box returns the target mailbox called name, created if needed, with
// the messages it already holds.
func (imp *importer) box(name string) (*importBox, error) {
	n, err := mailstore.NormalizeMailboxName(name)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	if b, ok := imp.boxes[n]; ok {
		return b, nil
	}
	mb, err := imp.st.MailboxByName(imp.ctx, imp.user.ID, n)
	if errors.Is(err, mailstore.ErrNotFound) || err == nil && mb.NoSelect {
		mb, err = imp.st.CreateMailbox(imp.ctx, imp.user.ID, n, "")
	}
	if err != nil {
		return nil, fmt.Errorf("import into mailbox %q: %w", n, err)
	}
	b := &importBox{mb: mb, present: make(map[messageKey]int)}
	msgs, err := imp.st.Messages(imp.ctx, mb.ID, nil)
	if err != nil {
		return nil, fmt.Errorf("import into mailbox %q: %w", n, err)
	}
	for _, m := range msgs {
		k, err := imp.storedKey(m)
		if err != nil {
			if errors.Is(err, mailstore.ErrNotFound) {
				continue // expunged meanwhile
			}
			return nil, fmt.Errorf("import into mailbox %q: %w", n, err)
		}
		b.present[k]++
	}
	imp.boxes[n] = b
	imp.touched = append(imp.touched, n)
	return b, nil
}

// storedKey hashes a stored message, streaming its body.
func (imp *importer) storedKey(m mailstore.Message) (messageKey, error) {
	body, err := imp.st.OpenBody(imp.ctx, m.BodyID)
	if err != nil {
		return messageKey{}, err
	}
	defer body.Close()
	h := sha256.New()
	n, err := io.Copy(h, body)
	if err != nil {
		return messageKey{}, err
	}
	k := messageKey{size: n}
	h.Sum(k.sum[:0])
	return k, nil
}

// add appends msg, already in CRLF form, to box unless an identical
// message is there from before the import.
func (imp *importer) add(box *importBox, flags []string, date time.Time, msg []byte) error {
	k := messageKey{size: int64(len(msg)), sum: sha256.Sum256(msg)}
	if box.present[k] > 0 {
		box.present[k]--
		imp.present++
		return nil
	}
	if imp.work == nil {
		return imp.append(appendJob{box, flags, date, msg})
	}
	if errp := imp.failed.Load(); errp != nil {
		return *errp
	}
	// The buffer is reused for the next message: the worker gets a copy.
	imp.work <- appendJob{box, flags, date, bytes.Clone(msg)}
	return nil
}

// appendJob is one message for a worker.
type appendJob struct {
	box   *importBox
	flags []string
	date  time.Time
	msg   []byte
}

func (imp *importer) append(j appendJob) error {
	if _, err := imp.st.Append(imp.ctx, j.box.mb.ID, j.flags, j.date, j.msg); err != nil {
		return fmt.Errorf("import into mailbox %q: %w", j.box.mb.Name, err)
	}
	imp.messages.Add(1)
	imp.bytes.Add(int64(len(j.msg)))
	return nil
}

// startWorkers starts n goroutines appending from imp.work. Each holds at
// most one message, so memory stays bounded by n messages.
func (imp *importer) startWorkers(n int) {
	imp.work = make(chan appendJob)
	for range n {
		imp.workers.Go(func() {
			for j := range imp.work {
				if imp.failed.Load() != nil {
					continue // drain
				}
				if err := imp.append(j); err != nil {
					imp.failed.CompareAndSwap(nil, &err)
				}
			}
		})
	}
}

// stopWorkers waits for the workers and returns the first error of theirs.
func (imp *importer) stopWorkers() error {
	if imp.work == nil {
		return nil
	}
	close(imp.work)
	imp.workers.Wait()
	imp.work = nil
	if errp := imp.failed.Load(); errp != nil {
		return *errp
	}
	return nil
}

// maildirFlags maps the letters of a Maildir info ":2,FLAGS" to IMAP
// flags (P, "passed", has no IMAP flag).
var maildirFlags = []struct {
	letter byte
	flag   string
}{
	{'D', mailstore.FlagDraft}, {'F', mailstore.FlagFlagged}, {'R', mailstore.FlagAnswered},
	{'S', mailstore.FlagSeen}, {'T', mailstore.FlagDeleted},
}

// parseMaildirInfo returns the flags in a Maildir file name
// ("1700000000.M1P2.host:2,RS"). Some systems write '!' or ';' for ':'
// where a colon is not allowed in file names.
func parseMaildirInfo(name string) []string {
	i := strings.LastIndexAny(name, ":!;")
	if i < 0 || !strings.HasPrefix(name[i+1:], "2,") {
		return nil
	}
	var flags []string
	for _, c := range []byte(name[i+3:]) {
		for _, f := range maildirFlags {
			if f.letter == c && !slices.Contains(flags, f.flag) {
				flags = append(flags, f.flag)
			}
		}
	}
	return flags
}

// maildirInfo is the ":2,FLAGS" suffix for flags, letters in ASCII order
// as the Maildir convention requires.
func maildirInfo(flags []string) string {
	b := []byte(":2,")
	for _, f := range maildirFlags {
		if slices.ContainsFunc(flags, func(g string) bool { return strings.EqualFold(f.flag, g) }) {
			b = append(b, f.letter)
		}
	}
	return string(b)
}

// maildir imports the messages of new/ and cur/, oldest file first; the
// internal date is the file's modification time (where delivery and
// Dovecot put it).
func (imp *importer) maildir(src importSource) error {
	box, err := imp.box(src.mailbox)
	if err != nil {
		return err
	}
	type file struct {
		path  string
		name  string
		mtime time.Time
		size  int64
	}
	var files []file
	for _, sub := range []string{"new", "cur"} {
		entries, err := os.ReadDir(filepath.Join(src.path, sub))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("import: %w", err)
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				continue
			}
			fi, err := e.Info()
			if err != nil || !fi.Mode().IsRegular() {
				continue
			}
			files = append(files, file{filepath.Join(src.path, sub, e.Name()), e.Name(), fi.ModTime(), fi.Size()})
		}
	}
	slices.SortStableFunc(files, func(a, b file) int {
		if c := a.mtime.Compare(b.mtime); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	var buf bytes.Buffer
	for _, f := range files {
		imp.readBytes += f.size
		if f.size > imp.maxSize {
			imp.oversize = append(imp.oversize, fmt.Sprintf("%s (%d bytes)", f.path, f.size))
			continue
		}
		buf.Reset()
		if err := readCRLF(f.path, imp.maxSize, &buf); err != nil {
			if errors.Is(err, errTooLarge) {
				imp.oversize = append(imp.oversize, fmt.Sprintf("%s (more than %d bytes)", f.path, imp.maxSize))
				continue
			}
			return err
		}
		if err := imp.add(box, parseMaildirInfo(f.name), f.mtime, buf.Bytes()); err != nil {
			return err
		}
		imp.report()
	}
	return nil
}

var errTooLarge = errors.New("message too large")

// readCRLF reads the file at path into buf with CRLF line ends, failing
// with errTooLarge past limit bytes.
func readCRLF(path string, limit int64, buf *bytes.Buffer) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 64<<10)
	for {
		line, err := readLine(r, limit)
		if len(line) > 0 {
			appendCRLF(buf, line)
			if int64(buf.Len()) > limit {
				return errTooLarge
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if errors.Is(err, errTooLarge) {
				return err
			}
			return fmt.Errorf("import: read %s: %w", path, err)
		}
	}
}

// readLine returns the next line with its LF, or a last line without one
// with io.EOF. A line longer than limit fails with errTooLarge. The slice
// is valid until the next read.
func readLine(r *bufio.Reader, limit int64) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if err != bufio.ErrBufferFull {
		return line, err
	}
	long := append([]byte(nil), line...)
	for err == bufio.ErrBufferFull {
		if int64(len(long)) > limit {
			return nil, errTooLarge
		}
		line, err = r.ReadSlice('\n')
		long = append(long, line...)
	}
	return long, err
}

// appendCRLF appends line (with or without its LF) to buf with every
// line end as CRLF, the way the store keeps messages: a bare LF or a bare
// CR becomes CRLF, and a last line without an end gets one.
func appendCRLF(buf *bytes.Buffer, line []byte) {
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	for {
		i := bytes.IndexByte(line, '\r')
		if i < 0 {
			break
		}
		buf.Write(line[:i])
		buf.WriteString("\r\n")
		line = line[i+1:]
	}
	buf.Write(line)
	buf.WriteString("\r\n")
}

// mboxFile imports an mbox file, streaming: one message at a time is held.
// Messages are split at "From " lines that follow an empty line (or start
// the file) and carry a date; lines ">From ", ">>From "... lose one '>'
// (mboxrd; for mboxo files this also undoes their quoting). Content-Length
// headers are not trusted. Status and X-Status give the flags and are
// dropped from the stored message (they describe the mbox copy, and export
// writes them again from the flags).
func (imp *importer) mboxFile(src importSource) error {
	box, err := imp.box(src.mailbox)
	if err != nil {
		return err
	}
	f, err := os.Open(src.path)
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 256<<10)
	mr := &mboxReader{r: r, limit: imp.maxSize, name: src.path}
	base := imp.readBytes
	for {
		m, err := mr.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		imp.readBytes = base + mr.offset
		if m.tooLarge {
			imp.oversize = append(imp.oversize, fmt.Sprintf("%s line %d (more than %d bytes)", src.path, m.line, imp.maxSize))
			continue
		}
		if err := imp.add(box, m.flags, m.date, m.data); err != nil {
			return err
		}
		imp.report()
	}
}

// mboxMessage is one message read from an mbox file.
type mboxMessage struct {
	data     []byte // CRLF line ends, Status and X-Status removed; valid until the next read
	flags    []string
	date     time.Time // from the "From " line; zero if it has none
	line     int       // of the "From " line
	tooLarge bool      // data is empty: the message passed the limit
}

// mboxReader splits an mbox stream into messages.
type mboxReader struct {
	r      *bufio.Reader
	limit  int64
	name   string
	offset int64 // bytes consumed
	lineNo int

	pending []byte // a "From " line read ahead, or nil
	buf     bytes.Buffer
	done    bool
}

// next returns the next message, or io.EOF after the last.
func (mr *mboxReader) next() (*mboxMessage, error) {
	if mr.done {
		return nil, io.EOF
	}
	m := &mboxMessage{}
	if mr.pending == nil {
		// Start of the file: the first line must be a "From " line.
		line, err := mr.readLine()
		if err == io.EOF && len(line) == 0 {
			mr.done = true
			return nil, io.EOF
		}
		if err != nil && err != io.EOF {
			return nil, err
		}
		if !bytes.HasPrefix(line, []byte("From ")) {
			return nil, fmt.Errorf("import: %s: not an mbox file: it does not start with a \"From \" line", mr.name)
		}
		mr.pending = append(mr.pending[:0], line...)
		if err == io.EOF {
			mr.done = true
		}
	}
	m.line = mr.lineNo
	m.date = fromLineDate(mr.pending)
	mr.buf.Reset()
	var (
		inHeader  = true
		prevBlank = false
		status    []byte
		xstatus   []byte
		skipCont  = false // dropping a folded Status line
	)
	for !mr.done {
		line, err := mr.readLine()
		if err != nil && err != io.EOF {
			return nil, err
		}
		if err == io.EOF {
			mr.done = true
			if len(line) == 0 {
				break
			}
		}
		if prevBlank && bytes.HasPrefix(line, []byte("From ")) && !fromLineDate(line).IsZero() {
			mr.pending = append(mr.pending[:0], line...)
			break
		}
		blank := len(line) == 1 && line[0] == '\n' || len(line) == 2 && line[0] == '\r' && line[1] == '\n'
		if inHeader {
			if blank {
				inHeader = false
			} else if skipCont && (line[0] == ' ' || line[0] == '\t') {
				continue
			} else {
				skipCont = false
				switch {
				case hasField(line, "Status"):
					status = append(status, line[len("Status:"):]...)
					skipCont = true
					continue
				case hasField(line, "X-Status"):
					xstatus = append(xstatus, line[len("X-Status:"):]...)
					skipCont = true
					continue
				}
			}
		}
		// mboxrd: ">From " and deeper quotes lose one '>'.
		if line[0] == '>' {
			i := 0
			for i < len(line) && line[i] == '>' {
				i++
			}
			if bytes.HasPrefix(line[i:], []byte("From ")) {
				line = line[1:]
			}
		}
		if prevBlank {
			// The empty line before was not a separator: keep it.
			mr.buf.WriteString("\r\n")
		}
		prevBlank = blank
		if blank {
			continue
		}
		if !m.tooLarge {
			appendCRLF(&mr.buf, line)
			if int64(mr.buf.Len()) > mr.limit {
				m.tooLarge = true
			}
		}
		if m.tooLarge {
			mr.buf.Reset()
		}
	}
	// A blank line at the very end of the file belongs to the mbox
	// format (the separator of a next message that never came), as does
	// the one before each "From " line: neither is kept.
	if m.tooLarge {
		mr.buf.Reset()
	}
	m.data = mr.buf.Bytes()
	m.flags = statusFlags(status, xstatus)
	return m, nil
}

// readLine reads one line, counting bytes and lines.
func (mr *mboxReader) readLine() ([]byte, error) {
	line, err := mr.r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		// A very long line: collect it, bounded.
		long := append([]byte(nil), line...)
		for err == bufio.ErrBufferFull {
			line, err = mr.r.ReadSlice('\n')
			if int64(len(long)) <= mr.limit+1 {
				long = append(long, line...)
			}
			mr.offset += int64(len(line))
		}
		mr.offset += int64(len(long)) - int64(len(line))
		line = long
	} else {
		mr.offset += int64(len(line))
	}
	if len(line) > 0 {
		mr.lineNo++
	}
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("import: read %s: %w", mr.name, err)
	}
	return line, err
}

// hasField reports whether the header line is the field name.
func hasField(line []byte, name string) bool {
	return len(line) > len(name) && line[len(name)] == ':' && strings.EqualFold(string(line[:len(name)]), name)
}

// statusFlags reads the mbox Status (R read, O old) and X-Status (A
// answered, F flagged, T draft, D deleted) headers, as mutt and Pine write them.
func statusFlags(status, xstatus []byte) []string {
	var flags []string
	if bytes.IndexByte(status, 'R') >= 0 {
		flags = append(flags, mailstore.FlagSeen)
	}
	for _, x := range []struct {
		c    byte
		flag string
	}{{'A', mailstore.FlagAnswered}, {'F', mailstore.FlagFlagged}, {'T', mailstore.FlagDraft}, {'D', mailstore.FlagDeleted}} {
		if bytes.IndexByte(xstatus, x.c) >= 0 {
			flags = append(flags, x.flag)
		}
	}
	return flags
}

// fromLineLayouts are the dates seen on "From " lines: asctime, with a
// zone in one of the places writers put it.
var fromLineLayouts = []string{
	"Mon Jan _2 15:04:05 2006",
	"Mon Jan _2 15:04:05 MST 2006",
	"Mon Jan _2 15:04:05 2006 -0700",
	"Mon Jan _2 15:04:05 -0700 2006",
	"Mon Jan _2 15:04 2006",
}

// fromLineDate is the date of an mbox "From sender date" line, or zero
// when it has none. A date without a zone is taken as UTC, which is what
// export writes.
func fromLineDate(line []byte) time.Time {
	s := strings.TrimRight(string(line), "\r\n")
	rest, ok := strings.CutPrefix(s, "From ")
	if !ok {
		return time.Time{}
	}
	// The sender is one word (a quoted local part with spaces is rare
	// enough to ignore); the date follows it.
	_, date, ok := strings.Cut(strings.TrimLeft(rest, " "), " ")
	if !ok {
		return time.Time{}
	}
	date = strings.Join(strings.Fields(date), " ")
	for _, layout := range fromLineLayouts {
		compact := strings.Join(strings.Fields(layout), " ")
		for _, l := range []string{layout, compact} {
			if t, err := time.Parse(l, date); err == nil {
				return t.UTC()
			}
		}
	}
	return time.Time{}
}

// ---- export ----

// exporter writes one user's mailboxes to files.
type exporter struct {
	ctx      context.Context
	st       *mailstore.Store
	progress io.Writer
	start    time.Time

	lastReport                 time.Time
	messages, bytes, mailboxes int64
	w                          *bufio.Writer // reused
}

func (exp *exporter) run(address, dest, format string) error {
	u, err := exp.st.UserByAddress(exp.ctx, address)
	if err != nil {
		return fmt.Errorf("export for %s: %w", address, err)
	}
	boxes, err := exp.st.Mailboxes(exp.ctx, u.ID)
	if err != nil {
		return fmt.Errorf("export for %s: %w", address, err)
	}
	// The export holds the user's mail: keep it private.
	if err := os.MkdirAll(dest, 0o700); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	exp.w = bufio.NewWriterSize(nil, 256<<10)
	for _, mb := range boxes {
		if mb.NoSelect {
			continue
		}
		var err error
		if format == "mbox" {
			err = exp.mbox(dest, mb)
		} else {
			err = exp.maildir(dest, mb)
		}
		if err != nil {
			return err
		}
		exp.mailboxes++
	}
	return nil
}

// exportPage is how many UIDs one listing of a mailbox covers, so that a
// large mailbox is never listed whole (a variable for tests).
var exportPage uint64 = 1000

// each calls fn for the messages of mb in UID order, a page at a time, up
// to the UIDNEXT mb had when listed.
func (exp *exporter) each(mb mailstore.Mailbox, fn func(mailstore.Message) error) error {
	for start := uint64(1); start < uint64(mb.UIDNext); start += exportPage {
		stop := min(start+exportPage-1, uint64(mb.UIDNext)-1)
		msgs, err := exp.st.Messages(exp.ctx, mb.ID, mailstore.UIDSet{{Start: uint32(start), Stop: uint32(stop)}})
		if err != nil {
			return fmt.Errorf("export mailbox %q: %w", mb.Name, err)
		}
		for _, m := range msgs {
			if err := fn(m); err != nil {
				return err
			}
		}
	}
	return nil
}

func (exp *exporter) report() {
	now := time.Now()
	if now.Sub(exp.lastReport) < importProgressEvery || now.Sub(exp.start) < importProgressEvery {
		return
	}
	exp.lastReport = now
	el := now.Sub(exp.start).Seconds()
	fmt.Fprintf(exp.progress, "export: %d messages, %.1f MB, %.0f messages/s\n",
		exp.messages, float64(exp.bytes)/1e6, float64(exp.messages)/el)
}

// maildirFolder is the Maildir++ folder of a mailbox under dest: INBOX is
// dest itself, "A/B" is dest/.A.B (a dot inside a name is written \2e,
// as Dovecot's listescape does).
func maildirFolder(dest, name string) string {
	if name == "INBOX" {
		return dest
	}
	parts := strings.Split(name, mailstore.Separator)
	for i, p := range parts {
		parts[i] = strings.ReplaceAll(p, ".", `\2e`)
	}
	return filepath.Join(dest, "."+strings.Join(parts, "."))
}

// maildir writes the messages of mb as files in cur/ named
// TIME.M<uid>U<uidvalidity>.postern:2,FLAGS, with the internal date as
// their modification time.
func (exp *exporter) maildir(dest string, mb mailstore.Mailbox) error {
	dir := maildirFolder(dest, mb.Name)
	for _, sub := range []string{"cur", "new", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return fmt.Errorf("export mailbox %q: %w", mb.Name, err)
		}
	}
	return exp.each(mb, func(m mailstore.Message) error {
		base := fmt.Sprintf("%d.M%dU%d.postern", m.InternalDate.Unix(), m.UID, mb.UIDValidity)
		tmp := filepath.Join(dir, "tmp", base)
		final := filepath.Join(dir, "cur", base+maildirInfo(m.Flags))
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("export mailbox %q: %w", mb.Name, err)
		}
		exp.w.Reset(f)
		n, err := exp.writeBody(m, false)
		if err == nil {
			err = exp.w.Flush()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Chtimes(tmp, m.InternalDate, m.InternalDate)
		}
		if err == nil {
			err = os.Rename(tmp, final)
		}
		if err != nil {
			os.Remove(tmp)
			return fmt.Errorf("export mailbox %q message %d: %w", mb.Name, m.UID, err)
		}
		exp.messages++
		exp.bytes += n
		exp.report()
		return nil
	})
}

// mboxPath is the file of a mailbox under dest: "A/B" is dest/A/B.mbox,
// so that a mailbox and its children never want the same name.
func mboxPath(dest, name string) string {
	return filepath.Join(dest, filepath.FromSlash(name)+".mbox")
}

// mbox writes the messages of mb to one mboxrd file: a "From " line with
// the internal date, Status/X-Status from the flags, the message with
// ">From " quoting, and an empty line.
func (exp *exporter) mbox(dest string, mb mailstore.Mailbox) error {
	path := mboxPath(dest, mb.Name)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("export mailbox %q: %w", mb.Name, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("export mailbox %q: %w (export into a new directory)", mb.Name, err)
	}
	exp.w.Reset(f)
	err = exp.each(mb, func(m mailstore.Message) error {
		n, err := exp.mboxMessage(m)
		if err != nil {
			return fmt.Errorf("export mailbox %q message %d: %w", mb.Name, m.UID, err)
		}
		exp.messages++
		exp.bytes += n
		exp.report()
		return nil
	})
	if err != nil {
		f.Close()
		return err
	}
	err = exp.w.Flush()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("export mailbox %q: %w", mb.Name, err)
	}
	return nil
}

// mboxFromDate is asctime, as "From " lines carry it.
const mboxFromDate = "Mon Jan _2 15:04:05 2006"

// mboxMessage writes one message in mboxrd form to exp.w. The "From "
// line's sender is MAILER-DAEMON: the store keeps no envelope sender for
// a message (the Return-Path field, when there is one, is in the message).
func (exp *exporter) mboxMessage(m mailstore.Message) (int64, error) {
	fmt.Fprintf(exp.w, "From MAILER-DAEMON %s\n", m.InternalDate.UTC().Format(mboxFromDate))
	n, err := exp.writeBody(m, true)
	if err != nil {
		return n, err
	}
	return n, exp.w.WriteByte('\n')
}

// writeBody copies a stored message to exp.w with LF line ends. For mbox
// it adds Status and X-Status at the end of the header and quotes
// ">*From " lines with one more '>' (mboxrd).
func (exp *exporter) writeBody(m mailstore.Message, mbox bool) (int64, error) {
	body, err := exp.st.OpenBody(exp.ctx, m.BodyID)
	if err != nil {
		return 0, err
	}
	defer body.Close()
	r := bufio.NewReaderSize(body, 64<<10)
	var n int64
	lineStart, inHeader := true, mbox
	for {
		chunk, err := r.ReadSlice('\n')
		n += int64(len(chunk))
		if mbox && lineStart && len(chunk) > 0 {
			if inHeader && (string(chunk) == "\r\n" || string(chunk) == "\n") {
				inHeader = false
				writeStatus(exp.w, m.Flags)
			}
			i := 0
			for i < len(chunk) && chunk[i] == '>' {
				i++
			}
			if bytes.HasPrefix(chunk[i:], []byte("From ")) {
				exp.w.WriteByte('>')
			}
		}
		if err == bufio.ErrBufferFull {
			// Part of a long line. A CR at its end may be half of a CRLF.
			lineStart = false
			if k := len(chunk); k > 0 && chunk[k-1] == '\r' {
				exp.w.Write(chunk[:k-1])
				if next, _ := r.Peek(1); len(next) != 1 || next[0] != '\n' {
					exp.w.WriteByte('\r')
				}
				continue
			}
			exp.w.Write(chunk)
			continue
		}
		exp.w.Write(lfLine(chunk))
		lineStart = true
		if err == io.EOF {
			break
		}
		if err != nil {
			return n, err
		}
	}
	if inHeader {
		// A message of header fields only: the flags still go in.
		writeStatus(exp.w, m.Flags)
	}
	return n, nil
}

// lfLine turns a CRLF line end into LF.
func lfLine(line []byte) []byte {
	if n := len(line); n >= 2 && line[n-2] == '\r' && line[n-1] == '\n' {
		line[n-2] = '\n'
		return line[:n-1]
	}
	return line
}

// writeStatus writes the Status and X-Status header fields for flags:
// only what there is to say, so that a message without flags comes out as
// it went in.
func writeStatus(w *bufio.Writer, flags []string) {
	has := func(f string) bool {
		return slices.ContainsFunc(flags, func(g string) bool { return strings.EqualFold(f, g) })
	}
	if has(mailstore.FlagSeen) {
		w.WriteString("Status: RO\n")
	}
	var x []byte
	for _, f := range []struct {
		c    byte
		flag string
	}{{'A', mailstore.FlagAnswered}, {'F', mailstore.FlagFlagged}, {'T', mailstore.FlagDraft}, {'D', mailstore.FlagDeleted}} {
		if has(f.flag) {
			x = append(x, f.c)
		}
	}
	if len(x) > 0 {
		w.WriteString("X-Status: " + string(x) + "\n")
	}
}
