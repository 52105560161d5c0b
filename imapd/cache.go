package imapd

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mime"
)

const (
	// defaultCacheEntries is how many bodies' IMAP data stay in memory;
	// one is a few kilobytes.
	defaultCacheEntries = 4096
	// bodyMetaKind names Postern's IMAP data in the mailstore's per-body
	// store; the version inside the data says whether it is still good.
	bodyMetaKind = "imap"
	// maxPendingMeta bounds the IMAP data waiting to be stored; past it,
	// data is only kept in memory (and computed again after a restart).
	maxPendingMeta = 1024
	// maxMetaWriters bounds the concurrent writes of IMAP data; they share
	// the mailstore's group commits.
	maxMetaWriters = 32
	// metaWriteTimeout bounds one such write.
	metaWriteTimeout = time.Minute
)

// dataCache keeps each stored body's ENVELOPE, BODYSTRUCTURE and header
// size. Bodies never change, so an entry never goes stale: it is kept in
// memory (least recently used first out) and in the mailstore
// (BodyMeta), and computed only when neither has it.
type dataCache struct {
	store *mailstore.Store
	log   *slog.Logger
	max   int

	mu  sync.Mutex
	ll  *list.List // of *cacheEntry, most recent first
	ids map[int64]*list.Element

	writes chan metaWrite
	quit   chan struct{}
	once   sync.Once // starts the writer
	stop   sync.Once // closes quit, also when Shutdown runs twice at once
	wg     sync.WaitGroup
}

type cacheEntry struct {
	id   int64
	data *mime.IMAPData
}

type metaWrite struct {
	id   int64
	data []byte
}

func newDataCache(store *mailstore.Store, max int, log *slog.Logger) *dataCache {
	return &dataCache{
		store:  store,
		log:    log,
		max:    max,
		ll:     list.New(),
		ids:    make(map[int64]*list.Element),
		writes: make(chan metaWrite, maxPendingMeta),
		quit:   make(chan struct{}),
	}
}

// get returns the IMAP data of a body.
func (c *dataCache) get(ctx context.Context, bodyID int64) (*mime.IMAPData, error) {
	c.mu.Lock()
	if e, ok := c.ids[bodyID]; ok {
		c.ll.MoveToFront(e)
		d := e.Value.(*cacheEntry).data
		c.mu.Unlock()
		return d, nil
	}
	c.mu.Unlock()

	raw, ok, err := c.store.BodyMeta(ctx, bodyID, bodyMetaKind)
	if err != nil {
		return nil, err
	}
	if ok {
		d := new(mime.IMAPData)
		if err := d.UnmarshalBinary(raw); err == nil {
			c.put(bodyID, d)
			return d, nil
		} else if !errors.Is(err, mime.ErrIMAPDataVersion) {
			c.log.Warn("stored IMAP data unreadable, computing it again", "body", bodyID, "err", err)
		}
	}
	body, err := c.store.OpenBody(ctx, bodyID)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	d, err := mime.ParseIMAPData(body)
	if err != nil {
		return nil, fmt.Errorf("parse body %d: %w", bodyID, err)
	}
	c.put(bodyID, d)
	if b, err := d.MarshalBinary(); err == nil {
		c.persist(bodyID, b)
	}
	return d, nil
}

func (c *dataCache) put(id int64, d *mime.IMAPData) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.ids[id]; ok {
		c.ll.MoveToFront(e)
		return
	}
	c.ids[id] = c.ll.PushFront(&cacheEntry{id: id, data: d})
	for c.ll.Len() > c.max {
		last := c.ll.Back()
		c.ll.Remove(last)
		delete(c.ids, last.Value.(*cacheEntry).id)
	}
}

// persist stores IMAP data in the background: a FETCH does not wait for a
// commit. The writer goroutine starts with the first write.
func (c *dataCache) persist(id int64, data []byte) {
	c.once.Do(func() {
		c.wg.Add(1)
		go c.writer()
	})
	select {
	case c.writes <- metaWrite{id, data}:
	case <-c.quit:
	default: // too much pending: memory only
	}
}

func (c *dataCache) writer() {
	defer c.wg.Done()
	for {
		var batch []metaWrite
		select {
		case w := <-c.writes:
			batch = append(batch, w)
		case <-c.quit:
			return
		}
	more:
		for len(batch) < maxMetaWriters {
			select {
			case w := <-c.writes:
				batch = append(batch, w)
			default:
				break more
			}
		}
		var wg sync.WaitGroup
		for _, w := range batch {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), metaWriteTimeout)
				defer cancel()
				if err := c.store.SetBodyMeta(ctx, w.id, bodyMetaKind, w.data); err != nil && !errors.Is(err, mailstore.ErrClosed) {
					c.log.Warn("storing IMAP data failed", "body", w.id, "err", err)
				}
			}()
		}
		wg.Wait()
	}
}

// close stops the background writer; what is still pending is dropped.
func (c *dataCache) close() {
	c.stop.Do(func() { close(c.quit) })
	c.wg.Wait()
}
