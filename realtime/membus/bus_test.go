package membus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/rowcast/rowcast/realtime"
)

// handler records what the bus delivers live.
type handler struct {
	mu   sync.Mutex
	msgs []realtime.Message
}

func (h *handler) HandleMessage(ctx context.Context, m realtime.Message) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs = append(h.msgs, m)
}

func (h *handler) HandleResubscribed(context.Context, realtime.Room) {}

func (h *handler) ids() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]string, len(h.msgs))
	for i, m := range h.msgs {
		out[i] = m.ID.String()
	}
	return out
}

func events(r realtime.Room, from int, txs ...uint64) []realtime.Event {
	out := make([]realtime.Event, len(txs))
	for i, tx := range txs {
		out[i] = realtime.Event{OutboxID: int64(from + i), Room: r, Tail: fmt.Appendf(nil, `,"tx":%d,"room":"%s"}`, tx, r)}
	}
	return out
}

// run attaches a recording handler to b, as Run does.
func run(t *testing.T, b *Bus) *handler {
	t.Helper()
	h := &handler{}
	b.mu.Lock()
	b.h, b.hctx = h, t.Context()
	b.mu.Unlock()
	return h
}

func TestPublishSubscribeHistory(t *testing.T) {
	ctx := context.Background()
	b := New(Options{HistoryLen: 3})
	h := run(t, b)
	head, err := b.Subscribe(ctx, "a")
	if err != nil || head.Epoch == "" || head.Offset != 0 {
		t.Fatalf("Subscribe = %v, %v; want a new epoch at offset 0", head, err)
	}
	res, err := b.Publish(ctx, events("a", 1, 10, 20), nil)
	if err != nil || res.New != 2 || res.Positions["a"].Last != (realtime.ID{Epoch: head.Epoch, Offset: 2}) || res.Positions["a"].MaxTx != 20 {
		t.Fatalf("Publish = %+v, %v", res, err)
	}
	// Publishing an outbox id again is a no-op (the relay repeats a batch
	// whose recording failed).
	rec := map[realtime.Room]realtime.Position{"a": res.Positions["a"]}
	if res, err := b.Publish(ctx, events("a", 1, 10, 20), rec); err != nil || res.New != 0 || res.Positions["a"].Last.Offset != 2 {
		t.Fatalf("repeat: %+v, %v", res, err)
	}
	if got := fmt.Sprint(h.ids()); got != fmt.Sprintf("[%s-1 %s-2]", head.Epoch, head.Epoch) {
		t.Errorf("live: %s", got)
	}
	if _, err := b.Publish(ctx, events("a", 3, 30, 40, 50), rec); err != nil {
		t.Fatal(err)
	}
	msgs, err := b.History(ctx, "a", realtime.ID{Epoch: head.Epoch, Offset: 2})
	if err != nil || len(msgs) != 3 || msgs[0].ID.Offset != 3 || msgs[0].Tx != 30 {
		t.Fatalf("History after 2: %v, %v", msgs, err)
	}
	if _, err := b.History(ctx, "a", realtime.ID{Epoch: head.Epoch, Offset: 1}); !errors.Is(err, realtime.ErrHistoryLost) {
		t.Errorf("History after a trimmed id: %v, want ErrHistoryLost", err)
	}
	if _, err := b.History(ctx, "a", realtime.ID{Epoch: "other", Offset: 1}); !errors.Is(err, realtime.ErrHistoryLost) {
		t.Errorf("History of another epoch: %v, want ErrHistoryLost", err)
	}
	msgs, floor, err := b.Retained(ctx, "a")
	if err != nil || len(msgs) != 3 || floor != 20 {
		t.Errorf("Retained: %d messages, floor %d, %v; want 3 and the trimmed events' highest, 20", len(msgs), floor, err)
	}
	if ms, floor, _ := b.Retained(ctx, "never"); ms != nil || floor != 0 {
		t.Errorf("Retained of an unused room: %v, %d", ms, floor)
	}
}

// After a restart the bus holds nothing: a room Postgres recorded starts a
// new epoch above the recorded floor, and its subscribers keep receiving.
func TestRestartStartsNewEpochsAboveTheRecord(t *testing.T) {
	ctx := context.Background()
	b := New(Options{})
	h := run(t, b)
	head, _ := b.Subscribe(ctx, "a")
	rec := map[realtime.Room]realtime.Position{"a": {Last: realtime.ID{Epoch: "before", Offset: 9}, MaxTx: 99}}
	res, err := b.Publish(ctx, events("a", 10, 120), rec)
	if err != nil {
		t.Fatal(err)
	}
	pos := res.Positions["a"]
	// The room had only a subscriber: it keeps the epoch its position names.
	if res.Restarted["a"] == "" || pos.Last.Epoch != head.Epoch || pos.Last.Offset != 1 || pos.MaxTx != 120 {
		t.Fatalf("after a restart: %+v (subscribed at %s)", res, head)
	}
	if _, floor, _ := b.Retained(ctx, "a"); floor != 99 {
		t.Errorf("floor %d, want the recorded 99", floor)
	}
	if ids := h.ids(); len(ids) != 1 || ids[0] != pos.Last.String() {
		t.Errorf("live after the restart: %v", ids)
	}
	// A room with events in its epoch that Postgres recorded elsewhere
	// starts a new one.
	res, err = b.Publish(ctx, events("a", 11, 130), map[realtime.Room]realtime.Position{"a": {Last: realtime.ID{Epoch: "other", Offset: 3}}})
	if err != nil {
		t.Fatal(err)
	}
	if p := res.Positions["a"]; res.Restarted["a"] != "epoch changed" || p.Last.Epoch == head.Epoch || p.Last.Offset != 1 {
		t.Errorf("epoch changed: %+v", res)
	}
	// Origin tells edges the database once the relay announced it.
	if err := b.Announce(ctx, "ab12"); err != nil {
		t.Fatal(err)
	}
	if o, _ := b.Origin(ctx); o.Source != "ab12" || o.HistoryTTL != 24*time.Hour {
		t.Errorf("Origin = %+v", o)
	}
}
