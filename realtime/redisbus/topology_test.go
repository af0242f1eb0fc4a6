package redisbus

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rowcast/rowcast/internal/testenv"
	"github.com/rowcast/rowcast/realtime"
)

func TestSlotOf(t *testing.T) {
	for key, want := range map[string]int{
		"123456789":            0x31c3,
		"foo":                  12182,
		"bar":                  5061,
		"{bar}:anything":       5061,
		"foo{bar}{zap}":        5061,
		"rowcast:{room}:live":  slotOf("room"),
		"rowcast:{room}:epoch": slotOf("room"),
	} {
		if got := slotOf(key); got != want {
			t.Errorf("slotOf(%q) = %d, want %d", key, got, want)
		}
	}
	// An empty tag does not count: the whole key is hashed.
	if slotOf("foo{}{bar}") == slotOf("bar") || slotOf("{}") == slotOf("") {
		t.Error("empty hash tag used")
	}
}

// recorder is a realtime.Handler that records offsets per room and
// resubscriptions, and signals each.
type recorder struct {
	mu      sync.Mutex
	got     map[realtime.Room][]uint64
	resubs  map[realtime.Room]int
	changed chan struct{}
}

func newRecorder() *recorder {
	return &recorder{got: map[realtime.Room][]uint64{}, resubs: map[realtime.Room]int{}, changed: make(chan struct{}, 1)}
}

func (r *recorder) HandleMessage(_ context.Context, m realtime.Message) {
	r.mu.Lock()
	r.got[m.Room] = append(r.got[m.Room], m.ID.Offset)
	r.mu.Unlock()
	r.signal()
}

func (r *recorder) HandleResubscribed(_ context.Context, room realtime.Room) {
	r.mu.Lock()
	r.resubs[room]++
	r.mu.Unlock()
	r.signal()
}

func (r *recorder) signal() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// await waits until cond (called under the lock) holds.
func (r *recorder) await(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for {
		r.mu.Lock()
		ok := cond()
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-r.changed:
		case <-time.After(100 * time.Millisecond): // conditions on Connected() are not signalled
		case <-ctx.Done():
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("%s: %v (received %v, resubscribed %v)", what, ctx.Err(), r.got, r.resubs)
		}
	}
}

func (r *recorder) has(room realtime.Room, off uint64) bool {
	for _, o := range r.got[room] {
		if o == off {
			return true
		}
	}
	return false
}

// feed publishes events the way the listener's script does on the live
// channel (SPUBLISH on a Cluster, else PUBLISH, of {"id":"<epoch>-<offset>",...}), with per-room
// offsets. Only live delivery is under test here, so there is no history.
type feed struct {
	c     redis.UniversalClient
	epoch string
	mu    sync.Mutex
	next  map[realtime.Room]uint64
}

func newFeed(c redis.UniversalClient) *feed {
	e, _ := newEpoch()
	return &feed{c: c, epoch: e, next: map[realtime.Room]uint64{}}
}

