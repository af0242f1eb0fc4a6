package realtime

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
)

// nopTransport accepts every frame and drops it: the benchmarks measure the
// hub, not a socket.
type nopTransport struct{ frames atomic.Int64 }

func (t *nopTransport) Send(Frame) bool   { t.frames.Add(1); return true }
func (t *nopTransport) Close(CloseReason) {}
func (t *nopTransport) sent() int64       { return t.frames.Load() }

// benchEvent is a 1 KiB chat_message event as the publisher encodes it.
func benchEvent(room Room, id ID) []byte {
	row := `{"id": 1, "body": "` + strings.Repeat("x", 900) + `", "room": "` + string(room) + `", "author": "bench"}`
	return fmt.Appendf(nil, `{"id":"%s","room":"%s","table":"public.chat_message","op":"INSERT","at":"2026-11-25T23:07:29.239395Z","data":%s}`, id, room, row)
}

// BenchmarkHubFanout hands one message of a room to its local subscribers,
// as the bus does for each event from Redis. The event's bytes are shared by
// every subscriber (encoded once); ns/delivery is the hub's cost per client.
func BenchmarkHubFanout(b *testing.B) {
	for _, subs := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("subs=%d", subs), func(b *testing.B) {
			ctx := context.Background()
			h, _ := newTestHub()
			ts := make([]*nopTransport, subs)
			for i := range ts {
				ts[i] = &nopTransport{}
				if err := h.NewClient(ts[i], 10).Join(ctx, "room", ID{}, nil); err != nil {
					b.Fatal(err)
				}
			}
			data := benchEvent("room", ID{Epoch: "e1", Offset: 1})
			b.ReportAllocs()
			var off uint64
			for b.Loop() {
				off++
				h.HandleMessage(ctx, Message{Room: "room", ID: ID{Epoch: "e1", Offset: off}, Data: data})
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(off)/float64(subs), "ns/delivery")
			if got := ts[0].sent(); got < int64(off) {
				b.Fatalf("subscriber 0 got %d frames, want >= %d", got, off)
			}
		})
	}
}

// BenchmarkHubFanoutParallel fans out in 10 rooms of 100 subscribers from
// several goroutines at once: the hub's locks under contention (one bus
// reader calls HandleMessage today; this shows the headroom of sharding it).
func BenchmarkHubFanoutParallel(b *testing.B) {
	ctx := context.Background()
	h, _ := newTestHub()
	const rooms, perRoom = 10, 100
	for r := range rooms {
		room := Room(fmt.Sprintf("r%d", r))
		for range perRoom {
			if err := h.NewClient(&nopTransport{}, 10).Join(ctx, room, ID{}, nil); err != nil {
				b.Fatal(err)
			}
		}
	}
	data := benchEvent("r0", ID{Epoch: "e1", Offset: 1})
	var next atomic.Uint64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		// Each goroutine owns one room so offsets stay consecutive.
		r := next.Add(1) - 1
		room := Room(fmt.Sprintf("r%d", r%rooms))
		epoch := fmt.Sprint("e", r)
		var off uint64
		for pb.Next() {
			off++
			h.HandleMessage(ctx, Message{Room: room, ID: ID{Epoch: epoch, Offset: off}, Data: data})
		}
	})
}

// BenchmarkCursorString formats a 10-room cursor: an SSE stream does it for
// every event it writes (its "id:" line).
func BenchmarkCursorString(b *testing.B) {
	c := Cursor{}
	for i := range 10 {
		c[Room(fmt.Sprintf("room-%d", i))] = ID{Epoch: "3f9a1c02de", Offset: uint64(1000 + i)}
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = c.String()
	}
}

// BenchmarkCursorStringOneRoom is the common case: a stream of one room.
func BenchmarkCursorStringOneRoom(b *testing.B) {
	c := Cursor{"lobby": {Epoch: "3f9a1c02de", Offset: 123456}}
	b.ReportAllocs()
	for b.Loop() {
		_ = c.String()
	}
}

// BenchmarkParseID parses an event id, as a resume request or the bus does.
func BenchmarkParseID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseID("3f9a1c02de-123456"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseCursor parses a 10-room Last-Event-ID.
func BenchmarkParseCursor(b *testing.B) {
	c := Cursor{}
	for i := range 10 {
		c[Room(fmt.Sprintf("room-%d", i))] = ID{Epoch: "3f9a1c02de", Offset: uint64(1000 + i)}
	}
	s := c.String()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseCursor(s); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseMessage reads the room and id of a 1 KiB event, as the Redis
// bus does once per event per process.
func BenchmarkParseMessage(b *testing.B) {
	data := benchEvent("lobby", ID{Epoch: "3f9a1c02de", Offset: 123456})
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseMessage("lobby", data); err != nil {
			b.Fatal(err)
		}
	}
}
