package realtime

import (
	"context"
	"errors"
	"time"
)

// ErrHistoryLost is returned by Bus.History when the events after the
// requested id are no longer all held: trimmed, expired, or the epoch
// changed. The caller must tell the client to reset.
var ErrHistoryLost = errors.New("history lost")

// ErrUnavailable is returned when the bus cannot reach its backend in time.
var ErrUnavailable = errors.New("bus unavailable")

// Bus is the distributed engine between the listener and every edge process.
// Implementations deliver each published message of a subscribed room to
// the Handler given to Run, once per process, in room order.
// All methods may be called concurrently.
type Bus interface {
	// Run delivers messages to h until ctx ends. It reconnects on its own.
	Run(ctx context.Context, h Handler) error
	// Subscribe returns once live delivery for room is in place: any
	// message published after it returns reaches the handler. head is the
	// room's newest id read after that point (zero for a room never used).
	Subscribe(ctx context.Context, room Room) (head ID, err error)
	// Unsubscribe stops delivery for room; it does not wait.
	Unsubscribe(ctx context.Context, room Room) error
	// History returns the room's messages after the given id, oldest first,
	// or ErrHistoryLost when some of them are gone.
	History(ctx context.Context, room Room, after ID) ([]Message, error)
	// Retained returns every message the room's history holds, oldest
	// first, and its floor: each event of the room before the first of
	// them (trimmed, expired or lost) was made by a transaction at or below
	// floor. A snapshot that Covers the floor resumes from the messages.
	Retained(ctx context.Context, room Room) (msgs []Message, floor uint64, err error)
	// Origin returns what the bus knows of the database its events come
	// from, to check snapshot positions against.
	Origin(ctx context.Context) (Origin, error)
}

// Origin is the database a bus carries events of, and how long rooms keep
// their history there.
type Origin struct {
	// Source is the database's id in position tokens; "" when no listener
	// announced it yet (tokens are then not checked against it).
	Source string
	// HistoryTTL is how long an idle room keeps its history: a snapshot
	// older than that may predate events that expired with it.
	HistoryTTL time.Duration
}

// Handler receives what a Bus delivers. The Hub implements it. Methods are
// called from the bus's reader goroutines (one per Redis shard, so calls may
// be concurrent) and must not block: a slow call delays every room of that
// shard.
type Handler interface {
	// HandleMessage receives one live message.
	HandleMessage(ctx context.Context, m Message)
	// HandleResubscribed is called when room's live delivery was re-established
	// after an interruption, during which messages may have been missed.
	HandleResubscribed(ctx context.Context, room Room)
}

// Position is where a room's stream stands as the listener records it in
// Postgres, the record that the bus (a cache) is checked against before a
// room's next event is given an id.
type Position struct {
	// Last is the last id the bus accepted for the room (zero: none yet).
	Last ID
	// Run identifies the bus server process that accepted it (for Redis,
	// its run_id); "" when unknown.
	Run string
	// Unsure is set when a publish past Last may have happened without
	// being recorded (a leader died between publishing and recording): the
	// bus must then prove it did not go back in time since.
	Unsure bool
	// MaxTx is the highest transaction id among the room's events so far
	// (or a floor below which changes may have been lost): a history the
	// bus starts afresh begins above it, so a snapshot position from
	// before it is told to reset (see Bus.Retained).
	MaxTx uint64
}
