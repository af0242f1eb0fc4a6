package redisbus

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rowcast/rowcast/realtime"
)

// BenchmarkPublish publishes a batch of 500 events of 1 KiB, as the relay
// does per outbox batch (ROWCAST_BATCH_SIZE), over one or ten rooms: one
// round trip with one script call per room. batch=1 is the unloaded case,
// one row per wake-up, where the script's fixed cost shows. Every iteration
// uses new outbox ids, so nothing is skipped as a repeat.
func BenchmarkPublish(b *testing.B) {
	c := startRedis(b)
	ctx := context.Background()
	runs := 0
	for _, shape := range []struct{ size, rooms int }{{1, 1}, {500, 1}, {500, 10}} {
		n, rooms := shape.size, shape.rooms
		b.Run(fmt.Sprintf("batch=%d/rooms=%d", n, rooms), func(b *testing.B) {
			runs++ // fresh rooms per run: -count=N reuses this Redis
			p := NewPublisher(c, HistoryLimits{Len: 1000, TTL: time.Hour})
			batch := make([]Event, n)
			size := 0
			for i := range batch {
				room := realtime.Room(fmt.Sprintf("bench-%d-%d-%d", runs, rooms, i%rooms))
				tail := fmt.Appendf(nil, `,"room":"%s","table":"public.chat_message","op":"INSERT","at":"2026-11-25T23:07:29.239395Z","data":{"id": %d, "body": "%s"}}`,
					room, i, strings.Repeat("x", 900))
				batch[i] = Event{Room: room, Tail: tail}
				size += len(tail)
			}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			var next int64
			rec := ledger{}
			for b.Loop() {
				for i := range batch {
					next++
					batch[i].OutboxID = next
				}
				res, err := rec.publish(ctx, p, batch)
				if err != nil {
					b.Fatal(err)
				}
				if res.New != len(batch) || len(res.Restarted) > 0 {
					b.Fatalf("published %d new events (new epochs %v), want %d", res.New, res.Restarted, len(batch))
				}
			}
			b.ReportMetric(float64(next)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
