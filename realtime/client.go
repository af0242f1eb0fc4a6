package realtime

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// CloseReason says why the server ends a connection. The edge maps it to a
// WebSocket close code or an SSE control message; its zero value is invalid.
type CloseReason int

// Close reasons.
const (
	_             CloseReason = iota
	CloseNormal               // the client asked, or the request ended
	CloseSlow                 // the client's queue overflowed: reconnect and resume
	CloseDraining             // the server is shutting down: reconnect elsewhere
	CloseExpired              // the client's credentials expired
)

// String names the reason as it appears on the wire.
func (r CloseReason) String() string {
	switch r {
	case CloseNormal:
		return "normal"
	case CloseSlow:
		return "slow_consumer"
	case CloseDraining:
		return "draining"
	case CloseExpired:
		return "token_expired"
	}
	return fmt.Sprintf("CloseReason(%d)", int(r))
}

// Frame is one message to write to a connection. ID is the event's id, or
// for a control frame the room's current position (zero when none).
type Frame struct {
	Room    Room
	ID      ID
	Data    []byte
	Control bool
}

// Transport writes frames to one connection. Send must not block: it queues
// the frame and reports false when the connection's bounded queue is full.
// Close ends the connection with a reason; it may be called more than once
// and from any goroutine.
type Transport interface {
	Send(f Frame) bool
	Close(reason CloseReason)
}

// Errors returned by Client.Join.
var (
	ErrTooManyRooms = errors.New("too many rooms on this connection")
	ErrClosed       = errors.New("connection closed")
)

// Client is one connection's membership in rooms. It remembers the last id
// delivered per room so that history replayed on join and live messages meet
// with no gap and no duplicate. All methods may be called concurrently; call
// Close when the connection ends.
type Client struct {
	hub      *Hub
	t        Transport
	maxRooms int

	mu     sync.Mutex
	rooms  map[Room]*clientRoom
	closed bool
	// cut is set when a frame could not be queued: nothing more is sent,
	// so the client's position stays the last frame it really got and it
	// resumes from there (a later frame getting through would skip the
	// dropped one for good).
	cut bool
}

type clientRoom struct {
	last      ID
	replaying bool      // history is being fetched: hold live messages
	pending   []Message // live messages held while replaying
	// at, when the room was joined from a snapshot position, drops every
	// event the snapshot saw (the page shows it already), live ones too: a
	// change committed before the snapshot may be published after the join.
	at *Snapshot
}

// maxPending bounds the live messages held for one room during a replay.
const maxPending = 4096

// NewClient returns a Client that writes through t and may join at most
// maxRooms rooms at once.
func (h *Hub) NewClient(t Transport, maxRooms int) *Client {
	return &Client{hub: h, t: t, maxRooms: maxRooms, rooms: map[Room]*clientRoom{}}
}

// Join subscribes the client to room r. When since is not zero, the events
// after it are replayed from history first, or the client is sent a reset
// when they are gone. With a snapshot position (at), the events the
// snapshot did not see are delivered (after since, or from the history's
// start), none it saw; a history that no longer reaches back to the
// snapshot gets a reset (code position_too_old). Join confirms with a
// "subscribed" control frame only after live delivery is in place. Joining
// a room twice only confirms again.
func (c *Client) Join(ctx context.Context, r Room, since ID, at *Snapshot) error {
	if at != nil {
		if err := c.hub.checkSnapshot(ctx, at); err != nil {
			return fmt.Errorf("join %q: %w", r, err)
		}
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	if st, ok := c.rooms[r]; ok {
		if !st.replaying {
			c.sendControlLocked(Control{Type: TypeSubscribed, Room: r, Last: st.last.String()}, r, st.last)
		}
		c.mu.Unlock()
		return nil
	}
	if len(c.rooms) >= c.maxRooms {
		c.mu.Unlock()
		return fmt.Errorf("%w (limit %d)", ErrTooManyRooms, c.maxRooms)
	}
	st := &clientRoom{last: since, replaying: true, at: at}
	c.rooms[r] = st
	c.mu.Unlock()

	head, err := c.hub.join(ctx, r, c)
	if err != nil {
		c.forget(r, st)
		return fmt.Errorf("join %q: %w", r, err)
	}
	var (
		replay []Message
		lost   string // why the client must reset, if it must
	)
	switch {
	case !since.IsZero():
		replay, err = c.hub.bus.History(ctx, r, since)
		if errors.Is(err, ErrHistoryLost) {
			lost, err = "history_lost", nil
		}
	case at != nil:
		var floor uint64
		replay, floor, err = c.hub.bus.Retained(ctx, r)
		if errors.Is(err, ErrHistoryLost) || err == nil && !at.Covers(floor) {
			replay, lost, err = nil, "position_too_old", nil
		}
	}
	if err != nil {
		c.forget(r, st)
		c.hub.leave(context.WithoutCancel(ctx), r, c)
		return fmt.Errorf("replay %q: %w", r, err)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.rooms[r] != st {
		return ErrClosed
	}
	if lost != "" {
		c.sendControlLocked(Control{Type: TypeReset, Room: r, Code: lost}, r, ID{})
		st.last = ID{}
	}
	st.replaying = false
	c.pushBatchLocked(st, replay)
	c.pushBatchLocked(st, st.pending)
	st.pending = nil
	if isNew, _ := st.last.Follows(head); isNew && (st.last.IsZero() || st.last.Epoch != head.Epoch) {
		// Fresh join (or reset): start at the room's head so the client's
		// cursor covers the room before its first event arrives.
		st.last = head
	}
	c.sendControlLocked(Control{Type: TypeSubscribed, Room: r, Last: st.last.String()}, r, st.last)
	return nil
}

// Leave unsubscribes the client from room r.
func (c *Client) Leave(ctx context.Context, r Room) {
	c.mu.Lock()
	_, ok := c.rooms[r]
	delete(c.rooms, r)
	c.mu.Unlock()
	if ok {
		c.hub.leave(ctx, r, c)
	}
}

// Rooms returns the rooms the client has joined.
func (c *Client) Rooms() []Room {
	c.mu.Lock()
	defer c.mu.Unlock()
	rooms := make([]Room, 0, len(c.rooms))
	for r := range c.rooms {
		rooms = append(rooms, r)
	}
	return rooms
}

// Close leaves every room and closes the transport with reason.
func (c *Client) Close(reason CloseReason) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	rooms := c.rooms
	c.rooms = map[Room]*clientRoom{}
	c.mu.Unlock()
	for r := range rooms {
		c.hub.leave(context.Background(), r, c)
	}
	c.t.Close(reason)
}

// Send writes a control message to the client, outside any room's order.
func (c *Client) Send(ctl Control) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sendControlLocked(ctl, ctl.Room, ID{})
}

