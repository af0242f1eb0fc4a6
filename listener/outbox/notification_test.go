package outbox

import (
	"testing"
	"time"
)

func TestParseNotification(t *testing.T) {
	row, ok := ParseNotification(`{"i" : 42, "r" : "lobby", "t" : "public.chat_message", "o" : "INSERT", "a" : 1764460800123456, "d" : {"id": 7, "body": "hi"}}`)
	want := Row{ID: 42, Room: "lobby", Table: "public.chat_message", Op: "INSERT", Data: []byte(`{"id": 7, "body": "hi"}`),
		CapturedAt: time.UnixMicro(1764460800123456)}
	if !ok || row.ID != want.ID || row.Room != want.Room || row.Table != want.Table || row.Op != want.Op ||
		string(row.Data) != string(want.Data) || !row.CapturedAt.Equal(want.CapturedAt) {
		t.Fatalf("got %+v, %v; want %+v", row, ok, want)
	}
	// Plain wake-ups and anything that is not a whole row send the listener
	// to the outbox.
	for _, p := range []string{
		"",
		"x",
		`{"i": 1`,
		`{"i": 0, "r": "a", "t": "public.t", "o": "INSERT", "a": 1, "d": {}}`,
		`{"i": 1, "r": "", "t": "public.t", "o": "INSERT", "a": 1, "d": {}}`,
		`{"i": 1, "r": "a", "t": "public.t", "o": "INSERT", "a": 1}`,
		`{"i": "1", "r": "a", "t": "public.t", "o": "INSERT", "a": 1, "d": {}}`,
	} {
		if _, ok := ParseNotification(p); ok {
			t.Errorf("ParseNotification(%q) took it for a row", p)
		}
	}
}
