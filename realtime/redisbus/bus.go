package redisbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rowcast/rowcast/internal/retry"
	"github.com/rowcast/rowcast/realtime"
)

// Options tune a Bus. Zero values take the defaults.
type Options struct {
	// ProbeInterval is how often each subscription connection is proven by
	// a probe message sent through Redis and back; one unanswered for an
	// interval means the subscription is dead and it is replaced. Default 5 s.
	ProbeInterval time.Duration
	// MaxBackoff caps the wait between reconnect attempts. Default 5 s.
	MaxBackoff time.Duration
	Logger     *slog.Logger
	// OnReconnect, if set, is called each time a failed session is replaced.
	OnReconnect func()
	// HistoryTTL is the lifetime given to the epoch of a room that has none
	// yet when a client joins it; the listener's publishes extend it.
	// Default 24 h (the listener's default history TTL).
	HistoryTTL time.Duration
}

// Bus implements realtime.Bus on Redis sharded pub/sub (SSUBSCRIBE) and
// streams. On one server or behind Sentinel it holds one subscription
// connection for the whole process; on a Redis Cluster one per master, each
// carrying the rooms whose slot that master serves (a master without rooms
// keeps one too, carrying only its probe, so that Connected covers every
// shard and a first room there joins at once), and it follows failovers and
// slot moves on its own. All methods may be called concurrently.
//
// Each subscription connection has its own reader goroutine, so on a
// Cluster the handler is called from one goroutine per master (the Hub
// locks per room): a slow catch-up of one shard's rooms does not hold up
// the others'. A room is delivered by one connection at a time, except for
// the moment its slot moves, when the Hub drops the duplicates by id.
type Bus struct {
	client  redis.UniversalClient
	cluster *redis.ClusterClient // nil outside a Cluster
	kind    pubsubKind
	opts    Options
	log     *slog.Logger

	mu      sync.Mutex
	wanted  map[string]struct{}        // channels that should be subscribed
	waiters map[string][]chan struct{} // Subscribe calls waiting for confirmation
	owner   map[string]*shard          // channel -> the shard serving it; absent: not placed yet
	shards  map[string]*shard          // by master address ("" outside a Cluster)
	slots   *slotMap                   // Cluster: the last slot map read, nil before the first
	run     *running                   // set while Run runs
	wake    chan struct{}              // Cluster: asks the topology loop to re-read the slot map
}

// running is what Run hands to the shards it starts.
type running struct {
	ctx context.Context
	h   realtime.Handler
	wg  sync.WaitGroup
}

// shard is one subscription connection (renewed after each failure): to the
// single server, to the primary Sentinel names, or to one Cluster master.
// Its fields are guarded by Bus.mu.
type shard struct {
	addr   string                // the master's address; "" outside a Cluster
	client redis.UniversalClient // subscribes and probes; the Bus's own client outside a Cluster
	owned  bool                  // client was made for this shard: close it when the shard ends
	stop   context.CancelFunc
	rooms  map[string]struct{} // channels placed here
	ps     *redis.PubSub       // the current session's, nil while reconnecting
	up     bool                // the current session's last probe came back
	// leaving counts SUNSUBSCRIBEs sent in the current session and not yet
	// confirmed, so that a confirmation Redis sends on its own (the slot
	// left this master) is told apart.
	leaving map[string]int
}

var _ realtime.Bus = (*Bus)(nil)

// New returns a Bus on client: a *redis.Client (one server, or Sentinel's
// failover client) or a *redis.ClusterClient. Call Run to start delivery.
func New(client redis.UniversalClient, opts Options) *Bus {
	if opts.ProbeInterval <= 0 {
		opts.ProbeInterval = 5 * time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Second
	}
	if opts.HistoryTTL <= 0 {
		opts.HistoryTTL = 24 * time.Hour
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	cc, _ := client.(*redis.ClusterClient)
	return &Bus{
		client:  client,
		cluster: cc,
		kind:    kindFor(client),
		opts:    opts,
		log:     opts.Logger,
		wanted:  map[string]struct{}{},
		waiters: map[string][]chan struct{}{},
		owner:   map[string]*shard{},
		shards:  map[string]*shard{},
		wake:    make(chan struct{}, 1),
	}
}

// Connected reports whether every subscription connection is up and its
// last probe came back (on a Cluster: one per master).
func (b *Bus) Connected() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.shards) == 0 {
		return false
	}
	for _, sh := range b.shards {
		if !sh.up {
			return false
		}
	}
	return true
}

