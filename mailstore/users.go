package mailstore

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode"

	"golang.org/x/crypto/argon2"

	"github.com/postern/postern/mime"
)

// maxAliasDepth bounds alias-to-alias expansion; deeper chains are loops
// or mistakes.
const maxAliasDepth = 8

// User is a local account.
type User struct {
	ID         int64
	Address    string
	Disabled   bool
	QuotaBytes int64 // 0: no quota
	Admin      bool  // may use the web console's administration pages
	Created    time.Time
}

// Alias maps an address to local users or remote addresses.
type Alias struct {
	Address string
	Targets []string
}

// NormalizeAddress checks the form local@domain and lower-cases it, so that
// addresses compare the same however a client spells them.
func NormalizeAddress(address string) (string, error) {
	a := strings.ToLower(strings.TrimSpace(address))
	at := strings.LastIndexByte(a, '@')
	// The local part may be anything a quoted string can carry (RFC 5321
	// 4.1.2: "john smith"@example.com arrives unquoted), but no control
	// characters or angle brackets.
	if at <= 0 || at == len(a)-1 || len(a) > 320 || strings.ContainsAny(a, "<>") || strings.IndexFunc(a, unicode.IsControl) >= 0 {
		return "", fmt.Errorf("%w: %q", ErrInvalidAddress, address)
	}
	domain, err := NormalizeDomain(a[at+1:])
	if err != nil {
		return "", fmt.Errorf("%w: %q", ErrInvalidAddress, address)
	}
	return a[:at+1] + domain, nil
}

// NormalizeDomain lower-cases a domain name and checks its syntax
// (letters, digits, hyphens, dots; RFC 1035 lengths).
func NormalizeDomain(domain string) (string, error) {
	d := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(domain)), ".")
	if len(d) > 253 || !mime.IsDomain(d) {
		return "", fmt.Errorf("%w: domain %q", ErrInvalidName, domain)
	}
	return d, nil
}

func domainOf(address string) string { return address[strings.LastIndexByte(address, '@')+1:] }

