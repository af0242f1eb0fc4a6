package realtime

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// memBus is an in-memory Bus for the hub's pure logic; the Redis bus has its
// own tests against a real Redis.
type memBus struct {
	mu      sync.Mutex
	h       Handler
	subs    map[Room]int // Subscribe minus Unsubscribe calls
	history map[Room][]Message
	epoch   string
	failSub error

	// History's behaviour, for the catch-up tests; set before use.
	gates     map[Room]chan struct{} // History of the room waits for a receive (or ctx end)
	readFirst bool                   // History reads its answer before it reports the call and waits at the gate
	entered   chan Room              // if set, History reports each call here (buffer it)
	fail      map[Room][]error       // History returns these first, one per call
	down      error                  // if set, every History call fails with it
	calls     map[Room]int           // History calls per room
	duringSub func()                 // if set, Subscribe calls it before it answers

	// Snapshot positions: what Retained reports below the history, and
	// Origin's answer.
	floor  map[Room]uint64
	origin Origin
}

func newMemBus() *memBus {
	return &memBus{subs: map[Room]int{}, history: map[Room][]Message{}, epoch: "e1",
		gates: map[Room]chan struct{}{}, fail: map[Room][]error{}, calls: map[Room]int{}}
}

func (b *memBus) Run(ctx context.Context, h Handler) error { b.h = h; return nil }

func (b *memBus) Subscribe(ctx context.Context, r Room) (ID, error) {
	if b.duringSub != nil {
		b.duringSub()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failSub != nil {
		return ID{}, b.failSub
	}
	b.subs[r]++
	if h := b.history[r]; len(h) > 0 {
		return h[len(h)-1].ID, nil
	}
	return ID{}, nil
}

func (b *memBus) Unsubscribe(ctx context.Context, r Room) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.subs[r]--
	return nil
}

func (b *memBus) History(ctx context.Context, r Room, after ID) ([]Message, error) {
	b.mu.Lock()
	b.calls[r]++
	gate, readFirst, entered, err := b.gates[r], b.readFirst, b.entered, b.down
	if q := b.fail[r]; err == nil && len(q) > 0 {
		err, b.fail[r] = q[0], q[1:]
	}
	b.mu.Unlock()
	var (
		out     []Message
		readErr error
	)
	if readFirst {
		out, readErr = b.read(r, after)
	}
	if entered != nil {
		select {
		case entered <- r:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if err != nil {
		return nil, err
	}
	if !readFirst {
		out, readErr = b.read(r, after)
	}
	return out, readErr
}

func (b *memBus) read(r Room, after ID) ([]Message, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if after.Epoch != b.epoch {
		return nil, ErrHistoryLost
	}
	var out []Message
	for _, m := range b.history[r] {
		if m.ID.Offset > after.Offset {
			out = append(out, m)
		}
	}
	return out, nil
}

func (b *memBus) Retained(ctx context.Context, r Room) ([]Message, uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Message(nil), b.history[r]...), b.floor[r], nil
}

func (b *memBus) Origin(ctx context.Context) (Origin, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.origin, nil
}

// historyCalls returns how many times History was called for r.
func (b *memBus) historyCalls(r Room) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.calls[r]
}

// publish appends to history and, when live, hands the message to the hub.
func (b *memBus) publish(r Room, live bool) Message { return b.publishTx(r, 0, live) }

// publishTx is publish of an event made by transaction tx.
func (b *memBus) publishTx(r Room, tx uint64, live bool) Message {
	b.mu.Lock()
	off := uint64(len(b.history[r]) + 1)
	id := ID{Epoch: b.epoch, Offset: off}
	m := Message{Room: r, ID: id, Tx: tx, Data: fmt.Appendf(nil, `{"id":"%s","tx":%d,"room":"%s"}`, id, tx, r)}
	b.history[r] = append(b.history[r], m)
	b.mu.Unlock()
	if live {
		b.h.HandleMessage(context.Background(), m)
	}
	return m
}

// recorder is a Transport that keeps what it was sent.
type recorder struct {
	mu      sync.Mutex
	frames  []Frame
	limit   int
	closed  CloseReason
	onClose chan CloseReason // optional: receives the close reason
}

