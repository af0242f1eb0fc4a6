package realtime

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Catch-up runs off the bus reader: these tests hold a room's history read
// at a gate and check what flows meanwhile, then release it.

// guard is how long a test waits for something that should happen at once
// before it fails instead of hanging; passing runs never wait for it.
const guard = 10 * time.Second

// blockHistory makes room r's History calls wait at a gate the test opens
// (send to release one call, close to release all) and report each call on
// the returned channel.
func blockHistory(b *memBus, r Room) (gate chan struct{}, entered chan Room) {
	b.mu.Lock()
	defer b.mu.Unlock()
	gate, entered = make(chan struct{}), make(chan Room, 100)
	b.gates[r], b.entered = gate, entered
	return gate, entered
}

// publishReturns publishes a live message in r and fails the test if the
// hub does not return at once (it would be waiting on a history read).
func publishReturns(t *testing.T, b *memBus, r Room) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); b.publish(r, true) }()
	select {
	case <-done:
	case <-time.After(guard):
		t.Fatalf("HandleMessage for room %q blocked", r)
	}
}

func waitEntered(t *testing.T, entered chan Room, want Room) {
	t.Helper()
	select {
	case r := <-entered:
		if r != want {
			t.Fatalf("history read for room %q, want %q", r, want)
		}
	case <-time.After(guard):
		t.Fatalf("no history read for room %q", want)
	}
}

// resubscribeBlocked tells the hub that room r was resubscribed and returns
// once the catch-up's history read waits at the returned gate.
func resubscribeBlocked(t *testing.T, h *Hub, b *memBus, r Room) (gate chan struct{}) {
	t.Helper()
	gate, entered := blockHistory(b, r)
	h.HandleResubscribed(context.Background(), r)
	waitEntered(t, entered, r)
	return gate
}

// settleWithin is settle that fails instead of hanging.
func settleWithin(t *testing.T, h *Hub) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); settle(h) }()
	select {
	case <-done:
	case <-time.After(guard):
		t.Fatal("catch-up goroutines still running")
	}
}

func TestCatchUpDoesNotDelayOtherRooms(t *testing.T) {
	h, bus := newTestHub()
	ra, rb := joinRecorder(t, h, "a"), joinRecorder(t, h, "b")
	bus.publish("a", true)
	gate, entered := blockHistory(bus, "a")
	bus.publish("a", false) // missed: the next one shows a gap
	publishReturns(t, bus, "a")
	waitEntered(t, entered, "a")

	// Room a's history read is blocked: room b flows at once, and so does
	// the handling of room a's own live messages (held).
	for range 3 {
		publishReturns(t, bus, "b")
	}
	publishReturns(t, bus, "a")
	if got := strings.Join(rb.events(), " "); got != "e1-1 e1-2 e1-3" {
		t.Fatalf("room b got %q while room a caught up", got)
	}
	if got := strings.Join(ra.events(), " "); got != "e1-1" {
		t.Fatalf("room a got %q before its history", got)
	}
	close(gate)
	settleWithin(t, h)
	if got := strings.Join(ra.events(), " "); got != "e1-1 e1-2 e1-3 e1-4" {
		t.Fatalf("room a got %q", got)
	}
}

// Live messages of a room that arrive while it catches up are delivered
// after the history, once each, in order, whether or not the history read
// already holds them.
func TestCatchUpDeliversHeldMessagesAfterHistory(t *testing.T) {
	for _, tc := range []struct {
		name      string
		readFirst bool
		reads     int
	}{
		{"history read after they arrived", false, 1},
		// The read misses what arrives later, including a gap among the
		// held messages: that takes one more read.
		{"history read before they arrived", true, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, bus := newTestHub()
			bus.readFirst = tc.readFirst
			rec := joinRecorder(t, h, "a")
			bus.publish("a", true)
			gate, entered := blockHistory(bus, "a")
			bus.publish("a", false)
			publishReturns(t, bus, "a") // e1-3: gap, catch-up starts
			waitEntered(t, entered, "a")
			publishReturns(t, bus, "a") // e1-4: held
			bus.publish("a", false)     // e1-5: missed by the live path too
			publishReturns(t, bus, "a") // e1-6: held, after a gap
			close(gate)
			settleWithin(t, h)
			if got := strings.Join(rec.events(), " "); got != "e1-1 e1-2 e1-3 e1-4 e1-5 e1-6" {
				t.Fatalf("events %q", got)
			}
			if n := bus.historyCalls("a"); n != tc.reads {
				t.Errorf("%d history reads, want %d", n, tc.reads)
			}
			// Live delivery is direct again.
			bus.publish("a", true)
			if got := rec.events(); got[len(got)-1] != "e1-7" {
				t.Fatalf("after the catch-up got %v", got)
			}
		})
	}
}

