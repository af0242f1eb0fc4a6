package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rowcast/rowcast/e2e/proc"
	"github.com/rowcast/rowcast/e2e/wire"
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
}

func newRig(ctx context.Context, t *testing.T, listenerEnv ...string) *rig {
	t.Helper()
	r := &rig{s: startStack(ctx, t), appEnv: []string{"ROWCAST_REDIS_PROBE_INTERVAL=300ms", "ROWCAST_DRAIN_TIMEOUT=1s"}}
	r.listeners = append(r.listeners, startListener(ctx, t, r.s, listenerEnv...))
	standby := startProc(t, "listener-2", bins.listener, r.s.env(append([]string{"HEALTH_ADDR=127.0.0.1:0", "ROWCAST_POLL_INTERVAL=500ms"}, listenerEnv...)...))
	if _, err := standby.WaitLog(ctx, "standing by"); err != nil {
		t.Fatal(err)
	}
	r.listeners = append(r.listeners, standby)
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

// inserter commits rows at a steady pace, alternating rooms, until stopped.
// A failed insert is retried as a new row (its body names the attempt), so
// a commit whose outcome was unknown can never be mistaken for a duplicate.
type inserter struct {
	url      string
	attempts atomic.Int64
	stop     chan struct{}
	done     chan struct{}
}

func startInserter(ctx context.Context, url string) *inserter {
	in := &inserter{url: url, stop: make(chan struct{}), done: make(chan struct{})}
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
			faultRooms[i%2], fmt.Sprintf("row-%d", n))
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

// tally compares what a subscriber received with what was committed.
type tally struct {
	expected, delivered, lost, dups int
	outOfOrder                      int
}

func count(sub *wire.Subscriber, want map[string][]string) tally {
	var tl tally
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
	for _, room := range sub.Rooms {
		w := want[room]
		tl.expected += len(w)
		pos := map[string]int{}
		for i, b := range w {
			pos[b] = i
		}
		prev := -1
		for _, b := range got[room] {
			i, ok := pos[b]
			if !ok {
				continue
			}
			tl.delivered++
			if i < prev {
				tl.outOfOrder++
			}
			prev = i
		}
	}
	tl.lost = tl.expected - tl.delivered
	return tl
}

// waitProgress waits until every subscriber received n more events.
func (r *rig) waitProgress(ctx context.Context, t *testing.T, n int, when string) {
	t.Helper()
	for _, sub := range r.subs {
		target := sub.Count() + n
		for sub.Count() < target {
			select {
			case <-sub.Changed():
			case <-ctx.Done():
				t.Fatalf("%s: a %s subscriber of %v got no events (%d of %d)", when, sub.Transport, sub.Rooms, sub.Count(), target)
			}
		}
	}
}

// waitAll waits until every subscriber received the last committed row of
// each of its rooms, which comes after every other (or the deadline passes;
// the tally then shows what is missing).
func (r *rig) waitAll(ctx context.Context, want map[string][]string) {
	ctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	for _, sub := range r.subs {
		for !hasLast(sub, want) {
			select {
			case <-sub.Changed():
			case <-ctx.Done():
				return
			}
		}
	}
}

func hasLast(sub *wire.Subscriber, want map[string][]string) bool {
	need := map[string]bool{}
	for _, room := range sub.Rooms {
		if w := want[room]; len(w) > 0 {
			need[w[len(w)-1]] = true
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

type faultRow struct {
	fault                                 string
	rows, expected, delivered, lost, dups int
	resets                                int
}

func TestFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e")
	}
	faults := []struct {
		name        string
		mayReset    bool // history may be lost: then clients must be told
		mustReset   bool // history is certainly lost: clients must be told
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
			again := startProc(t, "listener-restarted", bins.listener, r.s.env("HEALTH_ADDR=127.0.0.1:0", "ROWCAST_POLL_INTERVAL=500ms"))
			if _, err := again.WaitLog(ctx, "standing by"); err != nil {
				t.Fatal(err)
			}
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
	}

	var (
		mu    sync.Mutex
		table []faultRow
	)
	for _, f := range faults {
		t.Run(strings.ReplaceAll(f.name, " ", "_"), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			r := newRig(ctx, t, f.listenerEnv...)
			in := startInserter(ctx, r.s.pgURL)
			r.waitProgress(ctx, t, 20, "before the fault")
			f.inject(ctx, t, r)
			r.waitProgress(ctx, t, 20, "after the fault")
			in.finish()
			want := committed(ctx, t, r.s.pgURL)
			r.waitAll(ctx, want)

			row := faultRow{fault: f.name, rows: len(want[faultRooms[0]]) + len(want[faultRooms[1]])}
			for _, sub := range r.subs {
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
				if tl.lost > 0 && !(f.mayReset && resets > 0) {
					t.Errorf("%s subscriber %v lost %d of %d rows (resets %d, connections %d, controls %s)",
						sub.Transport, sub.Rooms, tl.lost, tl.expected, resets, sub.Connects(), describeControls(sub.Controls()))
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
	for _, line := range strings.Split(strings.TrimRight(faultTable(table), "\n"), "\n") {
		report(t, "%s", line)
	}
}

func faultTable(rows []faultRow) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-42s %6s %9s %9s %5s %5s %6s\n", "fault", "rows", "expected", "delivered", "lost", "dups", "resets")
	for _, r := range rows {
		fmt.Fprintf(&b, "%-42s %6d %9d %9d %5d %5d %6d\n", r.fault, r.rows, r.expected, r.delivered, r.lost, r.dups, r.resets)
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
