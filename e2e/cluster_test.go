package e2e

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rowcast/rowcast/e2e/proc"
	"github.com/rowcast/rowcast/e2e/wire"
	"github.com/rowcast/rowcast/internal/testenv"
)

func startClusterStack(ctx context.Context, t *testing.T) (*stack, *testenv.Cluster) {
	t.Helper()
	s := startStack(ctx, t, testenv.WithTopology(testenv.ClusterShards))
	return s, s.Cluster
}

func startSentinelStack(ctx context.Context, t *testing.T) (*stack, *testenv.Sentinel) {
	t.Helper()
	s := startStack(ctx, t, testenv.WithTopology(testenv.SentinelGroup))
	return s, s.Sentinel
}

// shardRooms picks n rooms on each master of c, by the cluster's own slot
// map for the rooms' live channels.
func shardRooms(ctx context.Context, t *testing.T, c *testenv.Cluster, n int) map[*testenv.Node][]string {
	t.Helper()
	masters, err := c.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[*testenv.Node][]string{}
	for i, full := 0, 0; full < len(masters); i++ {
		room := fmt.Sprintf("c%d", i)
		m, err := c.MasterForKey(ctx, "rowcast:{"+room+"}:live")
		if err != nil {
			t.Fatal(err)
		}
		if len(out[m]) < n {
			out[m] = append(out[m], room)
			if len(out[m]) == n {
				full++
			}
		}
	}
	return out
}

func allRooms(byShard map[*testenv.Node][]string) []string {
	var rooms []string
	for _, rs := range byShard {
		rooms = append(rooms, rs...)
	}
	sort.Strings(rooms)
	return rooms
}

// subscribeAll starts subscribers and waits until each one's rooms are
// confirmed.
func subscribeAll(ctx context.Context, t *testing.T, subs []*wire.Subscriber) {
	t.Helper()
	for _, sub := range subs {
		go sub.Run(ctx)
	}
	for _, sub := range subs {
		select {
		case <-sub.Subscribed():
		case <-ctx.Done():
			t.Fatalf("a %s subscriber of %v never subscribed", sub.Transport, sub.Rooms)
		}
	}
}

// tallySubs checks every subscriber against what was committed and
// returns the fault-table row. Loss is an error unless the subscriber was
// told to reset and mayReset.
func tallySubs(t *testing.T, name string, subs []*wire.Subscriber, want map[string][]string, mayReset bool) faultRow {
	t.Helper()
	row := faultRow{fault: name}
	for _, rs := range want {
		row.rows += len(rs)
	}
	for _, sub := range subs {
		tl := count(sub, want)
		resets := 0
		for _, n := range sub.Resets() {
			resets += n
		}
		row.expected += tl.expected
		row.delivered += tl.delivered
		row.lost += tl.lost
		row.dups += tl.dups
		row.resets += resets
		if tl.lost > 0 && !(mayReset && resets > 0) {
			t.Errorf("%s subscriber %v at %s lost %d of %d rows (%s; resets %d, connections %d, controls %s)",
				sub.Transport, sub.Rooms, sub.Base, tl.lost, tl.expected, lostByRoom(sub, want), resets, sub.Connects(), describeControls(sub.Controls()))
		}
		if tl.lost > 0 {
			t.Logf("%s subscriber %v received ids: %s", sub.Transport, sub.Rooms, idRanges(sub))
		}
		if tl.dups > 0 {
			t.Errorf("%s subscriber %v got %d duplicates", sub.Transport, sub.Rooms, tl.dups)
		}
		if tl.outOfOrder > 0 {
			t.Errorf("%s subscriber %v got %d rows out of order", sub.Transport, sub.Rooms, tl.outOfOrder)
		}
	}
	if n, example := reusedIDs(subs); n > 0 {
		// An id is never reused within an epoch (DESIGN.md): a browser
		// drops the second row as a duplicate.
		t.Errorf("%s: %d event ids were given to two different rows (e.g. %s): Redis came back older than what was delivered (a failover to a replica that lagged) and reissued them", name, n, example)
	}
	return row
}

