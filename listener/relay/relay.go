// Package relay is the listener's worker: it holds leadership with a
// Postgres advisory lock, waits for NOTIFY wake-ups (and polls slowly as a
// safety net), and moves outbox rows to Redis in batches: one outbox query
// and one Redis round trip per batch, rows removed only after Redis accepted
// them.
package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rowcast/rowcast/internal/retry"
	"github.com/rowcast/rowcast/listener/outbox"
	"github.com/rowcast/rowcast/realtime"
	"github.com/rowcast/rowcast/realtime/redisbus"
)

// Channel is the NOTIFY channel the capture trigger signals.
const Channel = "rowcast"

// LockKey is the advisory lock that elects the one active relay.
const LockKey int64 = 0x726f7763617374 // "rowcast"

// stuckRetry paces the retries of rooms stuck on an unreachable Cluster
// master when nothing else went through.
const stuckRetry = 250 * time.Millisecond

// opTimeout bounds one outbox query: a stalled Postgres ends the session
// (and it reconnects) instead of hanging the relay.
const opTimeout = 15 * time.Second

// Config tunes a Relay.
type Config struct {
	BatchSize     int           // rows per outbox query and Redis round trip
	PollInterval  time.Duration // safety poll, and how often a standby retries the lock
	MaxEventBytes int           // larger rows travel truncated
	MaxBackoff    time.Duration // cap on the wait between reconnects
	// Exclusive makes a relay that finds the lock taken stop (Run returns
	// ErrAnotherLeader) instead of standing by: an app relaying to its own
	// in-process bus cannot share events with another process's.
	Exclusive bool
	// ForgetAfter is how long a room's recorded position is kept after its
	// last publish (0: forever). Redis forgets an idle room after its
	// history TTL, so a position older than that describes nothing Redis
	// still holds.
	ForgetAfter time.Duration
}

// Relay moves outbox rows to Redis. Run it once per process.
type Relay struct {
	cfg     Config
	connect func(ctx context.Context) (*pgx.Conn, error) // the LISTEN connection
	store   *outbox.Store
	pub     realtime.Publisher
	log     *slog.Logger

	// OnBatch, if set before Run, is called after each batch Redis accepted
	// (for metrics).
	OnBatch func(BatchReport)

	lastForget   time.Time                           // used by the session goroutine only
	lastAnnounce time.Time                           // used by the session goroutine only
	stuck        map[realtime.Room]stuckRoom         // the session's rooms to publish again; see publish
	known        map[realtime.Room]realtime.Position // the session's marked rooms, as recorded; see positions
	recent       *idSet                              // outbox ids the session published; see notified
	maxRead      int64                               // highest outbox id the session read from the outbox
	awake        bool                                // writers may believe the session drains (state Drain): it must sleep before waiting
	fence        int64                               // after a sleep: transactions below it may have read Drain (0: none)
	fencePause   time.Duration                       // wait between outbox reads while the fence is pending

	leader    atomic.Bool
	readyOnce sync.Once
	ready     chan struct{}
	published atomic.Int64

	wal *walCapture // set by CaptureWAL: the leader reads a replication slot instead of the outbox
}

// New returns a Relay. connect opens the direct (not pooled through
// PgBouncer) connection that holds the lock and LISTENs.
func New(cfg Config, connect func(ctx context.Context) (*pgx.Conn, error), store *outbox.Store, pub realtime.Publisher, log *slog.Logger) *Relay {
	return &Relay{cfg: cfg, connect: connect, store: store, pub: pub, log: log, ready: make(chan struct{})}
}

// Ready is closed once this relay has become leader and drained the backlog
// for the first time.
func (r *Relay) Ready() <-chan struct{} { return r.ready }

// Leader reports whether this relay holds the leadership now.
func (r *Relay) Leader() bool { return r.leader.Load() }

// Published returns how many events this relay has published.
func (r *Relay) Published() int64 { return r.published.Load() }

// Run works until ctx ends, reconnecting with backoff. It returns nil on
// cancellation, and ErrAnotherLeader when an Exclusive relay finds the lock
// taken.
func (r *Relay) Run(ctx context.Context) error {
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	retry.Loop(ctx, r.retryPolicy("listener session"), func(ctx context.Context, up func()) error {
		err := r.session(ctx, up)
		if errors.Is(err, ErrAnotherLeader) {
			stop(err)
		}
		return err
	})
	if err := context.Cause(ctx); errors.Is(err, ErrAnotherLeader) {
		return err
	}
	return nil
}

