// Package membus is the in-process bus: when one process runs both the
// listener's relay and the edge (no REDIS_URL), events go from one to the
// other in memory, with the ids, history, resume, reset and slow-client
// rules of the Redis bus. It keeps nothing across a restart: every room
// starts a new epoch then, and clients resuming from before get reset.
package membus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/rowcast/rowcast/realtime"
)

// dedupeKeep is how many recent outbox ids per room are remembered to make a
// repeated publish a no-op (the relay repeats a batch whose recording
// failed).
const dedupeKeep = 10000

// sweepEvery is how often rooms idle past the history TTL are dropped.
const sweepEvery = time.Minute

// Options bounds each room's history.
type Options struct {
	HistoryLen int           // newest events kept per room (default 1000)
	HistoryTTL time.Duration // a room idle this long, with no subscriber, is forgotten (default 24 h)
}

// Bus is both sides of the in-process bus: a realtime.Publisher for the
// relay and a realtime.Bus for the hub. It is safe for concurrent use.
type Bus struct {
	opts Options

	mu        sync.Mutex
	rooms     map[realtime.Room]*room
	h         realtime.Handler
	hctx      context.Context // Run's: ends at shutdown, passed to the handler
	source    string
	lastSweep time.Time
}

type room struct {
	epoch   string
	seq     uint64
	history []entry // oldest first, at most HistoryLen
	maxTx   uint64  // highest transaction among the room's events, or the recorded floor
	ids     map[int64]bool
	order   []int64 // ids in publish order, to forget the oldest
	subs    int
	used    time.Time
}

// entry is one held event and the highest transaction before it.
type entry struct {
	msg   realtime.Message
	floor uint64
}

var (
	_ realtime.Bus       = (*Bus)(nil)
	_ realtime.Publisher = (*Bus)(nil)
)

// New returns an empty bus.
func New(opts Options) *Bus {
	if opts.HistoryLen <= 0 {
		opts.HistoryLen = 1000
	}
	if opts.HistoryTTL <= 0 {
		opts.HistoryTTL = 24 * time.Hour
	}
	return &Bus{opts: opts, rooms: map[realtime.Room]*room{}, lastSweep: time.Now()}
}

// Connected reports true: memory is never down.
func (b *Bus) Connected() bool { return true }

// Run hands published events to h until ctx ends.
func (b *Bus) Run(ctx context.Context, h realtime.Handler) error {
	b.mu.Lock()
	b.h, b.hctx = h, ctx
	b.mu.Unlock()
	<-ctx.Done()
	b.mu.Lock()
	b.h = nil
	b.mu.Unlock()
	return nil
}

// roomLocked returns r's room, creating it with a new epoch.
func (b *Bus) roomLocked(r realtime.Room) (*room, error) {
	if rm := b.rooms[r]; rm != nil {
		return rm, nil
	}
	epoch, err := newEpoch()
	if err != nil {
		return nil, err
	}
	rm := &room{epoch: epoch, ids: map[int64]bool{}, used: time.Now()}
	b.rooms[r] = rm
	return rm, nil
}

// Subscribe implements realtime.Bus. A room without an epoch gets one, so a
// client's position names it before the first event.
func (b *Bus) Subscribe(ctx context.Context, r realtime.Room) (realtime.ID, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	rm, err := b.roomLocked(r)
	if err != nil {
		return realtime.ID{}, err
	}
	rm.subs++
	rm.used = time.Now()
	return realtime.ID{Epoch: rm.epoch, Offset: rm.seq}, nil
}

// Unsubscribe implements realtime.Bus.
func (b *Bus) Unsubscribe(ctx context.Context, r realtime.Room) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if rm := b.rooms[r]; rm != nil && rm.subs > 0 {
		rm.subs--
	}
	return nil
}

// History implements realtime.Bus.
func (b *Bus) History(ctx context.Context, r realtime.Room, after realtime.ID) ([]realtime.Message, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	rm := b.rooms[r]
	if rm == nil || rm.epoch != after.Epoch || after.Offset > rm.seq {
		return nil, fmt.Errorf("history %q after %s: %w", r, after, realtime.ErrHistoryLost)
	}
	if after.Offset == rm.seq {
		return nil, nil
	}
	first := rm.seq - uint64(len(rm.history)) + 1
	if after.Offset+1 < first {
		return nil, fmt.Errorf("history %q after %s: oldest held is %d: %w", r, after, first, realtime.ErrHistoryLost)
	}
	held := rm.history[after.Offset+1-first:]
	out := make([]realtime.Message, len(held))
	for i, e := range held {
		out[i] = e.msg
	}
	return out, nil
}

// Retained implements realtime.Bus.
func (b *Bus) Retained(ctx context.Context, r realtime.Room) ([]realtime.Message, uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	rm := b.rooms[r]
	if rm == nil {
		return nil, 0, nil
	}
	if len(rm.history) == 0 {
		return nil, rm.maxTx, nil
	}
	out := make([]realtime.Message, len(rm.history))
	for i, e := range rm.history {
		out[i] = e.msg
	}
	return out, rm.history[0].floor, nil
}

// Origin implements realtime.Bus.
func (b *Bus) Origin(ctx context.Context) (realtime.Origin, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return realtime.Origin{Source: b.source, HistoryTTL: b.opts.HistoryTTL}, nil
}

// Announce implements realtime.Publisher.
func (b *Bus) Announce(ctx context.Context, source string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.source = source
	return nil
}

