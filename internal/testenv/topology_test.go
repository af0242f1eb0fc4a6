package testenv_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rowcast/rowcast/internal/connect"
	"github.com/rowcast/rowcast/internal/testenv"
)

func topologyClient(t *testing.T, url string) redis.UniversalClient {
	t.Helper()
	c, err := connect.Redis(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestSentinelLaggingReplicaPromoted checks the Sentinel topology from the
// host through its URL, and that its faults do what fault tests need: with
// the replica frozen, writes acknowledged by the primary are lost when the
// primary is killed and the replica promoted.
func TestSentinelLaggingReplicaPromoted(t *testing.T) {
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
	t.Logf("sentinel topology up in %s: %s", time.Since(began).Round(time.Millisecond), s.URL())

	rdb := topologyClient(t, s.URL())
	if err := rdb.Set(ctx, "before", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	// The replica has it before it is frozen.
	if err := rdb.Do(ctx, "WAIT", 1, 5000).Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.Replica.StopReplicating(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := rdb.Set(ctx, "during-"+strconv.Itoa(i), "1", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Primary.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if err := s.Replica.ResumeReplicating(ctx); err != nil {
		t.Fatal(err)
	}
	promoted, err := s.WaitFailover(ctx, s.Primary)
	if err != nil {
		t.Fatal(err)
	}
	if promoted != s.Replica {
		t.Fatalf("promoted %s", promoted)
	}
	t.Logf("replica promoted %s after the kill", time.Since(killed).Round(time.Millisecond))

	// The same client follows the new primary.
	var n int64
	for {
		n, err = rdb.Exists(ctx, "before", "during-0", "during-9").Result()
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("client never reached the new primary: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if n != 1 {
		t.Fatalf("%d of the keys exist on the promoted replica, want 1 (the writes made while it lagged are lost)", n)
	}
}

// TestClusterFailoverAndSlotMove checks the Cluster topology from the host
// through its URL, a master's failover to its replica while the other
// shards keep serving, and a slot migration.
func TestClusterFailoverAndSlotMove(t *testing.T) {
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
	t.Logf("cluster up in %s: %s", time.Since(began).Round(time.Millisecond), c.URL())

	rdb := topologyClient(t, c.URL())
	masters, err := c.Masters(ctx)
	if err != nil || len(masters) != 3 {
		t.Fatalf("masters %v, %v", masters, err)
	}
	// One key per master.
	keys := map[*testenv.Node]string{}
	for i := 0; len(keys) < 3; i++ {
		k := fmt.Sprintf("{k%d}:x", i)
		m, err := c.MasterForKey(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := keys[m]; !ok {
			keys[m] = k
			if err := rdb.Set(ctx, k, "1", 0).Err(); err != nil {
				t.Fatal(err)
			}
			if _, err := m.Do(ctx, "WAIT", 1, 1000); err != nil {
				t.Fatal(err)
			}
		}
	}

	victim := masters[0]
	replica, err := c.Replica(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	slot, _ := c.Slot(ctx, keys[victim])
	if err := victim.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	// The other masters' keys stay writable during the failover.
	for _, m := range masters[1:] {
		n := m.Name
		if _, err := m.Do(ctx, "SET", keys[m], "2"); err != nil {
			t.Fatalf("%s refused a write while another master failed over: %v", n, err)
		}
	}
	promoted, err := c.WaitFailover(ctx, victim, slot)
	if err != nil {
		t.Fatal(err)
	}
	if promoted != replica {
		t.Fatalf("promoted %s, want its replica %s", promoted, replica)
	}
	t.Logf("replica promoted and cluster healthy %s after the kill", time.Since(killed).Round(time.Millisecond))

	if v, err := promoted.Do(ctx, "GET", keys[victim]); err != nil || v != "1" {
		t.Fatalf("key on the promoted replica %s: %v, %v", promoted, v, err)
	}
	// Move the key's slot to another master.
	to := masters[1]
	moveBegan := time.Now()
	if err := c.MoveSlot(ctx, slot, to); err != nil {
		t.Fatal(err)
	}
	t.Logf("slot %d moved in %s", slot, time.Since(moveBegan).Round(time.Millisecond))
	if v, err := to.Do(ctx, "GET", keys[victim]); err != nil || v != "1" {
		t.Fatalf("moved key on %s: %v, %v", to, v, err)
	}
	if m, err := c.Master(ctx, slot); err != nil || m != to {
		t.Fatalf("slot %d on %v, %v", slot, m, err)
	}
}
