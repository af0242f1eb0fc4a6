package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/rowcast/rowcast/e2e/proc"
	"github.com/rowcast/rowcast/e2e/wire"
	"github.com/rowcast/rowcast/internal/testenv"
)

// faultRooms are the rooms the fault tests write to.
var faultRooms = []string{"fa", "fb"}

// rig is one running system under fault: the stack, a leader and a standby
// listener, one edge, and reconnecting subscribers on both transports.
type rig struct {
	s         *stack
	listeners []*proc.Process
	app       *proc.Process
	appAddr   string
	base      string
	subs      []*wire.Subscriber
	appEnv    []string
	mode      string   // capture mode: "notify" or "wal"
	lenv      []string // every listener's extra environment
	// extra holds rows a fault commits besides the inserter's, per room, in
	// their commit order: each must reach every subscriber of its room once.
	extra map[string][]string
}

// newRig starts the rig in capture mode ("notify" or "wal"); redisArgs and
// pgArgs go to the servers' command lines (see testenv.WithArgs).
func newRig(ctx context.Context, t *testing.T, mode string, redisArgs, pgArgs []string, listenerEnv ...string) *rig {
	t.Helper()
	r := &rig{
		s:      startStack(ctx, t, testenv.RedisOptions(testenv.WithArgs(redisArgs...)), testenv.PostgresOptions(testenv.WithArgs(pgArgs...))),
		appEnv: []string{"ROWCAST_REDIS_PROBE_INTERVAL=300ms", "ROWCAST_DRAIN_TIMEOUT=1s"},
		mode:   mode,
		lenv:   append([]string{"ROWCAST_CAPTURE=" + mode}, listenerEnv...),
		extra:  map[string][]string{},
	}
	r.listeners = append(r.listeners, startListener(ctx, t, r.s, r.lenv...))
	r.listeners = append(r.listeners, r.startStandby(ctx, t, "listener-2"))
	r.appAddr = freeAddr(t)
	r.app, r.base = startAppAt(ctx, t, r.s, r.appAddr, r.appEnv...)
	for _, tr := range []wire.Transport{wire.WebSocket, wire.SSE} {
		r.subs = append(r.subs,
			wire.NewSubscriber(r.base, tr, faultRooms...),
			wire.NewSubscriber(r.base, tr, faultRooms[0]),
			wire.NewSubscriber(r.base, tr, faultRooms[1]))
	}
	for _, sub := range r.subs {
		go sub.Run(ctx)
		select {
		case <-sub.Subscribed():
		case <-ctx.Done():
			t.Fatal("subscriber never subscribed")
		}
	}
	return r
}

// startStandby starts another listener and waits until it stands by.
func (r *rig) startStandby(ctx context.Context, t *testing.T, name string) *proc.Process {
	t.Helper()
	p := startProc(t, name, bins.listener, r.s.env(append([]string{"HEALTH_ADDR=127.0.0.1:0", "ROWCAST_POLL_INTERVAL=500ms"}, r.lenv...)...))
	if _, err := p.WaitLog(ctx, "standing by"); err != nil {
		t.Fatal(err)
	}
	return p
}

// stopListeners stops every listener of the rig (SIGTERM).
func (r *rig) stopListeners(t *testing.T) {
	t.Helper()
	for _, l := range r.listeners {
		if err := l.Stop(syscall.SIGTERM); err != nil {
			t.Fatalf("listener exit after SIGTERM: %v", err)
		}
	}
	r.listeners = nil
}

