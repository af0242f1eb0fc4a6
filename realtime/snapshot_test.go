package realtime

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func token(src string, taken time.Time, xmin, xmax uint64, xip ...uint64) string {
	ids := make([]string, len(xip))
	for i, x := range xip {
		ids[i] = fmt.Sprint(x)
	}
	return fmt.Sprintf("p1.%s.%d.%d.%d.%s", src, taken.UnixMilli(), xmin, xmax, strings.Join(ids, "_"))
}

func TestParseSnapshot(t *testing.T) {
	s, err := ParseSnapshot(token("ab12", time.UnixMilli(1700000000123), 100, 110, 104, 101))
	if err != nil {
		t.Fatal(err)
	}
	if s.Source != "ab12" || s.Xmin != 100 || s.Xmax != 110 || fmt.Sprint(s.Xip) != "[101 104]" ||
		s.Taken.UnixMilli() != 1700000000123 {
		t.Fatalf("parsed %+v", s)
	}
	for tx, saw := range map[uint64]bool{99: true, 100: true, 101: false, 103: true, 104: false, 109: true, 110: false, 500: false} {
		if got := s.Saw(tx); got != saw {
			t.Errorf("Saw(%d) = %v, want %v", tx, got, saw)
		}
	}
	if !s.Covers(99) || s.Covers(100) {
		t.Errorf("Covers: a floor below xmin is covered, one at xmin is not")
	}
	for _, bad := range []string{
		"", "garbage", "p1.ab12.1.100", "p2.ab12.1.100.110.", "p1.XYZ.1.100.110.", "p1.ab12.x.100.110.",
		"p1.ab12.1.110.100.", "p1.ab12.1.100.110.99", "p1.ab12.1.100.110.110", "p1.ab12.1.100.110.1_x",
		"p1.ab12.1.100.110." + strings.Repeat("1", maxPositionLen),
	} {
		if _, err := ParseSnapshot(bad); !errors.Is(err, ErrBadPosition) {
			t.Errorf("ParseSnapshot(%.40q) = %v, want ErrBadPosition", bad, err)
		}
	}
	if !IsPosition("p1.ab.1.2.3.") || IsPosition("e1-5") || IsPosition("a@e1-5") || IsPosition("") {
		t.Error("IsPosition tells tokens from ids and cursors")
	}
}

// snapshotAt joins a recording client to room a from tok.
func snapshotJoin(t *testing.T, h *Hub, tok string) (*recorder, error) {
	t.Helper()
	s, err := ParseSnapshot(tok)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	return rec, h.NewClient(rec, 10).Join(context.Background(), "a", ID{}, s)
}

func TestJoinFromSnapshotDeliversWhatItDidNotSee(t *testing.T) {
	h, bus := newTestHub()
	bus.origin = Origin{Source: "ab12", HistoryTTL: time.Hour}
	// Snapshot: 8 still running, 10 and later not started.
	tok := token("ab12", time.Now(), 8, 10, 8)
	for _, tx := range []uint64{5, 9, 8, 7, 12} { // commit order: 8 committed late
		bus.publishTx("a", tx, false)
	}
	rec, err := snapshotJoin(t, h, tok)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	bus.publishTx("a", 6, true)  // committed before the snapshot, published after the join
	bus.publishTx("a", 11, true) // after it
	if got := strings.Join(rec.events(), " "); got != "e1-3 e1-5 e1-7" {
		t.Errorf("got %q, want e1-3 (tx 8) e1-5 (tx 12) e1-7 (tx 11)", got)
	}
	// The position moved past what it skipped: a repeat of the last is no
	// duplicate, and the subscribed frame names the head.
	h.HandleMessage(ctx, bus.history["a"][6])
	if n := len(rec.events()); n != 3 {
		t.Errorf("a repeat was delivered: %d events", n)
	}
	if c := rec.controls(); len(c) != 1 || !strings.Contains(c[0], `"subscribed"`) || !strings.Contains(c[0], `"last":"e1-5"`) {
		t.Errorf("controls %v, want one subscribed at e1-5", c)
	}
}

func TestJoinFromSnapshotResetsWhenHistoryDoesNotReachBack(t *testing.T) {
	h, bus := newTestHub()
	bus.publishTx("a", 20, false)
	bus.floor = map[Room]uint64{"a": 15} // trimmed events went up to tx 15
	rec, err := snapshotJoin(t, h, token("ab12", time.Now(), 15, 18))
	if err != nil {
		t.Fatal(err)
	}
	if c := rec.controls(); len(c) != 2 || !strings.Contains(c[0], `"code":"position_too_old"`) || !strings.Contains(c[0], `"reset"`) {
		t.Fatalf("controls %v, want a reset (position_too_old), then subscribed", c)
	}
	if ev := rec.events(); len(ev) != 0 {
		t.Errorf("replayed %v after a reset", ev)
	}
	bus.publishTx("a", 30, true)
	if got := strings.Join(rec.events(), " "); got != "e1-2" {
		t.Errorf("live after the reset: got %q, want e1-2", got)
	}

	// A floor below xmin reaches back.
	rec, err = snapshotJoin(t, h, token("ab12", time.Now(), 16, 18))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(rec.events(), " "); got != "e1-1 e1-2" {
		t.Errorf("got %q, want both events (tx 20 and 30 are after the snapshot)", got)
	}
}

func TestJoinFromSnapshotRefusesForeignAndOldTokens(t *testing.T) {
	h, bus := newTestHub()
	bus.origin = Origin{Source: "ab12", HistoryTTL: time.Hour}
	if _, err := snapshotJoin(t, h, token("cd34", time.Now(), 1, 1)); !errors.Is(err, ErrForeignPosition) {
		t.Errorf("another database's token: %v, want ErrForeignPosition", err)
	}
	if _, err := snapshotJoin(t, h, token("ab12", time.Now().Add(-2*time.Hour), 1, 1)); !errors.Is(err, ErrPositionTooOld) {
		t.Errorf("a token older than the history TTL: %v, want ErrPositionTooOld", err)
	}
	// The listener moved to another database: the hub reads the origin
	// again rather than trust what it cached.
	bus.mu.Lock()
	bus.origin.Source = "cd34"
	bus.mu.Unlock()
	h.originCache.mu.Lock()
	h.originCache.read = time.Now().Add(-2 * originRecheck)
	h.originCache.mu.Unlock()
	if _, err := snapshotJoin(t, h, token("cd34", time.Now(), 1, 1)); err != nil {
		t.Errorf("token of the new database: %v", err)
	}
}

func TestParseMessageReadsTx(t *testing.T) {
	m, err := ParseMessage("a", []byte(`{"id":"e1-4","tx":90210,"room":"a","data":{"tx":1}}`))
	if err != nil || m.Tx != 90210 || m.ID.Offset != 4 {
		t.Fatalf("got %+v, %v", m, err)
	}
	m, err = ParseMessage("a", []byte(`{"id":"e1-4","room":"a","data":{"tx":1}}`))
	if err != nil || m.Tx != 0 {
		t.Fatalf("an event without tx: got %+v, %v", m, err)
	}
}
