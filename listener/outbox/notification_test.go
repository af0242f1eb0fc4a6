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

func TestParseMessage(t *testing.T) {
	row, ok := ParseMessage([]byte(`{"r": "lobby", "t": "public.chat_message", "o": "UPDATE", "a": 1764460800123456, "d": {"id": 7}}`), 99)
	if !ok || row.ID != 99 || row.Room != "lobby" || row.Table != "public.chat_message" || row.Op != "UPDATE" ||
		string(row.Data) != `{"id": 7}` || !row.CapturedAt.Equal(time.UnixMicro(1764460800123456)) {
		t.Fatalf("got %+v, %v", row, ok)
	}
	for _, m := range []string{"", "{", `{"r": "", "t": "public.t", "o": "INSERT", "d": {}}`, `{"r": "a", "t": "public.t", "o": "INSERT"}`, `[1]`} {
		if _, ok := ParseMessage([]byte(m), 1); ok {
			t.Errorf("ParseMessage(%q) took it for a row", m)
		}
	}
}

func TestWALProgressCovers(t *testing.T) {
	p := WALProgress{Commit: 100, LSN: 80}
	for _, c := range []struct {
		commit, lsn int64
		want        bool
	}{
		{90, 95, true},   // an earlier transaction, whatever its messages' positions
		{100, 70, true},  // the same transaction, up to the recorded message
		{100, 80, true},  // the recorded message itself
		{100, 85, false}, // past it in the same transaction
		{120, 60, false}, // a later transaction whose message was written earlier
		{0, 0, true},     // never below zero
	} {
		if got := p.Covers(c.commit, c.lsn); got != c.want {
			t.Errorf("Covers(%d, %d) = %v, want %v", c.commit, c.lsn, got, c.want)
		}
	}
	if (WALProgress{}).Covers(1, 1) {
		t.Error("empty progress covers a message")
	}
}