func (r *recorder) Send(f Frame) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.limit > 0 && len(r.frames) >= r.limit {
		return false
	}
	r.frames = append(r.frames, f)
	return true
}

func (r *recorder) Close(reason CloseReason) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = reason
	if r.onClose != nil {
		r.onClose <- reason
	}
}

// events returns the event ids received, flattening replay batches.
func (r *recorder) events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ids []string
	for _, f := range r.frames {
		if f.Control {
			continue
		}
		for _, part := range strings.Split(strings.Trim(string(f.Data), "[]"), "},{") {
			i := strings.Index(part, `"id":"`)
			rest := part[i+6:]
			ids = append(ids, rest[:strings.IndexByte(rest, '"')])
		}
	}
	return ids
}

func (r *recorder) controls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, f := range r.frames {
		if f.Control {
			out = append(out, string(f.Data))
		}
	}
	return out
}

// joinRecorder joins a new recording client to room r.
func joinRecorder(t *testing.T, h *Hub, r Room) *recorder {
	t.Helper()
	rec := &recorder{}
	if err := h.NewClient(rec, 10).Join(context.Background(), r, ID{}, nil); err != nil {
		t.Fatal(err)
	}
	return rec
}

// restartEmpty simulates Redis restarting without persistence: a new epoch,
// and the room's history gone.
func (b *memBus) restartEmpty(epoch string, r Room) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.epoch, b.history[r] = epoch, nil
}

func newTestHub() (*Hub, *memBus) {
	bus := newMemBus()
	h := NewHub(bus, slog.New(slog.NewTextHandler(io.Discard, nil)), Linger(0))
	h.retry.Min, h.retry.Max = time.Millisecond, 10*time.Millisecond
	_ = bus.Run(context.Background(), h)
	return h, bus
}

// settle waits until no catch-up runs in the background.
func settle(h *Hub) { h.catchUps.Wait() }

