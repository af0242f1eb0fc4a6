package redisbus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rowcast/rowcast/realtime"
)

// Event is one captured change ready to publish (see realtime.Event).
type Event = realtime.Event

// HistoryLimits bounds each room's history.
type HistoryLimits struct {
	Len int           // newest events kept per room (approximately, never fewer)
	TTL time.Duration // a room idle this long is forgotten (its next event starts a new epoch)
}

// dedupeKeep is how many recent outbox ids per room are remembered to make a
// repeated publish a no-op.
const dedupeKeep = 10000

// publishScript appends one room's events after checking that Redis is where
// Postgres recorded the room (see Publisher.Publish). It runs atomically, so
// offsets have no holes and the history, the live channel and the dedupe set
// (member: outbox id, score: the offset it got) agree.
//
// KEYS: epoch, seq, history, published, maxtx. ARGV: 1 candidate epoch, 2
// history length, 3 ttl ms, 4 dedupe keep, 5 channel, 6 recorded epoch, 7
// recorded offset, 8 recorded run, 9 unsure ("1" or "0"), 10 the publish
// command (PUBLISH or SPUBLISH), 11 whether to read the run_id ("1" or "0";
// INFO is the script's costliest call, so the publisher asks about once a
// second per room, and always when unsure), 12 the recorded highest
// transaction id, then pairs of (outbox id, tail).
// Returns {epoch, offset, run or "" when not read, new events, why a new
// epoch began or "", highest transaction id}.
//
// Each history entry stores, beside the event, the highest transaction id
// of the room's events before it ("f", the floor): a snapshot position
// whose xmin is above the oldest entry's floor saw everything trimmed or
// lost before it (see Bus.Retained).
var publishScript = redis.NewScript(`
-- The server's run_id changes with every restart and failover. A Redis
-- that will not tell gives '' and is never trusted to have kept a publish.
local recEpoch, recOff, recRun, unsure = ARGV[6], tonumber(ARGV[7]), ARGV[8], ARGV[9] == '1'
local run = ''
if unsure or ARGV[11] == '1' then
  local ok, info = pcall(redis.call, 'INFO', 'server')
  run = ok and string.match(info, 'run_id:(%x+)') or ''
end
local epoch = redis.call('GET', KEYS[1])
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')

local function check()
  if not epoch then
    if recEpoch == '' then return '' end
    return 'epoch missing'
  end
  if recEpoch ~= '' and epoch ~= recEpoch then return 'epoch changed' end
  if seq < recOff then return 'offset went back' end
  -- Nothing may sit past the counter (an evicted counter). A counter at
  -- the recorded offset of this epoch was not evicted (it would read 0),
  -- so the common case skips these two reads.
  if seq == recOff and recOff > 0 and not unsure then return '' end
  local top = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
  if top[2] and tonumber(top[2]) > seq then return 'counter behind dedupe set' end
  local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
  if last[1] and tonumber(string.match(last[1][1], '^(%d+)')) > seq then return 'counter behind history' end
  -- A publish Postgres never recorded may have happened, and Redis has
  -- restarted since: it may have lost it, which nothing can tell.
  if unsure and (run ~= recRun or run == '') then return 'unrecorded publish, then a restart' end
  if seq > recOff then
    -- Redis is ahead: only a publish that was not recorded, of rows still in
    -- the outbox (so in this batch), explains it.
    local batch = {}
    for i = 13, #ARGV, 2 do batch[ARGV[i]] = true end
    local ahead = redis.call('ZRANGE', KEYS[4], '(' .. recOff, seq, 'BYSCORE')
    if #ahead ~= seq - recOff then return 'ahead, not explained' end
    for _, id in ipairs(ahead) do
      if not batch[id] then return 'ahead, not explained' end
    end
  end
  return ''
end

local why = check()
if why ~= '' or not epoch then
  epoch = ARGV[1]
  seq = 0
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
  redis.call('SET', KEYS[1], epoch)
end
-- The floor never goes down: a new epoch keeps what Postgres recorded.
local maxtx = math.max(tonumber(redis.call('GET', KEYS[5]) or '0'), tonumber(ARGV[12]))
local n = 0
for i = 13, #ARGV, 2 do
  if redis.call('ZADD', KEYS[4], 'NX', seq + 1, ARGV[i]) == 1 then
    seq = seq + 1
    local msg = '{"id":"' .. epoch .. '-' .. seq .. '"' .. ARGV[i+1]
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'e', msg, 'f', string.format('%.0f', maxtx))
    redis.call(ARGV[10], ARGV[5], msg)
    maxtx = math.max(maxtx, tonumber(string.match(ARGV[i+1], '^,"tx":(%d+)') or '0'))
    n = n + 1
  end
end
if n > 0 then
  redis.call('SET', KEYS[2], seq)
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -(tonumber(ARGV[4]) + 1))
end
redis.call('SET', KEYS[5], string.format('%.0f', maxtx))
for k = 1, 5 do
  redis.call('PEXPIRE', KEYS[k], ARGV[3])
end
return {epoch, seq, run, n, why, string.format('%.0f', maxtx)}
`)