// More live messages than the held list takes: the hub reads history once
// more instead of dropping them.
func TestCatchUpHeldOverflowReadsHistoryAgain(t *testing.T) {
	h, bus := newTestHub()
	h.maxHeld = 2
	bus.readFirst = true // the first read misses all the held ones
	rec := joinRecorder(t, h, "a")
	bus.publish("a", true)
	gate, entered := blockHistory(bus, "a")
	bus.publish("a", false)
	publishReturns(t, bus, "a") // e1-3 held
	waitEntered(t, entered, "a")
	for range 6 { // e1-4 held, e1-5..e1-9 overflow
		publishReturns(t, bus, "a")
	}
	close(gate)
	settleWithin(t, h)
	if got := strings.Join(rec.events(), " "); got != "e1-1 e1-2 e1-3 e1-4 e1-5 e1-6 e1-7 e1-8 e1-9" {
		t.Fatalf("events %q", got)
	}
	if n := bus.historyCalls("a"); n != 2 {
		t.Errorf("%d history reads, want 2", n)
	}
}

// A resubscribe while a catch-up runs may come after its read: it reads
// history once more.
func TestResubscribeDuringCatchUpReadsAgain(t *testing.T) {
	ctx := context.Background()
	h, bus := newTestHub()
	bus.readFirst = true
	rec := joinRecorder(t, h, "a")
	bus.publish("a", true)
	gate := resubscribeBlocked(t, h, bus, "a") // read: nothing after e1-1
	bus.publish("a", false)                    // missed in a second interruption
	h.HandleResubscribed(ctx, "a")
	close(gate)
	settleWithin(t, h)
	if got := strings.Join(rec.events(), " "); got != "e1-1 e1-2" {
		t.Fatalf("events %q", got)
	}
}

// Redis restarts empty while the edge is away: the background catch-up
// finds the history lost (reset), and the new epoch's held message makes it
// fill that epoch from its start; later messages flow live.
func TestCatchUpHistoryLostResetsAndContinues(t *testing.T) {
	h, bus := newTestHub()
	rec := joinRecorder(t, h, "a")
	bus.publish("a", true)
	gate := resubscribeBlocked(t, h, bus, "a")
	bus.restartEmpty("e2", "a")
	bus.publish("a", false)     // e2-1: missed
	publishReturns(t, bus, "a") // e2-2: held
	close(gate)
	settleWithin(t, h)
	bus.publish("a", true)
	if got := strings.Join(rec.events(), " "); got != "e1-1 e2-1 e2-2 e2-3" {
		t.Fatalf("events %q", got)
	}
	var order []string
	for _, f := range rec.frames {
		switch {
		case f.Control && strings.Contains(string(f.Data), `"type":"reset"`):
			order = append(order, "reset")
		case !f.Control:
			order = append(order, f.ID.String())
		}
	}
	// e2-1 (read) and e2-2 (held) go out as one frame, named by its last.
	if got := strings.Join(order, " "); got != "e1-1 reset e2-2 e2-3" {
		t.Fatalf("frames %q, want the reset before the new epoch", got)
	}
}

// After an outage a catch-up delivers a burst: what the read found and what
// was held meanwhile go out in a few frames, so a client whose queue holds
// fewer frames than the burst has events is not cut off as slow.
func TestCatchUpBurstFitsASmallQueue(t *testing.T) {
	h, bus := newTestHub()
	rec := joinRecorder(t, h, "a")
	bus.publish("a", true) // e1-1
	rec.mu.Lock()
	rec.limit = 8 // frames, fewer than the burst's events
	rec.mu.Unlock()
	gate := resubscribeBlocked(t, h, bus, "a")
	for range 100 {
		bus.publish("a", false) // missed: the read finds them
	}
	for range 100 {
		publishReturns(t, bus, "a") // held while the read waits
	}
	close(gate)
	settleWithin(t, h)
	rec.mu.Lock()
	closed := rec.closed
	rec.mu.Unlock()
	if closed != 0 {
		t.Fatalf("client closed (%v) by a catch-up burst", closed)
	}
	if got := len(rec.events()); got != 201 {
		t.Fatalf("%d events delivered, want 201", got)
	}
}

