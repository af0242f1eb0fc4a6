package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rowcast/rowcast/internal/testenv"
	"github.com/rowcast/rowcast/realtime"
	"github.com/rowcast/rowcast/realtime/redisbus"
)

// TestCatchUpAfterRedisRestart measures (reports, never gates on time) how
// one edge's hub catches up 1,000 rooms after Redis restarts: every room is
// resubscribed and reads its history, and the live latency of a few rooms
// during that storm shows whether catch-up holds up the bus reader. Redis
// keeps its data here (AOF), so each room has history to read and nothing
// is lost: every client must see each event once, in order.
func TestCatchUpAfterRedisRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Docker")
	}
	const (
		rooms       = 1000
		probeRooms  = 5
		before      = 3                    // events per room before the restart
		probeEvery  = 2 * time.Millisecond // a probe event per probe room
		waitTimeout = time.Minute
	)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	red, err := testenv.StartRedis(ctx, t, testenv.WithArgs("--appendonly", "yes", "--appendfsync", "everysec"))
	if err != nil {
		t.Fatalf("start redis: %v", err)
	}
	url, err := red.URL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	client := redis.NewClient(opt)
	t.Cleanup(func() { client.Close() })

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	// A short reconnect backoff, so the figures measure the catch-up more
	// than the wait for the bus's next attempt.
	var (
		replacedMu sync.Mutex
		replaced   []time.Time // bus sessions replaced (each failed attempt)
	)
	bus := redisbus.New(client, redisbus.Options{ProbeInterval: 300 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Logger: quiet,
		OnReconnect: func() {
			replacedMu.Lock()
			replaced = append(replaced, time.Now())
			replacedMu.Unlock()
		}})
	hub := realtime.NewHub(bus, quiet)
	th := &timedHandler{Hub: hub}
	busCtx, stopBus := context.WithCancel(ctx)
	busDone := make(chan struct{})
	go func() { defer close(busDone); _ = bus.Run(busCtx, th) }()
	defer func() { stopBus(); <-busDone }()
	waitConnected(ctx, t, bus)

	s := newCatchUpSink(rooms)
	names := make([]realtime.Room, rooms)
	for i := range names {
		names[i] = realtime.Room(fmt.Sprintf("cu%04d", i))
		tr := &catchUpTransport{s: s}
		if err := hub.NewClient(tr, 1).Join(ctx, names[i], realtime.ID{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	probes := make([]realtime.Room, probeRooms)
	for i := range probes {
		probes[i] = realtime.Room(fmt.Sprintf("cuprobe%d", i))
		tr := &catchUpTransport{s: s, probe: true}
		if err := hub.NewClient(tr, 1).Join(ctx, probes[i], realtime.ID{}, nil); err != nil {
			t.Fatal(err)
		}
	}

	for range before {
		if err := publishCatchUp(ctx, client, catchUpEvents(names, time.Now())); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.wait(ctx, before, waitTimeout); err != nil {
		t.Fatal(err)
	}

	// Probe rooms get an event every probeEvery throughout; publishes fail
	// while Redis is down.
	probeCtx, stopProbes := context.WithCancel(ctx)
	probesDone := make(chan struct{})
	go func() {
		defer close(probesDone)
		tick := time.NewTicker(probeEvery)
		defer tick.Stop()
		var pending []redisbus.Event
		for {
			select {
			case <-probeCtx.Done():
				return
			case <-tick.C:
				// Like the listener, a publish that failed is repeated as
				// is (its outcome is unknown: Redis may hold it).
				if pending == nil {
					pending = catchUpEvents(probes, time.Now())
				}
				pctx, cancel := context.WithTimeout(probeCtx, time.Second)
				if publishCatchUp(pctx, client, pending) == nil {
					pending = nil
				}
				cancel()
			}
		}
	}()

	if err := red.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := red.Start(ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	// One more event per room, published as soon as Redis answers: mostly
	// before the bus has resubscribed, so history brings it.
	once := catchUpEvents(names, time.Now())
	for attempt := 0; ; attempt++ {
		err := publishCatchUp(ctx, client, once)
		if err == nil {
			break
		}
		if attempt == 50 {
			t.Fatalf("publish after restart: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	allIn, err := s.wait(ctx, before+1, waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	// A moment of steady state for comparison.
	const calm = 300 * time.Millisecond
	time.Sleep(calm)
	stopProbes()
	<-probesDone

	first, last := time.Unix(0, th.first.Load()), time.Unix(0, th.last.Load())
	var during, after []time.Duration
	for _, p := range s.probeSamples() {
		switch {
		case !p.at.Before(first) && !p.at.After(allIn):
			during = append(during, p.lat)
		case p.at.After(allIn.Add(calm / 3)):
			after = append(after, p.lat)
		}
	}
	replacedMu.Lock()
	// Sessions replaced once the bus was back: a probe that did not come
	// back in time (a stalled reader, or one starved of connections).
	var replacedDuring, replacedAfter int
	for _, at := range replaced {
		switch {
		case at.After(allIn):
			replacedAfter++
		case at.After(first):
			replacedDuring++
		}
	}
	replacedMu.Unlock()
	report(t, "catch-up of %d rooms after a Redis restart: all caught up %s after Redis was back, %s after the first resubscribe; the bus reader spent %s in %d resubscribe calls",
		rooms, allIn.Sub(back).Round(time.Millisecond), allIn.Sub(first).Round(time.Millisecond),
		last.Sub(first).Round(time.Millisecond), th.calls.Load())
	report(t, "live latency of %d probe rooms (publish -> client Send) from the first resubscribe until all caught up: %s; afterwards: %s",
		probeRooms, percentiles(during), percentiles(after))
	report(t, "bus sessions replaced once back (probe unanswered): %d during the catch-up, %d in the %s after it", replacedDuring, replacedAfter, calm)
	if n := s.bad.Load(); n > 0 {
		t.Errorf("%d events out of order or duplicated", n)
	}
	if n := s.resets.Load(); n > 0 {
		t.Errorf("%d resets; Redis kept its data, none expected", n)
	}
}

// catchUpEvents returns one new event for each room with capture time at.
func catchUpEvents(rooms []realtime.Room, at time.Time) []redisbus.Event {
	events := make([]redisbus.Event, len(rooms))
	stamp := at.UTC().Format(time.RFC3339Nano)
	for i, r := range rooms {
		events[i] = redisbus.Event{OutboxID: catchUpOutboxID.Add(1), Room: r,
			Tail: fmt.Appendf(nil, `,"room":%q,"table":"public.catchup","op":"INSERT","at":%q,"data":{}}`, r, stamp)}
	}
	return events
}

// publishCatchUp publishes events. Every call of the publisher is here, so a
// change of its signature is adapted in one place.
func publishCatchUp(ctx context.Context, client redis.UniversalClient, events []redisbus.Event) error {
	// The listener records each room's position in Postgres and gives it to
	// the next publish; here a map plays Postgres.
	catchUpPositions.Lock()
	defer catchUpPositions.Unlock()
	res, err := redisbus.NewPublisher(client, redisbus.HistoryLimits{Len: 1000, TTL: time.Hour}).Publish(ctx, events, catchUpPositions.m)
	if err != nil {
		return err
	}
	for r, pos := range res.Positions {
		catchUpPositions.m[r] = pos
	}
	return nil
}

var (
	catchUpOutboxID  atomic.Int64
	catchUpPositions = struct {
		sync.Mutex
		m map[realtime.Room]realtime.Position
	}{m: map[realtime.Room]realtime.Position{}}
)

// timedHandler is the hub as the bus's handler, timing the resubscribe
// calls the bus reader makes.
type timedHandler struct {
	*realtime.Hub
	first, last atomic.Int64 // unix ns: first call, end of the latest call
	calls       atomic.Int64
}

func (h *timedHandler) HandleResubscribed(ctx context.Context, r realtime.Room) {
	h.first.CompareAndSwap(0, time.Now().UnixNano())
	h.Hub.HandleResubscribed(ctx, r)
	h.last.Store(time.Now().UnixNano())
	h.calls.Add(1)
}

// catchUpSink collects what the clients receive.
type catchUpSink struct {
	rooms  int
	bad    atomic.Int64 // events that were not the room's next
	resets atomic.Int64

	mu      sync.Mutex
	count   map[uint64]int           // rooms that received offset n
	reached map[uint64]chan struct{} // closed when all rooms have offset n
	at      map[uint64]time.Time     // when the last room got offset n
	samples []probeSample
}

type probeSample struct {
	at  time.Time // published
	lat time.Duration
}

func newCatchUpSink(rooms int) *catchUpSink {
	return &catchUpSink{rooms: rooms, count: map[uint64]int{}, reached: map[uint64]chan struct{}{}, at: map[uint64]time.Time{}}
}

func (s *catchUpSink) reachedLocked(off uint64) chan struct{} {
	ch := s.reached[off]
	if ch == nil {
		ch = make(chan struct{})
		s.reached[off] = ch
	}
	return ch
}

func (s *catchUpSink) arrived(off uint64, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count[off]++
	if s.count[off] == s.rooms {
		s.at[off] = now
		close(s.reachedLocked(off))
	}
}

// wait returns when every room has received offset off.
func (s *catchUpSink) wait(ctx context.Context, off uint64, timeout time.Duration) (time.Time, error) {
	s.mu.Lock()
	ch := s.reachedLocked(off)
	s.mu.Unlock()
	select {
	case <-ch:
	case <-time.After(timeout):
		s.mu.Lock()
		defer s.mu.Unlock()
		return time.Time{}, fmt.Errorf("only %d of %d rooms received event %d within %s", s.count[off], s.rooms, off, timeout)
	case <-ctx.Done():
		return time.Time{}, ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.at[off], nil
}

func (s *catchUpSink) probeSamples() []probeSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]probeSample(nil), s.samples...)
}

// catchUpTransport is one client's connection: it checks each room event is
// the next one and reports arrivals to the sink.
type catchUpTransport struct {
	s     *catchUpSink
	probe bool

	mu   sync.Mutex
	last uint64
}

func (c *catchUpTransport) Send(f realtime.Frame) bool {
	now := time.Now()
	if f.Control {
		if strings.Contains(string(f.Data), `"type":"reset"`) {
			c.s.resets.Add(1)
		}
		return true
	}
	// A catch-up may batch several events into one frame (a JSON array,
	// named by its last event).
	n := uint64(1)
	if len(f.Data) > 0 && f.Data[0] == '[' {
		var events []json.RawMessage
		if err := json.Unmarshal(f.Data, &events); err != nil || len(events) == 0 {
			c.s.bad.Add(1)
			return true
		}
		n = uint64(len(events))
	}
	c.mu.Lock()
	first := f.ID.Offset - n + 1
	if first != c.last+1 {
		c.s.bad.Add(1)
	}
	c.last = max(c.last, f.ID.Offset)
	c.mu.Unlock()
	if !c.probe {
		for off := first; off <= f.ID.Offset; off++ {
			c.s.arrived(off, now)
		}
		return true
	}
	if at, ok := realtime.CapturedAt(f.Data); ok {
		c.s.mu.Lock()
		c.s.samples = append(c.s.samples, probeSample{at: at, lat: now.Sub(at)})
		c.s.mu.Unlock()
	}
	return true
}

func (c *catchUpTransport) Close(realtime.CloseReason) {}

// waitConnected polls until the bus's subscription is up.
func waitConnected(ctx context.Context, t *testing.T, bus *redisbus.Bus) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !bus.Connected() {
		select {
		case <-ctx.Done():
			t.Fatal("bus never connected")
		case <-tick.C:
		}
	}
}