// Run keeps the subscription connections alive until ctx ends, delivering
// to h. Each outage is logged once, when it starts, and once when it ends.
func (b *Bus) Run(ctx context.Context, h realtime.Handler) error {
	r := &running{ctx: ctx, h: h}
	b.mu.Lock()
	b.run = r
	if b.cluster == nil {
		sh := b.startShardLocked("", b.client, false)
		for ch := range b.wanted {
			b.placeLocked(ch, sh)
		}
	}
	b.mu.Unlock()
	if b.cluster != nil {
		b.followTopology(ctx)
	} else {
		<-ctx.Done()
	}
	r.wg.Wait()
	b.mu.Lock()
	b.run = nil
	clear(b.shards)
	clear(b.owner)
	b.mu.Unlock()
	return nil
}

// startShardLocked starts a shard's reconnect loop. b.mu is held and Run is
// running.
func (b *Bus) startShardLocked(addr string, client redis.UniversalClient, owned bool) *shard {
	ctx, stop := context.WithCancel(b.run.ctx)
	sh := &shard{addr: addr, client: client, owned: owned, stop: stop, rooms: map[string]struct{}{}}
	b.shards[addr] = sh
	r := b.run
	r.wg.Go(func() {
		defer stop()
		if owned {
			defer client.Close()
		}
		b.runShard(ctx, sh, r.h)
	})
	return sh
}

// stopShardLocked ends a shard that no longer serves slots; its rooms are
// left to be placed again.
func (b *Bus) stopShardLocked(sh *shard) {
	sh.stop()
	if b.shards[sh.addr] == sh {
		delete(b.shards, sh.addr)
	}
	for ch := range sh.rooms {
		if b.owner[ch] == sh {
			delete(b.owner, ch)
		}
	}
	clear(sh.rooms)
}

// placeLocked makes sh serve ch and returns the subscription to send the
// SSUBSCRIBE on, or nil when sh's next session will subscribe it.
func (b *Bus) placeLocked(ch string, sh *shard) *redis.PubSub {
	if old := b.owner[ch]; old != nil && old != sh {
		// No SUNSUBSCRIBE: the old master is gone or no longer serves the
		// slot (and unsubscribed it itself).
		delete(old.rooms, ch)
	}
	b.owner[ch] = sh
	sh.rooms[ch] = struct{}{}
	return sh.ps
}

// shardForLocked returns the shard that should serve ch, nil when it is not
// known yet (no slot map, or its master has no shard yet).
func (b *Bus) shardForLocked(ch string) *shard {
	if b.cluster == nil {
		return b.shards[""]
	}
	if b.slots == nil {
		return nil
	}
	addr := b.slots.master(slotOf(ch))
	if addr == "" {
		return nil
	}
	return b.shards[addr]
}

// runShard keeps one shard's subscription alive until ctx ends.
func (b *Bus) runShard(ctx context.Context, sh *shard, h realtime.Handler) {
	what := "redis subscription"
	if sh.addr != "" {
		what += " to " + sh.addr
	}
	p := retry.Policy{Min: 100 * time.Millisecond, Max: b.opts.MaxBackoff, Log: b.log, What: what,
		OnRetry: func(error) {
			if b.opts.OnReconnect != nil {
				b.opts.OnReconnect()
			}
			// The master may have failed over: re-read the slot map.
			b.refresh()
		}}
	retry.Loop(ctx, p, func(ctx context.Context, up func()) error {
		return b.session(ctx, sh, h, up)
	})
}

