package realtime

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"time"

	"github.com/rowcast/rowcast/internal/retry"
)

// maxHeld bounds the live messages held for one room while it catches up.
const maxHeld = 1024

// maxCatchUpReads bounds the history reads of all rooms at once. After a
// Redis restart every room catches up together: unbounded, their reads
// would take every pooled connection, and the bus's probe, joins and
// replays would queue behind them all.
const maxCatchUpReads = 8

// subStripes is the number of locks that serialise joining and leaving rooms
// (and so the bus subscriptions they cause); rooms hash onto them.
const subStripes = 64

// Hub is one edge process's room index: it subscribes the Bus to a room
// while the room has local clients, and hands each message of the room to
// those clients, the same bytes to all. All methods may be called
// concurrently; the Hub implements Handler for the Bus. A room that must
// catch up from history does so in a goroutine of its own, which ends with
// the context given to HandleMessage or HandleResubscribed, or when the
// room is dropped.
type Hub struct {
	bus  Bus
	log  *slog.Logger
	seed maphash.Seed

	subMu [subStripes]sync.Mutex // per-room-name: bus Subscribe/Unsubscribe order

	linger time.Duration // how long an empty room stays subscribed

	mu    sync.RWMutex
	rooms map[Room]*hubRoom

	catchUps sync.WaitGroup // running catch-up goroutines (tests wait on it)
	maxHeld  int            // live messages held per room while it catches up
	retry    retry.Policy   // between failed history reads of a catch-up
	reads    chan struct{}  // a slot per catch-up history read in flight

	originCache originCache // what the bus says of its database, for snapshot positions
}

// HubOption configures a Hub.
type HubOption func(*Hub)

// Linger sets how long a room without local clients stays subscribed to the
// bus (default 5 s; 0 unsubscribes at once).
func Linger(d time.Duration) HubOption { return func(h *Hub) { h.linger = d } }

type hubRoom struct {
	live    bool                 // bus subscribed; guarded by the room's subMu stripe
	members map[*Client]struct{} // guarded by Hub.mu

	lastMu    sync.Mutex
	last      ID     // last id fanned out (or the head at subscribe time)
	lostEpoch string // epoch whose history was found lost; set while last is zero after a loss

	// Catch-up state, guarded by lastMu. While catching, the room's
	// goroutine delivers (join may still raise last on a room's first
	// subscribe); live messages wait in held, except the very next one
	// after last while nothing is held.
	catching bool
	again    bool      // read history once more before catching ends (resubscribed, or held overflowed)
	held     []Message // live messages that arrived while catching, in arrival order
	stop     context.CancelFunc
	reaped   bool // dropped from the hub: deliver nothing, start nothing
}

// NewHub returns a Hub that subscribes rooms on bus. Run the bus with the hub
// as its handler: go bus.Run(ctx, hub).
func NewHub(bus Bus, log *slog.Logger, opts ...HubOption) *Hub {
	h := &Hub{bus: bus, log: log, seed: maphash.MakeSeed(), rooms: map[Room]*hubRoom{}, linger: 5 * time.Second,
		maxHeld: maxHeld, retry: retry.Policy{Min: 100 * time.Millisecond, Max: 5 * time.Second, Log: log},
		reads: make(chan struct{}, maxCatchUpReads)}
	for _, o := range opts {
		o(h)
	}
	return h
}

// Bus returns the hub's bus.
func (h *Hub) Bus() Bus { return h.bus }

// Rooms returns how many rooms the hub is subscribed to (rooms with local
// clients, and empty ones still lingering).
func (h *Hub) Rooms() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.rooms)
}

func (h *Hub) stripe(r Room) *sync.Mutex {
	return &h.subMu[maphash.String(h.seed, string(r))%subStripes]
}