// ErrAnotherLeader is returned by an Exclusive relay's Run when another
// process holds the leader lock.
var ErrAnotherLeader = errors.New("another process relays this database")

func (r *Relay) retryPolicy(what string) retry.Policy {
	return retry.Policy{Min: 100 * time.Millisecond, Max: r.cfg.MaxBackoff, Log: r.log, What: what}
}

// session owns one LISTEN connection: wait for the lock, LISTEN, drain, then
// drain on every wake-up until the connection fails.
func (r *Relay) session(ctx context.Context, up func()) error {
	conn, err := r.connect(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	defer r.leader.Store(false)
	up()

	if err := r.acquire(ctx, conn); err != nil {
		return err
	}
	r.leader.Store(true)
	// The session's name marks the rooms whose rows it claims: a later
	// leader that finds the mark knows a publish may not have been recorded.
	session, err := newSession()
	if err != nil {
		return err
	}
	// What another session left unpublished comes back from the outbox,
	// marked as claimed by it.
	r.stuck = map[realtime.Room]stuckRoom{}
	r.known = map[realtime.Room]realtime.Position{}
	r.recent, r.maxRead = newIDSet(recentIDs), 0
	// A leader that died while draining left writers silent: the first
	// drain ends with the sleep that wakes them up again.
	r.awake, r.fence = r.wal == nil, 0
	// Releasing matters when the process stays up (a standby takes over at
	// once); closing the connection releases it too.
	defer func() {
		if conn.IsClosed() {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_, _ = conn.Exec(rctx, "SELECT pg_advisory_unlock($1)", LockKey)
	}()
	r.announce(ctx)
	if r.wal != nil {
		return r.relayWAL(ctx, conn, session)
	}
	return r.relayOutbox(ctx, conn, session)
}

// relayOutbox is the leader's work in NOTIFY mode: LISTEN, drain the
// outbox, then drain on every wake-up until the connection fails or ctx
// ends.
func (r *Relay) relayOutbox(ctx context.Context, conn *pgx.Conn, session string) error {
	r.log.Info("leading: relaying outbox", "session", session)
	if _, err := conn.Exec(ctx, "LISTEN "+Channel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if err := r.checkNotifyMode(ctx); err != nil {
		return err
	}
	// LISTEN first, then drain: a row committed in between wakes us again.
	if err := r.drain(ctx, session, nil); err != nil {
		return err
	}
	r.readyOnce.Do(func() { close(r.ready) })

	// One deadline per safety poll, not a timer per wake-up.
	nextPoll := time.Now().Add(r.cfg.PollInterval)
	var poll struct {
		ctx  context.Context
		stop context.CancelFunc
	}
	poll.ctx, poll.stop = context.WithDeadline(ctx, nextPoll)
	defer func() { poll.stop() }()
	for {
		wctx, cancel := poll.ctx, noCancel
		if r.fence != 0 {
			// While writers that may have missed the sleep are still open,
			// wake up often to read what they commit (see sleep).
			wctx, cancel = context.WithTimeout(poll.ctx, r.fencePause)
		}
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if ctx.Err() != nil {
			r.release(ctx, session)
			return nil
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("wait for notification: %w", err)
		}
		if err != nil && !time.Now().Before(nextPoll) {
			// Safety poll: prove the LISTEN connection (a half-open one
			// would otherwise go unnoticed) and drain what NOTIFY missed.
			pctx, cancel := context.WithTimeout(ctx, r.pingTimeout())
			perr := conn.Ping(pctx)
			cancel()
			if perr != nil {
				return fmt.Errorf("ping listen connection: %w", perr)
			}
			r.upkeep(ctx, session)
			nextPoll = time.Now().Add(r.cfg.PollInterval)
			poll.stop()
			poll.ctx, poll.stop = context.WithDeadline(ctx, nextPoll)
		}
		var first []outbox.Row
		if err == nil {
			row, how := r.notified(n.Payload)
			if how == alreadyPublished {
				continue
			}
			if how == publishIt {
				first = []outbox.Row{row}
			}
		}
		if err := r.drain(ctx, session, first); err != nil {
			return err
		}
	}
}

func noCancel() {}

// recentIDs bounds the outbox ids a session remembers as published.
const recentIDs = 1 << 16

// notifiedAction is what to do about one notification.
type notifiedAction int

const (
	readOutbox       notifiedAction = iota // a plain wake-up, or a row that may have been read already
	publishIt                              // the row it carries, published without reading the outbox
	alreadyPublished                       // a row this session published: nothing to do
)

// notified decides what a notification asks for. The trigger sends each
// row in its notification (see migration 00004), and publishing it straight
// away saves the outbox read between a commit and the browsers. The
// notification of a row that a read of the outbox already brought is
// skipped. A row is published from its notification only when no read of
// this session can have returned it (its id is above every id read; ids
// are handed out before commit, so a row below that mark may still be
// new, and then the outbox is read instead): a row published twice would
// rely on Redis's bounded dedupe set to be dropped. With rooms stuck on a
// failed shard, rows must wait behind them: the outbox is read.
func (r *Relay) notified(payload string) (outbox.Row, notifiedAction) {
	row, ok := outbox.ParseNotification(payload)
	switch {
	case !ok:
		return outbox.Row{}, readOutbox
	case r.recent.has(row.ID):
		return outbox.Row{}, alreadyPublished
	case row.ID > r.maxRead && len(r.stuck) == 0:
		return row, publishIt
	}
	return outbox.Row{}, readOutbox
}

// release clears the session's marks as it stops between batches: all it
// published is recorded, except for rooms still stuck. A failure only
// costs the next leader caution.
func (r *Relay) release(ctx context.Context, session string) {
	keep := make([]string, 0, len(r.stuck))
	for room := range r.stuck {
		keep = append(keep, string(room))
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := r.store.Release(rctx, session, keep); err != nil {
		r.log.Warn("release room marks", "err", err)
	}
}

// upkeep is the leader's periodic work beside relaying, on each safety
// poll: announce the database, forget idle rooms.
func (r *Relay) upkeep(ctx context.Context, session string) {
	if time.Since(r.lastAnnounce) >= announceEvery {
		r.announce(ctx)
	}
	r.forgetIdle(ctx, session)
}

// announceEvery is how often the leader tells edges again which database
// the events come from: a Redis restarted without persistence forgot it.
const announceEvery = 30 * time.Second

// announce tells edges which database the events come from, so they refuse
// snapshot positions of another one. A failure is logged and retried at the
// next upkeep; meanwhile edges keep what they read before.
func (r *Relay) announce(ctx context.Context) {
	r.lastAnnounce = time.Now()
	actx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	src, err := r.store.Source(actx)
	if err == nil {
		err = r.pub.Announce(actx, src)
	}
	if err != nil {
		r.log.Warn("announce the database to edges", "err", err)
	}
}

// forgetIdle removes positions of rooms idle longer than ForgetAfter, at
// most once an hour. A failure only delays it.
func (r *Relay) forgetIdle(ctx context.Context, session string) {
	if r.cfg.ForgetAfter <= 0 || time.Since(r.lastForget) < time.Hour {
		return
	}
	r.lastForget = time.Now()
	fctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	n, err := r.store.ForgetIdle(fctx, session, r.cfg.ForgetAfter)
	if err != nil {
		r.log.Warn("forget idle room positions", "err", err)
		return
	}
	if n > 0 {
		r.log.Info("forgot positions of idle rooms", "rooms", n)
		// Rooms forgotten in Postgres are marked again before their next
		// publish.
		clear(r.known)
	}
}

// acquire waits until this session holds the advisory lock.
func (r *Relay) acquire(ctx context.Context, conn *pgx.Conn) error {
	logged := false
	for {
		var got bool
		if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", LockKey).Scan(&got); err != nil {
			return fmt.Errorf("try advisory lock: %w", err)
		}
		if got {
			return nil
		}
		if r.cfg.Exclusive {
			return ErrAnotherLeader
		}
		if !logged {
			r.log.Info("standing by: another listener leads")
			logged = true
		}
		t := time.NewTimer(r.cfg.PollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		if err := conn.Ping(ctx); err != nil {
			return fmt.Errorf("standby ping: %w", err)
		}
	}
}

// wakeBacklog is the backlog, in rows read from the outbox within one drain,
// at which the relay tells writers to stop notifying: they outpace the
// wake-ups, and each NOTIFY serializes their commits.
const wakeBacklog = 8

// drain empties the outbox (see drainOutbox). When writers were told to
// stop notifying meanwhile, it tells them to notify again (sleep); the
// relay may then wait on LISTEN only once every transaction that may have
// missed that has ended and the outbox was read after: until then drain
// is called again at short intervals, and each call checks.
func (r *Relay) drain(ctx context.Context, session string, first []outbox.Row) error {
	for {
		settled, err := r.settled(ctx)
		if err != nil {
			return err
		}
		if err := r.drainOutbox(ctx, session, first); err != nil {
			return err
		}
		first = nil
		if ctx.Err() != nil {
			return nil
		}
		if r.awake {
			if err := r.sleep(ctx); err != nil {
				return err
			}
			continue // most often the writers are settled already
		}
		if settled {
			return nil
		}
		// Pending: a writer below the fence is still open.
		r.fencePause = min(2*r.fencePause, maxFencePause)
		return nil
	}
}

// maxFencePause bounds the wait between reads of the outbox while a
// transaction that may have missed the sleep stays open.
const maxFencePause = 50 * time.Millisecond

// sleep sets the capture state back to Notify and records the fence below
// which transactions may have read Drain: their rows show up in the outbox
// once they have ended, without a wake-up.
func (r *Relay) sleep(ctx context.Context) error {
	qctx, cancel := context.WithTimeout(ctx, opTimeout)
	fence, err := r.store.SetState(qctx, outbox.Notify)
	cancel()
	if err != nil {
		return err
	}
	r.awake, r.fence, r.fencePause = false, fence, 100*time.Microsecond
	return nil
}

// settled reports whether no transaction below the fence is still open,
// and then clears the fence. Checked before a read of the outbox, it means
// that read sees every row such a writer committed.
func (r *Relay) settled(ctx context.Context) (bool, error) {
	if r.fence == 0 {
		return true, nil
	}
	qctx, cancel := context.WithTimeout(ctx, opTimeout)
	ok, err := r.store.Settled(qctx, r.fence)
	cancel()
	if err != nil || !ok {
		return false, err
	}
	r.fence = 0
	return true, nil
}

// wake tells writers to stop notifying, once per stretch of draining.
func (r *Relay) wake(ctx context.Context) error {
	if r.awake {
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if err := r.store.Wake(qctx); err != nil {
		return err
	}
	r.awake, r.fence = true, 0
	return nil
}

// checkNotifyMode refuses to relay a database that captures into the WAL.
func (r *Relay) checkNotifyMode(ctx context.Context) error {
	qctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	st, err := r.store.State(qctx)
	if err != nil {
		return err
	}
	return notifyModeError(st)
}

// CheckNotifyMode fails when the database at q captures in WAL mode: its
// changes wait in a replication slot that only a WAL-mode listener reads.
func CheckNotifyMode(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) error {
	var st int64
	if err := q.QueryRow(ctx, `SELECT last_value FROM rowcast.capture_state`).Scan(&st); err != nil {
		return fmt.Errorf("read capture state: %w", err)
	}
	return notifyModeError(outbox.CaptureState(st))
}

func notifyModeError(st outbox.CaptureState) error {
	if st == outbox.WALMode {
		return errors.New("the database captures in WAL mode (a listener ran with ROWCAST_CAPTURE=wal): run this one with ROWCAST_CAPTURE=wal too")
	}
	return nil
}

// drainOutbox moves batches until the outbox is empty and no room is stuck,
// starting with first (rows from notifications) or, when first is empty, a
// read of the outbox. A Redis failure is retried in publish (the Postgres
// session and the leadership stay); a Postgres failure ends the session.
// Under load, and after rows from notifications, the record of one batch
// and the read of the next share a round trip.
func (r *Relay) drainOutbox(ctx context.Context, session string, first []outbox.Row) error {
	rows, fromOutbox, err := first, false, error(nil)
	backlog := 0
	if len(rows) == 0 {
		qctx, cancel := context.WithTimeout(ctx, opTimeout)
		rows, err = r.store.Oldest(qctx, r.cfg.BatchSize)
		cancel()
		fromOutbox = true
	}
	for err == nil && len(rows) > 0 {
		if fromOutbox {
			r.read(rows)
			if backlog += len(rows); backlog >= wakeBacklog && r.wal == nil {
				if err := r.wake(ctx); err != nil {
					return err
				}
			}
		}
		var done outbox.Published
		if done, err = r.publish(ctx, session, rows, true); err != nil {
			return err
		}
		for room, pos := range done.Positions {
			r.known[room] = pos
		}
		for _, id := range done.IDs {
			r.recent.add(id)
		}
		if len(done.Positions) == 0 && len(r.stuck) > 0 {
			// Nothing went through (a Cluster master is down): pace the
			// retries of the stuck rooms, and let other rooms' rows in.
			t := time.NewTimer(stuckRetry)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
		// What went out is recorded even when shutdown has begun: a row
		// left in the outbox would be published again by the next leader,
		// and a bus without Redis's dedupe (one process, no Redis) would
		// show it twice.
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
		if ctx.Err() != nil || (fromOutbox && len(rows) < r.cfg.BatchSize && len(r.stuck) == 0) {
			err = r.store.Record(qctx, done)
			rows = nil
		} else {
			// After rows from a notification, read what else committed
			// meanwhile: under load this batches, and their own
			// notifications are then skipped.
			rows, err = r.store.RecordThenOldest(qctx, done, r.cfg.BatchSize)
			fromOutbox = true
		}
		cancel()
	}
	return err
}

// read notes rows a read of the outbox returned.
func (r *Relay) read(rows []outbox.Row) {
	for _, row := range rows {
		r.maxRead = max(r.maxRead, row.ID)
	}
}

// positions returns the recorded positions of rooms. This session knows
// the rooms it has published (it is the only writer); rooms new to it are
// first marked in Postgres (see outbox.Store.Mark), which costs a round trip
// once per room and session, not per batch.
func (r *Relay) positions(ctx context.Context, session string, rooms map[realtime.Room]bool) (map[realtime.Room]realtime.Position, error) {
	out := make(map[realtime.Room]realtime.Position, len(rooms))
	var unknown []realtime.Room
	for room := range rooms {
		if pos, ok := r.known[room]; ok {
			out[room] = pos
		} else {
			unknown = append(unknown, room)
		}
	}
	if len(unknown) == 0 {
		return out, nil
	}
	mctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	marked, err := r.store.Mark(mctx, session, unknown)
	if err != nil {
		return nil, err
	}
	for _, room := range unknown {
		pos := marked[room] // zero when the room has no position yet
		out[room] = pos
		r.known[room] = pos
	}
	return out, nil
}

// stuckRoom is a room whose last publish failed on its shard while others
// succeeded: exactly these events go out again, before anything newer of
// the room, because Redis may hold them (and clients may have seen them) or
// not. Another composition could give one of their ids to another row.
type stuckRoom struct {
	events   []redisbus.Event
	ids      []int64
	recorded realtime.Position
}

// publish sends one batch to Redis and returns what to record: the ids of
// the rows it published and their rooms' new positions. Rows that can never
// be published are moved to rowcast.rejected here. Rooms whose shard fails
// while others' succeed are kept in r.stuck and sent again with the next
// batch, so one unreachable Cluster master does not hold back every room;
// when no room gets through, the same events are retried with backoff.
func (r *Relay) publish(ctx context.Context, session string, rows []outbox.Row, inOutbox bool) (outbox.Published, error) {
	events := make([]redisbus.Event, 0, len(rows))
	ids := map[realtime.Room][]int64{}
	fresh := map[realtime.Room]bool{}
	for room, st := range r.stuck {
		events = append(events, st.events...)
		ids[room] = st.ids
	}
	var rejected []outbox.Row
	for _, row := range rows {
		ev, err := encode(row, r.cfg.MaxEventBytes)
		if err != nil {
			r.log.Warn("rejecting captured row", "id", row.ID, "err", err)
			rejected = append(rejected, row)
			continue
		}
		if _, stuck := r.stuck[ev.Room]; stuck {
			continue // stays in the outbox until the room's stuck events are through
		}
		events = append(events, ev)
		ids[ev.Room] = append(ids[ev.Room], row.ID)
		fresh[ev.Room] = true
	}
	if len(rejected) > 0 {
		rctx, cancel := context.WithTimeout(ctx, opTimeout)
		err := r.reject(rctx, rejected, inOutbox, "invalid room name")
		cancel()
		if err != nil {
			return outbox.Published{}, err
		}
	}
	if len(events) == 0 {
		return outbox.Published{}, nil
	}
	recorded, err := r.positions(ctx, session, fresh)
	if err != nil {
		return outbox.Published{}, err
	}
	for room, st := range r.stuck {
		recorded[room] = st.recorded
	}
	var res redisbus.Result
	if r.pub.Sharded() {
		// On a Cluster a failure is one master's: its rooms wait as stuck
		// while the next claims bring the other rooms' new rows (drain
		// paces the retries).
		if res, err = r.pub.Publish(ctx, events, recorded); err != nil {
			res = redisbus.Result{Failed: map[realtime.Room]error{}}
			for room := range ids {
				res.Failed[room] = err
			}
		}
	} else {
		err = retry.Do(ctx, r.retryPolicy("publish to redis"), func(ctx context.Context) error {
			var err error
			res, err = r.pub.Publish(ctx, events, recorded)
			return err
		})
		if err != nil {
			return outbox.Published{}, err
		}
	}
	r.published.Add(int64(res.New))
	for room, why := range res.Restarted {
		was := recorded[room]
		r.log.Warn("redis was not where postgres recorded the room: new epoch, its clients will reset",
			"room", room, "why", why, "recorded", was.Last.String(), "epoch", res.Positions[room].Last.Epoch)
	}
	var newlyStuck []realtime.Room
	var firstErr error
	for room, ferr := range res.Failed {
		if _, already := r.stuck[room]; !already {
			newlyStuck, firstErr = append(newlyStuck, room), ferr
			st := stuckRoom{ids: ids[room], recorded: recorded[room]}
			for _, ev := range events {
				if ev.Room == room {
					st.events = append(st.events, ev)
				}
			}
			r.stuck[room] = st
		}
	}
	if len(newlyStuck) > 0 {
		r.log.Warn("publish failed for some rooms; their events go out again, unchanged, with the next batches",
			"rooms", len(newlyStuck), "example", newlyStuck[0], "err", firstErr)
	}
	done := outbox.Published{Positions: res.Positions}
	unstuck := 0
	for room := range res.Positions {
		if _, was := r.stuck[room]; was {
			delete(r.stuck, room)
			unstuck++
		}
		done.IDs = append(done.IDs, ids[room]...)
	}
	if unstuck > 0 {
		r.log.Info("rooms whose publish had failed are published", "rooms", unstuck, "still failing", len(r.stuck))
	}
	if r.OnBatch != nil {
		rep := BatchReport{Events: len(events), NewEpochs: len(res.Restarted), Captured: make([]time.Time, 0, len(rows))}
		for _, row := range rows {
			if _, ok := res.Positions[realtime.Room(row.Room)]; ok {
				rep.Captured = append(rep.Captured, row.CapturedAt)
			}
		}
		r.OnBatch(rep)
	}
	return done, nil
}

// reject moves rows that can never be published to rowcast.rejected.
func (r *Relay) reject(ctx context.Context, rows []outbox.Row, inOutbox bool, reason string) error {
	if !inOutbox {
		return r.store.RejectRows(ctx, rows, reason)
	}
	ids := make([]int64, len(rows))
	for i, row := range rows {
		ids[i] = row.ID
	}
	return r.store.Reject(ctx, ids, reason)
}

// BatchReport describes one batch Redis accepted.
type BatchReport struct {
	Events    int // events sent, repeats of stuck rooms included
	NewEpochs int // rooms that started a new epoch: Redis was not where Postgres recorded them
	// Captured holds the capture time of each new row published, so that
	// capture-to-publish latency can be observed per event.
	Captured []time.Time
}

// newSession returns a random relay session name.
func newSession() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("new session name: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// pingTimeout bounds the safety poll's ping: a loaded server may be slow to
// answer without being gone.
func (r *Relay) pingTimeout() time.Duration { return max(r.cfg.PollInterval, 5*time.Second) }