// refresh asks the topology loop to re-read the slot map (Cluster only).
func (b *Bus) refresh() {
	if b.cluster == nil {
		return
	}
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// session owns one subscription connection of sh until it fails. Besides
// the rooms it subscribes a probe channel of its own and publishes to it
// every ProbeInterval: a probe that does not come back within another
// interval means the subscription stopped delivering (a dead connection, or
// a subscription silently lost in a failover), and the session is replaced,
// which resubscribes and catches up every room. On a Cluster the probe
// channel hashes to a slot of sh's master, and the probe goes straight to
// that master.
func (b *Bus) session(ctx context.Context, sh *shard, h realtime.Handler, up func()) error {
	ps := b.kind.open(ctx, sh.client)
	defer ps.Close()
	// A blocked receive does not watch ctx: closing the subscription ends
	// it at once when the process stops.
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer stop()

	b.mu.Lock()
	probeCh, err := b.probeChannelLocked(sh)
	if err != nil {
		b.mu.Unlock()
		return err
	}
	channels := make([]string, 0, len(sh.rooms)+1)
	channels = append(channels, probeCh)
	for ch := range sh.rooms {
		channels = append(channels, ch)
	}
	sh.ps, sh.leaving = ps, map[string]int{}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		if sh.ps == ps {
			sh.ps, sh.up = nil, false
		}
		b.mu.Unlock()
	}()
	// A Cluster refuses one SSUBSCRIBE over several slots.
	for _, group := range b.bySlot(channels) {
		if err := b.kind.subscribe(ctx, ps, group...); err != nil {
			return fmt.Errorf("subscribe %d rooms: %w", len(channels)-1, err)
		}
	}

	var (
		probeSent   time.Time // zero: no probe outstanding
		lastProbeOK = time.Now()
		nonce       int64
	)
	sendProbe := func() error {
		nonce++
		pctx, cancel := context.WithTimeout(ctx, b.opts.ProbeInterval)
		defer cancel()
		if err := b.kind.publish(pctx, sh.client, probeCh, nonce); err != nil {
			return fmt.Errorf("publish probe: %w", err)
		}
		probeSent = time.Now()
		return nil
	}
	if err := sendProbe(); err != nil {
		return err
	}
	for {
		if probeSent.IsZero() && time.Since(lastProbeOK) >= b.opts.ProbeInterval {
			if err := sendProbe(); err != nil {
				return err
			}
		}
		if !probeSent.IsZero() && time.Since(probeSent) > b.opts.ProbeInterval {
			return fmt.Errorf("subscription stopped delivering: probe unanswered for %s", time.Since(probeSent).Round(time.Millisecond))
		}
		msg, err := ps.ReceiveTimeout(ctx, b.opts.ProbeInterval/2)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if isTimeout(err) {
				continue
			}
			if slot, ok := movedSlot(err); ok && slot != slotOf(probeCh) {
				// An SSUBSCRIBE reached a master that no longer serves
				// the slot: place its rooms again.
				b.moved(sh, slot)
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			switch {
			case m.Channel == probeCh && m.Kind == b.kind.unsubscribed():
				return errors.New("the probe channel's slot left this master")
			case m.Channel == probeCh:
			case m.Kind == b.kind.subscribed():
				b.confirmed(ctx, h, sh, m.Channel)
			case m.Kind == b.kind.unsubscribed():
				if err := b.unsubscribed(sh, m.Channel); err != nil {
					return err
				}
			}
		case *redis.Message:
			if m.Channel == probeCh {
				if m.Payload == strconv.FormatInt(nonce, 10) {
					probeSent, lastProbeOK = time.Time{}, time.Now()
					b.mu.Lock()
					wasUp := sh.up
					sh.up = true
					b.mu.Unlock()
					if !wasUp {
						up()
					}
				}
				continue
			}
			room, ok := roomOfChannel(m.Channel)
			if !ok {
				continue
			}
			ev, err := realtime.ParseMessage(room, []byte(m.Payload))
			if err != nil {
				b.log.Warn("drop malformed event", "room", room, "err", err)
				continue
			}
			h.HandleMessage(ctx, ev)
		}
	}
}

// bySlot groups channels by hash slot on a Cluster; elsewhere they go in
// one group.
func (b *Bus) bySlot(channels []string) [][]string {
	if b.cluster == nil {
		return [][]string{channels}
	}
	idx := map[int]int{}
	var groups [][]string
	for _, ch := range channels {
		s := slotOf(ch)
		i, ok := idx[s]
		if !ok {
			i = len(groups)
			idx[s] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], ch)
	}
	return groups
}

// probeChannelLocked returns a channel no other process uses; on a Cluster
// one whose slot sh's master serves.
func (b *Bus) probeChannelLocked(sh *shard) (string, error) {
	id, err := newEpoch()
	if err != nil {
		return "", err
	}
	if b.cluster == nil {
		return "rowcast:probe:" + id, nil
	}
	if b.slots == nil {
		return "", errors.New("no slot map yet")
	}
	for i, start := 0, rand.IntN(1<<20); i < 1<<16; i++ {
		tag := "p" + strconv.Itoa(start+i)
		if b.slots.master(slotOf("{"+tag+"}")) == sh.addr {
			return "rowcast:{" + tag + "}:probe:" + id, nil
		}
	}
	return "", fmt.Errorf("%s serves no slot", sh.addr)
}

