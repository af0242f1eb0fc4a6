package redisbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rowcast/rowcast/internal/retry"
	"github.com/rowcast/rowcast/realtime"
)

// Options tune a Bus. Zero values take the defaults.
type Options struct {
	// ProbeInterval is how often the subscription is proven by a probe
	// message sent through Redis and back; one unanswered for an interval
	// means the subscription is dead and it is replaced. Default 5 s.
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

// Bus implements realtime.Bus on Redis pub/sub and streams. One Bus holds
// one subscription connection for the whole process. All methods may be
// called concurrently.
type Bus struct {
	client redis.UniversalClient
	opts   Options
	log    *slog.Logger

	connected atomic.Bool

	mu      sync.Mutex
	ps      *redis.PubSub              // the current session's, nil while reconnecting
	wanted  map[string]struct{}        // channels that should be subscribed
	waiters map[string][]chan struct{} // Subscribe calls waiting for confirmation
}

var _ realtime.Bus = (*Bus)(nil)

// New returns a Bus on client. Call Run to start delivery.
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
	return &Bus{
		client:  client,
		opts:    opts,
		log:     opts.Logger,
		wanted:  map[string]struct{}{},
		waiters: map[string][]chan struct{}{},
	}
}

// Connected reports whether the subscription is up and its last probe came
// back.
func (b *Bus) Connected() bool { return b.connected.Load() }

// Run keeps one subscription session alive until ctx ends, delivering to h.
// Each outage is logged once, when it starts, and once when it ends.
func (b *Bus) Run(ctx context.Context, h realtime.Handler) error {
	p := retry.Policy{Min: 100 * time.Millisecond, Max: b.opts.MaxBackoff, Log: b.log, What: "redis subscription",
		OnRetry: func(error) {
			if b.opts.OnReconnect != nil {
				b.opts.OnReconnect()
			}
		}}
	retry.Loop(ctx, p, func(ctx context.Context, up func()) error {
		defer b.connected.Store(false)
		return b.session(ctx, h, up)
	})
	return nil
}

// session owns one subscription connection until it fails. Besides the
// rooms it subscribes a probe channel of its own and publishes to it every
// ProbeInterval through the ordinary client: a probe that does not come back
// within another interval means the subscription stopped delivering (a dead
// connection, or a subscription silently lost in a failover), and the session
// is replaced, which resubscribes and catches up every room.
func (b *Bus) session(ctx context.Context, h realtime.Handler, up func()) error {
	ps := b.client.SSubscribe(ctx)
	defer ps.Close()
	// A blocked receive does not watch ctx: closing the subscription ends
	// it at once when the process stops.
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer stop()

	probeCh, err := probeChannel()
	if err != nil {
		return err
	}
	b.mu.Lock()
	channels := make([]string, 0, len(b.wanted)+1)
	channels = append(channels, probeCh)
	for ch := range b.wanted {
		channels = append(channels, ch)
	}
	b.ps = ps
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.ps = nil
		b.mu.Unlock()
	}()
	if err := ps.SSubscribe(ctx, channels...); err != nil {
		return fmt.Errorf("subscribe %d rooms: %w", len(channels)-1, err)
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
		if err := b.client.SPublish(pctx, probeCh, nonce).Err(); err != nil {
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
			if !isTimeout(err) {
				return fmt.Errorf("receive: %w", err)
			}
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "ssubscribe" && m.Channel != probeCh {
				b.confirmed(ctx, h, m.Channel)
			}
		case *redis.Message:
			if m.Channel == probeCh {
				if m.Payload == strconv.FormatInt(nonce, 10) {
					probeSent, lastProbeOK = time.Time{}, time.Now()
					if !b.connected.Swap(true) {
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

// probeChannel returns a channel name no other process uses.
func probeChannel() (string, error) {
	id, err := newEpoch()
	if err != nil {
		return "", err
	}
	return "rowcast:probe:" + id, nil
}

// confirmed handles Redis' confirmation of a subscription: it releases the
// Subscribe calls waiting for it, or, when none waits, the subscription was
// re-established after an outage and the room is caught up.
func (b *Bus) confirmed(ctx context.Context, h realtime.Handler, ch string) {
	b.mu.Lock()
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

// Subscribe implements realtime.Bus.
func (b *Bus) Subscribe(ctx context.Context, room realtime.Room) (realtime.ID, error) {
	k := keysFor(room)
	done := make(chan struct{})
	b.mu.Lock()
	b.wanted[k.channel] = struct{}{}
	b.waiters[k.channel] = append(b.waiters[k.channel], done)
	ps := b.ps
	b.mu.Unlock()
	if ps != nil {
		// If this write fails, the session ends and the next one subscribes
		// every wanted channel, which confirms this one.
		_ = ps.SSubscribe(ctx, k.channel)
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
	ps := b.ps
	b.mu.Unlock()
	if ps == nil {
		return nil
	}
	if err := ps.SUnsubscribe(ctx, k.channel); err != nil {
		return fmt.Errorf("unsubscribe %q: %w", room, err)
	}
	return nil
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

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