// join adds c to room r, subscribing the bus first if c is the room's first
// local member. It returns once live delivery is in place, with the room's
// newest id known to the hub: every later message reaches c.
func (h *Hub) join(ctx context.Context, r Room, c *Client) (ID, error) {
	mu := h.stripe(r)
	mu.Lock()
	defer mu.Unlock()

	h.mu.Lock()
	e := h.rooms[r]
	if e == nil {
		e = &hubRoom{members: map[*Client]struct{}{}}
		h.rooms[r] = e
	}
	h.mu.Unlock()

	if !e.live {
		head, err := h.bus.Subscribe(ctx, r)
		if err != nil {
			h.mu.Lock()
			drop := len(e.members) == 0
			if drop {
				delete(h.rooms, r)
			}
			h.mu.Unlock()
			if drop {
				e.dropped() // a message may have started a catch-up meanwhile
			}
			return ID{}, err
		}
		e.live = true
		e.lastMu.Lock()
		if isNew, _ := e.last.Follows(head); isNew && !head.IsZero() {
			e.last = head
		}
		e.lastMu.Unlock()
	}
	h.mu.Lock()
	e.members[c] = struct{}{}
	h.mu.Unlock()
	e.lastMu.Lock()
	defer e.lastMu.Unlock()
	return e.last, nil
}

// leave removes c from room r. When r has no local member left, the bus
// subscription lingers a moment before it is dropped, so a page reload or a
// reconnect does not cost an unsubscribe and a subscribe.
func (h *Hub) leave(ctx context.Context, r Room, c *Client) {
	mu := h.stripe(r)
	mu.Lock()
	defer mu.Unlock()

	h.mu.Lock()
	e := h.rooms[r]
	if e == nil {
		h.mu.Unlock()
		return
	}
	delete(e.members, c)
	empty := len(e.members) == 0
	h.mu.Unlock()
	if !empty {
		return
	}
	if h.linger > 0 {
		time.AfterFunc(h.linger, func() { h.reap(context.WithoutCancel(ctx), r, e) })
		return
	}
	h.reapLocked(ctx, r, e)
}

// reap drops room r's entry and bus subscription if it is still empty.
func (h *Hub) reap(ctx context.Context, r Room, e *hubRoom) {
	mu := h.stripe(r)
	mu.Lock()
	defer mu.Unlock()
	h.reapLocked(ctx, r, e)
}

// reapLocked is reap with the room's stripe lock held.
func (h *Hub) reapLocked(ctx context.Context, r Room, e *hubRoom) {
	h.mu.Lock()
	if h.rooms[r] != e || len(e.members) > 0 {
		h.mu.Unlock()
		return
	}
	delete(h.rooms, r)
	h.mu.Unlock()
	e.dropped()
	if e.live {
		e.live = false
		if err := h.bus.Unsubscribe(ctx, r); err != nil {
			h.log.Warn("unsubscribe room", "room", r, "err", err)
		}
	}
}

// dropped marks e as no longer in the hub and ends its catch-up.
func (e *hubRoom) dropped() {
	e.lastMu.Lock()
	defer e.lastMu.Unlock()
	e.reaped, e.held = true, nil
	if e.stop != nil {
		e.stop() // its goroutine sees reaped and ends
	}
}

// HandleMessage fans m out to the room's local clients. A gap after the last
// message of the room (the bus missed some) is filled from history first, in
// the room's own goroutine: HandleMessage never waits for the network, so a
// slow history read delays only its room. While a room catches up, its live
// messages are held (bounded) and delivered after the history, without
// duplicates; only one that directly follows the room's last message (after
// a resubscribe, nothing was missed before it) is delivered at once.
// A message of a new epoch means Redis lost the room's history: clients are
// told to reset by their own epoch check, and what the new epoch already
// holds before m is filled in, so nothing published since is skipped.
//
// The catch-up goroutine ends when ctx ends (the bus passes one that ends at
// shutdown) or when the room is dropped.
func (h *Hub) HandleMessage(ctx context.Context, m Message) {
	h.mu.RLock()
	e := h.rooms[m.Room]
	h.mu.RUnlock()
	if e == nil {
		return
	}
	e.lastMu.Lock()
	defer e.lastMu.Unlock()
	if e.reaped {
		return
	}
	h.handleLocked(ctx, e, m)
}

