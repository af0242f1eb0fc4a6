package redisbus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rowcast/rowcast/realtime"
)

// Event is one outbox row ready to publish. Tail is the encoded event
// without its id: the members after "id", starting with ',' and ending with
// the closing '}'. The publish script prepends the id it assigns.
type Event struct {
	OutboxID int64
	Room     realtime.Room
	Tail     []byte
}

// HistoryLimits bounds each room's history.
type HistoryLimits struct {
	Len int           // newest events kept per room (approximately, never fewer)
	TTL time.Duration // a room idle this long is forgotten (its next event starts a new epoch)
}

// dedupeKeep is how many recent outbox ids per room are remembered to make a
// repeated publish a no-op.
const dedupeKeep = 10000

// publishScript appends one room's events. It runs atomically, so offsets
// have no holes and the history, the live channel and the dedupe set agree.
//
// KEYS: epoch, seq, history, published. ARGV: candidate epoch, history
// length, ttl ms, dedupe keep, channel, then pairs of (outbox id, tail).
var publishScript = redis.NewScript(`
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local epoch = redis.call('GET', KEYS[1])
local n = 0
for i = 6, #ARGV, 2 do
  if redis.call('ZADD', KEYS[4], 'NX', ARGV[i], ARGV[i]) == 1 then
    local off = redis.call('INCR', KEYS[2])
    local msg = '{"id":"' .. epoch .. '-' .. off .. '"' .. ARGV[i+1]
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], off .. '-0', 'e', msg)
    redis.call('SPUBLISH', ARGV[5], msg)
    n = n + 1
  end
end
if n > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -(tonumber(ARGV[4]) + 1))
end
for k = 1, 4 do
  redis.call('PEXPIRE', KEYS[k], ARGV[3])
end
return n
`)

// Publisher appends events to rooms' histories and live channels. It is safe
// for concurrent use.
type Publisher struct {
	client redis.UniversalClient
	limits HistoryLimits
}

// NewPublisher returns a Publisher writing through client.
func NewPublisher(client redis.UniversalClient, limits HistoryLimits) *Publisher {
	return &Publisher{client: client, limits: limits}
}

// Publish appends events in order, one script call per room, all in one
// round trip. Publishing an outbox id again is a no-op, so a batch may be
// retried after any failure. It returns how many events were new.
func (p *Publisher) Publish(ctx context.Context, events []Event) (int, error) {
	if len(events) == 0 {
		return 0, nil
	}
	n, err := p.publishOnce(ctx, events)
	if err != nil && isNoScript(err) {
		// Redis restarted and lost its script cache: load and retry.
		if lerr := publishScript.Load(ctx, p.client).Err(); lerr != nil {
			return 0, fmt.Errorf("load publish script: %w", lerr)
		}
		n, err = p.publishOnce(ctx, events)
	}
	return n, err
}

func (p *Publisher) publishOnce(ctx context.Context, events []Event) (int, error) {
	epoch, err := newEpoch()
	if err != nil {
		return 0, err
	}
	// Group by room, keeping each room's order.
	var rooms []realtime.Room
	byRoom := map[realtime.Room][]any{}
	for _, e := range events {
		args, ok := byRoom[e.Room]
		if !ok {
			rooms = append(rooms, e.Room)
			args = []any{epoch, p.limits.Len, p.limits.TTL.Milliseconds(), dedupeKeep, keysFor(e.Room).channel}
		}
		byRoom[e.Room] = append(args, e.OutboxID, e.Tail)
	}
	pipe := p.client.Pipeline()
	cmds := make([]*redis.Cmd, len(rooms))
	for i, r := range rooms {
		k := keysFor(r)
		cmds[i] = publishScript.EvalSha(ctx, pipe, []string{k.epoch, k.seq, k.history, k.published}, byRoom[r]...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, fmt.Errorf("publish %d events: %w", len(events), err)
	}
	total := 0
	for _, c := range cmds {
		n, err := c.Int()
		if err != nil {
			return 0, fmt.Errorf("publish result: %w", err)
		}
		total += n
	}
	return total, nil
}

func isNoScript(err error) bool {
	return err != nil && strings.Contains(err.Error(), "NOSCRIPT")
}

// newEpoch returns a random epoch; the script keeps it only for a room that
// has none.
func newEpoch() (string, error) {
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("new epoch: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}