// idRanges lists the ids a subscriber received per room, in order, with
// runs of consecutive offsets folded: "c2: e-1..e-280, e-497..e-535".
func idRanges(sub *wire.Subscriber) string {
	type run struct {
		epoch      string
		first, end int
	}
	runs := map[string][]run{}
	for _, ev := range sub.Events() {
		i := strings.LastIndexByte(ev.ID, '-')
		var off int
		fmt.Sscan(ev.ID[i+1:], &off)
		epoch := ev.ID[:i]
		rs := runs[ev.Room]
		if n := len(rs); n > 0 && rs[n-1].epoch == epoch && rs[n-1].end+1 == off {
			rs[n-1].end = off
		} else {
			rs = append(rs, run{epoch, off, off})
		}
		runs[ev.Room] = rs
	}
	var parts []string
	for _, room := range sub.Rooms {
		var rs []string
		for _, r := range runs[room] {
			rs = append(rs, fmt.Sprintf("%s-%d..%d", r.epoch, r.first, r.end))
		}
		parts = append(parts, room+": "+strings.Join(rs, ", "))
	}
	return strings.Join(parts, "; ")
}

// reusedIDs counts event ids that carried different rows across subs.
func reusedIDs(subs []*wire.Subscriber) (int, string) {
	// Ids order events within a room: rooms that started an epoch in the
	// same publish share its name, so the key is room and id.
	bodies := map[string]string{}
	reused := map[string]bool{}
	example := ""
	for _, sub := range subs {
		for _, ev := range sub.Events() {
			b, key := wire.Body(ev), ev.Room+"@"+ev.ID
			if prev, ok := bodies[key]; ok && prev != b && !reused[key] {
				reused[key] = true
				example = fmt.Sprintf("%s: %s and %s", key, prev, b)
			} else if !ok {
				bodies[key] = b
			}
		}
	}
	return len(reused), example
}

// lostByRoom describes which committed rows of each room sub lacks.
func lostByRoom(sub *wire.Subscriber, want map[string][]string) string {
	got := map[string]bool{}
	for _, ev := range sub.Events() {
		got[wire.Body(ev)] = true
	}
	var parts []string
	for _, room := range sub.Rooms {
		first, last, n := "", "", 0
		for _, b := range want[room] {
			if !got[b] {
				if first == "" {
					first = b
				}
				last = b
				n++
			}
		}
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s: %d missing, %s..%s", room, n, first, last))
		}
	}
	return strings.Join(parts, "; ")
}

// appEnvFast makes an edge notice a dead Redis connection within a second.
var appEnvFast = []string{"ROWCAST_REDIS_PROBE_INTERVAL=300ms", "ROWCAST_DRAIN_TIMEOUT=1s"}

// TestClusterEdges runs three edges on a Redis Cluster with rooms on all
// three shards and clients of the same rooms spread over the edges: every
// client receives every row once, in order.
func TestClusterEdges(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, c := startClusterStack(ctx, t)
	byShard := shardRooms(ctx, t, c, 2)
	rooms := allRooms(byShard)
	startListener(ctx, t, s)
	var bases []string
	var apps []*proc.Process
	for range 3 {
		p, base := startApp(ctx, t, s, appEnvFast...)
		apps = append(apps, p)
		bases = append(bases, base)
	}
	var subs []*wire.Subscriber
	for i, base := range bases {
		for _, tr := range []wire.Transport{wire.WebSocket, wire.SSE} {
			subs = append(subs, wire.NewSubscriber(base, tr, rooms...))
			// And one client per room, on another edge each time.
			subs = append(subs, wire.NewSubscriber(base, tr, rooms[i*2:i*2+2]...))
		}
	}
	subscribeAll(ctx, t, subs)
	r := &rig{s: s, subs: subs}
	in := startInserter(ctx, s.pgURL, rooms...)
	began := time.Now()
	r.waitProgress(ctx, t, 100, "under load")
	in.finish()
	took := time.Since(began)
	want := committed(ctx, t, s.pgURL)
	r.waitAll(ctx, want)
	t.Logf("inserts ran %s, every row delivered %s after the last insert", took.Round(time.Millisecond), (time.Since(began) - took).Round(time.Millisecond))
	row := tallySubs(t, "cluster: 3 edges, 6 rooms on 3 shards", subs, want, false)
	if row.lost > 0 || row.expected == 0 {
		t.Errorf("delivered %d of %d", row.delivered, row.expected)
	}
	report(t, "cluster, 3 edges, %d subscribers, rooms %s over 3 shards: %d rows in %s, %d of %d deliveries, %d lost, %d dups",
		len(subs), strings.Join(rooms, ","), row.rows, took.Round(time.Millisecond), row.delivered, row.expected, row.lost, row.dups)
	for _, p := range apps {
		if strings.Contains(p.Output(), "level=ERROR") {
			t.Logf("edge errors:\n%s", p.Output())
		}
	}
}