// commitExtra commits rows of room in one transaction, given by a SELECT
// of bodies, and notes them as rows every subscriber of room must get.
func (r *rig) commitExtra(ctx context.Context, t *testing.T, conn *pgx.Conn, room, bodies string, args ...any) {
	t.Helper()
	rows, err := conn.Query(ctx, `INSERT INTO chat_message (room, author, body) SELECT $1, 'extra', b FROM (`+bodies+`) AS s(b) RETURNING body`,
		append([]any{room}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("extra rows of %s: %v", room, err)
	}
	r.extra[room] = append(r.extra[room], got...)
}

// waitCaughtUp waits until the listener published every change committed
// before the call, at most for within: in NOTIFY mode the outbox holds no
// row of rooms matching the LIKE pattern; in WAL mode the slot's confirmed
// position passed the WAL position of the call.
func (r *rig) waitCaughtUp(ctx context.Context, db *pgx.Conn, rooms string, within time.Duration) error {
	if r.mode != "wal" {
		return waitOutboxHasNo(ctx, db, rooms, within)
	}
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	var lsn string
	if err := db.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		return fmt.Errorf("wal position: %w", err)
	}
	for {
		var done bool
		err := db.QueryRow(ctx, `SELECT coalesce(bool_or(confirmed_flush_lsn >= $1::pg_lsn), false) FROM pg_replication_slots`, lsn).Scan(&done)
		if err == nil && done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the slot did not pass %s within %s (%v)", lsn, within, err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// inserter commits rows at a steady pace, round robin over its rooms, until
// stopped. Rows carry the author "fault", so committed() returns them.
// A failed insert is retried as a new row (its body names the attempt), so
// a commit whose outcome was unknown can never be mistaken for a duplicate.
type inserter struct {
	url      string
	rooms    []string
	attempts atomic.Int64
	stop     chan struct{}
	done     chan struct{}
}

func startInserter(ctx context.Context, url string, rooms ...string) *inserter {
	in := &inserter{url: url, rooms: rooms, stop: make(chan struct{}), done: make(chan struct{})}
	go in.run(ctx)
	return in
}

func (in *inserter) run(ctx context.Context) {
	defer close(in.done)
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	tick := time.NewTicker(4 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-in.stop:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			c, err := pgx.Connect(cctx, in.url)
			cancel()
			if err != nil {
				continue
			}
			conn = c
		}
		n := in.attempts.Add(1)
		ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := conn.Exec(ictx, `INSERT INTO chat_message (room, author, body) VALUES ($1, 'fault', $2)`,
			in.rooms[i%len(in.rooms)], fmt.Sprintf("row-%d", n))
		cancel()
		if err != nil {
			conn.Close(context.Background())
			conn = nil
		}
	}
}

func (in *inserter) finish() { close(in.stop); <-in.done }

// committed returns the rows really committed, per room in commit order
// (one inserter, so id order is commit order).
func committed(ctx context.Context, t *testing.T, url string) map[string][]string {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT room, body FROM chat_message WHERE author = 'fault' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for rows.Next() {
		var room, body string
		if err := rows.Scan(&room, &body); err != nil {
			t.Fatal(err)
		}
		out[room] = append(out[room], body)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// tally compares what a subscriber received with what was committed: each
// map of rows per room (the inserter's, a fault's extra rows) must arrive
// whole and in its own order.
// A lost row is silent when the subscriber got no reset for its room: the
// client was never told that it misses something.
type tally struct {
	expected, delivered, lost, dups int
	silent, outOfOrder              int
}

func count(sub *wire.Subscriber, wants ...map[string][]string) tally {
	var tl tally
	resets := sub.Resets()
	got := map[string][]string{}
	seen := map[string]bool{}
	for _, ev := range sub.Events() {
		b := wire.Body(ev)
		if seen[b] {
			tl.dups++
			continue
		}
		seen[b] = true
		got[ev.Room] = append(got[ev.Room], b)
	}
	for _, want := range wants {
		for _, room := range sub.Rooms {
			w := want[room]
			tl.expected += len(w)
			pos := map[string]int{}
			for i, b := range w {
				pos[b] = i
			}
			prev, delivered := -1, 0
			for _, b := range got[room] {
				i, ok := pos[b]
				if !ok {
					continue
				}
				delivered++
				if i < prev {
					tl.outOfOrder++
				}
				prev = i
			}
			tl.delivered += delivered
			if resets[room] == 0 {
				tl.silent += len(w) - delivered
			}
		}
	}
	tl.lost = tl.expected - tl.delivered
	return tl
}

// captureModes are the capture modes the fault table runs in.
var captureModes = []string{"notify", "wal"}

// connect opens a database connection for a fault, closed when the test
// ends.
func (r *rig) connect(ctx context.Context, t *testing.T) *pgx.Conn {
	t.Helper()
	db, err := pgx.Connect(ctx, r.s.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	return db
}

// waitProgress waits until every subscriber received n more events.
func (r *rig) waitProgress(ctx context.Context, t *testing.T, n int, when string) {
	t.Helper()
	if err := r.progress(ctx, n); err != nil {
		t.Fatalf("%s: %v", when, err)
	}
}

// progress waits until every subscriber received n more events than it had
// at the call, or ctx ends.
func (r *rig) progress(ctx context.Context, n int) error {
	targets := make([]int, len(r.subs))
	for i, sub := range r.subs {
		targets[i] = sub.Count() + n
	}
	for i, sub := range r.subs {
		for sub.Count() < targets[i] {
			select {
			case <-sub.Changed():
			case <-ctx.Done():
				return fmt.Errorf("a %s subscriber of %v got no events (%d of %d)", sub.Transport, sub.Rooms, sub.Count(), targets[i])
			}
		}
	}
	return nil
}

// waitAll waits until every subscriber received the last committed row of
// each of its rooms, which comes after every other (or the deadline passes;
// the tally then shows what is missing).
func (r *rig) waitAll(ctx context.Context, want ...map[string][]string) {
	ctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	for _, sub := range r.subs {
		for !hasLast(sub, want...) {
			select {
			case <-sub.Changed():
			case <-ctx.Done():
				return
			}
		}
	}
}

func hasLast(sub *wire.Subscriber, want ...map[string][]string) bool {
	need := map[string]bool{}
	for _, room := range sub.Rooms {
		for _, m := range want {
			if w := m[room]; len(w) > 0 {
				need[w[len(w)-1]] = true
			}
		}
	}
	for _, ev := range sub.Events() {
		delete(need, wire.Body(ev))
	}
	return len(need) == 0
}

// waitHTTP polls url until its status satisfies ok.
func waitHTTP(ctx context.Context, t *testing.T, url string, ok func(int) bool, what string) {
	t.Helper()
	for {
		resp, err := http.Get(url)
		code := 0
		if err == nil {
			code = resp.StatusCode
			resp.Body.Close()
		}
		if ok(code) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: last status %d (%v)", what, code, err)
		case <-time.After(25 * time.Millisecond):
		}
	}
}

func listenerHealth(ctx context.Context, t *testing.T, p *proc.Process) string {
	t.Helper()
	line, err := p.WaitLog(ctx, "listener started")
	if err != nil {
		t.Fatal(err)
	}
	_, addr, _ := strings.Cut(line, "health=")
	return "http://" + strings.TrimSpace(addr)
}

// aofEverySec switches on Redis persistence as production runs it: an
// append-only file synced once a second.
var aofEverySec = []string{"--appendonly", "yes", "--appendfsync", "everysec"}

// redisClient returns a client of the rig's Redis for the test's own
// commands, closed when the test ends.
func (r *rig) redisClient(t *testing.T) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(r.s.redisURL)
	if err != nil {
		t.Fatal(err)
	}
	opt.ContextTimeoutEnabled = true
	c := redis.NewClient(opt)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// faultRowsAfter counts the rows of each fault room with an id above after,
// and returns the highest id (after when there is none).
func faultRowsAfter(ctx context.Context, t *testing.T, db *pgx.Conn, after int64) (map[string]int, int64) {
	t.Helper()
	rows, err := db.Query(ctx, `SELECT room, count(*), max(id) FROM chat_message WHERE author = 'fault' AND id > $1 GROUP BY room`, after)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	counts, top := map[string]int{}, after
	for rows.Next() {
		var (
			room  string
			n, id int64
		)
		if err := rows.Scan(&room, &n, &id); err != nil {
			t.Fatal(err)
		}
		counts[room], top = int(n), max(top, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return counts, top
}

// waitFaultRows waits until every fault room has n rows with an id above
// after, and returns the highest id then.
func waitFaultRows(ctx context.Context, t *testing.T, db *pgx.Conn, after int64, n int) int64 {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		counts, top := faultRowsAfter(ctx, t, db, after)
		enough := true
		for _, room := range faultRooms {
			enough = enough && counts[room] >= n
		}
		if enough {
			return top
		}
		select {
		case <-ctx.Done():
			t.Fatalf("inserts stalled: %v rows after id %d, want %d per room", counts, after, n)
		case <-tick.C:
		}
	}
}

// waitPublished waits until the listener published every chat_message row
// up to id upTo.
func waitPublished(ctx context.Context, t *testing.T, db *pgx.Conn, upTo int64) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		var pending bool
		if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM rowcast.outbox
			WHERE table_name = 'public.chat_message' AND (row_data->>'id')::bigint <= $1)`, upTo).Scan(&pending); err != nil {
			t.Fatalf("outbox: %v", err)
		}
		if !pending {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("rows up to id %d were never published", upTo)
		case <-tick.C:
		}
	}
}

// evictRoomSeq commits large rows in padding rooms, one batch at a time,
// until Redis evicts the sequence key of a fault room. Redis must run with a
// small maxmemory, an evicting policy and keyspace notifications for
// evictions ("Ee"). The keys of fault rooms evicted on the way and the
// evicted_keys figure of INFO stats are logged.
func (r *rig) evictRoomSeq(ctx context.Context, t *testing.T) {
	t.Helper()
	rdb := r.redisClient(t)
	ps := rdb.Subscribe(ctx, "__keyevent@0__:evicted")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatalf("subscribe to eviction notifications: %v", err)
	}
	evicted := ps.Channel()

	db, err := pgx.Connect(ctx, r.s.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	const (
		rowBytes   = 8 << 10
		batchRows  = 20
		maxBatches = 200 // 32 MB of padding, far more than maxmemory
	)
	var faultKeys []string
	for batch := 0; ; batch++ {
		if batch == maxBatches {
			t.Fatalf("no sequence key of rooms %v evicted after %d MB of padding rows (evicted: %v)",
				faultRooms, batch*batchRows*rowBytes>>20, faultKeys)
		}
		if _, err := db.Exec(ctx, `INSERT INTO chat_message (room, author, body)
			SELECT 'pad-' || (g % 2), 'pad', repeat('x', $1) FROM generate_series(1, $2) g`, rowBytes, batchRows); err != nil {
			t.Fatalf("padding rows: %v", err)
		}
		published := r.waitCaughtUp(ctx, db, "pad-%", 10*time.Second)
		for drained := false; !drained; {
			select {
			case m := <-evicted:
				for _, room := range faultRooms {
					if strings.HasPrefix(m.Payload, "rowcast:{"+room+"}:") {
						faultKeys = append(faultKeys, m.Payload)
					}
				}
			default:
				drained = true
			}
		}
		if published != nil {
			// The listener is stuck: the tally shows what this costs.
			t.Logf("padding stopped after %d batches: %v", batch+1, published)
			break
		}
		if slices.ContainsFunc(faultKeys, func(k string) bool { return strings.HasSuffix(k, ":seq") }) {
			break
		}
	}
	info, err := rdb.Info(ctx, "stats").Result()
	if err != nil {
		t.Fatal(err)
	}
	n := infoInt(info, "evicted_keys")
	if n <= 0 {
		t.Fatalf("INFO stats evicted_keys = %d after evictions were notified", n)
	}
	t.Logf("redis evicted %d keys; of the fault rooms: %v", n, faultKeys)
}

// waitOutboxHasNo waits until the listener published every outbox row of
// the rooms matching the LIKE pattern, at most for within.
func waitOutboxHasNo(ctx context.Context, db *pgx.Conn, rooms string, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var pending bool
		err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM rowcast.outbox WHERE room LIKE $1)`, rooms).Scan(&pending)
		if err != nil && ctx.Err() == nil {
			return fmt.Errorf("outbox: %w", err)
		}
		if err == nil && !pending {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("outbox rows of rooms %s not published within %s", rooms, within)
		case <-tick.C:
		}
	}
}