// Sharded implements realtime.Publisher: memory fails as a whole or not at
// all.
func (b *Bus) Sharded() bool { return false }

// Publish implements realtime.Publisher. A room Postgres recorded in another
// epoch than the bus holds (the process restarted, or the room expired)
// starts a new epoch above the recorded floor; live events reach the
// handler in order, before Publish returns.
func (b *Bus) Publish(ctx context.Context, events []realtime.Event, recorded map[realtime.Room]realtime.Position) (realtime.PublishResult, error) {
	res := realtime.PublishResult{Positions: map[realtime.Room]realtime.Position{}}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	b.sweepLocked(now)
	live := map[realtime.Room][]realtime.Message{}
	defer func() { b.deliverLocked(live) }() // before the unlock: events reach the hub in order
	for _, ev := range events {
		rm := b.rooms[ev.Room]
		if _, seen := res.Positions[ev.Room]; !seen {
			rec := recorded[ev.Room]
			if why := mismatch(rm, rec); why != "" {
				if res.Restarted == nil {
					res.Restarted = map[realtime.Room]string{}
				}
				res.Restarted[ev.Room] = why
				// A room that only has subscribers (no id given yet in its
				// epoch) keeps it: they were told to reset when they
				// joined from an older epoch.
				if rm != nil && rm.seq > 0 {
					if err := rm.restart(); err != nil {
						return realtime.PublishResult{}, err
					}
				}
			}
			var err error
			if rm, err = b.roomLocked(ev.Room); err != nil {
				return realtime.PublishResult{}, err
			}
			rm.maxTx = max(rm.maxTx, rec.MaxTx)
		}
		if !rm.ids[ev.OutboxID] {
			msg := b.appendLocked(ev, rm)
			res.New++
			if rm.subs > 0 {
				live[ev.Room] = append(live[ev.Room], msg)
			}
		}
		rm.used = now
		res.Positions[ev.Room] = realtime.Position{Last: realtime.ID{Epoch: rm.epoch, Offset: rm.seq}, MaxTx: rm.maxTx}
	}
	return res, nil
}

// restart starts a new epoch of the room, keeping its subscribers and its
// floor (the events of the old epoch are below it).
func (rm *room) restart() error {
	epoch, err := newEpoch()
	if err != nil {
		return err
	}
	rm.epoch, rm.seq, rm.history = epoch, 0, nil
	rm.ids, rm.order = map[int64]bool{}, nil
	return nil
}

// mismatch says why the bus's room is not where Postgres recorded it, or "".
func mismatch(rm *room, rec realtime.Position) string {
	switch {
	case rec.Last.Epoch == "":
		return ""
	case rm == nil:
		return "epoch missing (the process restarted or the room expired)"
	case rm.epoch != rec.Last.Epoch:
		return "epoch changed"
	case rm.seq < rec.Last.Offset:
		return "offset went back"
	}
	return ""
}

// batchHandler is a Handler that takes consecutive messages of one room at
// once (realtime.Hub): a burst then goes out in few frames.
type batchHandler interface {
	HandleBatch(ctx context.Context, msgs []realtime.Message)
}

// deliverLocked hands each room's new messages to the handler.
func (b *Bus) deliverLocked(live map[realtime.Room][]realtime.Message) {
	if b.h == nil {
		return
	}
	bh, batches := b.h.(batchHandler)
	for _, msgs := range live {
		if batches {
			bh.HandleBatch(b.hctx, msgs)
			continue
		}
		for _, m := range msgs {
			b.h.HandleMessage(b.hctx, m)
		}
	}
}

// appendLocked gives ev the room's next id and holds it.
func (b *Bus) appendLocked(ev realtime.Event, rm *room) realtime.Message {
	rm.seq++
	id := realtime.ID{Epoch: rm.epoch, Offset: rm.seq}
	data := make([]byte, 0, len(ev.Tail)+len(id.Epoch)+32)
	data = append(data, `{"id":"`...)
	data = id.AppendTo(data)
	data = append(data, '"')
	data = append(data, ev.Tail...)
	msg, err := realtime.ParseMessage(ev.Room, data)
	if err != nil { // the id was just written: cannot fail
		panic(fmt.Sprintf("membus: parse own event: %v", err))
	}
	rm.history = append(rm.history, entry{msg: msg, floor: rm.maxTx})
	rm.maxTx = max(rm.maxTx, msg.Tx)
	if over := len(rm.history) - b.opts.HistoryLen; over > 0 {
		rm.history = append(rm.history[:0:0], rm.history[over:]...)
	}
	rm.ids[ev.OutboxID] = true
	rm.order = append(rm.order, ev.OutboxID)
	if over := len(rm.order) - dedupeKeep; over > 0 {
		for _, old := range rm.order[:over] {
			delete(rm.ids, old)
		}
		rm.order = append(rm.order[:0:0], rm.order[over:]...)
	}
	return msg
}

// sweepLocked forgets rooms idle past the history TTL, at most once per
// sweepEvery.
func (b *Bus) sweepLocked(now time.Time) {
	if now.Sub(b.lastSweep) < sweepEvery {
		return
	}
	b.lastSweep = now
	for r, rm := range b.rooms {
		if rm.subs == 0 && now.Sub(rm.used) > b.opts.HistoryTTL {
			delete(b.rooms, r)
		}
	}
}

func newEpoch() (string, error) {
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("new epoch: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}