// HandleBatch is HandleMessage for consecutive messages of one room that
// were published together (an in-process bus hands them over at once):
// they go out in as few frames as possible, so a burst does not fill the
// clients' queues one event per frame.
func (h *Hub) HandleBatch(ctx context.Context, msgs []Message) {
	if len(msgs) == 0 {
		return
	}
	h.mu.RLock()
	e := h.rooms[msgs[0].Room]
	h.mu.RUnlock()
	if e == nil {
		return
	}
	e.lastMu.Lock()
	defer e.lastMu.Unlock()
	if e.reaped {
		return
	}
	var batch []Message
	for i, m := range msgs {
		if e.catching {
			// A gap started a catch-up: the rest waits like any live
			// message.
			h.fanoutBatch(e, batch)
			for _, rest := range msgs[i:] {
				h.handleLocked(ctx, e, rest)
			}
			return
		}
		if h.deliverLocked(e, m, false, &batch) {
			// m does not follow: what did goes out, then history fills in.
			h.fanoutBatch(e, batch)
			batch = nil
			e.held = append(e.held, m)
			h.startCatchUpLocked(ctx, m.Room, e)
		}
	}
	h.fanoutBatch(e, batch)
}

// handleLocked is HandleMessage with e.lastMu held.
func (h *Hub) handleLocked(ctx context.Context, e *hubRoom, m Message) {
	if e.catching {
		if len(e.held) == 0 && e.lostEpoch == "" && !e.last.IsZero() {
			if isNew, gap := e.last.Follows(m.ID); isNew && !gap {
				// The next one after what was delivered: no history can
				// come before it (a resubscribe's catch-up), so it is not
				// held. The read dedupes it.
				h.fanout(e, m)
				return
			}
		}
		h.holdLocked(e, m)
		return
	}
	if h.deliverLocked(e, m, false, nil) {
		e.held = append(e.held, m)
		h.startCatchUpLocked(ctx, m.Room, e)
	}
}

// HandleResubscribed catches room up after its live delivery was
// interrupted, in the room's own goroutine like a gap (see HandleMessage).
func (h *Hub) HandleResubscribed(ctx context.Context, r Room) {
	h.mu.RLock()
	e := h.rooms[r]
	h.mu.RUnlock()
	if e == nil {
		return
	}
	e.lastMu.Lock()
	defer e.lastMu.Unlock()
	switch {
	case e.reaped:
	case e.catching:
		// The running catch-up may have read history before the
		// interruption: read it once more before it ends.
		e.again = true
	case !e.last.IsZero():
		h.startCatchUpLocked(ctx, r, e)
	}
}

// deliverLocked fans m out unless it is a duplicate. It reports true, and
// leaves m undelivered, when history must be read first: m does not follow
// the room's last message. With force, a gap within the epoch is accepted
// (the history read that should have filled it is done). e.lastMu is held.
//
// With batch set, a message to fan out is appended to it (and recorded as
// the room's last) for the caller to fan out with what else it collects.
func (h *Hub) deliverLocked(e *hubRoom, m Message, force bool, batch *[]Message) (needHistory bool) {
	if e.lostEpoch != "" {
		// History was found lost; clients were told to reset. A message of
		// the same epoch is the new starting point; one of a new epoch means
		// Redis started the room afresh: fill that epoch from its start.
		if m.ID.Epoch != e.lostEpoch {
			e.last = ID{Epoch: m.ID.Epoch}
		}
		e.lostEpoch = ""
	}
	isNew, gap := e.last.Follows(m.ID)
	if !isNew {
		return false
	}
	if gap && !(force && e.last.Epoch == m.ID.Epoch) {
		if e.last.Epoch != m.ID.Epoch {
			e.last = ID{Epoch: m.ID.Epoch} // offset 0: fill from the epoch's start
		}
		return true
	}
	if batch != nil {
		*batch = append(*batch, m)
		e.last = m.ID
		return false
	}
	h.fanout(e, m)
	return false
}

// holdLocked keeps a live message that arrived while its room catches up.
// When the held list is full the message is dropped and history is read
// once more instead: it holds the dropped ones. e.lastMu is held.
func (h *Hub) holdLocked(e *hubRoom, m Message) {
	if len(e.held) >= h.maxHeld {
		e.again = true
		return
	}
	e.held = append(e.held, m)
}