// confirmed handles Redis' confirmation of a subscription: it releases the
// Subscribe calls waiting for it, or, when none waits, the subscription was
// re-established after an outage or a move, and the room is caught up.
func (b *Bus) confirmed(ctx context.Context, h realtime.Handler, sh *shard, ch string) {
	b.mu.Lock()
	if b.owner[ch] != sh || sh.leaving[ch] > 0 {
		// Placed elsewhere since, or being unsubscribed here: the
		// confirmation that counts comes later.
		b.mu.Unlock()
		return
	}
	ws := b.waiters[ch]
	delete(b.waiters, ch)
	_, wanted := b.wanted[ch]
	b.mu.Unlock()
	for _, w := range ws {
		close(w)
	}
	if len(ws) == 0 && wanted {
		if room, ok := roomOfChannel(ch); ok {
			h.HandleResubscribed(ctx, room)
		}
	}
}

// unsubscribed handles an SUNSUBSCRIBE confirmation. One Redis sends
// unasked means the channel's slot left this master (a move or a
// failover): the room is placed again from a fresh slot map.
func (b *Bus) unsubscribed(sh *shard, ch string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n := sh.leaving[ch]; n > 0 {
		if n == 1 {
			delete(sh.leaving, ch)
		} else {
			sh.leaving[ch] = n - 1
		}
		return nil
	}
	if b.owner[ch] != sh {
		return nil
	}
	if b.cluster == nil {
		return fmt.Errorf("redis ended the subscription of %s", ch)
	}
	delete(b.owner, ch)
	delete(sh.rooms, ch)
	b.refresh()
	return nil
}

// moved handles a MOVED reply to an SSUBSCRIBE on sh: the rooms of that
// slot are placed again from a fresh slot map.
func (b *Bus) moved(sh *shard, slot int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range sh.rooms {
		if slotOf(ch) == slot && b.owner[ch] == sh {
			delete(b.owner, ch)
			delete(sh.rooms, ch)
		}
	}
	b.refresh()
}

// movedSlot reports the slot of a "MOVED <slot> <addr>" error.
func movedSlot(err error) (int, bool) {
	var re redis.Error
	if !errors.As(err, &re) {
		return 0, false
	}
	f := strings.Fields(re.Error())
	if len(f) != 3 || f[0] != "MOVED" {
		return 0, false
	}
	slot, err := strconv.Atoi(f[1])
	return slot, err == nil
}

// followTopology keeps one shard per Cluster master and every wanted room
// on the shard of its slot's master. It re-reads the slot map when a shard
// fails, a slot leaves a master, or a room waits to be placed; again and
// again (backing off) while a shard is down, since a failover shows in the
// slot map only seconds after the master died; and every 30 s in any case.
func (b *Bus) followTopology(ctx context.Context) {
	const minInterval = 100 * time.Millisecond
	backoff := minInterval
	failing := false
	periodic := time.NewTicker(30 * time.Second)
	defer periodic.Stop()
	b.refresh()
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.wake:
		case <-periodic.C:
		}
		err := b.resync(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			if !failing {
				b.log.Error("redis cluster slot map failed; retrying", "err", err)
				failing = true
			}
			backoff = min(2*backoff, b.opts.MaxBackoff)
			b.refresh()
		case !b.Connected():
			// Wait for the failover (or the network) with a growing pause.
			backoff = min(2*backoff, b.opts.MaxBackoff)
			b.refresh()
		default:
			if failing {
				b.log.Info("redis cluster slot map restored")
				failing = false
			}
			backoff = minInterval
		}
		// Coalesce bursts (every room of a failed master asks at once).
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
	}
}