// History lost within the epoch (trimmed), or holding an entry that cannot
// be parsed, while catching up a gap: one reset, then the held message and
// everything after it.
func TestCatchUpHistoryTrimmedResets(t *testing.T) {
	for _, err := range []error{ErrHistoryLost, fmt.Errorf("history entry: %w", ErrBadID)} {
		t.Run(err.Error(), func(t *testing.T) {
			h, bus := newTestHub()
			rec := joinRecorder(t, h, "a")
			bus.publish("a", true)
			bus.fail["a"] = []error{err}
			bus.publish("a", false)
			publishReturns(t, bus, "a")
			settleWithin(t, h)
			bus.publish("a", true)
			if got := strings.Join(rec.events(), " "); got != "e1-1 e1-3 e1-4" {
				t.Fatalf("events %q", got)
			}
			if n := strings.Count(strings.Join(rec.controls(), ""), `"type":"reset"`); n != 1 {
				t.Fatalf("%d resets, want 1", n)
			}
		})
	}
}

// A history read that fails (Redis unreachable) is retried until it
// succeeds; live messages are held meanwhile.
func TestCatchUpRetriesFailedHistory(t *testing.T) {
	h, bus := newTestHub()
	rec := joinRecorder(t, h, "a")
	bus.publish("a", true)
	bus.fail["a"] = []error{ErrUnavailable, ErrUnavailable}
	gate, entered := blockHistory(bus, "a")
	bus.publish("a", false)
	publishReturns(t, bus, "a")
	waitEntered(t, entered, "a")
	publishReturns(t, bus, "a") // held while the reads fail
	gate <- struct{}{}          // first read fails
	waitEntered(t, entered, "a")
	gate <- struct{}{} // second read fails
	waitEntered(t, entered, "a")
	close(gate) // third read succeeds
	settleWithin(t, h)
	if got := strings.Join(rec.events(), " "); got != "e1-1 e1-2 e1-3 e1-4" {
		t.Fatalf("events %q", got)
	}
	if n := bus.historyCalls("a"); n != 3 {
		t.Errorf("%d history reads, want 3", n)
	}
}

// A client joining a room that is catching up gets a position from which
// the catch-up delivers everything, once.
func TestJoinDuringCatchUpGetsConsistentLast(t *testing.T) {
	ctx := context.Background()
	h, bus := newTestHub()
	joinRecorder(t, h, "a")
	bus.publish("a", true)
	gate, entered := blockHistory(bus, "a")
	bus.publish("a", false)
	publishReturns(t, bus, "a")
	waitEntered(t, entered, "a")
	late := &recorder{}
	if err := h.NewClient(late, 10).Join(ctx, "a", ID{}, nil); err != nil {
		t.Fatal(err)
	}
	publishReturns(t, bus, "a")
	close(gate)
	settleWithin(t, h)
	ctl := strings.Join(late.controls(), "\n")
	if !strings.Contains(ctl, `"type":"subscribed","room":"a","last":"e1-1"`) {
		t.Fatalf("controls:\n%s", ctl)
	}
	if got := strings.Join(late.events(), " "); got != "e1-2 e1-3 e1-4" {
		t.Fatalf("late joiner got %q", got)
	}
}