// AddDomain makes a domain local.
func (s *Store) AddDomain(ctx context.Context, domain string) error {
	d, err := NormalizeDomain(domain)
	if err != nil {
		return err
	}
	return s.w.do(ctx, func(t *wtx) error {
		res, err := t.exec("INSERT INTO domains (name) VALUES (?) ON CONFLICT DO NOTHING", d)
		if err != nil {
			return fmt.Errorf("add domain %s: %w", d, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("add domain %s: %w", d, ErrExists)
		}
		return nil
	})
}

// DeleteDomain removes a local domain. Its users and aliases must be
// deleted first.
func (s *Store) DeleteDomain(ctx context.Context, domain string) error {
	d, err := NormalizeDomain(domain)
	if err != nil {
		return err
	}
	return s.w.do(ctx, func(t *wtx) error {
		var users int
		if err := t.queryRow("SELECT count(*) FROM users WHERE address LIKE ? ESCAPE '\\'", "%@"+escapeLike(d)).Scan(&users); err != nil {
			return fmt.Errorf("delete domain %s: %w", d, err)
		}
		if users > 0 {
			return fmt.Errorf("delete domain %s: %w: it still has %d users", d, ErrExists, users)
		}
		res, err := t.exec("DELETE FROM domains WHERE name = ?", d)
		if err != nil {
			return fmt.Errorf("delete domain %s: %w", d, err)
		}
		return affected(res, "delete domain "+d)
	})
}

func escapeLike(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

// Domains lists the local domains in order.
func (s *Store) Domains(ctx context.Context) ([]string, error) {
	rows, err := s.read(ctx, "SELECT name FROM domains ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("list domains: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			return nil, fmt.Errorf("list domains: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list domains: %w", err)
	}
	return out, nil
}

// IsLocalDomain reports whether mail for domain is delivered here.
func (s *Store) IsLocalDomain(ctx context.Context, domain string) (bool, error) {
	d, err := NormalizeDomain(domain)
	if err != nil {
		return false, nil
	}
	var n int
	if err := s.readRow(ctx, "SELECT count(*) FROM domains WHERE name = ?", d).Scan(&n); err != nil {
		return false, fmt.Errorf("look up domain %s: %w", d, err)
	}
	return n > 0, nil
}

// defaultMailboxes are created for every new user: INBOX and the RFC 6154
// special-use mailboxes.
var defaultMailboxes = []struct{ name, use string }{
	{"INBOX", ""},
	{"Sent", `\Sent`},
	{"Drafts", `\Drafts`},
	{"Trash", `\Trash`},
	{"Junk", `\Junk`},
	{"Archive", `\Archive`},
}

// AddUser creates a user in a local domain, with its default mailboxes.
func (s *Store) AddUser(ctx context.Context, address, password string) (User, error) {
	a, err := NormalizeAddress(address)
	if err != nil {
		return User{}, err
	}
	if password == "" {
		return User{}, fmt.Errorf("add user %s: empty password", a)
	}
	hash := hashPassword(password, s.cost)
	u := User{Address: a, Created: s.now().UTC().Truncate(time.Second)}
	err = s.w.do(ctx, func(t *wtx) error {
		var local, alias int
		if err := t.queryRow("SELECT (SELECT count(*) FROM domains WHERE name = ?), (SELECT count(*) FROM aliases WHERE address = ?)",
			domainOf(a), a).Scan(&local, &alias); err != nil {
			return fmt.Errorf("add user %s: %w", a, err)
		}
		if local == 0 {
			return fmt.Errorf("add user %s: %w: %s", a, ErrNotLocal, domainOf(a))
		}
		if alias > 0 {
			return fmt.Errorf("add user %s: %w as an alias", a, ErrExists)
		}
		err := t.queryRow("INSERT INTO users (address, password_hash, created) VALUES (?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
			a, hash, u.Created.Unix()).Scan(&u.ID)
		if isNoRows(err) {
			return fmt.Errorf("add user %s: %w", a, ErrExists)
		}
		if err != nil {
			return fmt.Errorf("add user %s: %w", a, err)
		}
		for _, mb := range defaultMailboxes {
			if _, err := t.createMailbox(u.ID, mb.name, mb.use, true); err != nil {
				return fmt.Errorf("add user %s: %w", a, err)
			}
		}
		return nil
	})
	if err != nil {
		return User{}, err
	}
	return u, nil
}

// PasswordStamp returns, for the user with this address, a value that
// changes whenever their password does (a SHA-256 of the stored hash,
// so it tells nothing of the hash itself). The web console ends the
// sessions opened with a password that has since been changed.
func (s *Store) PasswordStamp(ctx context.Context, address string) ([]byte, error) {
	a, err := NormalizeAddress(address)
	if err != nil {
		return nil, err
	}
	var hash string
	err = s.readRow(ctx, "SELECT password_hash FROM users WHERE address = ?", a).Scan(&hash)
	if isNoRows(err) {
		return nil, fmt.Errorf("password stamp of %s: %w", a, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("password stamp of %s: %w", a, err)
	}
	sum := sha256.Sum256([]byte(hash))
	return sum[:], nil
}

// SetPassword replaces a user's password; a remembered login is forgotten.
func (s *Store) SetPassword(ctx context.Context, address, password string) error {
	a, err := NormalizeAddress(address)
	if err != nil {
		return err
	}
	if password == "" {
		return fmt.Errorf("set password of %s: empty password", a)
	}
	hash := hashPassword(password, s.cost)
	return s.w.do(ctx, func(t *wtx) error {
		res, err := t.exec("UPDATE users SET password_hash = ? WHERE address = ?", hash, a)
		if err != nil {
			return fmt.Errorf("set password of %s: %w", a, err)
		}
		t.afterCommit(func() { s.auth.drop(a) })
		return affected(res, "set password of "+a)
	})
}

// SetDisabled disables or re-enables logins and delivery for a user.
func (s *Store) SetDisabled(ctx context.Context, address string, disabled bool) error {
	return s.updateUser(ctx, address, "disabled", disabled)
}

// SetAdmin grants or takes away the web console's administration pages.
func (s *Store) SetAdmin(ctx context.Context, address string, admin bool) error {
	return s.updateUser(ctx, address, "admin", admin)
}

// SetQuota sets a user's storage quota in bytes (0: none).
func (s *Store) SetQuota(ctx context.Context, address string, bytes int64) error {
	if bytes < 0 {
		return fmt.Errorf("set quota of %s: negative quota %d", address, bytes)
	}
	return s.updateUser(ctx, address, "quota_bytes", bytes)
}

func (s *Store) updateUser(ctx context.Context, address, column string, value any) error {
	a, err := NormalizeAddress(address)
	if err != nil {
		return err
	}
	return s.w.do(ctx, func(t *wtx) error {
		res, err := t.exec("UPDATE users SET "+column+" = ? WHERE address = ?", value, a)
		if err != nil {
			return fmt.Errorf("set %s of %s: %w", column, a, err)
		}
		t.afterCommit(func() { s.auth.drop(a) })
		return affected(res, "set "+column+" of "+a)
	})
}

// DeleteUser removes a user with all its mailboxes and messages, and the
// alias targets that name it.
func (s *Store) DeleteUser(ctx context.Context, address string) error {
	a, err := NormalizeAddress(address)
	if err != nil {
		return err
	}
	return s.w.do(ctx, func(t *wtx) error {
		var id int64
		if err := t.queryRow("SELECT id FROM users WHERE address = ?", a).Scan(&id); err != nil {
			if isNoRows(err) {
				return fmt.Errorf("delete user %s: %w", a, ErrNotFound)
			}
			return fmt.Errorf("delete user %s: %w", a, err)
		}
		rows, err := t.query("SELECT id FROM mailboxes WHERE user_id = ?", id)
		if err != nil {
			return fmt.Errorf("delete user %s: %w", a, err)
		}
		var boxes []int64
		for rows.Next() {
			var mb int64
			if err := rows.Scan(&mb); err != nil {
				rows.Close()
				return fmt.Errorf("delete user %s: %w", a, err)
			}
			boxes = append(boxes, mb)
		}
		rows.Close()
		if _, err := t.exec("DELETE FROM users WHERE id = ?", id); err != nil {
			return fmt.Errorf("delete user %s: %w", a, err)
		}
		if _, err := t.exec("DELETE FROM aliases WHERE target = ?", a); err != nil {
			return fmt.Errorf("delete user %s: %w", a, err)
		}
		for _, mb := range boxes {
			t.notify(Change{MailboxID: mb, Kind: ChangeMailboxGone})
		}
		t.afterCommit(func() { s.auth.drop(a) })
		return nil
	})
}

const userColumns = "id, address, disabled, quota_bytes, admin, created"

func scanUser(sc interface{ Scan(...any) error }) (User, error) {
	var u User
	var created int64
	if err := sc.Scan(&u.ID, &u.Address, &u.Disabled, &u.QuotaBytes, &u.Admin, &created); err != nil {
		return User{}, err
	}
	u.Created = time.Unix(created, 0).UTC()
	return u, nil
}

// UserByAddress finds a user.
func (s *Store) UserByAddress(ctx context.Context, address string) (User, error) {
	a, err := NormalizeAddress(address)
	if err != nil {
		return User{}, err
	}
	u, err := scanUser(s.readRow(ctx, "SELECT "+userColumns+" FROM users WHERE address = ?", a))
	if isNoRows(err) {
		return User{}, fmt.Errorf("user %s: %w", a, ErrNotFound)
	}
	if err != nil {
		return User{}, fmt.Errorf("user %s: %w", a, err)
	}
	return u, nil
}

// Users lists all users by address.
func (s *Store) Users(ctx context.Context) ([]User, error) {
	rows, err := s.read(ctx, "SELECT "+userColumns+" FROM users ORDER BY address")
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	defer rows.Close()
	var out []User
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, fmt.Errorf("list users: %w", err)
		}
		out = append(out, u)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	return out, nil
}

// Usage returns the bytes stored in a user's mailboxes and its quota
// (0: none).
func (s *Store) Usage(ctx context.Context, userID int64) (used, quota int64, err error) {
	err = s.readRow(ctx, "SELECT used_bytes, quota_bytes FROM users WHERE id = ?", userID).Scan(&used, &quota)
	if isNoRows(err) {
		return 0, 0, fmt.Errorf("usage of user %d: %w", userID, ErrNotFound)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("usage of user %d: %w", userID, err)
	}
	return used, quota, nil
}

// AddAlias makes alias (in a local domain) deliver to the targets: local
// users, other aliases or remote addresses. Targets are added to an
// existing alias.
func (s *Store) AddAlias(ctx context.Context, alias string, targets ...string) error {
	a, err := NormalizeAddress(alias)
	if err != nil {
		return err
	}
	if len(targets) == 0 {
		return fmt.Errorf("add alias %s: no target", a)
	}
	norm := make([]string, len(targets))
	for i, t := range targets {
		if norm[i], err = NormalizeAddress(t); err != nil {
			return fmt.Errorf("add alias %s: %w", a, err)
		}
		if norm[i] == a {
			return fmt.Errorf("add alias %s: %w: it names itself", a, ErrInvalidAddress)
		}
	}
	given := targets
	return s.w.do(ctx, func(t *wtx) error {
		var local, user int
		if err := t.queryRow("SELECT (SELECT count(*) FROM domains WHERE name = ?), (SELECT count(*) FROM users WHERE address = ?)",
			domainOf(a), a).Scan(&local, &user); err != nil {
			return fmt.Errorf("add alias %s: %w", a, err)
		}
		if local == 0 {
			return fmt.Errorf("add alias %s: %w: %s", a, ErrNotLocal, domainOf(a))
		}
		if user > 0 {
			return fmt.Errorf("add alias %s: %w as a user", a, ErrExists)
		}
		for i, target := range norm {
			var targetLocal, known int
			if err := t.queryRow(`SELECT (SELECT count(*) FROM domains WHERE name = ?),
				(SELECT count(*) FROM users WHERE address = ?) + (SELECT count(*) FROM aliases WHERE address = ?)`,
				domainOf(target), target, target).Scan(&targetLocal, &known); err != nil {
				return fmt.Errorf("add alias %s: %w", a, err)
			}
			if targetLocal > 0 && known == 0 {
				return fmt.Errorf("add alias %s: target %s: %w", a, target, ErrNoSuchUser)
			}
			if targetLocal == 0 {
				target = remoteForm(given[i], target)
			}
			if _, err := t.exec("INSERT INTO aliases (address, target) VALUES (?, ?) ON CONFLICT DO NOTHING", a, target); err != nil {
				return fmt.Errorf("add alias %s: %w", a, err)
			}
		}
		return nil
	})
}

// DeleteAlias removes the given targets of an alias, or the whole alias
// when none are given.
func (s *Store) DeleteAlias(ctx context.Context, alias string, targets ...string) error {
	a, err := NormalizeAddress(alias)
	if err != nil {
		return err
	}
	return s.w.do(ctx, func(t *wtx) error {
		if len(targets) == 0 {
			res, err := t.exec("DELETE FROM aliases WHERE address = ?", a)
			if err != nil {
				return fmt.Errorf("delete alias %s: %w", a, err)
			}
			return affected(res, "delete alias "+a)
		}
		for _, target := range targets {
			tn, err := NormalizeAddress(target)
			if err != nil {
				return fmt.Errorf("delete alias %s: %w", a, err)
			}
			// Remote targets keep the case of their local part.
			res, err := t.exec("DELETE FROM aliases WHERE address = ? AND lower(target) = ?", a, tn)
			if err != nil {
				return fmt.Errorf("delete alias %s: %w", a, err)
			}
			if err := affected(res, "delete alias "+a+" target "+tn); err != nil {
				return err
			}
		}
		return nil
	})
}

// Aliases lists all aliases with their targets, in order.
func (s *Store) Aliases(ctx context.Context) ([]Alias, error) {
	rows, err := s.read(ctx, "SELECT address, target FROM aliases ORDER BY address, target")
	if err != nil {
		return nil, fmt.Errorf("list aliases: %w", err)
	}
	defer rows.Close()
	var out []Alias
	for rows.Next() {
		var a, t string
		if err := rows.Scan(&a, &t); err != nil {
			return nil, fmt.Errorf("list aliases: %w", err)
		}
		if len(out) == 0 || out[len(out)-1].Address != a {
			out = append(out, Alias{Address: a})
		}
		out[len(out)-1].Targets = append(out[len(out)-1].Targets, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list aliases: %w", err)
	}
	return out, nil
}

// Resolution is where mail for one recipient address goes.
type Resolution struct {
	Users  []User   // local users, each once
	Remote []string // remote addresses reached through aliases
	// UsedBytes is, for each of Users in the same order, the bytes the
	// user had in use (what Usage reports) when resolved: a quota check
	// at RCPT needs no second read.
	UsedBytes []int64
}

// Resolve expands a recipient address: a local user, or an alias
// (recursively, to maxAliasDepth). A remote address resolves to itself in
// Remote. ErrNoSuchUser means the domain is local but nobody has the
// address.
func (s *Store) Resolve(ctx context.Context, address string) (Resolution, error) {
	if _, err := NormalizeAddress(address); err != nil {
		return Resolution{}, err
	}
	var res Resolution
	seen := map[string]bool{}
	if err := s.resolve(ctx, address, 0, seen, &res); err != nil {
		return Resolution{}, err
	}
	return res, nil
}

// remoteForm spells a remote address for the queue: the domain lower-cased,
// the local part as given, since only the remote server may say whether
// its case matters (RFC 5321 2.4).
func remoteForm(address, normalized string) string {
	a := strings.TrimSpace(address)
	return a[:strings.LastIndexByte(a, '@')+1] + domainOf(normalized)
}

func (s *Store) resolve(ctx context.Context, given string, depth int, seen map[string]bool, res *Resolution) error {
	a, err := NormalizeAddress(given)
	if err != nil {
		return err
	}
	if seen[a] {
		return nil
	}
	seen[a] = true
	// One query answers the common case: is the domain local, and is
	// there such a user.
	var local int
	var id, quota, used, created sql.NullInt64
	var addr sql.NullString
	var disabled sql.NullBool
	err = s.readRow(ctx, `SELECT (SELECT count(*) FROM domains WHERE name = ?), u.id, u.address, u.disabled, u.quota_bytes, u.used_bytes, u.created
		FROM (SELECT 1) AS one LEFT JOIN users u ON u.address = ?`, domainOf(a), a).Scan(&local, &id, &addr, &disabled, &quota, &used, &created)
	if err != nil {
		return fmt.Errorf("resolve %s: %w", a, err)
	}
	if local == 0 {
		res.Remote = append(res.Remote, remoteForm(given, a))
		return nil
	}
	if id.Valid {
		if disabled.Bool {
			return fmt.Errorf("resolve %s: %w (disabled)", a, ErrNoSuchUser)
		}
		res.Users = append(res.Users, User{ID: id.Int64, Address: addr.String, QuotaBytes: quota.Int64, Created: time.Unix(created.Int64, 0).UTC()})
		res.UsedBytes = append(res.UsedBytes, used.Int64)
		return nil
	}
	rows, err := s.read(ctx, "SELECT target FROM aliases WHERE address = ? ORDER BY target", a)
	if err != nil {
		return fmt.Errorf("resolve %s: %w", a, err)
	}
	var targets []string
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			rows.Close()
			return fmt.Errorf("resolve %s: %w", a, err)
		}
		targets = append(targets, t)
	}
	rows.Close()
	if len(targets) == 0 {
		return fmt.Errorf("resolve %s: %w", a, ErrNoSuchUser)
	}
	if depth >= maxAliasDepth {
		return fmt.Errorf("resolve %s: alias chain deeper than %d: %w", a, maxAliasDepth, ErrNoSuchUser)
	}
	for _, t := range targets {
		if err := s.resolve(ctx, t, depth+1, seen, res); err != nil {
			return err
		}
	}
	return nil
}

// Password hashing: argon2id in PHC string form.

// PasswordCost selects argon2id parameters.
type PasswordCost int

const (
	// DefaultPasswordCost follows the OWASP recommendation for argon2id
	// (19 MiB, 2 passes, 1 lane).
	DefaultPasswordCost PasswordCost = iota
	// FastPasswordHash is for tests only: the same code path, tiny cost.
	FastPasswordHash
)

func (c PasswordCost) params() (memKiB, passes uint32) {
	if c == FastPasswordHash {
		return 64, 1
	}
	return 19 * 1024, 2
}

const (
	saltLen = 16
	keyLen  = 32
)

func hashPassword(password string, cost PasswordCost) string {
	m, t := cost.params()
	salt := randomBytes(saltLen)
	key := argon2.IDKey([]byte(password), salt, t, m, 1, keyLen)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=1$%s$%s", argon2.Version, m, t, enc.EncodeToString(salt), enc.EncodeToString(key))
}

// checkPassword verifies password against a PHC argon2id string in
// constant time. A malformed hash never matches.
func checkPassword(hash, password string) bool {
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false
	}
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || p == 0 || t == 0 || m > 1<<22 || t > 64 {
		return false
	}
	enc := base64.RawStdEncoding
	salt, err1 := enc.DecodeString(parts[4])
	want, err2 := enc.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 {
		return false
	}
	got := argon2.IDKey([]byte(password), salt, t, m, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1
}

// authCache remembers successful logins for authCacheTTL as a keyed hash
// of address, stored password hash and password: a password changed by
// another process no longer matches, and nothing stored reveals the
// password.
type authCache struct {
	key     []byte
	mu      sync.Mutex
	entries map[string]authEntry
	dummy   map[PasswordCost]string
}

type authEntry struct {
	mac     []byte
	expires time.Time
}

// maxAuthCache bounds the cache; when full it is emptied.
const maxAuthCache = 100000

func newAuthCache() *authCache {
	return &authCache{key: randomBytes(32), entries: make(map[string]authEntry), dummy: make(map[PasswordCost]string)}
}

func (c *authCache) mac(address, hash, password string) []byte {
	h := hmac.New(sha256.New, c.key)
	h.Write([]byte(address))
	h.Write([]byte{0})
	h.Write([]byte(hash))
	h.Write([]byte{0})
	h.Write([]byte(password))
	return h.Sum(nil)
}

func (c *authCache) hit(address string, mac []byte, now time.Time) bool {
	c.mu.Lock()
	e, ok := c.entries[address]
	c.mu.Unlock()
	return ok && now.Before(e.expires) && hmac.Equal(e.mac, mac)
}

func (c *authCache) put(address string, mac []byte, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= maxAuthCache {
		c.entries = make(map[string]authEntry)
	}
	c.entries[address] = authEntry{mac: mac, expires: now.Add(authCacheTTL)}
}

func (c *authCache) drop(address string) {
	c.mu.Lock()
	delete(c.entries, address)
	c.mu.Unlock()
}

// dummyHash is a hash of the same cost as real ones, checked for unknown
// users so that they take as long as a wrong password.
func (c *authCache) dummyHash(cost PasswordCost) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	h, ok := c.dummy[cost]
	if !ok {
		h = hashPassword(string(randomBytes(16)), cost)
		c.dummy[cost] = h
	}
	return h
}

