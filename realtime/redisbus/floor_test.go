package redisbus

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rowcast/rowcast/realtime"
)

// txEvents returns n events of room made by the transactions txs, in order.
func txEvents(room realtime.Room, from int, txs ...uint64) []Event {
	out := make([]Event, len(txs))
	for i, tx := range txs {
		out[i] = Event{OutboxID: int64(from + i), Room: room, Tail: fmt.Appendf(nil, `,"tx":%d,"room":"%s"}`, tx, room)}
	}
	return out
}

// Retained's floor is the highest transaction before the oldest event held:
// it rises as history is trimmed, survives a new epoch (Redis lost the
// room), and starts at what Postgres recorded.
func TestRetainedFloor(t *testing.T) {
	ctx := context.Background()
	c := startRedis(t)
	p := NewPublisher(c, HistoryLimits{Len: 3, TTL: time.Hour})
	b := New(c, Options{HistoryTTL: time.Hour})
	retained := func(r realtime.Room) ([]realtime.Message, uint64) {
		t.Helper()
		msgs, floor, err := b.Retained(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		return msgs, floor
	}

	if msgs, floor := retained("never"); len(msgs) != 0 || floor != 0 {
		t.Errorf("a room never used: %d messages, floor %d", len(msgs), floor)
	}

	rec := ledger{}
	if _, err := rec.publish(ctx, p, txEvents("a", 1, 10, 30, 20)); err != nil {
		t.Fatal(err)
	}
	msgs, floor := retained("a")
	if len(msgs) != 3 || floor != 0 || msgs[1].Tx != 30 {
		t.Fatalf("untrimmed: %d messages (tx of the second %d), floor %d; want 3, 30, 0", len(msgs), msgs[1].Tx, floor)
	}
	if rec["a"].MaxTx != 30 {
		t.Errorf("recorded MaxTx %d, want 30", rec["a"].MaxTx)
	}
	// Enough more that MAXLEN ~ trims whole nodes of the stream.
	var txs []uint64
	for i := range 300 {
		txs = append(txs, uint64(100+i))
	}
	if _, err := rec.publish(ctx, p, txEvents("a", 4, txs...)); err != nil {
		t.Fatal(err)
	}
	msgs, floor = retained("a")
	first := msgs[0]
	if first.ID.Offset <= 1 || first.ID.Offset+uint64(len(msgs)-1) != 303 {
		t.Fatalf("trimmed history holds %d messages from offset %d", len(msgs), first.ID.Offset)
	}
	if want := first.Tx - 1; floor != want {
		t.Errorf("floor %d, want %d (the transaction before the oldest held, %d)", floor, want, first.Tx)
	}

	// Redis loses the room: the new epoch's history starts above the
	// floor Postgres recorded, so an older snapshot cannot pass for
	// complete.
	if err := c.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	res, err := rec.publish(ctx, p, txEvents("a", 304, 50))
	if err != nil {
		t.Fatal(err)
	}
	if res.Restarted["a"] == "" {
		t.Fatal("no new epoch after FLUSHALL")
	}
	msgs, floor = retained("a")
	if len(msgs) != 1 || floor != 399 || res.Positions["a"].MaxTx != 399 {
		t.Errorf("after the loss: %d messages, floor %d, MaxTx %d; want 1, 399, 399", len(msgs), floor, res.Positions["a"].MaxTx)
	}
}