// resync reads the slot map and places every wanted room on the shard of
// its master, starting shards for new masters and stopping those of nodes
// that serve no slot any more.
func (b *Bus) resync(ctx context.Context) error {
	m, err := b.readSlots(ctx)
	if err != nil {
		return err
	}
	type sub struct {
		ps *redis.PubSub
		ch string
	}
	var subs []sub
	unplaced := 0
	b.mu.Lock()
	if b.run == nil {
		b.mu.Unlock()
		return nil
	}
	b.slots = m
	for _, addr := range m.masters {
		if b.shards[addr] == nil {
			b.startShardLocked(addr, b.nodeClient(addr), true)
		}
	}
	for addr, sh := range b.shards {
		if !m.serves(addr) {
			b.stopShardLocked(sh)
		}
	}
	for ch := range b.wanted {
		sh := b.shardForLocked(ch)
		if sh == nil {
			unplaced++
			continue
		}
		if b.owner[ch] == sh {
			continue
		}
		if ps := b.placeLocked(ch, sh); ps != nil {
			subs = append(subs, sub{ps, ch})
		}
	}
	b.mu.Unlock()
	for _, s := range subs {
		// A failed write ends that session; its next one subscribes.
		_ = b.kind.subscribe(ctx, s.ps, s.ch)
	}
	if unplaced > 0 {
		return fmt.Errorf("%d rooms in slots no master serves", unplaced)
	}
	return nil
}

// nodeClient returns a client for one Cluster node with the Cluster
// client's dialer, credentials, TLS and timeouts.
func (b *Bus) nodeClient(addr string) *redis.Client {
	o := b.cluster.Options()
	return redis.NewClient(&redis.Options{
		Addr:                  addr,
		Dialer:                o.Dialer,
		Protocol:              o.Protocol,
		Username:              o.Username,
		Password:              o.Password,
		CredentialsProvider:   o.CredentialsProvider,
		TLSConfig:             o.TLSConfig,
		ClientName:            o.ClientName,
		MaxRetries:            o.MaxRetries,
		DialTimeout:           o.DialTimeout,
		DialerRetries:         o.DialerRetries,
		DialerRetryTimeout:    o.DialerRetryTimeout,
		ReadTimeout:           o.ReadTimeout,
		WriteTimeout:          o.WriteTimeout,
		ContextTimeoutEnabled: o.ContextTimeoutEnabled,
		PoolSize:              2, // the probe's publishes; the subscription has its own
	})
}