// infoInt reads an integer field of an INFO reply (-1 when missing).
func infoInt(info, field string) int64 {
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
}

type faultRow struct {
	fault                                 string
	rows, expected, delivered, lost, dups int
	silent, resets                        int
}

func TestFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e")
	}
	faults := []struct {
		name        string
		mayReset    bool // history may be lost: then clients must be told
		mustReset   bool // history is certainly lost: clients must be told
		walOnly     bool // a fault of WAL mode alone
		redisArgs   []string
		pgArgs      []string
		listenerEnv []string
		inject      func(ctx context.Context, t *testing.T, r *rig)
	}{
		{name: "kill -9 leader listener, restart it", inject: func(ctx context.Context, t *testing.T, r *rig) {
			leader := r.listeners[0]
			if err := leader.Stop(syscall.SIGKILL); err == nil {
				t.Fatal("killed listener exited cleanly")
			}
			if _, err := r.listeners[1].WaitLog(ctx, "leading"); err != nil {
				t.Fatal(err)
			}
			r.listeners = append(r.listeners[1:], r.startStandby(ctx, t, "listener-restarted"))
		}},
		// Redis restarts empty: clients get reset (its epochs change), and
		// the edge replays each new epoch from its start, so nothing is lost.
		{name: "restart redis", inject: func(ctx context.Context, t *testing.T, r *rig) {
			if err := r.s.Redis.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			if err := r.s.Redis.Start(ctx); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "pause redis (network cut), unpause", inject: func(ctx context.Context, t *testing.T, r *rig) {
			if err := r.s.Redis.Pause(ctx); err != nil {
				t.Fatal(err)
			}
			waitHTTP(ctx, t, r.base+"/readyz", func(c int) bool { return c == http.StatusServiceUnavailable }, "app notices the frozen redis")
			if err := r.s.Redis.Unpause(ctx); err != nil {
				t.Fatal(err)
			}
			waitHTTP(ctx, t, r.base+"/readyz", func(c int) bool { return c == http.StatusOK }, "app ready again")
		}},
		{name: "restart postgres", inject: func(ctx context.Context, t *testing.T, r *rig) {
			if err := r.s.Postgres.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			if err := r.s.Postgres.Start(ctx); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "pause postgres (network cut), unpause", inject: func(ctx context.Context, t *testing.T, r *rig) {
			health := listenerHealth(ctx, t, r.listeners[0])
			if err := r.s.Postgres.Pause(ctx); err != nil {
				t.Fatal(err)
			}
			waitHTTP(ctx, t, health+"/readyz", func(c int) bool { return c == http.StatusServiceUnavailable }, "listener notices the frozen postgres")
			if err := r.s.Postgres.Unpause(ctx); err != nil {
				t.Fatal(err)
			}
			waitHTTP(ctx, t, health+"/readyz", func(c int) bool { return c == http.StatusOK }, "listener ready again")
		}},
		{name: "restart the app under connected clients", inject: func(ctx context.Context, t *testing.T, r *rig) {
			if err := r.app.Stop(syscall.SIGTERM); err != nil {
				t.Fatalf("app exit after SIGTERM: %v", err)
			}
			r.app, _ = startAppAt(ctx, t, r.s, r.appAddr, r.appEnv...)
		}},
		{name: "app down longer than history holds", mayReset: true, mustReset: true,
			listenerEnv: []string{"ROWCAST_HISTORY_LEN=20"},
			inject: func(ctx context.Context, t *testing.T, r *rig) {
				if err := r.app.Stop(syscall.SIGTERM); err != nil {
					t.Fatalf("app exit after SIGTERM: %v", err)
				}
				// Let far more rows pass than the history keeps (it trims
				// in blocks of 100, so wait for several hundred per room).
				before := len(committed(ctx, t, r.s.pgURL)[faultRooms[0]])
				for len(committed(ctx, t, r.s.pgURL)[faultRooms[0]]) < before+400 {
					select {
					case <-ctx.Done():
						t.Fatal("inserts stalled")
					case <-time.After(50 * time.Millisecond):
					}
				}
				r.app, _ = startAppAt(ctx, t, r.s, r.appAddr, r.appEnv...)
			}},
		// Redis comes back from a snapshot taken seconds earlier, without the
		// rows published since: Postgres is the record, so clients must get
		// the rows published after the restart, or a reset, never silence.
		// Whether the edge or the listener reaches the restarted Redis first
		// is a race; the edge is held off (restarted) until the listener has
		// published more rows than the snapshot lacks, so that the clients
		// resume from positions the restarted Redis has handed out again.
		{name: "redis restarted from an older snapshot", mayReset: true,
			redisArgs: []string{"--save", "3600", "1"},
			inject: func(ctx context.Context, t *testing.T, r *rig) {
				rdb := r.redisClient(t)
				db, err := pgx.Connect(ctx, r.s.pgURL)
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close(context.Background())
				if err := rdb.Set(ctx, "fault:in-snapshot", "1", 0).Err(); err != nil {
					t.Fatal(err)
				}
				if err := rdb.Save(ctx).Err(); err != nil {
					t.Fatalf("SAVE: %v", err)
				}
				if err := rdb.Set(ctx, "fault:after-snapshot", "1", 0).Err(); err != nil {
					t.Fatal(err)
				}
				_, saved := faultRowsAfter(ctx, t, db, 0)
				// A few seconds of rows that the snapshot does not hold (the
				// inserter commits about 125 a second per room).
				waitFaultRows(ctx, t, db, saved, 250)
				if err := r.app.Stop(syscall.SIGTERM); err != nil {
					t.Fatalf("app exit after SIGTERM: %v", err)
				}
				missing, stopped := faultRowsAfter(ctx, t, db, saved)
				// Stop without saving again (the connection closes, so the
				// reply is an error or nothing); Stop waits for the exit.
				_ = rdb.ShutdownNoSave(ctx).Err()
				if err := r.s.Redis.Stop(ctx); err != nil {
					t.Fatal(err)
				}
				if err := r.s.Redis.Start(ctx); err != nil {
					t.Fatal(err)
				}
				if n, err := rdb.Exists(ctx, "fault:in-snapshot", "fault:after-snapshot").Result(); err != nil || n != 1 {
					t.Fatalf("redis did not come back from the snapshot: %d of the markers before and after it exist (%v), want 1", n, err)
				}
				// Published past the lost rows (plus a margin for rows
				// committed before the SAVE but published after it).
				most := 0
				for _, n := range missing {
					most = max(most, n)
				}
				upTo := waitFaultRows(ctx, t, db, stopped, most+50)
				if r.mode == "wal" {
					if err := r.waitCaughtUp(ctx, db, "", 30*time.Second); err != nil {
						t.Fatal(err)
					}
				} else {
					waitPublished(ctx, t, db, upTo)
				}
				t.Logf("the snapshot lacks the rows after id %d (%v per room); published up to id %d before the app came back", saved, missing, upTo)
				r.app, _ = startAppAt(ctx, t, r.s, r.appAddr, r.appEnv...)
			}},
		// Append-only file synced every second, SIGKILL under load: Redis
		// comes back with what reached the file.
		{name: "redis AOF everysec, kill -9, restart", mayReset: true,
			redisArgs: aofEverySec,
			inject: func(ctx context.Context, t *testing.T, r *rig) {
				rdb := r.redisClient(t)
				if err := rdb.Set(ctx, "fault:before-kill", "1", 0).Err(); err != nil {
					t.Fatal(err)
				}
				if err := r.s.Redis.Kill(ctx); err != nil {
					t.Fatal(err)
				}
				if err := r.s.Redis.Start(ctx); err != nil {
					t.Fatal(err)
				}
				if n, err := rdb.Exists(ctx, "fault:before-kill").Result(); err != nil || n != 1 {
					t.Fatalf("redis did not load its append-only file: marker exists %d (%v)", n, err)
				}
			}},
		{name: "FLUSHALL under load", mayReset: true,
			redisArgs: aofEverySec,
			inject: func(ctx context.Context, t *testing.T, r *rig) {
				if err := r.redisClient(t).FlushAll(ctx).Err(); err != nil {
					t.Fatalf("FLUSHALL: %v", err)
				}
			}},
		// A Redis too small for its data evicts random keys (every rowcast
		// key has a TTL, so volatile policies would pick them too). Padding
		// rows in other rooms fill it until the sequence key of a fault room
		// goes, the key whose loss would hand out its ids again.
		{name: "some rooms' keys evicted (maxmemory)", mayReset: true,
			redisArgs: append(append([]string(nil), aofEverySec...),
				"--maxmemory", "4mb", "--maxmemory-policy", "allkeys-random", "--notify-keyspace-events", "Ee"),
			inject: func(ctx context.Context, t *testing.T, r *rig) {
				r.evictRoomSeq(ctx, t)
			}},
		// Capture faults: rows beyond the inserter's steady stream.
		{name: "late commit (early id, commits after later rows)", inject: func(ctx context.Context, t *testing.T, r *rig) {
			db := r.connect(ctx, t)
			tx, err := db.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(context.Background())
			var body string
			if err := tx.QueryRow(ctx, `INSERT INTO chat_message (room, author, body) VALUES ($1, 'extra', 'late-commit') RETURNING body`, faultRooms[0]).Scan(&body); err != nil {
				t.Fatal(err)
			}
			_, top := faultRowsAfter(ctx, t, db, 0)
			waitFaultRows(ctx, t, db, top, 100)
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			r.extra[faultRooms[0]] = append(r.extra[faultRooms[0]], body)
		}},
		// History holds the whole transaction, so a client cut as slow by
		// the burst resumes without loss.
		{name: "a 50,000-row transaction", listenerEnv: []string{"ROWCAST_HISTORY_LEN=100000"},
			inject: func(ctx context.Context, t *testing.T, r *rig) {
				r.commitExtra(ctx, t, r.connect(ctx, t), faultRooms[0], `SELECT 'bulk-' || g FROM generate_series(1, 50000) AS g`)
			}},
		{name: "a 5 MB row", listenerEnv: []string{"ROWCAST_MAX_EVENT_BYTES=8388608"},
			inject: func(ctx context.Context, t *testing.T, r *rig) {
				r.commitExtra(ctx, t, r.connect(ctx, t), faultRooms[1], `SELECT 'big-' || repeat('x', 5 << 20)`)
			}},
		{name: "every listener down while writes go on", inject: func(ctx context.Context, t *testing.T, r *rig) {
			db := r.connect(ctx, t)
			r.stopListeners(t)
			_, top := faultRowsAfter(ctx, t, db, 0)
			waitFaultRows(ctx, t, db, top, 300)
			r.listeners = append(r.listeners, startListener(ctx, t, r.s, r.lenv...), r.startStandby(ctx, t, "listener-back"))
		}},
		// The slot held back more WAL than max_slot_wal_keep_size while no
		// listener read it: its changes are gone, and clients must be told.
		{name: "replication slot invalidated", walOnly: true, mayReset: true, mustReset: true,
			pgArgs: []string{"-c", "max_slot_wal_keep_size=1MB"},
			inject: func(ctx context.Context, t *testing.T, r *rig) {
				db := r.connect(ctx, t)
				r.stopListeners(t)
				_, top := faultRowsAfter(ctx, t, db, 0)
				waitFaultRows(ctx, t, db, top, 50)
				if _, err := db.Exec(ctx, `CREATE TABLE IF NOT EXISTS wal_padding (b text)`); err != nil {
					t.Fatal(err)
				}
				for status := ""; status != "lost"; {
					for _, q := range []string{`INSERT INTO wal_padding SELECT repeat('p', 1000) FROM generate_series(1, 1000)`,
						`SELECT pg_switch_wal()`, `CHECKPOINT`} {
						if _, err := db.Exec(ctx, q); err != nil {
							t.Fatalf("%s: %v", q, err)
						}
					}
					if err := db.QueryRow(ctx, `SELECT coalesce(wal_status, '') FROM pg_replication_slots`).Scan(&status); err != nil {
						t.Fatal(err)
					}
				}
				l := startListener(ctx, t, r.s, r.lenv...)
				if _, err := l.WaitLog(ctx, "replication slot invalidated"); err != nil {
					t.Fatal(err)
				}
				r.listeners = append(r.listeners, l)
			}},
	}

	var (
		mu    sync.Mutex
		table []faultRow
	)
	for _, mode := range captureModes {
		for _, f := range faults {
			if f.walOnly && mode != "wal" {
				continue
			}
			t.Run(mode+"/"+strings.ReplaceAll(f.name, " ", "_"), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
				defer cancel()
				r := newRig(ctx, t, mode, f.redisArgs, f.pgArgs, f.listenerEnv...)
				in := startInserter(ctx, r.s.pgURL, faultRooms...)
				r.waitProgress(ctx, t, 20, "before the fault")
				f.inject(ctx, t, r)
				// A system that stopped delivering fails here, but the row still
				// shows what was lost.
				pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
				err := r.progress(pctx, 20)
				pcancel()
				if err != nil {
					t.Errorf("after the fault: %v", err)
				}
				in.finish()
				want := committed(ctx, t, r.s.pgURL)
				if err == nil {
					r.waitAll(ctx, want, r.extra)
				}

				row := faultRow{fault: mode + ": " + f.name, rows: len(want[faultRooms[0]]) + len(want[faultRooms[1]])}
				for _, extra := range r.extra {
					row.rows += len(extra)
				}
				for _, sub := range r.subs {
					tl := count(sub, want, r.extra)
					resets := 0
					for _, n := range sub.Resets() {
						resets += n
					}
					row.expected += tl.expected
					row.delivered += tl.delivered
					row.lost += tl.lost
					row.dups += tl.dups
					row.silent += tl.silent
					row.resets += resets
					switch {
					case tl.silent > 0:
						t.Errorf("%s subscriber %v silently lost %d of %d rows: no reset for their room (lost %d, resets %d, connections %s, controls %s)",
							sub.Transport, sub.Rooms, tl.silent, tl.expected, tl.lost, resets, fmt.Sprintf("%d %q", sub.Connects(), sub.Ends()), describeControls(sub.Controls()))
					case tl.lost > 0 && !(f.mayReset && resets > 0):
						t.Errorf("%s subscriber %v lost %d of %d rows (resets %d, connections %s, controls %s)",
							sub.Transport, sub.Rooms, tl.lost, tl.expected, resets, fmt.Sprintf("%d %q", sub.Connects(), sub.Ends()), describeControls(sub.Controls()))
					}
					if tl.dups > 0 {
						t.Errorf("%s subscriber %v got %d duplicates", sub.Transport, sub.Rooms, tl.dups)
					}
					if tl.outOfOrder > 0 {
						t.Errorf("%s subscriber %v got %d rows out of order", sub.Transport, sub.Rooms, tl.outOfOrder)
					}
				}
				if f.mustReset && row.resets < len(r.subs) {
					t.Errorf("history was lost but only %d resets reached %d subscribers", row.resets, len(r.subs))
				}
				mu.Lock()
				table = append(table, row)
				mu.Unlock()
			})
		}
	}
	for _, line := range strings.Split(strings.TrimRight(faultTable(table), "\n"), "\n") {
		report(t, "%s", line)
	}
}

func faultTable(rows []faultRow) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-60s %6s %9s %9s %5s %5s %6s %6s\n", "fault", "rows", "expected", "delivered", "lost", "dups", "silent", "resets")
	for _, r := range rows {
		fmt.Fprintf(&b, "%-60s %6d %9d %9d %5d %5d %6d %6d\n", r.fault, r.rows, r.expected, r.delivered, r.lost, r.dups, r.silent, r.resets)
	}
	return b.String()
}

func describeControls(cs []wire.Control) string {
	var parts []string
	for _, c := range cs {
		parts = append(parts, strings.TrimSpace(c.Type+" "+c.Room+" "+c.Code+" "+c.Last))
	}
	return strings.Join(parts, "; ")
}