// Authenticate checks a login. Unknown, disabled and wrong-password logins
// all fail with ErrAuthFailed after the same work.
func (s *Store) Authenticate(ctx context.Context, address, password string) (User, error) {
	a, aerr := NormalizeAddress(address)
	var u User
	var hash string
	found := false
	if aerr == nil {
		row := s.readRow(ctx, "SELECT "+userColumns+", password_hash FROM users WHERE address = ?", a)
		var created int64
		err := row.Scan(&u.ID, &u.Address, &u.Disabled, &u.QuotaBytes, &u.Admin, &created, &hash)
		switch {
		case err == nil:
			found = true
			u.Created = time.Unix(created, 0).UTC()
		case !isNoRows(err):
			return User{}, fmt.Errorf("authenticate %s: %w", a, err)
		}
	}
	now := s.now()
	if found {
		mac := s.auth.mac(a, hash, password)
		if s.auth.hit(a, mac, now) && !u.Disabled {
			return u, nil
		}
		if checkPassword(hash, password) && !u.Disabled {
			s.auth.put(a, mac, now)
			return u, nil
		}
		return User{}, fmt.Errorf("authenticate %q: %w", address, ErrAuthFailed)
	}
	checkPassword(s.auth.dummyHash(s.cost), password)
	return User{}, fmt.Errorf("authenticate %q: %w", address, ErrAuthFailed)
}