// readSlots asks the known nodes, in random order, for CLUSTER SLOTS until
// one answers.
func (b *Bus) readSlots(ctx context.Context) (*slotMap, error) {
	b.mu.Lock()
	addrs := append([]string(nil), b.cluster.Options().Addrs...)
	if b.slots != nil {
		addrs = append(addrs, b.slots.nodes...)
	}
	b.mu.Unlock()
	rand.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
	seen := map[string]bool{}
	var errs []error
	for _, addr := range addrs {
		if seen[addr] {
			continue
		}
		seen[addr] = true
		m, err := b.readSlotsFrom(ctx, addr)
		if err == nil {
			return m, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("read cluster slots: %w", errors.Join(errs...))
}

func (b *Bus) readSlotsFrom(ctx context.Context, addr string) (*slotMap, error) {
	c := b.nodeClient(addr)
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	ranges, err := c.ClusterSlots(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	m := &slotMap{}
	index := map[string]uint16{}
	nodes := map[string]bool{}
	for _, r := range ranges {
		if len(r.Nodes) == 0 || r.Start < 0 || r.End >= slotCount || r.Start > r.End {
			continue
		}
		master := r.Nodes[0].Addr
		if strings.HasPrefix(master, ":") {
			// A node that does not know its own address: the one asked.
			host, _, _ := net.SplitHostPort(addr)
			master = host + master
		}
		i, ok := index[master]
		if !ok {
			m.masters = append(m.masters, master)
			i = uint16(len(m.masters))
			index[master] = i
		}
		for s := r.Start; s <= r.End; s++ {
			m.owner[s] = i
		}
		for _, n := range r.Nodes {
			if !nodes[n.Addr] && !strings.HasPrefix(n.Addr, ":") {
				nodes[n.Addr] = true
				m.nodes = append(m.nodes, n.Addr)
			}
		}
	}
	if len(m.masters) == 0 {
		return nil, fmt.Errorf("%s: no slot served", addr)
	}
	return m, nil
}

// slotMap is a Cluster's slot -> master map, as one node saw it.
type slotMap struct {
	owner   [slotCount]uint16 // index into masters, plus one; 0: not served
	masters []string
	nodes   []string // every node named, replicas included
}

func (m *slotMap) master(slot int) string {
	if i := m.owner[slot]; i > 0 {
		return m.masters[i-1]
	}
	return ""
}

func (m *slotMap) serves(addr string) bool {
	for _, a := range m.masters {
		if a == addr {
			return true
		}
	}
	return false
}

// Subscribe implements realtime.Bus. It returns once the master serving
// the room's slot confirmed the subscription.
func (b *Bus) Subscribe(ctx context.Context, room realtime.Room) (realtime.ID, error) {
	k := keysFor(room)
	done := make(chan struct{})
	b.mu.Lock()
	b.wanted[k.channel] = struct{}{}
	b.waiters[k.channel] = append(b.waiters[k.channel], done)
	var ps *redis.PubSub
	if sh := b.owner[k.channel]; sh != nil {
		ps = sh.ps
	} else if sh := b.shardForLocked(k.channel); sh != nil && b.run != nil {
		ps = b.placeLocked(k.channel, sh)
	} else {
		b.refresh()
	}
	b.mu.Unlock()
	if ps != nil {
		// If this write fails, the session ends and the next one subscribes
		// every channel placed on it, which confirms this one.
		_ = b.kind.subscribe(ctx, ps, k.channel)
	}
	select {
	case <-done:
	case <-ctx.Done():
		b.mu.Lock()
		b.dropWaiter(k.channel, done)
		b.mu.Unlock()
		return realtime.ID{}, fmt.Errorf("subscribe %q: %w: %w", room, realtime.ErrUnavailable, ctx.Err())
	}
	id, err := b.position(ctx, k)
	if err != nil {
		return realtime.ID{}, fmt.Errorf("subscribe %q: %w", room, err)
	}
	return id, nil
}

func (b *Bus) dropWaiter(ch string, w chan struct{}) {
	ws := b.waiters[ch]
	for i, x := range ws {
		if x == w {
			b.waiters[ch] = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(b.waiters[ch]) == 0 {
		delete(b.waiters, ch)
	}
}

// Unsubscribe implements realtime.Bus.
func (b *Bus) Unsubscribe(ctx context.Context, room realtime.Room) error {
	k := keysFor(room)
	b.mu.Lock()
	delete(b.wanted, k.channel)
	sh := b.owner[k.channel]
	delete(b.owner, k.channel)
	var ps *redis.PubSub
	if sh != nil {
		delete(sh.rooms, k.channel)
		if ps = sh.ps; ps != nil {
			sh.leaving[k.channel]++
		}
	}
	b.mu.Unlock()
	if ps == nil {
		return nil
	}
	if err := b.kind.unsubscribe(ctx, ps, k.channel); err != nil {
		return fmt.Errorf("unsubscribe %q: %w", room, err)
	}
	return nil
}

// positionScript returns a room's epoch and offset, giving a room that has
// none its epoch now, so a client that joins before the first event can
// still resume from "offset 0 of this epoch". KEYS: epoch, seq. ARGV:
// candidate epoch, ttl ms.
var positionScript = redis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[2])
end
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]) or '0'}
`)

func (b *Bus) position(ctx context.Context, k roomKeys) (realtime.ID, error) {
	epoch, err := newEpoch()
	if err != nil {
		return realtime.ID{}, err
	}
	res, err := positionScript.Run(ctx, b.client, []string{k.epoch, k.seq}, epoch, b.opts.HistoryTTL.Milliseconds()).StringSlice()
	if err != nil {
		return realtime.ID{}, fmt.Errorf("read position: %w", err)
	}
	off, err := strconv.ParseUint(res[1], 10, 64)
	if err != nil {
		return realtime.ID{}, fmt.Errorf("read position: offset %q: %w", res[1], err)
	}
	return realtime.ID{Epoch: res[0], Offset: off}, nil
}

// History implements realtime.Bus.
func (b *Bus) History(ctx context.Context, room realtime.Room, after realtime.ID) ([]realtime.Message, error) {
	k := keysFor(room)
	pipe := b.client.Pipeline()
	epochCmd := pipe.Get(ctx, k.epoch)
	seqCmd := pipe.Get(ctx, k.seq)
	rangeCmd := pipe.XRange(ctx, k.history, strconv.FormatUint(after.Offset+1, 10)+"-0", "+")
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("history %q: %w", room, err)
	}
	epoch, _ := epochCmd.Result()
	if epoch == "" || epoch != after.Epoch {
		return nil, fmt.Errorf("history %q after %s: epoch is %q: %w", room, after, epoch, realtime.ErrHistoryLost)
	}
	seq, _ := seqCmd.Uint64()
	if seq < after.Offset {
		// Redis went back in time within the epoch (a failover or a
		// restore). The ids seen stay valid: the listener never gives an
		// id of an epoch twice, so the room's next event either continues
		// after `after` (what was lost was only an unrecorded publish that
		// it repeats as is) or starts a new epoch, and a client is told to
		// reset then. Nothing newer is held now.
		return nil, nil
	}
	entries, _ := rangeCmd.Result()
	msgs := make([]realtime.Message, 0, len(entries))
	next := after.Offset + 1
	for _, e := range entries {
		off, _, _ := strings.Cut(e.ID, "-")
		if n, _ := strconv.ParseUint(off, 10, 64); n != next {
			return nil, fmt.Errorf("history %q after %s: oldest held is %s: %w", room, after, e.ID, realtime.ErrHistoryLost)
		}
		data, _ := e.Values["e"].(string)
		m, err := realtime.ParseMessage(room, []byte(data))
		if err != nil {
			return nil, fmt.Errorf("history %q entry %s: %w", room, e.ID, err)
		}
		msgs = append(msgs, m)
		next++
	}
	if next <= seq {
		return nil, fmt.Errorf("history %q after %s: %d of %d events held: %w", room, after, len(msgs), seq-after.Offset, realtime.ErrHistoryLost)
	}
	return msgs, nil
}

// Retained implements realtime.Bus.
func (b *Bus) Retained(ctx context.Context, room realtime.Room) ([]realtime.Message, uint64, error) {
	k := keysFor(room)
	pipe := b.client.Pipeline()
	epochCmd := pipe.Get(ctx, k.epoch)
	seqCmd := pipe.Get(ctx, k.seq)
	maxCmd := pipe.Get(ctx, k.maxTx)
	rangeCmd := pipe.XRange(ctx, k.history, "-", "+")
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, 0, fmt.Errorf("history %q: %w", room, err)
	}
	epoch, _ := epochCmd.Result()
	maxTx, _ := maxCmd.Uint64()
	if epoch == "" {
		// Never used, or expired with its events: those are older than
		// the history TTL, which Origin lets the caller check.
		return nil, maxTx, nil
	}
	seq, _ := seqCmd.Uint64()
	entries, _ := rangeCmd.Result()
	if len(entries) == 0 {
		return nil, maxTx, nil // every event is below the room's highest
	}
	msgs := make([]realtime.Message, 0, len(entries))
	var first, next uint64
	for i, e := range entries {
		off, _, _ := strings.Cut(e.ID, "-")
		n, _ := strconv.ParseUint(off, 10, 64)
		if i == 0 {
			first, next = n, n
		}
		if n != next {
			return nil, 0, fmt.Errorf("history %q: entry %s after %d: %w", room, e.ID, next-1, realtime.ErrHistoryLost)
		}
		data, _ := e.Values["e"].(string)
		m, err := realtime.ParseMessage(room, []byte(data))
		if err != nil {
			return nil, 0, fmt.Errorf("history %q entry %s: %w", room, e.ID, err)
		}
		msgs = append(msgs, m)
		next++
	}
	if next <= seq {
		return nil, 0, fmt.Errorf("history %q: holds up to %d of %d: %w", room, next-1, seq, realtime.ErrHistoryLost)
	}
	floor, err := strconv.ParseUint(fmt.Sprint(entries[0].Values["f"]), 10, 64)
	if err != nil {
		// An entry written before floors were: nothing is known of what
		// came before it, unless nothing did.
		floor = math.MaxUint64
		if first == 1 {
			floor = 0
		}
	}
	return msgs, floor, nil
}

// sourceKey holds the id of the database whose events the bus carries; the
// leading listener writes it (Publisher.Announce).
const sourceKey = "rowcast:source"

// Origin implements realtime.Bus.
func (b *Bus) Origin(ctx context.Context) (realtime.Origin, error) {
	src, err := b.client.Get(ctx, sourceKey).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return realtime.Origin{}, fmt.Errorf("read the source database's id: %w", err)
	}
	return realtime.Origin{Source: src, HistoryTTL: b.opts.HistoryTTL}, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