// Publisher appends events to rooms' histories and live channels. It is safe
// for concurrent use.
type Publisher struct {
	client redis.UniversalClient
	limits HistoryLimits
	kind   pubsubKind
	// argLen and argTTL are limits as script arguments, boxed once.
	argLen, argTTL any

	mu   sync.Mutex
	runs map[realtime.Room]seenRun // the run_id each room's server last told
}

// seenRun is a run_id and when a script read it.
type seenRun struct {
	id string
	at time.Time
}

// runRefresh is how often a room's script is asked for the server's run_id.
// A position recorded with a run_id up to this old is safe: a run_id is
// never reused, so an older one can only make a later check find a restart
// where there was none (a needless reset), never miss one.
const runRefresh = time.Second

// NewPublisher returns a Publisher writing through client.
func NewPublisher(client redis.UniversalClient, limits HistoryLimits) *Publisher {
	return &Publisher{client: client, limits: limits, kind: kindFor(client), runs: map[realtime.Room]seenRun{},
		argLen: limits.Len, argTTL: limits.TTL.Milliseconds()}
}

// Sharded reports whether the publisher writes to a Cluster, where one
// master can fail while the others work.
func (p *Publisher) Sharded() bool { return p.kind.sharded }

// Result is what one Publish did (see realtime.PublishResult).
type Result = realtime.PublishResult

// Publish appends events in order, one script call per room, all in one
// round trip. Postgres is the record and Redis a cache of it: each room's
// script first checks Redis against the position recorded in Postgres
// (recorded; a room missing from it has none yet), and when Redis forgot
// the room or went back in time (a snapshot restore, a failover to a lagging
// replica, an evicted key) the room starts a new epoch, so an id is never
// given twice within an epoch and clients are told to reset instead of
// missing rows silently. Publishing an outbox id again is a no-op, so a
// batch may be retried after any failure.
//
// On a Cluster one unreachable shard does not hold back the others: the
// rooms it failed are in Result.Failed and the error is nil. The error is
// set only when no room was published.
func (p *Publisher) Publish(ctx context.Context, events []Event, recorded map[realtime.Room]realtime.Position) (Result, error) {
	res := Result{Positions: map[realtime.Room]realtime.Position{}}
	if len(events) == 0 {
		return res, nil
	}
	if err := p.publishOnce(ctx, events, recorded, &res); err != nil {
		return Result{}, err
	}
	// A server that restarted or took over lost its script cache: load the
	// script (on every master) and publish those rooms again.
	var again []Event
	for _, e := range events {
		if isNoScript(res.Failed[e.Room]) {
			again = append(again, e)
		}
	}
	if len(again) > 0 {
		if err := publishScript.Load(ctx, p.client).Err(); err != nil {
			return Result{}, fmt.Errorf("load publish script: %w", err)
		}
		for _, e := range again {
			delete(res.Failed, e.Room)
		}
		if err := p.publishOnce(ctx, again, recorded, &res); err != nil {
			return Result{}, err
		}
	}
	if len(res.Positions) == 0 {
		for _, err := range res.Failed {
			return Result{}, fmt.Errorf("publish %d events: %w", len(events), err)
		}
	}
	return res, nil
}

// publishOnce runs the script for each room of events and adds the outcome
// to res.
func (p *Publisher) publishOnce(ctx context.Context, events []Event, recorded map[realtime.Room]realtime.Position, res *Result) error {
	epoch, err := newEpoch()
	if err != nil {
		return err
	}
	// Group by room, keeping each room's order.
	var rooms []realtime.Room
	byRoom := map[realtime.Room]*scriptCall{}
	now := time.Now()
	p.mu.Lock()
	for _, e := range events {
		c, ok := byRoom[e.Room]
		if !ok {
			rooms = append(rooms, e.Room)
			rec := recorded[e.Room]
			readRun := "0"
			if seen, ok := p.runs[e.Room]; !ok || now.Sub(seen.at) >= runRefresh {
				readRun = "1"
			}
			k := keysFor(e.Room)
			c = &scriptCall{keys: []string{k.epoch, k.seq, k.history, k.published, k.maxTx}}
			c.args = append(make([]any, 0, 14), epoch, p.argLen, p.argTTL, argDedupeKeep, k.channel,
				rec.Last.Epoch, rec.Last.Offset, rec.Run, flag(rec.Unsure), p.kind.publishCommand(), readRun, rec.MaxTx)
			byRoom[e.Room] = c
		}
		c.args = append(c.args, e.OutboxID, e.Tail)
	}
	p.mu.Unlock()
	cmds := p.run(ctx, rooms, byRoom)
	for i, c := range cmds {
		out, err := c.Slice()
		if err == nil && len(out) != 6 {
			err = fmt.Errorf("publish script answered %v", out)
		}
		if err != nil {
			if res.Failed == nil {
				res.Failed = map[realtime.Room]error{}
			}
			res.Failed[rooms[i]] = fmt.Errorf("room %q: %w", rooms[i], err)
			continue
		}
		ep, _ := out[0].(string)
		off, _ := out[1].(int64)
		run, _ := out[2].(string)
		n, _ := out[3].(int64)
		why, _ := out[4].(string)
		maxTx, _ := out[5].(string)
		p.mu.Lock()
		if run != "" {
			if len(p.runs) >= maxSeenRuns {
				p.forgetOldRunsLocked(now)
			}
			p.runs[rooms[i]] = seenRun{id: run, at: now}
		} else {
			run = p.runs[rooms[i]].id
		}
		p.mu.Unlock()
		mt, _ := strconv.ParseUint(maxTx, 10, 64)
		res.Positions[rooms[i]] = realtime.Position{Last: realtime.ID{Epoch: ep, Offset: uint64(off)}, Run: run, MaxTx: mt}
		res.New += int(n)
		if why != "" {
			if res.Restarted == nil {
				res.Restarted = map[realtime.Room]string{}
			}
			res.Restarted[rooms[i]] = why
		}
	}
	return nil
}

