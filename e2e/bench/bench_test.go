package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestSmoke runs S1 scaled down over both transports against the real
// system and checks that every committed row reached every client of its
// room exactly once. It prints the figures and asserts nothing about time.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	progressW = tWriter{t}
	raiseFileLimit(1 << 16)
	s, err := startStack(ctx, t, stackConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range []transport{ws, sse} {
		spec := loadSpec{name: "smoke", tr: tr, clients: 20, rooms: 5, rates: []float64{50}, dur: 3 * time.Second,
			rowSize: 1024, connectRate: 200, workers: 4, drain: 10 * time.Second}
		rows, err := s.runLoad(ctx, spec, func(loadRow) {})
		if err != nil {
			t.Fatalf("%s: %v", tr, err)
		}
		r := rows[0]
		t.Logf("\n| %s |\n| %s |", strings.Join(loadHeader, " | "), strings.Join(r.cells(), " | "))
		if r.ins.committed == 0 || r.expected == 0 {
			t.Fatalf("%s: nothing committed (%d) or expected (%d): %s", tr, r.ins.committed, r.expected, r.note)
		}
		if r.missing != 0 || r.dups != 0 || r.unexpected != 0 || r.ended != 0 || r.connectFailed != 0 || r.distinct != r.expected {
			t.Errorf("%s: expected %d, distinct %d, missing %d, duplicates %d, uncommitted %d, closed %d, connect failures %d: %s",
				tr, r.expected, r.distinct, r.missing, r.dups, r.unexpected, r.ended, r.connectFailed, r.note)
		}
		if r.reorder != 0 || r.foreign != 0 {
			t.Errorf("%s: %d event ids not rising within their room, %d unparsed", tr, r.reorder, r.foreign)
		}
	}
}

// tWriter sends progress lines to the test log.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
