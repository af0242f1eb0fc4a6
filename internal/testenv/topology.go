package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"
	tcexec "github.com/testcontainers/testcontainers-go/exec"
)

// SentinelMaster is the name the sentinels of StartSentinel monitor the
// primary under (the master_name of the URL).
const SentinelMaster = "rowcast"

// Node is one Redis process of a topology (a data node or a sentinel) in
// its own container. Rowcast reaches it at Addr, the container's address on
// the topology's Docker network: on Linux the host routes to Docker bridge
// networks directly. Kill, Pause, Unpause, Stop and Start are the faults;
// a node started again may get another address, so topology tests kill
// nodes for good.
type Node struct {
	server
	Name string // "primary", "replica", "sentinel-1", "node-3", ...
	Addr string // container-ip:6379
}

func (n *Node) String() string { return n.Name + "@" + n.Addr }

// client returns a client for this node alone; the caller closes it.
func (n *Node) client() *goredis.Client {
	return goredis.NewClient(&goredis.Options{Addr: n.Addr, DialTimeout: time.Second, ReadTimeout: 2 * time.Second,
		MaxRetries: -1, DialerRetries: 1, PoolSize: 1, Protocol: 2})
}

// Do runs one command on this node (not following redirections).
func (n *Node) Do(ctx context.Context, args ...any) (any, error) {
	c := n.client()
	defer c.Close()
	return c.Do(ctx, args...).Result()
}

// Info returns the field of INFO, e.g. Info(ctx, "role") is "master".
func (n *Node) Info(ctx context.Context, field string) (string, error) {
	c := n.client()
	defer c.Close()
	s, err := c.Info(ctx).Result()
	if err != nil {
		return "", fmt.Errorf("info %s: %w", n, err)
	}
	return infoField(s, field), nil
}

// clusterState is cluster_state of CLUSTER INFO.
func (n *Node) clusterState(ctx context.Context) (string, error) {
	c := n.client()
	defer c.Close()
	s, err := c.ClusterInfo(ctx).Result()
	if err != nil {
		return "", fmt.Errorf("cluster info %s: %w", n, err)
	}
	return infoField(s, "cluster_state"), nil
}

// StopReplicating cuts a replica off its primary while it stays reachable
// (Sentinel and the cluster still see it, and may promote it): writes the
// primary acknowledges from now on are not on this node. It closes the
// replication link and makes the replica's next handshakes fail. (Pausing
// the container does not do this: the stream waits in its socket buffer
// and is applied on Unpause.)
func (n *Node) StopReplicating(ctx context.Context) error {
	c := n.client()
	defer c.Close()
	if err := c.ConfigSet(ctx, "masterauth", "rowcast-testenv-cut-off").Err(); err != nil {
		return fmt.Errorf("stop replicating on %s: %w", n, err)
	}
	if err := c.Do(ctx, "CLIENT", "KILL", "TYPE", "master").Err(); err != nil {
		return fmt.Errorf("stop replicating on %s: %w", n, err)
	}
	return nil
}

// ResumeReplicating undoes StopReplicating: the replica syncs again with its
// primary (if it has one still).
func (n *Node) ResumeReplicating(ctx context.Context) error {
	if _, err := n.Do(ctx, "CONFIG", "SET", "masterauth", ""); err != nil {
		return fmt.Errorf("resume replicating on %s: %w", n, err)
	}
	return nil
}

func infoField(info, field string) string {
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v
		}
	}
	return ""
}