func TestHubSubscribesOncePerRoomAndUnsubscribesWhenEmpty(t *testing.T) {
	ctx := context.Background()
	h, bus := newTestHub()
	c1, c2 := h.NewClient(&recorder{}, 10), h.NewClient(&recorder{}, 10)
	for _, c := range []*Client{c1, c2} {
		if err := c.Join(ctx, "a", ID{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if bus.subs["a"] != 1 {
		t.Fatalf("bus subscriptions = %d, want 1", bus.subs["a"])
	}
	c1.Leave(ctx, "a")
	if bus.subs["a"] != 1 || h.Rooms() != 1 {
		t.Fatalf("after one leave: subs %d rooms %d", bus.subs["a"], h.Rooms())
	}
	c2.Close(CloseNormal)
	if bus.subs["a"] != 0 || h.Rooms() != 0 {
		t.Fatalf("after last leave: subs %d rooms %d", bus.subs["a"], h.Rooms())
	}
}

func TestHubFansOutOnlyToRoomMembers(t *testing.T) {
	ctx := context.Background()
	h, bus := newTestHub()
	ra, rb := &recorder{}, &recorder{}
	if err := h.NewClient(ra, 10).Join(ctx, "a", ID{}, nil); err != nil {
		t.Fatal(err)
	}
	if err := h.NewClient(rb, 10).Join(ctx, "b", ID{}, nil); err != nil {
		t.Fatal(err)
	}
	bus.publish("a", true)
	bus.publish("b", true)
	bus.publish("a", true)
	if got := strings.Join(ra.events(), " "); got != "e1-1 e1-2" {
		t.Errorf("room a client got %q", got)
	}
	if got := strings.Join(rb.events(), " "); got != "e1-1" {
		t.Errorf("room b client got %q", got)
	}
}

func TestJoinReplaysHistoryThenLiveWithoutDuplicates(t *testing.T) {
	ctx := context.Background()
	h, bus := newTestHub()
	for range 100 {
		bus.publish("a", false)
	}
	rec := &recorder{}
	c := h.NewClient(rec, 10)
	if err := c.Join(ctx, "a", ID{Epoch: "e1", Offset: 10}, nil); err != nil {
		t.Fatal(err)
	}
	// The live path may deliver something the replay already covered.
	h.HandleMessage(ctx, bus.history["a"][99])
	bus.publish("a", true)
	ids := rec.events()
	if len(ids) != 91 || ids[0] != "e1-11" || ids[90] != "e1-101" {
		t.Fatalf("got %d events %v…", len(ids), ids[:min(3, len(ids))])
	}
	batches := 0
	for _, f := range rec.frames {
		if !f.Control && f.Data[0] == '[' {
			batches++
		}
	}
	if batches != 2 { // 90 replayed events in frames of at most 64
		t.Errorf("replay used %d batch frames, want 2", batches)
	}
}

func TestJoinWithLostHistorySendsReset(t *testing.T) {
	ctx := context.Background()
	h, bus := newTestHub()
	bus.publish("a", false)
	rec := &recorder{}
	if err := h.NewClient(rec, 10).Join(ctx, "a", ID{Epoch: "old", Offset: 5}, nil); err != nil {
		t.Fatal(err)
	}
	ctl := strings.Join(rec.controls(), "\n")
	if !strings.Contains(ctl, `"type":"reset"`) || !strings.Contains(ctl, `"type":"subscribed","room":"a","last":"e1-1"`) {
		t.Fatalf("controls:\n%s", ctl)
	}
}

func TestHubFillsGapFromHistory(t *testing.T) {
	ctx := context.Background()
	h, bus := newTestHub()
	rec := joinRecorder(t, h, "a")
	bus.publish("a", true)
	bus.publish("a", false) // missed by the live path
	bus.publish("a", false)
	bus.publish("a", true)
	settle(h)
	if got := strings.Join(rec.events(), " "); got != "e1-1 e1-2 e1-3 e1-4" {
		t.Fatalf("got %q", got)
	}
	// After a resubscription the hub catches up without any new message.
	bus.publish("a", false)
	h.HandleResubscribed(ctx, "a")
	settle(h)
	if got := rec.events(); len(got) != 5 {
		t.Fatalf("after resubscribe got %v", got)
	}
}

func TestSlowClientIsClosedAndOthersContinue(t *testing.T) {
	ctx := context.Background()
	h, bus := newTestHub()
	slow, fast := &recorder{limit: 3, onClose: make(chan CloseReason, 1)}, &recorder{}
	cs := h.NewClient(slow, 10)
	if err := cs.Join(ctx, "a", ID{}, nil); err != nil {
		t.Fatal(err)
	}
	if err := h.NewClient(fast, 10).Join(ctx, "a", ID{}, nil); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		bus.publish("a", true)
	}
	if len(fast.events()) != 10 {
		t.Fatalf("fast client got %d", len(fast.events()))
	}
	// The slow client is closed in its own goroutine; wait for it.
	if r := <-slow.onClose; r != CloseSlow {
		t.Fatalf("slow client closed with %v", r)
	}
	if len(cs.Rooms()) != 0 {
		t.Fatalf("slow client still in rooms %v", cs.Rooms())
	}
}

// A frame that could not be queued is the last thing tried: a later one
// getting through would move the client's resume point past the dropped one.
func TestSlowClientGetsNothingAfterADroppedFrame(t *testing.T) {
	ctx := context.Background()
	h, bus := newTestHub()
	slow := &recorder{limit: 3, onClose: make(chan CloseReason, 1)}
	if err := h.NewClient(slow, 10).Join(ctx, "a", ID{}, nil); err != nil {
		t.Fatal(err)
	}
	bus.publish("a", true) // frames: subscribed, e-1, e-2
	bus.publish("a", true)
	bus.publish("a", true) // refused: the queue is full
	slow.mu.Lock()
	slow.limit = 0 // the queue drains before the close goroutine runs
	slow.mu.Unlock()
	bus.publish("a", true)
	bus.publish("a", true)
	if r := <-slow.onClose; r != CloseSlow {
		t.Fatalf("slow client closed with %v", r)
	}
	if got := slow.events(); len(got) != 2 || !strings.HasSuffix(got[1], "-2") {
		t.Fatalf("slow client got %v; want the first two events and nothing after the dropped third", got)
	}
}

func TestTooManyRooms(t *testing.T) {
	ctx := context.Background()
	h, _ := newTestHub()
	c := h.NewClient(&recorder{}, 1)
	if err := c.Join(ctx, "a", ID{}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Join(ctx, "b", ID{}, nil); err == nil || !strings.Contains(err.Error(), "too many rooms") {
		t.Fatalf("second room: %v", err)
	}
}

func TestFailedSubscribeUndoesJoin(t *testing.T) {
	ctx := context.Background()
	h, bus := newTestHub()
	bus.failSub = ErrUnavailable
	c := h.NewClient(&recorder{}, 10)
	if err := c.Join(ctx, "a", ID{}, nil); err == nil {
		t.Fatal("join succeeded with a failing bus")
	}
	if h.Rooms() != 0 || len(c.Rooms()) != 0 {
		t.Fatalf("rooms left behind: hub %d client %v", h.Rooms(), c.Rooms())
	}
}

func TestHubFillsNewEpochAfterHistoryLoss(t *testing.T) {
	h, bus := newTestHub()
	rec := joinRecorder(t, h, "a")
	bus.publish("a", true)
	// Redis restarts empty: a new epoch whose first events the live path missed.
	bus.restartEmpty("e2", "a")
	bus.publish("a", false)
	bus.publish("a", true)
	settle(h)
	if got := strings.Join(rec.events(), " "); got != "e1-1 e2-1 e2-2" {
		t.Fatalf("events %q", got)
	}
	if n := strings.Count(strings.Join(rec.controls(), ""), `"type":"reset"`); n != 1 {
		t.Fatalf("%d resets, want 1", n)
	}
}

func TestEmptyRoomLingersBeforeUnsubscribing(t *testing.T) {
	ctx := context.Background()
	bus := newMemBus()
	h := NewHub(bus, slog.New(slog.NewTextHandler(io.Discard, nil)), Linger(50*time.Millisecond))
	_ = bus.Run(ctx, h)
	c := h.NewClient(&recorder{}, 10)
	if err := c.Join(ctx, "a", ID{}, nil); err != nil {
		t.Fatal(err)
	}
	c.Leave(ctx, "a")
	// Rejoining within the linger reuses the subscription.
	c2 := h.NewClient(&recorder{}, 10)
	if err := c2.Join(ctx, "a", ID{}, nil); err != nil {
		t.Fatal(err)
	}
	bus.mu.Lock()
	subs := bus.subs["a"]
	bus.mu.Unlock()
	if subs != 1 {
		t.Fatalf("bus subscriptions %d, want 1 (reused)", subs)
	}
	c2.Close(CloseNormal)
	deadline := time.Now().Add(5 * time.Second)
	for h.Rooms() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("empty room never unsubscribed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	bus.mu.Lock()
	defer bus.mu.Unlock()
	if bus.subs["a"] != 0 {
		t.Fatalf("bus subscriptions %d after the linger", bus.subs["a"])
	}
}

// Redis restarts empty and the listener publishes to the new epoch before
// the edge has resubscribed: the catch-up finds the old history gone (reset),
// and the next live message makes the hub replay the new epoch from 1.
func TestHubReplaysNewEpochAfterResubscribe(t *testing.T) {
	ctx := context.Background()
	h, bus := newTestHub()
	rec := joinRecorder(t, h, "a")
	bus.publish("a", true)
	bus.restartEmpty("e2", "a")
	bus.publish("a", false) // e2-1 and e2-2: published while the edge was away
	bus.publish("a", false)
	h.HandleResubscribed(ctx, "a")
	bus.publish("a", true)
	settle(h)
	if got := strings.Join(rec.events(), " "); got != "e1-1 e2-1 e2-2 e2-3" {
		t.Fatalf("events %q", got)
	}
	if n := strings.Count(strings.Join(rec.controls(), ""), `"type":"reset"`); n != 1 {
		t.Fatalf("%d resets, want 1", n)
	}
}
