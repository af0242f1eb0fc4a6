package outbox

import (
	"strings"
	"testing"
)

// BenchmarkParseNotification parses the NOTIFY payload of a row whose JSON
// is 1 KiB, as the relay does for every row that travels in its
// notification.
func BenchmarkParseNotification(b *testing.B) {
	payload := `{"i" : 123456, "x" : 987654, "r" : "lobby", "t" : "public.chat_message", "o" : "INSERT", "a" : 1764460800123456, "d" : ` +
		`{"id": 123456, "body": "` + strings.Repeat("x", 920) + `", "room": "lobby", "author": "bench", "created_at": "2026-11-25T23:07:29.239395+00:00"}}`
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := ParseNotification(payload); !ok {
			b.Fatal("not a row")
		}
	}
}
