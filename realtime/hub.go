package realtime

import (
	"context"
	"errors"
	"hash/maphash"
	"log/slog"
	"sync"
	"time"
)

// subStripes is the number of locks that serialise joining and leaving rooms
// (and so the bus subscriptions they cause); rooms hash onto them.
const subStripes = 64

// Hub is one edge process's room index: it subscribes the Bus to a room
// while the room has local clients, and hands each message of the room to
// those clients, the same bytes to all. All methods may be called
// concurrently; the Hub implements Handler for the Bus.
type Hub struct {
	bus  Bus
	log  *slog.Logger
	seed maphash.Seed

	subMu [subStripes]sync.Mutex // per-room-name: bus Subscribe/Unsubscribe order

	linger time.Duration // how long an empty room stays subscribed

	mu    sync.RWMutex
	rooms map[Room]*hubRoom
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
}

// NewHub returns a Hub that subscribes rooms on bus. Run the bus with the hub
// as its handler: go bus.Run(ctx, hub).
func NewHub(bus Bus, log *slog.Logger, opts ...HubOption) *Hub {
	h := &Hub{bus: bus, log: log, seed: maphash.MakeSeed(), rooms: map[Room]*hubRoom{}, linger: 5 * time.Second}
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
			if len(e.members) == 0 {
				delete(h.rooms, r)
			}
			h.mu.Unlock()
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
	if e.live {
		e.live = false
		if err := h.bus.Unsubscribe(ctx, r); err != nil {
			h.log.Warn("unsubscribe room", "room", r, "err", err)
		}
	}
}

// HandleMessage fans m out to the room's local clients. A gap after the last
// message of the room (the bus missed some) is filled from history first.
// A message of a new epoch means Redis lost the room's history: clients are
// told to reset by their own epoch check, and what the new epoch already
// holds before m is filled in, so nothing published since is skipped.
func (h *Hub) HandleMessage(ctx context.Context, m Message) {
	h.mu.RLock()
	e := h.rooms[m.Room]
	h.mu.RUnlock()
	if e == nil {
		return
	}
	e.lastMu.Lock()
	defer e.lastMu.Unlock()
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
		return
	}
	if gap {
		if e.last.Epoch != m.ID.Epoch {
			e.last = ID{Epoch: m.ID.Epoch} // offset 0: fill from the epoch's start
		}
		h.catchUpLocked(ctx, m.Room, e)
		if isNew, _ = e.last.Follows(m.ID); !isNew {
			return
		}
	}
	h.fanout(e, m)
}

// HandleResubscribed catches room up after its live delivery was interrupted.
func (h *Hub) HandleResubscribed(ctx context.Context, r Room) {
	h.mu.RLock()
	e := h.rooms[r]
	h.mu.RUnlock()
	if e == nil {
		return
	}
	e.lastMu.Lock()
	defer e.lastMu.Unlock()
	h.catchUpLocked(ctx, r, e)
}

// catchUpLocked delivers the room's history after e.last. e.lastMu is held.
func (h *Hub) catchUpLocked(ctx context.Context, r Room, e *hubRoom) {
	if e.last.IsZero() {
		return
	}
	missed, err := h.bus.History(ctx, r, e.last)
	if errors.Is(err, ErrHistoryLost) {
		h.log.Warn("room history lost; clients told to reset", "room", r, "err", err)
		h.forEach(e, func(c *Client) { c.reset(r) })
		// Continue from what arrives next instead of failing again (see
		// HandleMessage for a new epoch).
		e.lostEpoch, e.last = e.last.Epoch, ID{}
		return
	}
	if err != nil {
		h.log.Warn("room catch-up failed", "room", r, "err", err)
		return
	}
	for _, m := range missed {
		if isNew, _ := e.last.Follows(m.ID); isNew {
			h.fanout(e, m)
		}
	}
}

// fanout gives m to every member and records it as the room's last.
func (h *Hub) fanout(e *hubRoom, m Message) {
	h.forEach(e, func(c *Client) { c.deliver(m) })
	e.last = m.ID
}

func (h *Hub) forEach(e *hubRoom, f func(*Client)) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for c := range e.members {
		f(c)
	}
}
