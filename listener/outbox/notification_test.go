package outbox

import (
	"encoding/json"
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
	// As migration 00007's triggers write them: compact, and a room that
	// needs escapes (the slower decoder reads it).
	for content, room := range map[string]string{
		`{"x":5797390,"r":"lobby","t":"public.chat_message","o":"INSERT","a":1796278139900669,"d":{"id":3,"room":"lobby"}}`: "lobby",
		`{"x":5797390,"r":"t\"3","t":"public.chat_message","o":"INSERT","a":1796278139900669,"d":{"id":3,"room":"t\"3"}}`:   `t"3`,
	} {
		row, ok := ParseMessage([]byte(content), 5)
		if !ok || row.ID != 5 || row.Tx != 5797390 || row.Room != room || row.Op != "INSERT" || string(row.Data[:7]) != `{"id":3` {
			t.Errorf("ParseMessage(%s) = %+v, %v", content, row, ok)
		}
	}
	// The row is read in place, but keeps nothing of the buffer, which the
	// caller may reuse.
	buf := []byte(`{"x":1,"r":"lobby","t":"public.t","o":"INSERT","a":1,"d":{"id":1}}`)
	row, ok = ParseMessage(buf, 7)
	for i := range buf {
		buf[i] = 'z'
	}
	if !ok || row.Room != "lobby" || row.Table != "public.t" || row.Op != "INSERT" || string(row.Data) != `{"id":1}` {
		t.Errorf("after the buffer changed: %+v, %v", row, ok)
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

// The trigger's payloads take the one-pass scan, and wherever the scan
// accepts a payload it agrees with encoding/json; anything unusual goes to
// encoding/json.
func FuzzScanNotification(f *testing.F) {
	for _, p := range []string{
		`{"i" : 42, "x" : 7, "r" : "lobby", "t" : "public.chat_message", "o" : "INSERT", "a" : 1764460800123456, "d" : {"id": 7, "body": "a } \" b"}}`,
		`{"i" : 42, "r" : "lobby", "t" : "public.chat_message", "o" : "INSERT", "a" : 1764460800123456, "d" : {"id": 7}}`,
		`{"i":1,"r":"a","t":"public.t","o":"DELETE","a":1,"d":null}`,
		`{"i" : 42, "r" : "lo\u0062by", "t" : "public.t", "o" : "INSERT", "a" : 1, "d" : {}}`,
		`{"i" : 42, "d" : {}, "r" : "lobby", "t" : "public.t", "o" : "INSERT", "a" : 1}`,
		`{"i" : 42, "i" : 43, "r" : "lobby", "t" : "public.t", "o" : "INSERT", "a" : 1, "d" : {}}`,
		`{"i" : 042, "r" : "lobby", "t" : "public.t", "o" : "INSERT", "a" : 1, "d" : {}}`,
		`{"i" : -1, "r" : "lobby", "t" : "public.t", "o" : "INSERT", "a" : 1, "d" : {}}`,
		`{"i" : 1, "r" : "lobby", "t" : "public.t", "o" : "INSERT", "a" : 1, "d" : {"a": }}`,
		`{"i" : 1, "r" : "lobby", "t" : "public.t", "o" : "INSERT", "a" : 1, "d" : {} } `,
		`{"i": 1`,
		`{}`,
	} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if len(p) == 0 || p[0] != '{' {
			return
		}
		got, ok := scanNotification(p)
		if !ok {
			return
		}
		var want notifiedRow
		if err := json.Unmarshal([]byte(p), &want); err != nil {
			t.Fatalf("scan accepted %q, which encoding/json refuses: %v", p, err)
		}
		if got.ID != want.ID || got.Tx != want.Tx || got.Room != want.Room || got.Table != want.Table || got.Op != want.Op ||
			got.AtUsec != want.AtUsec || string(got.Data) != string(want.Data) {
			t.Fatalf("scan of %q: %+v, encoding/json: %+v", p, got, want)
		}
	})
}

func TestTriggerPayloadsTakeTheScan(t *testing.T) {
	// As json_build_object writes them (migrations 00004 to 00006).
	for _, p := range []string{
		`{"i" : 42, "x" : 7, "r" : "lobby", "t" : "public.chat_message", "o" : "INSERT", "a" : 1764460800123456, "d" : {"id": 7, "body": "hi"}}`,
		`{"i" : 42, "r" : "lobby", "t" : "public.chat_message", "o" : "UPDATE", "a" : 1764460800123456, "d" : {"id": 7}}`,
	} {
		if _, ok := scanNotification(p); !ok {
			t.Errorf("scanNotification(%q) fell back to encoding/json", p)
		}
	}
}
