package edge

import (
	"encoding/json"
	"testing"

	"github.com/rowcast/rowcast/realtime"
)

func TestBatchFlattensReplayArrays(t *testing.T) {
	out := batch([]realtime.Frame{
		{Data: []byte(`{"id":"e-1"}`)},
		{Data: []byte(`[{"id":"e-2"},{"id":"e-3"}]`)},
		{Data: []byte(`{"type":"reset","room":"r"}`), Control: true},
	})
	var msgs []map[string]any
	if err := json.Unmarshal(out, &msgs); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	if len(msgs) != 4 || msgs[1]["id"] != "e-2" || msgs[3]["type"] != "reset" {
		t.Fatalf("batch = %s", out)
	}
}
