package realtime

import (
	"encoding/json"
	"testing"
	"time"
)

func TestJSONArrayFlattensReplayBatches(t *testing.T) {
	frames := []Frame{
		{Data: []byte(`{"id":"e-1"}`)},
		{Data: []byte(`[{"id":"e-2"},{"id":"e-3"}]`)},
		{Data: []byte(`{"type":"reset","room":"r"}`), Control: true},
	}
	out := JSONArray(len(frames), func(i int) []byte { return frames[i].Data })
	var msgs []map[string]any
	if err := json.Unmarshal(out, &msgs); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	if len(msgs) != 4 || msgs[1]["id"] != "e-2" || msgs[3]["type"] != "reset" {
		t.Fatalf("batch = %s", out)
	}
}

func TestCapturedAt(t *testing.T) {
	at, ok := CapturedAt([]byte(`{"id":"e-1","room":"r","table":"t","op":"INSERT","at":"2026-11-25T23:07:29.239395Z","data":{"at":"x"}}`))
	if !ok || !at.Equal(time.Date(2026, 11, 25, 23, 7, 29, 239395000, time.UTC)) {
		t.Fatalf("CapturedAt = %v, %v", at, ok)
	}
	if _, ok := CapturedAt([]byte(`{"id":"e-1"}`)); ok {
		t.Fatal("found an at that is not there")
	}
}