// Announce tells edges which database the events come from, so they can
// refuse another database's snapshot positions. The leading listener calls
// it when it starts and now and then (a Redis restart loses it).
func (p *Publisher) Announce(ctx context.Context, source string) error {
	if err := p.client.Set(ctx, sourceKey, source, 0).Err(); err != nil {
		return fmt.Errorf("announce source database %s: %w", source, err)
	}
	return nil
}

// stragglerWait is how long run waits for the other masters of a Cluster
// once one answered. A master that takes longer (down: the dial alone takes
// a second) has its rooms reported failed, outcome unknown; the relay sends
// them again as they were, which is safe even if the late pipeline lands.
const stragglerWait = 250 * time.Millisecond

// run sends each room's script with its args in one round trip per server,
// and returns one finished command per room (its result or its error), in
// the order of rooms. On a Cluster each master gets its own pipeline, all at
// once: a master that is down fails its rooms alone instead of holding the
// others until its replica takes over.
func (p *Publisher) run(ctx context.Context, rooms []realtime.Room, calls map[realtime.Room]*scriptCall) []*redis.Cmd {
	cmds := make([]*redis.Cmd, len(rooms))
	queue := func(pipe redis.Pipeliner, i int) *redis.Cmd {
		c := calls[rooms[i]]
		return publishScript.EvalSha(ctx, pipe, c.keys, c.args...)
	}
	failed := func(err error) *redis.Cmd {
		c := redis.NewCmd(ctx)
		c.SetErr(err)
		return c
	}
	cluster, ok := p.client.(*redis.ClusterClient)
	if !ok {
		pipe := p.client.Pipeline()
		for i := range rooms {
			cmds[i] = queue(pipe, i)
		}
		_, _ = pipe.Exec(ctx)
		return cmds
	}
	byNode := map[*redis.Client][]int{}
	for i, r := range rooms {
		node, err := cluster.MasterForKey(ctx, calls[r].keys[0])
		if err != nil {
			cmds[i] = failed(fmt.Errorf("find its master: %w", err))
			continue
		}
		byNode[node] = append(byNode[node], i)
	}
	type done struct {
		idx  []int
		cmds []*redis.Cmd
	}
	results := make(chan done, len(byNode)) // buffered: a late pipeline never blocks
	for node, idx := range byNode {
		go func() {
			pipe := node.Pipeline()
			nodeCmds := make([]*redis.Cmd, len(idx))
			for j, i := range idx {
				nodeCmds[j] = queue(pipe, i)
			}
			_, _ = pipe.Exec(ctx)
			results <- done{idx, nodeCmds}
		}()
	}
	var deadline <-chan time.Time
	for range byNode {
		select {
		case d := <-results:
			for j, i := range d.idx {
				cmds[i] = d.cmds[j]
			}
			if deadline == nil {
				deadline = time.After(stragglerWait)
			}
			continue
		case <-deadline:
		}
		break
	}
	for i, c := range cmds {
		if c == nil {
			cmds[i] = failed(fmt.Errorf("its master did not answer within %s of the others: outcome unknown", stragglerWait))
		}
	}
	return cmds
}

// scriptCall is one room's run of the publish script: its keys (epoch,
// seq, history, published, maxtx) and its arguments.
type scriptCall struct {
	keys []string
	args []any
}

// argDedupeKeep is dedupeKeep as a script argument, boxed once.
var argDedupeKeep any = dedupeKeep

// maxSeenRuns bounds the run_id cache; past it, entries too old to be used
// are dropped (a dropped room's next script reads the run_id again).
const maxSeenRuns = 4096

func (p *Publisher) forgetOldRunsLocked(now time.Time) {
	for r, seen := range p.runs {
		if now.Sub(seen.at) >= runRefresh {
			delete(p.runs, r)
		}
	}
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
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