// startCatchUpLocked starts room r's catch-up goroutine. e.lastMu is held
// and no catch-up runs.
func (h *Hub) startCatchUpLocked(ctx context.Context, r Room, e *hubRoom) {
	ctx, cancel := context.WithCancel(ctx)
	e.catching, e.stop = true, cancel
	h.catchUps.Go(func() {
		defer cancel()
		h.catchUp(ctx, r, e)
	})
}

// catchUp reads room r's history after its last message and delivers it,
// then the live messages held meanwhile, again and again until nothing is
// held and no further read is due. Failed reads are retried with backoff
// until ctx ends (shutdown, or the room was dropped).
func (h *Hub) catchUp(ctx context.Context, r Room, e *hubRoom) {
	p := h.retry
	p.What = fmt.Sprintf("catch-up of room %q", r)
	for {
		var (
			missed []Message
			lost   error
			read   int // messages held before the read started
		)
		err := retry.Do(ctx, p, func(ctx context.Context) error {
			e.lastMu.Lock()
			after := e.last
			read, e.again = len(e.held), false
			e.lastMu.Unlock()
			if after.IsZero() {
				return nil // nothing delivered yet: nothing to fill
			}
			select {
			case h.reads <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
			ms, err := h.bus.History(ctx, r, after)
			<-h.reads
			switch {
			case errors.Is(err, ErrHistoryLost), errors.Is(err, ErrBadID):
				// A malformed entry cannot be delivered by retrying
				// either: clients learn that history was lost.
				lost = err
			case err != nil:
				return err
			}
			missed = ms
			return nil
		})

		e.lastMu.Lock()
		if err != nil || e.reaped {
			// ctx ended: the room was dropped or the hub stops. What was
			// held is in history; a later gap or resubscribe reads it.
			e.catching, e.held, e.stop = false, nil, nil
			e.lastMu.Unlock()
			return
		}
		if lost != nil {
			h.log.Warn("room history lost; clients told to reset", "room", r, "err", lost)
			h.forEach(e, func(c *Client) { c.reset(r) })
			// Continue from what arrives next instead of failing again
			// (see deliverLocked for a new epoch).
			e.lostEpoch, e.last = e.last.Epoch, ID{}
		}
		// What the read found and what was held go out together, a few
		// frames per client instead of one per event: after an outage this
		// is a burst, and one frame per event would overflow the queues of
		// clients that keep up perfectly well.
		var batch []Message
		for _, m := range missed {
			if isNew, _ := e.last.Follows(m.ID); isNew {
				batch = append(batch, m)
				e.last = m.ID
			}
		}
		// Deliver what was held, up to one that needs history again. One
		// held before the read is covered by it (the bus writes history
		// before it publishes): a gap left there is accepted, as nothing
		// more can fill it.
		i := 0
		for ; i < len(e.held); i++ {
			if h.deliverLocked(e, e.held[i], lost == nil && i < read, &batch) {
				break
			}
		}
		h.fanoutBatch(e, batch)
		e.held = append(e.held[:0], e.held[i:]...)
		if len(e.held) == 0 && !e.again {
			e.catching, e.held, e.stop = false, nil, nil
			e.lastMu.Unlock()
			return
		}
		e.lastMu.Unlock()
	}
}

// fanout gives m to every member and records it as the room's last.
func (h *Hub) fanout(e *hubRoom, m Message) {
	h.forEach(e, func(c *Client) { c.deliver(m) })
	e.last = m.ID
}

// fanoutBatch gives msgs, consecutive events of one room already recorded
// as the room's last, to every member in as few frames as possible.
func (h *Hub) fanoutBatch(e *hubRoom, msgs []Message) {
	switch len(msgs) {
	case 0:
	case 1: // a plain event, not an array of one
		h.forEach(e, func(c *Client) { c.deliver(msgs[0]) })
	default:
		h.forEach(e, func(c *Client) { c.deliverBatch(msgs) })
	}
}

func (h *Hub) forEach(e *hubRoom, f func(*Client)) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for c := range e.members {
		f(c)
	}
}