// publish sends the room's next event, retrying while Redis fails over,
// and returns its offset.
func (f *feed) publish(ctx context.Context, t *testing.T, room realtime.Room) uint64 {
	t.Helper()
	f.mu.Lock()
	f.next[room]++
	off := f.next[room]
	f.mu.Unlock()
	msg := fmt.Sprintf(`{"id":"%s-%d","room":"%s"}`, f.epoch, off, room)
	for {
		err := kindFor(f.c).publish(ctx, f.c, keysFor(room).channel, msg)
		if err == nil {
			return off
		}
		select {
		case <-ctx.Done():
			t.Fatalf("publish to %s: %v", room, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func topologyBus(t *testing.T, url string) (redis.UniversalClient, *Bus, *recorder) {
	t.Helper()
	c := redisClient(t, url)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	b := New(c, Options{ProbeInterval: 300 * time.Millisecond, MaxBackoff: 500 * time.Millisecond, Logger: log})
	rec := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = b.Run(ctx, rec) }()
	t.Cleanup(func() { cancel(); <-done })
	return c, b, rec
}

func subscribe(ctx context.Context, t *testing.T, b *Bus, rooms ...realtime.Room) {
	t.Helper()
	for _, r := range rooms {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := b.Subscribe(sctx, r)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestBusFollowsSentinelFailover kills the primary with SIGKILL: the bus
// follows Sentinel to the promoted replica without a restart, reports every
// room resubscribed, and delivers again.
func TestBusFollowsSentinelFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	began := time.Now()
	s, err := testenv.StartSentinel(ctx, t)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sentinel topology up in %s", time.Since(began).Round(time.Millisecond))
	c, b, rec := topologyBus(t, s.URL())
	rooms := []realtime.Room{"a", "b"}
	subscribe(ctx, t, b, rooms...)
	f := newFeed(c)
	for _, r := range rooms {
		off := f.publish(ctx, t, r)
		rec.await(ctx, t, "first delivery", func() bool { return rec.has(r, off) })
	}

	if err := s.Primary.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	rec.await(ctx, t, "resubscribed after the failover", func() bool { return rec.resubs["a"] > 0 && rec.resubs["b"] > 0 })
	t.Logf("rooms resubscribed %s after the kill", time.Since(killed).Round(time.Millisecond))
	if p, err := s.CurrentPrimary(ctx); err != nil || p != s.Replica {
		t.Fatalf("primary now %v, %v; want the replica", p, err)
	}
	for _, r := range rooms {
		off := f.publish(ctx, t, r)
		rec.await(ctx, t, "delivery after the failover", func() bool { return rec.has(r, off) })
	}
	t.Logf("delivering again %s after the kill", time.Since(killed).Round(time.Millisecond))
	rec.await(ctx, t, "connected", b.Connected)
}

// clusterRooms returns perMaster rooms for each master, by the cluster's
// own slot map.
func clusterRooms(ctx context.Context, t *testing.T, c *testenv.Cluster, perMaster int) map[*testenv.Node][]realtime.Room {
	t.Helper()
	byMaster := map[*testenv.Node][]realtime.Room{}
	for i := 0; len(byMaster) < 3 || func() bool {
		for _, rs := range byMaster {
			if len(rs) < perMaster {
				return true
			}
		}
		return false
	}(); i++ {
		r := realtime.Room(fmt.Sprintf("room%d", i))
		m, err := c.MasterForKey(ctx, keysFor(r).channel)
		if err != nil {
			t.Fatal(err)
		}
		if len(byMaster[m]) < perMaster {
			byMaster[m] = append(byMaster[m], r)
		}
	}
	return byMaster
}

// shardSubscribers is PUBSUB SHARDNUMSUB of room's channel on node.
func shardSubscribers(ctx context.Context, t *testing.T, n *testenv.Node, r realtime.Room) int64 {
	t.Helper()
	v, err := n.Do(ctx, "PUBSUB", "SHARDNUMSUB", keysFor(r).channel)
	if err != nil {
		t.Fatalf("pubsub shardnumsub on %s: %v", n, err)
	}
	pair, _ := v.([]any)
	if len(pair) != 2 {
		t.Fatalf("pubsub shardnumsub on %s: %v", n, v)
	}
	count, _ := pair[1].(int64)
	return count
}

// TestBusOnCluster spreads rooms over the three shards of a Redis Cluster:
// each room is subscribed on its own master; a master killed with SIGKILL is
// replaced by its replica and its rooms are resubscribed there while the
// other shards' rooms keep flowing; a slot moved to another master is
// followed.
func TestBusOnCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	began := time.Now()
	c, err := testenv.StartCluster(ctx, t)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster up in %s", time.Since(began).Round(time.Millisecond))
	rdb, b, rec := topologyBus(t, c.URL())
	byMaster := clusterRooms(ctx, t, c, 2)
	var all []realtime.Room
	for _, rs := range byMaster {
		all = append(all, rs...)
	}
	subscribe(ctx, t, b, all...)
	for m, rs := range byMaster {
		for _, r := range rs {
			if n := shardSubscribers(ctx, t, m, r); n != 1 {
				t.Fatalf("%s has %d subscribers of room %s, want 1", m, n, r)
			}
		}
	}
	f := newFeed(rdb)
	for _, r := range all {
		off := f.publish(ctx, t, r)
		rec.await(ctx, t, "sharded delivery", func() bool { return rec.has(r, off) })
	}
	rec.await(ctx, t, "connected to every master", b.Connected)

	// Kill one master.
	masters, err := c.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	victim := masters[0]
	replica, err := c.Replica(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	victimSlot, err := c.Slot(ctx, keysFor(byMaster[victim][0]).channel)
	if err != nil {
		t.Fatal(err)
	}
	if err := victim.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	for _, m := range masters[1:] {
		for _, r := range byMaster[m] {
			off := f.publish(ctx, t, r)
			rec.await(ctx, t, "other shards during the failover", func() bool { return rec.has(r, off) })
		}
	}
	t.Logf("other shards' rooms delivered %s after the kill", time.Since(killed).Round(time.Millisecond))
	promoted, err := c.WaitFailover(ctx, victim, victimSlot)
	if err != nil {
		t.Fatal(err)
	}
	if promoted != replica {
		t.Fatalf("promoted %s, want %s", promoted, replica)
	}
	t.Logf("failover done %s after the kill", time.Since(killed).Round(time.Millisecond))
	rec.await(ctx, t, "victim's rooms resubscribed", func() bool {
		for _, r := range byMaster[victim] {
			if rec.resubs[r] == 0 {
				return false
			}
		}
		return true
	})
	t.Logf("victim's rooms resubscribed %s after the kill", time.Since(killed).Round(time.Millisecond))
	for _, r := range byMaster[victim] {
		if n := shardSubscribers(ctx, t, promoted, r); n != 1 {
			t.Fatalf("%s has %d subscribers of room %s, want 1", promoted, n, r)
		}
		off := f.publish(ctx, t, r)
		rec.await(ctx, t, "victim's rooms after the failover", func() bool { return rec.has(r, off) })
	}
	t.Logf("victim's rooms delivered again %s after the kill", time.Since(killed).Round(time.Millisecond))
	rec.await(ctx, t, "connected to every master after the failover", b.Connected)
	t.Logf("bus connected to every master %s after the kill", time.Since(killed).Round(time.Millisecond))

	// Move one room's slot to another master.
	moving := byMaster[masters[1]][0]
	to := masters[2]
	slot, _ := c.Slot(ctx, keysFor(moving).channel)
	rec.mu.Lock()
	before := rec.resubs[moving]
	rec.mu.Unlock()
	moved := time.Now()
	if err := c.MoveSlot(ctx, slot, to); err != nil {
		t.Fatal(err)
	}
	rec.await(ctx, t, "moved room resubscribed", func() bool { return rec.resubs[moving] > before })
	t.Logf("moved room resubscribed %s after the move began", time.Since(moved).Round(time.Millisecond))
	if n := shardSubscribers(ctx, t, to, moving); n != 1 {
		t.Fatalf("%s has %d subscribers of the moved room, want 1", to, n)
	}
	off := f.publish(ctx, t, moving)
	rec.await(ctx, t, "moved room delivered", func() bool { return rec.has(moving, off) })
	t.Logf("moved room delivered %s after the move began", time.Since(moved).Round(time.Millisecond))
	for _, r := range all {
		off := f.publish(ctx, t, r)
		rec.await(ctx, t, "every room at the end", func() bool { return rec.has(r, off) })
	}
}

// TestUnsubscribeAndSubscribeAgain leaves and rejoins rooms at once, many
// times: the confirmation of an earlier subscription never releases a
// later Subscribe, so what is published right after it returns arrives.
func TestUnsubscribeAndSubscribeAgain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := startRedis(t)
	b := New(c, Options{ProbeInterval: 300 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	rec := newRecorder()
	go b.Run(ctx, rec)
	f := newFeed(c)
	subscribe(ctx, t, b, "x")
	for i := range 50 {
		if err := b.Unsubscribe(ctx, "x"); err != nil {
			t.Fatal(err)
		}
		subscribe(ctx, t, b, "x")
		off := f.publish(ctx, t, "x")
		rec.await(ctx, t, fmt.Sprintf("delivery after rejoin %d", i), func() bool { return rec.has("x", off) })
	}
	rec.await(ctx, t, "connected", b.Connected)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if n := rec.resubs["x"]; n != 0 {
		t.Errorf("%d resubscriptions reported without an interruption", n)
	}
}

// TestPublishOnClusterWithAMasterDown: while one master is dead, the rooms of
// the other shards are published and the dead one's are reported failed,
// not the whole batch; once its replica took over, the same events go
// through at the offsets the room expects.
func TestPublishOnClusterWithAMasterDown(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := testenv.StartCluster(ctx, t)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redisClient(t, c.URL())
	byMaster := clusterRooms(ctx, t, c, 1)
	masters, err := c.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	victim := masters[0]
	dead, alive := byMaster[victim][0], byMaster[masters[1]][0]

	p := NewPublisher(rdb, HistoryLimits{Len: 100, TTL: time.Hour})
	rec := ledger{}
	if _, err := rec.publish(ctx, p, append(events(dead, 1, 2), events(alive, 3, 2)...)); err != nil {
		t.Fatal(err)
	}
	slot, err := c.Slot(ctx, keysFor(dead).channel)
	if err != nil {
		t.Fatal(err)
	}
	if err := victim.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	stuck := events(dead, 5, 2)
	began := time.Now()
	res, err := rec.publish(ctx, p, append(append([]Event{}, stuck...), events(alive, 7, 2)...))
	t.Logf("publish with a master down: %s, failed %v", time.Since(began).Round(time.Millisecond), res.Failed)
	if err != nil {
		t.Fatalf("publish with one master down: %v (the other shard's room should go through)", err)
	}
	if _, ok := res.Failed[dead]; !ok || res.Positions[alive].Last.Offset != 4 {
		t.Fatalf("with %s down: failed %v, %s at %v; want %s failed and %s at offset 4", victim, res.Failed, alive, res.Positions[alive].Last, dead, alive)
	}
	if _, err := c.WaitFailover(ctx, victim, slot); err != nil {
		t.Fatal(err)
	}
	var got Result
	for {
		got, err = rec.publish(ctx, p, stuck)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("publish after the failover: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	if pos := got.Positions[dead].Last; pos.Offset != 4 || len(got.Restarted) != 0 {
		t.Fatalf("after the failover %s is at %v (new epochs %v); want offset 4 in its epoch", dead, pos, got.Restarted)
	}
}
