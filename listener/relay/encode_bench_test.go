package relay

import (
	"strings"
	"testing"
	"time"

	"github.com/rowcast/rowcast/listener/outbox"
)

// BenchmarkEncode encodes one outbox row whose JSON is 1 KiB, as the relay
// does for every row it publishes.
func BenchmarkEncode(b *testing.B) {
	data := []byte(`{"id": 123456, "body": "` + strings.Repeat("x", 920) + `", "room": "lobby", "author": "bench", "created_at": "2026-11-25T23:07:29.239395+00:00"}`)
	row := outbox.Row{ID: 42, Room: "lobby", Table: "public.chat_message", Op: "INSERT", Data: data,
		CapturedAt: time.Date(2026, 11, 25, 23, 7, 29, 239395000, time.UTC)}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := encode(row, 1<<20); err != nil {
			b.Fatal(err)
		}
	}
}