// startNode starts one container running cmd (through the image's entry
// point) on nw under alias, and waits until it answers PING.
func startNode(ctx context.Context, t testing.TB, nw *Network, base options, name string, env map[string]string, cmd ...string) (*Node, error) {
	t.Helper()
	opts := []Option{func(o *options) { *o = base; o.network, o.aliases = nw, []string{name} }}
	s, err := start(ctx, t, "redis", redisPort, opts, func(ctx context.Context, image string, extra []testcontainers.ContainerCustomizer) (testcontainers.Container, error) {
		customizers := append([]testcontainers.ContainerCustomizer{
			testcontainers.WithExposedPorts(redisPort),
			testcontainers.WithCmd(cmd...),
			testcontainers.WithEnv(env),
			testcontainers.WithWaitStrategy(redisPing{timeout: startupTimeout}),
		}, extra...)
		c, err := testcontainers.Run(ctx, image, customizers...)
		if c == nil {
			return nil, err
		}
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	ip, err := s.ctr.ContainerIP(ctx)
	if err != nil || ip == "" {
		return nil, fmt.Errorf("%s: container address on %s: %q, %v", name, nw.Name(), ip, err)
	}
	return &Node{server: *s, Name: name, Addr: net.JoinHostPort(ip, "6379")}, nil
}

// dataNodeCmd is redis-server without persistence (WithArgs may turn it on),
// reachable from the network.
func dataNodeCmd(o options, extra ...string) []string {
	cmd := []string{"redis-server", "--protected-mode", "no", "--bind", "0.0.0.0", "--save", "", "--appendonly", "no",
		// A replica's first sync starts at once, not after the default 5 s
		// wait for more replicas to share the transfer.
		"--repl-diskless-sync-delay", "0"}
	cmd = append(cmd, extra...)
	return append(cmd, o.args...)
}

// startAll runs the start functions in parallel and returns their nodes in
// order, or the first error.
func startAll(fns ...func() (*Node, error)) ([]*Node, error) {
	nodes := make([]*Node, len(fns))
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, f := range fns {
		wg.Go(func() { nodes[i], errs[i] = f() })
	}
	wg.Wait()
	return nodes, errors.Join(errs...)
}

// waitFor polls cond every 50 ms until it returns true, or fails with what
// it last reported when ctx ends.
func waitFor(ctx context.Context, what string, cond func(ctx context.Context) (bool, error)) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		ok, err := cond(ctx)
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %v)", what, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// Sentinel is a primary, a replica and three sentinels (quorum 2) on a
// private network. Sentinels declare a silent primary down after 1 s and
// promote the replica.
type Sentinel struct {
	Primary   *Node // the primary at start; after a failover see CurrentPrimary
	Replica   *Node
	Sentinels []*Node
}

// StartSentinel starts the Sentinel topology and waits until the replica is
// in sync and every sentinel knows the replica and the two other sentinels,
// so a failover can start at once. WithArgs applies to the primary and the
// replica (e.g. persistence); WithImage to every container. Removal is
// registered with t.Cleanup.
func StartSentinel(ctx context.Context, t testing.TB, opts ...Option) (*Sentinel, error) {
	t.Helper()
	o := collect(opts)
	nw, err := NewNetwork(ctx, t)
	if err != nil {
		return nil, fmt.Errorf("start sentinel: %w", err)
	}
	primary, err := startNode(ctx, t, nw, o, "primary", nil, dataNodeCmd(o)...)
	if err != nil {
		return nil, fmt.Errorf("start sentinel: %w", err)
	}
	host, port, _ := net.SplitHostPort(primary.Addr)
	// The replica before the sentinels: a sentinel learns the replicas from
	// the primary's INFO, which it asks for only every 10 s.
	replica, err := startNode(ctx, t, nw, o, "replica", nil, dataNodeCmd(o, "--replicaof", host, port)...)
	if err != nil {
		return nil, fmt.Errorf("start sentinel: %w", err)
	}
	replicaHost, replicaPort, _ := net.SplitHostPort(replica.Addr)
	conf := strings.Join([]string{
		"port 6379",
		"bind 0.0.0.0",
		"protected-mode no",
		"sentinel monitor " + SentinelMaster + " " + host + " " + port + " 2",
		"sentinel down-after-milliseconds " + SentinelMaster + " 1000",
		"sentinel failover-timeout " + SentinelMaster + " 2000",
		"sentinel parallel-syncs " + SentinelMaster + " 1",
		"sentinel known-replica " + SentinelMaster + " " + replicaHost + " " + replicaPort,
	}, "\n") + "\n"
	// Sentinel rewrites its configuration file: it must be writable.
	sentinelCmd := []string{"sh", "-c", `printf '%s' "$SENTINEL_CONF" > /tmp/sentinel.conf && exec redis-server /tmp/sentinel.conf --sentinel`}
	var fns []func() (*Node, error)
	for i := range 3 {
		name := "sentinel-" + strconv.Itoa(i+1)
		fns = append(fns, func() (*Node, error) {
			return startNode(ctx, t, nw, o, name, map[string]string{"SENTINEL_CONF": conf}, sentinelCmd...)
		})
	}
	sentinels, err := startAll(fns...)
	if err != nil {
		return nil, fmt.Errorf("start sentinel: %w", err)
	}
	s := &Sentinel{Primary: primary, Replica: replica, Sentinels: sentinels}
	wctx, cancel := context.WithTimeout(ctx, startupTimeout)
	defer cancel()
	err = waitFor(wctx, "replica in sync and sentinels acquainted", func(ctx context.Context) (bool, error) {
		if st, err := s.Replica.Info(ctx, "master_link_status"); err != nil || st != "up" {
			return false, fmt.Errorf("replica link %q: %v", st, err)
		}
		for _, sn := range s.Sentinels {
			m, err := sentinelMaster(ctx, sn)
			if err != nil {
				return false, err
			}
			if m["num-slaves"] != "1" || m["num-other-sentinels"] != "2" {
				return false, fmt.Errorf("%s knows %s replicas, %s other sentinels", sn, m["num-slaves"], m["num-other-sentinels"])
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("start sentinel: %w", err)
	}
	return s, nil
}

// sentinelMaster returns SENTINEL MASTER's fields as seen by sn.
func sentinelMaster(ctx context.Context, sn *Node) (map[string]string, error) {
	v, err := sn.Do(ctx, "SENTINEL", "MASTER", SentinelMaster)
	if err != nil {
		return nil, fmt.Errorf("%s: sentinel master: %w", sn, err)
	}
	flat, _ := v.([]any)
	m := map[string]string{}
	for i := 0; i+1 < len(flat); i += 2 {
		k, _ := flat[i].(string)
		val, _ := flat[i+1].(string)
		m[k] = val
	}
	return m, nil
}

// URL is the REDIS_URL of this topology:
// redis+sentinel://S1?master_name=rowcast&addr=S2&addr=S3.
func (s *Sentinel) URL() string {
	return "redis+sentinel://" + s.Sentinels[0].Addr + "/0?master_name=" + SentinelMaster +
		"&addr=" + s.Sentinels[1].Addr + "&addr=" + s.Sentinels[2].Addr
}

// CurrentPrimary is the data node the sentinels name as primary (the
// first sentinel that answers).
func (s *Sentinel) CurrentPrimary(ctx context.Context) (*Node, error) {
	var errs []error
	for _, sn := range s.Sentinels {
		v, err := sn.Do(ctx, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SentinelMaster)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		hp, _ := v.([]any)
		if len(hp) != 2 {
			return nil, fmt.Errorf("%s: primary address %v", sn, v)
		}
		addr := net.JoinHostPort(fmt.Sprint(hp[0]), fmt.Sprint(hp[1]))
		for _, n := range []*Node{s.Primary, s.Replica} {
			if n.Addr == addr {
				return n, nil
			}
		}
		return nil, fmt.Errorf("%s names %s as primary, not a node of this topology", sn, addr)
	}
	return nil, fmt.Errorf("no sentinel answers: %w", errors.Join(errs...))
}

// WaitFailover waits until the sentinels have promoted a node other than
// old and that node acts as primary, and returns it.
func (s *Sentinel) WaitFailover(ctx context.Context, old *Node) (*Node, error) {
	var promoted *Node
	err := waitFor(ctx, "sentinel failover away from "+old.String(), func(ctx context.Context) (bool, error) {
		for _, sn := range s.Sentinels {
			p, err := s.currentPrimaryOf(ctx, sn)
			if err != nil {
				return false, err
			}
			if p == old {
				return false, fmt.Errorf("%s still names %s", sn, old)
			}
			promoted = p
		}
		role, err := promoted.Info(ctx, "role")
		if err != nil || role != "master" {
			return false, fmt.Errorf("%s role %q: %v", promoted, role, err)
		}
		return true, nil
	})
	return promoted, err
}

func (s *Sentinel) currentPrimaryOf(ctx context.Context, sn *Node) (*Node, error) {
	one := &Sentinel{Primary: s.Primary, Replica: s.Replica, Sentinels: []*Node{sn}}
	return one.CurrentPrimary(ctx)
}

// Cluster is a Redis Cluster of three masters with one replica each on a
// private network. A silent master is failed over by its replica after
// about 2 s (cluster-node-timeout 1000); the cluster keeps serving the
// other slots meanwhile (cluster-require-full-coverage no), sharded pub/sub
// included.
type Cluster struct {
	Nodes []*Node // node-1 .. node-6; roles change, ask Master/Masters
}

// StartCluster starts six cluster-enabled nodes in parallel, joins them with
// `redis-cli --cluster create ... --cluster-replicas 1`, and waits until
// every node reports cluster_state:ok and the same three masters.
// WithArgs applies to every node; removal is registered with t.Cleanup.
func StartCluster(ctx context.Context, t testing.TB, opts ...Option) (*Cluster, error) {
	t.Helper()
	o := collect(opts)
	nw, err := NewNetwork(ctx, t)
	if err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	cmd := dataNodeCmd(o, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
		"--cluster-node-timeout", "1000",
		// Any replica may take over, however long it was cut off.
		"--cluster-replica-validity-factor", "0",
		// The slots of a live master stay served while another fails over.
		"--cluster-require-full-coverage", "no",
		"--cluster-allow-pubsubshard-when-down", "yes")
	var fns []func() (*Node, error)
	for i := range 6 {
		name := "node-" + strconv.Itoa(i+1)
		fns = append(fns, func() (*Node, error) { return startNode(ctx, t, nw, o, name, nil, cmd...) })
	}
	nodes, err := startAll(fns...)
	if err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	c := &Cluster{Nodes: nodes}
	create := []string{"redis-cli", "--cluster", "create"}
	for _, n := range nodes {
		create = append(create, n.Addr)
	}
	create = append(create, "--cluster-replicas", "1", "--cluster-yes")
	if out, err := nodes[0].exec(ctx, create...); err != nil {
		return nil, fmt.Errorf("start cluster: %w\n%s", err, out)
	}
	wctx, cancel := context.WithTimeout(ctx, startupTimeout)
	defer cancel()
	if err := c.WaitHealthy(wctx); err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	return c, nil
}

// exec runs cmd in the node's container and returns its output; a non-zero
// exit is an error.
func (n *Node) exec(ctx context.Context, cmd ...string) (string, error) {
	code, r, err := n.ctr.Exec(ctx, cmd, tcexec.Multiplexed())
	if err != nil {
		return "", fmt.Errorf("exec %s in %s: %w", cmd[0], n.Name, err)
	}
	out, _ := io.ReadAll(r)
	if code != 0 {
		return string(out), fmt.Errorf("%s in %s exited with %d", strings.Join(cmd[:min(3, len(cmd))], " "), n.Name, code)
	}
	return string(out), nil
}

// URL is the REDIS_URL of this topology:
// redis+cluster://N1?addr=N2&addr=N3... (every node as a seed).
func (c *Cluster) URL() string {
	u := "redis+cluster://" + c.Nodes[0].Addr
	for i, n := range c.Nodes[1:] {
		sep := "&"
		if i == 0 {
			sep = "?"
		}
		u += sep + "addr=" + n.Addr
	}
	return u
}

func (c *Cluster) node(addr string) *Node {
	for _, n := range c.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// alive are the nodes not killed, stopped or paused.
func (c *Cluster) alive(ctx context.Context) []*Node {
	var out []*Node
	for _, n := range c.Nodes {
		if st, err := n.ctr.State(ctx); err == nil && st.Running && !st.Paused {
			out = append(out, n)
		}
	}
	return out
}

// slotOwners reads CLUSTER SLOTS from n: the master of each slot range.
type slotRange struct {
	start, end int
	master     *Node
}

func (c *Cluster) slotsOf(ctx context.Context, n *Node) ([]slotRange, error) {
	cl := n.client()
	defer cl.Close()
	slots, err := cl.ClusterSlots(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("%s: cluster slots: %w", n, err)
	}
	var out []slotRange
	for _, s := range slots {
		if len(s.Nodes) == 0 {
			continue
		}
		m := c.node(s.Nodes[0].Addr)
		if m == nil {
			return nil, fmt.Errorf("%s: slots %d-%d on unknown node %s", n, s.Start, s.End, s.Nodes[0].Addr)
		}
		out = append(out, slotRange{int(s.Start), int(s.End), m})
	}
	return out, nil
}

// WaitHealthy waits until every live node reports cluster_state:ok and the
// same slot map covering all 16384 slots with live masters, and every live
// replica is in sync with its master.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	return waitFor(ctx, "a healthy cluster", func(ctx context.Context) (bool, error) {
		var first []slotRange
		for i, n := range c.alive(ctx) {
			if st, err := n.clusterState(ctx); err != nil || st != "ok" {
				return false, fmt.Errorf("%s: cluster_state %q %v", n, st, err)
			}
			if role, err := n.Info(ctx, "role"); err != nil {
				return false, err
			} else if role == "slave" {
				if st, err := n.Info(ctx, "master_link_status"); err != nil || st != "up" {
					return false, fmt.Errorf("%s: master_link_status %q %v", n, st, err)
				}
			}
			m, err := c.slotsOf(ctx, n)
			if err != nil {
				return false, err
			}
			covered := 0
			for _, r := range m {
				covered += r.end - r.start + 1
				if st, err := r.master.ctr.State(ctx); err != nil || !st.Running || st.Paused {
					return false, fmt.Errorf("%s: slots %d-%d on %s, which is down", n, r.start, r.end, r.master)
				}
			}
			if covered != 16384 {
				return false, fmt.Errorf("%s: %d slots covered", n, covered)
			}
			slices.SortFunc(m, func(a, b slotRange) int { return a.start - b.start })
			if i == 0 {
				first = m
			} else if !slices.Equal(first, m) {
				return false, fmt.Errorf("%s disagrees on the slot map", n)
			}
		}
		return first != nil, nil
	})
}

// Slot is the hash slot of key (CLUSTER KEYSLOT).
func (c *Cluster) Slot(ctx context.Context, key string) (int, error) {
	for _, n := range c.alive(ctx) {
		v, err := n.Do(ctx, "CLUSTER", "KEYSLOT", key)
		if err == nil {
			s, _ := v.(int64)
			return int(s), nil
		}
	}
	return 0, errors.New("cluster keyslot: no node answers")
}

// Master is the master of slot as a live node sees it.
func (c *Cluster) Master(ctx context.Context, slot int) (*Node, error) {
	var errs []error
	for _, n := range c.alive(ctx) {
		m, err := c.slotsOf(ctx, n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, r := range m {
			if r.start <= slot && slot <= r.end {
				return r.master, nil
			}
		}
		return nil, fmt.Errorf("%s: slot %d is not served", n, slot)
	}
	return nil, fmt.Errorf("master of slot %d: %w", slot, errors.Join(errs...))
}

// MasterForKey is the master of key's slot.
func (c *Cluster) MasterForKey(ctx context.Context, key string) (*Node, error) {
	slot, err := c.Slot(ctx, key)
	if err != nil {
		return nil, err
	}
	return c.Master(ctx, slot)
}

// Masters are the nodes that serve slots, as a live node sees it.
func (c *Cluster) Masters(ctx context.Context) ([]*Node, error) {
	for _, n := range c.alive(ctx) {
		m, err := c.slotsOf(ctx, n)
		if err != nil {
			continue
		}
		var out []*Node
		for _, r := range m {
			if !slices.Contains(out, r.master) {
				out = append(out, r.master)
			}
		}
		return out, nil
	}
	return nil, errors.New("cluster masters: no node answers")
}

// WaitFailover waits until old's slots are served by another live node and
// the cluster is healthy again, and returns the node that took over.
func (c *Cluster) WaitFailover(ctx context.Context, old *Node, slot int) (*Node, error) {
	var promoted *Node
	err := waitFor(ctx, "cluster failover away from "+old.String(), func(ctx context.Context) (bool, error) {
		m, err := c.Master(ctx, slot)
		if err != nil {
			return false, err
		}
		if m == old {
			return false, fmt.Errorf("slot %d still on %s", slot, old)
		}
		promoted = m
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	return promoted, c.WaitHealthy(ctx)
}

// MoveSlot migrates slot with its keys to the master to, the way
// `redis-cli --cluster reshard` does it: IMPORTING on to, MIGRATING on the
// owner, MIGRATE of every key, then SETSLOT NODE on both and the other
// masters. It returns once every live node agrees.
func (c *Cluster) MoveSlot(ctx context.Context, slot int, to *Node) error {
	from, err := c.Master(ctx, slot)
	if err != nil {
		return err
	}
	if from == to {
		return nil
	}
	id := func(n *Node) (string, error) {
		v, err := n.Do(ctx, "CLUSTER", "MYID")
		s, _ := v.(string)
		return s, err
	}
	fromID, err := id(from)
	if err != nil {
		return fmt.Errorf("move slot %d: %w", slot, err)
	}
	toID, err := id(to)
	if err != nil {
		return fmt.Errorf("move slot %d: %w", slot, err)
	}
	toHost, toPort, _ := net.SplitHostPort(to.Addr)
	steps := []struct {
		n    *Node
		args []any
	}{
		{to, []any{"CLUSTER", "SETSLOT", slot, "IMPORTING", fromID}},
		{from, []any{"CLUSTER", "SETSLOT", slot, "MIGRATING", toID}},
	}
	for _, s := range steps {
		if _, err := s.n.Do(ctx, s.args...); err != nil {
			return fmt.Errorf("move slot %d: %s %v: %w", slot, s.n, s.args, err)
		}
	}
	for {
		v, err := from.Do(ctx, "CLUSTER", "GETKEYSINSLOT", slot, 100)
		if err != nil {
			return fmt.Errorf("move slot %d: getkeysinslot: %w", slot, err)
		}
		keys, _ := v.([]any)
		if len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", toHost, toPort, "", 0, 5000, "KEYS"}
		args = append(args, keys...)
		if _, err := from.Do(ctx, args...); err != nil {
			return fmt.Errorf("move slot %d: migrate: %w", slot, err)
		}
	}
	masters, err := c.Masters(ctx)
	if err != nil {
		return err
	}
	// The new owner first, then the old one (which then tells its clients),
	// then the others, as redis-cli does.
	order := []*Node{to, from}
	for _, m := range masters {
		if m != to && m != from {
			order = append(order, m)
		}
	}
	for _, n := range order {
		if _, err := n.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", toID); err != nil {
			return fmt.Errorf("move slot %d: %s setslot node: %w", slot, n, err)
		}
	}
	return waitFor(ctx, fmt.Sprintf("slot %d on %s everywhere", slot, to), func(ctx context.Context) (bool, error) {
		for _, n := range c.alive(ctx) {
			m, err := c.slotsOf(ctx, n)
			if err != nil {
				return false, err
			}
			for _, r := range m {
				if r.start <= slot && slot <= r.end && r.master != to {
					return false, fmt.Errorf("%s: slot %d on %s", n, slot, r.master)
				}
			}
		}
		return true, nil
	})
}

// Replica returns a live replica of master.
func (c *Cluster) Replica(ctx context.Context, master *Node) (*Node, error) {
	for _, n := range c.alive(ctx) {
		if n == master {
			continue
		}
		host, _ := n.Info(ctx, "master_host")
		port, _ := n.Info(ctx, "master_port")
		if host != "" && net.JoinHostPort(host, port) == master.Addr {
			return n, nil
		}
	}
	return nil, fmt.Errorf("no live replica of %s", master)
}