func (c *Client) forget(r Room, st *clientRoom) {
	c.mu.Lock()
	if c.rooms[r] == st {
		delete(c.rooms, r)
	}
	c.mu.Unlock()
}

// deliver is called by the hub with one live message of a joined room.
// deliverBatch is deliver for consecutive events of one room, written as
// few frames (see pushBatchLocked).
func (c *Client) deliverBatch(msgs []Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.rooms[msgs[0].Room]
	if st == nil {
		return
	}
	if st.replaying {
		if len(st.pending)+len(msgs) > maxPending {
			go c.Close(CloseSlow)
			return
		}
		st.pending = append(st.pending, msgs...)
		return
	}
	c.pushBatchLocked(st, msgs)
}

func (c *Client) deliver(m Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.rooms[m.Room]
	if st == nil {
		return
	}
	if st.replaying {
		if len(st.pending) >= maxPending {
			go c.Close(CloseSlow)
			return
		}
		st.pending = append(st.pending, m)
		return
	}
	c.pushLocked(st, m)
}

// reset tells the client that room r's history was lost.
func (c *Client) reset(r Room) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.rooms[r]
	if st == nil {
		return
	}
	st.last = ID{}
	c.sendControlLocked(Control{Type: TypeReset, Room: r, Code: "history_lost"}, r, ID{})
}

// pushLocked writes m unless the client has seen it.
func (c *Client) pushLocked(st *clientRoom, m Message) {
	if c.cut || !c.acceptLocked(st, m) {
		return
	}
	if !c.t.Send(Frame{Room: m.Room, ID: m.ID, Data: m.Data}) {
		c.overflowLocked()
	}
}

// acceptLocked reports whether m is new to the client and advances its
// position. A message of another epoch than the client's last means the
// room's history was lost between them: the client is told to reset first.
// A message the client's snapshot saw advances the position unsent.
func (c *Client) acceptLocked(st *clientRoom, m Message) bool {
	isNew, gap := st.last.Follows(m.ID)
	if !isNew {
		return false
	}
	if gap && st.last.Epoch != m.ID.Epoch {
		c.sendControlLocked(Control{Type: TypeReset, Room: m.Room, Code: "history_lost"}, m.Room, ID{})
	}
	st.last = m.ID
	return st.at == nil || m.Tx == 0 || !st.at.Saw(m.Tx)
}

// maxBatch is the most events written as one frame (a JSON array) when
// history is replayed, so a long replay fits the connection's queue.
const maxBatch = 64

// pushBatchLocked writes msgs like pushLocked, several per frame.
func (c *Client) pushBatchLocked(st *clientRoom, msgs []Message) {
	for len(msgs) > 0 && !c.cut {
		n := min(len(msgs), maxBatch)
		chunk := msgs[:n]
		msgs = msgs[n:]
		fresh := chunk[:0:0]
		for _, m := range chunk {
			if c.acceptLocked(st, m) {
				fresh = append(fresh, m)
			}
		}
		if len(fresh) == 0 {
			continue
		}
		data := JSONArray(len(fresh), func(i int) []byte { return fresh[i].Data })
		last := fresh[len(fresh)-1]
		if !c.t.Send(Frame{Room: last.Room, ID: last.ID, Data: data}) {
			c.overflowLocked()
		}
	}
}

func (c *Client) sendControlLocked(ctl Control, r Room, pos ID) {
	if c.closed || c.cut {
		return
	}
	if !c.t.Send(Frame{Room: r, ID: pos, Data: ctl.Encode(), Control: true}) {
		c.overflowLocked()
	}
}

// overflowLocked cuts off a client whose queue is full: nothing more is
// sent, and it is closed in its own goroutine (the caller may be the hub
// fanning out to everyone else).
func (c *Client) overflowLocked() {
	if !c.closed && !c.cut {
		c.cut = true
		go c.Close(CloseSlow)
	}
}