// The catch-up goroutine ends with the bus's context, whether its read is
// blocked or failing over and over, and with its room when the room is
// dropped.
func TestCatchUpEndsWithContextOrRoom(t *testing.T) {
	t.Run("blocked read, ctx ends", func(t *testing.T) {
		h, bus := newTestHub()
		joinRecorder(t, h, "a")
		bus.publish("a", true)
		_, entered := blockHistory(bus, "a")
		ctx, cancel := context.WithCancel(context.Background())
		h.HandleResubscribed(ctx, "a")
		waitEntered(t, entered, "a")
		cancel()
		settleWithin(t, h)
	})
	t.Run("failing read, ctx ends", func(t *testing.T) {
		h, bus := newTestHub()
		joinRecorder(t, h, "a")
		bus.publish("a", true)
		bus.down = ErrUnavailable
		_, entered := blockHistory(bus, "a")
		close(bus.gates["a"])
		ctx, cancel := context.WithCancel(context.Background())
		h.HandleResubscribed(ctx, "a")
		waitEntered(t, entered, "a")
		waitEntered(t, entered, "a") // retried
		cancel()
		settleWithin(t, h)
	})
	t.Run("room dropped", func(t *testing.T) {
		ctx := context.Background()
		h, bus := newTestHub()
		c := h.NewClient(&recorder{}, 10)
		if err := c.Join(ctx, "a", ID{}, nil); err != nil {
			t.Fatal(err)
		}
		bus.publish("a", true)
		bus.down = ErrUnavailable
		_, entered := blockHistory(bus, "a")
		close(bus.gates["a"])
		h.HandleResubscribed(ctx, "a")
		waitEntered(t, entered, "a")
		c.Close(CloseNormal) // Linger(0): the room is dropped at once
		settleWithin(t, h)
		// The room works again for a new member.
		bus.mu.Lock()
		bus.down, bus.gates["a"], bus.entered = nil, nil, nil
		bus.mu.Unlock()
		rec := joinRecorder(t, h, "a")
		bus.publish("a", true)
		if got := strings.Join(rec.events(), " "); got != "e1-2" {
			t.Fatalf("after rejoin got %q", got)
		}
	})
}

// While a resubscribed room catches up, a live message that directly
// follows its last one needs no history and is not held; one after a gap
// is, until the history fills the gap.
func TestCatchUpDeliversNextMessageAtOnce(t *testing.T) {
	h, bus := newTestHub()
	rec := joinRecorder(t, h, "a")
	bus.publish("a", true)
	gate := resubscribeBlocked(t, h, bus, "a")
	publishReturns(t, bus, "a")
	if got := strings.Join(rec.events(), " "); got != "e1-1 e1-2" {
		t.Fatalf("events %q while catching up, want the next one delivered", got)
	}
	bus.publish("a", false)
	publishReturns(t, bus, "a") // e1-4: after a gap, held
	if got := strings.Join(rec.events(), " "); got != "e1-1 e1-2" {
		t.Fatalf("events %q: delivered across a gap", got)
	}
	close(gate)
	settleWithin(t, h)
	if got := strings.Join(rec.events(), " "); got != "e1-1 e1-2 e1-3 e1-4" {
		t.Fatalf("events %q", got)
	}
}

// History reads of all rooms together are bounded; a room waiting for a
// slot still ends with its context.
func TestCatchUpReadsAreBounded(t *testing.T) {
	h, bus := newTestHub()
	h.reads = make(chan struct{}, 1)
	for _, r := range []Room{"a", "b"} {
		joinRecorder(t, h, r)
		bus.publish(r, true)
	}
	gate, entered := blockHistory(bus, "a")
	h.HandleResubscribed(context.Background(), "a")
	waitEntered(t, entered, "a") // a holds the only slot
	h.HandleResubscribed(context.Background(), "b")
	if n := bus.historyCalls("b"); n != 0 {
		t.Fatalf("room b read history while room a held the only slot")
	}
	close(gate)
	waitEntered(t, entered, "b")
	settleWithin(t, h)

	h.reads <- struct{}{} // every slot taken, for good
	ctx, cancel := context.WithCancel(context.Background())
	h.HandleResubscribed(ctx, "b")
	cancel()
	settleWithin(t, h)
	if n := bus.historyCalls("b"); n != 1 {
		t.Fatalf("room b read history %d times, want 1", n)
	}
}

// A message can reach a room while its first join subscribes; when that
// subscribe fails the room is dropped, and a catch-up it started ends too.
func TestFailedSubscribeEndsCatchUp(t *testing.T) {
	ctx := context.Background()
	h, bus := newTestHub()
	bus.down = ErrUnavailable // the catch-up would retry for ever
	bus.failSub = ErrUnavailable
	bus.duringSub = func() {
		h.HandleMessage(ctx, Message{Room: "a", ID: ID{Epoch: "e1", Offset: 1}})
		h.HandleMessage(ctx, Message{Room: "a", ID: ID{Epoch: "e1", Offset: 3}}) // gap: catch-up starts
	}
	if err := h.NewClient(&recorder{}, 10).Join(ctx, "a", ID{}, nil); err == nil {
		t.Fatal("join succeeded with a failing bus")
	}
	settleWithin(t, h)
	if h.Rooms() != 0 {
		t.Fatalf("%d rooms left", h.Rooms())
	}
}
