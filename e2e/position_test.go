package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rowcast/rowcast/e2e/wire"
)

// The position tests' load: writers commit into positionRoomCount rooms
// while clients load a room's rows and subscribe, at random moments.
const (
	positionRoomCount  = 5
	writerCount        = 8
	positionClients    = 50                   // per approach: 50 from a position, 50 naive
	positionTick       = 5 * time.Millisecond // per writer: at most one transaction per tick
	positionWarmRows   = 300                  // rows committed before the first client loads
	positionSpreadRows = 3500                 // clients load while these rows are committed (a few seconds)
	positionTailRows   = 400                  // rows committed after the last client is live
	positionMinRate    = 500                  // rows/s the writers must reach for the run to count
)

// TestPositionNoGap proves "page load to live with no gap", in each capture
// mode. While writers commit continuously (some transactions held open so
// that commits land out of id order), 50 clients each read all rows of
// their room and rowcast.position() in one statement, then subscribe with
// that position, half over WebSocket and half over SSE. Each must end up
// with its room's rows exactly: the query's rows plus the events, nothing
// missing, no event for a row the query had, no event twice.
//
// 50 naive clients run beside them under the same writes: they read the
// rows, then subscribe live only. They must show at least one loss or
// duplicate, or the check above could not fail.
func TestPositionNoGap(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	for _, mode := range captureModes {
		t.Run(mode, func(t *testing.T) { testPositionNoGap(t, mode) })
	}
}

func testPositionNoGap(t *testing.T, mode string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := startStack(ctx, t)
	startListener(ctx, t, s, "ROWCAST_CAPTURE="+mode)
	_, base := startApp(ctx, t, s)
	pool, err := pgxpool.New(ctx, s.pgURL+poolSize(s.pgURL, 24))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	rooms := make([]string, positionRoomCount)
	for i := range rooms {
		rooms[i] = fmt.Sprintf("pos-%d", i)
	}

	probe := startProbe(ctx, t, base, rooms)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	w := startPositionWriters(ctx, s.pgURL, rooms, seed)
	defer w.halt()

	// Every client starts once a random number of rows has been committed:
	// random moments spread over a few seconds of writing.
	var clients []*posClient
	for _, naive := range []bool{false, true} {
		for i := range positionClients {
			tr := wire.WebSocket
			if i%2 == 1 {
				tr = wire.SSE
			}
			c := &posClient{
				naive: naive, tr: tr, room: rooms[rng.IntN(len(rooms))],
				byURL: tr == wire.SSE || i%4 == 2, // WebSocket: every other one names the room in the URL
				after: positionWarmRows + rng.Int64N(positionSpreadRows),
			}
			c.name = fmt.Sprintf("position-%s-%02d", tr, i)
			if naive {
				c.name = fmt.Sprintf("naive-%s-%02d", tr, i)
			}
			clients = append(clients, c)
		}
	}
	var wg sync.WaitGroup
	loadErrs := make(chan error, len(clients))
	for _, c := range clients {
		wg.Go(func() {
			if err := w.committed.wait(ctx, c.after); err != nil {
				loadErrs <- fmt.Errorf("%s: waiting for %d rows: %w", c.name, c.after, err)
				return
			}
			if err := c.load(ctx, pool, base); err != nil {
				loadErrs <- fmt.Errorf("%s: %w", c.name, err)
			}
		})
	}
	for _, c := range clients {
		t.Cleanup(c.close)
	}
	wg.Wait()
	close(loadErrs)
	for err := range loadErrs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	last := slices.MaxFunc(clients, func(a, b *posClient) int { return cmp.Compare(a.after, b.after) }).after
	if err := w.committed.wait(ctx, max(last, w.committed.get())+positionTailRows); err != nil {
		t.Fatalf("writers stalled: %v", err)
	}
	written, took, held, err := w.finish()
	if err != nil {
		t.Fatalf("writers: %v", err)
	}
	rate := float64(written) / took.Seconds()

	// Everything is committed. Once the probe received every row, all were
	// published; a marker row per room committed now is published after
	// every other row of its room, so each client's stream is complete when
	// its marker arrives.
	db, err := pgx.Connect(ctx, s.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	total := 0
	for _, ids := range roomRows(ctx, t, db, rooms) {
		total += len(ids)
	}
	pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
	err = probe.wait(pctx, int64(total))
	pcancel()
	if err != nil {
		t.Fatalf("probe subscribed to every room before the writes (live only): %v", err)
	}
	if _, err := db.Exec(ctx, `INSERT INTO chat_message (room, author, body) SELECT r, 'marker', 'end' FROM unnest($1::text[]) AS r`, rooms); err != nil {
		t.Fatal(err)
	}
	final := roomRows(ctx, t, db, rooms)
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	for _, c := range clients {
		select {
		case <-c.marker:
		case <-c.ended:
		case <-wctx.Done():
		}
	}
	wcancel()

	type sums struct {
		clients, withLoss, withDup    int
		events, missing, dups, late   int
		query, live, latency          []time.Duration
		firstLoss, firstDup           string
		ended, unexpected, incomplete int
	}
	per := map[string]*sums{}
	for _, c := range clients {
		key := fmt.Sprintf("%v/%s", c.naive, c.tr)
		if per[key] == nil {
			per[key] = &sums{}
		}
		sm := per[key]
		r := c.tally(final[c.room])
		sm.clients++
		sm.events += r.events
		sm.missing += len(r.missing)
		sm.dups += len(r.inQuery) + len(r.twice)
		sm.late += r.late
		sm.query = append(sm.query, c.queried.Sub(c.started))
		sm.live = append(sm.live, c.live.Sub(c.queried))
		sm.latency = append(sm.latency, r.latency...)
		if len(r.missing) > 0 {
			sm.withLoss++
			if sm.firstLoss == "" {
				sm.firstLoss = fmt.Sprintf("%s lost ids %v", c.name, head(r.missing, 5))
			}
		}
		if len(r.inQuery)+len(r.twice) > 0 {
			sm.withDup++
			if sm.firstDup == "" {
				sm.firstDup = fmt.Sprintf("%s got ids %v again", c.name, head(append(r.inQuery, r.twice...), 5))
			}
		}
		if !c.sawMarker() {
			sm.incomplete++
		}
		if c.naive {
			continue
		}
		if !c.sawMarker() {
			t.Errorf("%s (room %s, token %s): the stream never brought the room's last row (connection ended: %v); %d events so far",
				c.name, c.room, c.token, c.endErr(), r.events)
		}
		if len(r.missing)+len(r.inQuery)+len(r.twice)+len(r.foreign) > 0 {
			t.Errorf("%s (room %s, %d rows: query %d, events %d)\n  token %s\n  missing %v\n  already in the query %v\n  received twice %v\n  not rows of the room %v\n  %s",
				c.name, c.room, len(final[c.room]), len(c.query), r.events, c.token,
				r.describe(r.missing), r.describe(r.inQuery), r.describe(r.twice), r.foreign, c.describeControls())
		}
		if len(r.controls) > 0 {
			sm.unexpected++
			t.Errorf("%s: unexpected control messages: %s", c.name, describeControls(r.controls))
		}
	}

	report(t, "%s: %d rows written by %d writers over %d rooms in %s (%.0f rows/s), %d transactions held open past later commits",
		mode, written, writerCount, positionRoomCount, took.Round(time.Millisecond), rate, held)
	for _, naive := range []bool{false, true} {
		for _, tr := range []wire.Transport{wire.WebSocket, wire.SSE} {
			sm := per[fmt.Sprintf("%v/%s", naive, tr)]
			if !naive {
				report(t, "%s: position, %-9s: %d clients, %d events, missing %d, duplicates %d; rows below the query's highest id it did not see (late commits), brought by events: %d",
					mode, tr, sm.clients, sm.events, sm.missing, sm.dups, sm.late)
				report(t, "%s: position, %-9s: query %s; connect and subscribe to live %s; capture to client (held transactions included) %s",
					mode, tr, percentiles(sm.query), percentiles(sm.live), percentiles(sm.latency))
				continue
			}
			report(t, "%s: naive,    %-9s: %d clients, %d events, missing %d (%d clients), duplicates %d (%d clients)",
				mode, tr, sm.clients, sm.events, sm.missing, sm.withLoss, sm.dups, sm.withDup)
			report(t, "%s: naive,    %-9s: query %s; connect and subscribe to live %s",
				mode, tr, percentiles(sm.query), percentiles(sm.live))
			for _, ex := range []string{sm.firstLoss, sm.firstDup} {
				if ex != "" {
					t.Logf("%s: naive example: %s", mode, ex)
				}
			}
			if sm.incomplete > 0 {
				t.Errorf("%s: %d naive %s clients never got their room's last row: their counts are not final", mode, sm.incomplete, tr)
			}
		}
	}
	naiveBad := 0
	for _, tr := range []wire.Transport{wire.WebSocket, wire.SSE} {
		sm := per[fmt.Sprintf("true/%s", tr)]
		naiveBad += sm.missing + sm.dups
	}
	if naiveBad == 0 {
		t.Errorf("%s: the naive clients (query, then subscribe live only) showed no loss and no duplicate: this run cannot tell the position approach works", mode)
	}
	if rate < positionMinRate {
		t.Errorf("%s: writers reached %.0f rows/s, want at least %d: the race this test needs was too slow", mode, rate, positionMinRate)
	}
}

// startProbe connects a client to every room, live only, and counts the
// distinct rows it receives: the pipeline delivers it every row committed
// after it is live, which tells when everything was published.
func startProbe(ctx context.Context, t *testing.T, base string, rooms []string) *commitCounter {
	t.Helper()
	conn, err := wire.Dial(ctx, base, wire.WebSocket, wire.Options{Rooms: rooms})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	if _, err := conn.WaitSubscribed(ctx, rooms...); err != nil {
		t.Fatal(err)
	}
	got := newCommitCounter()
	go func() {
		seen := map[int64]bool{}
		for f := range conn.C {
			if f.Event != nil && !seen[rowID(*f.Event)] {
				seen[rowID(*f.Event)] = true
				got.add(1)
			}
		}
	}()
	return got
}

// poolSize returns the query-string suffix that sets a pgxpool's size.
func poolSize(url string, n int) string {
	if strings.Contains(url, "?") {
		return fmt.Sprintf("&pool_max_conns=%d", n)
	}
	return fmt.Sprintf("?pool_max_conns=%d", n)
}

// roomRows returns the ids of every row of rooms, per room in id order.
func roomRows(ctx context.Context, t *testing.T, db *pgx.Conn, rooms []string) map[string][]int64 {
	t.Helper()
	rows, err := db.Query(ctx, `SELECT room, array_agg(id ORDER BY id) FROM chat_message WHERE room = ANY($1) GROUP BY room`, rooms)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]int64{}
	for rows.Next() {
		var (
			room string
			ids  []int64
		)
		if err := rows.Scan(&room, &ids); err != nil {
			t.Fatal(err)
		}
		out[room] = ids
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func head[T any](xs []T, n int) []T { return xs[:min(n, len(xs))] }

// commitCounter counts rows (committed, or received); waiters wake on
// every change.
type commitCounter struct {
	mu sync.Mutex
	n  int64
	ch chan struct{}
}

func newCommitCounter() *commitCounter { return &commitCounter{ch: make(chan struct{})} }

func (c *commitCounter) add(n int64) {
	c.mu.Lock()
	c.n += n
	close(c.ch)
	c.ch = make(chan struct{})
	c.mu.Unlock()
}

func (c *commitCounter) get() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// wait returns once at least n rows were committed, or ctx ended, or stop
// (when not nil) was closed.
func (c *commitCounter) wait(ctx context.Context, n int64, stop ...<-chan struct{}) error {
	var halt <-chan struct{}
	if len(stop) > 0 {
		halt = stop[0]
	}
	for {
		c.mu.Lock()
		got, ch := c.n, c.ch
		c.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ch:
		case <-halt:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("%d of %d rows: %w", got, n, ctx.Err())
		}
	}
}

// positionWriters commit rows into the rooms until finished: most
// transactions insert one row, some a few rows of several rooms, and some
// stay open until dozens of later rows have committed, so that commit order
// differs from id order. The last two writers never hold a transaction
// open, so the held ones always see progress.
type positionWriters struct {
	committed *commitCounter
	held      atomic.Int64
	stop      chan struct{}
	once      sync.Once
	wg        sync.WaitGroup
	start     time.Time
	mu        sync.Mutex
	err       error
}

func startPositionWriters(ctx context.Context, url string, rooms []string, seed uint64) *positionWriters {
	w := &positionWriters{committed: newCommitCounter(), stop: make(chan struct{}), start: time.Now()}
	for i := range writerCount {
		rng := rand.New(rand.NewPCG(seed, uint64(100+i)))
		mayHold := i < writerCount-2
		w.wg.Go(func() {
			if err := w.run(ctx, url, rooms, rng, mayHold); err != nil {
				w.mu.Lock()
				w.err = errors.Join(w.err, fmt.Errorf("writer %d: %w", i, err))
				w.mu.Unlock()
			}
		})
	}
	return w
}

func (w *positionWriters) run(ctx context.Context, url string, rooms []string, rng *rand.Rand, mayHold bool) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	pick := func(n int) []string {
		rs := make([]string, n)
		for i := range rs {
			rs[i] = rooms[rng.IntN(len(rooms))]
		}
		return rs
	}
	const insert = `INSERT INTO chat_message (room, author, body) SELECT r, 'writer', 'w' FROM unnest($1::text[]) AS r`
	tick := time.NewTicker(positionTick)
	defer tick.Stop()
	for {
		select {
		case <-w.stop:
			return nil
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		switch k := rng.IntN(10); {
		case k < 7 || (k == 9 && !mayHold):
			if _, err := conn.Exec(ctx, insert, pick(1)); err != nil {
				return err
			}
			w.committed.add(1)
		case k < 9:
			n := 2 + rng.IntN(3)
			if _, err := conn.Exec(ctx, insert, pick(n)); err != nil {
				return err
			}
			w.committed.add(int64(n))
		default:
			// Held open: its rows' ids are below those committed meanwhile.
			n := 1 + rng.IntN(2)
			tx, err := conn.Begin(ctx)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, insert, pick(n)); err != nil {
				_ = tx.Rollback(context.Background())
				return err
			}
			if err := w.committed.wait(ctx, w.committed.get()+20+rng.Int64N(60), w.stop); err != nil {
				_ = tx.Rollback(context.Background())
				return err
			}
			if err := tx.Commit(ctx); err != nil {
				return err
			}
			w.held.Add(1)
			w.committed.add(int64(n))
		}
	}
}

// halt stops the writers (idempotent).
func (w *positionWriters) halt() {
	w.once.Do(func() { close(w.stop) })
	w.wg.Wait()
}

// finish stops the writers and returns the rows they committed, for how
// long they wrote, how many transactions were held open, and any error.
func (w *positionWriters) finish() (int64, time.Duration, int64, error) {
	w.halt()
	took := time.Since(w.start)
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.committed.get(), took, w.held.Load(), w.err
}

// posClient is one page load: it reads its room's rows, then subscribes,
// from the query's position or (naive) live only, and records every frame.
type posClient struct {
	name  string
	naive bool
	tr    wire.Transport
	byURL bool // the room (and position) in the URL, not a subscribe frame
	room  string
	after int64 // load once this many rows were committed

	token   string
	query   []int64
	started time.Time // before the query
	queried time.Time // the query returned
	live    time.Time // "subscribed" arrived
	conn    *wire.Conn

	mu       sync.Mutex
	events   []wire.Event
	controls []wire.Control
	marker   chan struct{} // closed when the room's marker row arrives
	ended    chan struct{} // closed when the connection ends
}

// load runs the page load: query, connect, subscribe, wait until live.
func (c *posClient) load(ctx context.Context, pool *pgxpool.Pool, base string) error {
	c.marker, c.ended = make(chan struct{}), make(chan struct{})
	c.started = time.Now()
	var err error
	if c.naive {
		err = pool.QueryRow(ctx, `SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM chat_message WHERE room = $1`, c.room).Scan(&c.query)
	} else {
		err = pool.QueryRow(ctx, `SELECT rowcast.position(), coalesce(array_agg(id ORDER BY id), '{}') FROM chat_message WHERE room = $1`,
			c.room).Scan(&c.token, &c.query)
	}
	if err != nil {
		close(c.ended)
		return fmt.Errorf("query: %w", err)
	}
	c.queried = time.Now()
	o := wire.Options{}
	if c.byURL {
		o.Rooms, o.Position = []string{c.room}, c.token
	}
	conn, err := wire.Dial(ctx, base, c.tr, o)
	if err != nil {
		close(c.ended)
		return err
	}
	c.conn = conn
	subscribed := make(chan *wire.Control, 1)
	go c.read(subscribed)
	if !c.byURL {
		frame := map[string]string{"type": "subscribe", "room": c.room}
		if c.token != "" {
			frame["position"] = c.token
		}
		if err := conn.Send(frame); err != nil {
			return fmt.Errorf("subscribe: %w", err)
		}
	}
	select {
	case ctl := <-subscribed:
		if ctl.Type != "subscribed" {
			return fmt.Errorf("subscribe to %s from %q: %s %s: %s", c.room, c.token, ctl.Type, ctl.Code, ctl.Message)
		}
		c.live = time.Now()
		return nil
	case <-c.ended:
		return fmt.Errorf("connection ended before subscribed: %v", conn.Err())
	case <-ctx.Done():
		return fmt.Errorf("waiting for subscribed: %w", ctx.Err())
	}
}

// read records every frame until the connection ends; the first
// "subscribed" or "error" of the room goes to subscribed.
func (c *posClient) read(subscribed chan<- *wire.Control) {
	defer close(c.ended)
	answered := false
	for f := range c.conn.C {
		if ctl := f.Control; ctl != nil {
			c.mu.Lock()
			c.controls = append(c.controls, *ctl)
			c.mu.Unlock()
			if !answered && (ctl.Type == "subscribed" || ctl.Type == "error") {
				answered = true
				subscribed <- ctl
			}
			continue
		}
		c.mu.Lock()
		c.events = append(c.events, *f.Event)
		c.mu.Unlock()
		if f.Event.Room == c.room && rowAuthor(*f.Event) == "marker" {
			close(c.marker)
		}
	}
}

func (c *posClient) close() {
	if c.conn != nil {
		c.conn.Close()
	}
}

func (c *posClient) sawMarker() bool {
	select {
	case <-c.marker:
		return true
	default:
		return false
	}
}

func (c *posClient) endErr() error {
	if c.conn == nil {
		return nil
	}
	select {
	case <-c.ended:
		return c.conn.Err()
	default:
		return nil
	}
}

func (c *posClient) describeControls() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return "controls: " + describeControls(c.controls)
}

// posTally is what a client holds against its room's final rows.
type posTally struct {
	events   int
	missing  []int64 // rows neither in the query nor received
	inQuery  []int64 // received, though the query had them
	twice    []int64 // received more than once (each repeat)
	foreign  []int64 // received, not a row of the room
	late     int     // rows below the query's highest id that it did not see, received
	controls []wire.Control
	latency  []time.Duration
	byID     map[int64][]wire.Event
}

func (c *posClient) tally(final []int64) posTally {
	c.mu.Lock()
	events := append([]wire.Event(nil), c.events...)
	controls := append([]wire.Control(nil), c.controls...)
	c.mu.Unlock()
	r := posTally{events: len(events), byID: map[int64][]wire.Event{}}
	for _, ctl := range controls {
		if ctl.Type != "subscribed" {
			r.controls = append(r.controls, ctl)
		}
	}
	inFinal := map[int64]bool{}
	for _, id := range final {
		inFinal[id] = true
	}
	inQuery := map[int64]bool{}
	top := int64(0)
	for _, id := range c.query {
		inQuery[id] = true
		top = max(top, id)
	}
	got := map[int64]bool{}
	for _, ev := range events {
		id := rowID(ev)
		r.byID[id] = append(r.byID[id], ev)
		r.latency = append(r.latency, ev.Received.Sub(ev.At))
		switch {
		case ev.Room != c.room || !inFinal[id]:
			r.foreign = append(r.foreign, id)
		case got[id]:
			r.twice = append(r.twice, id)
		case inQuery[id]:
			r.inQuery = append(r.inQuery, id)
		default:
			if id < top {
				r.late++
			}
		}
		got[id] = true
	}
	for _, id := range final {
		if !inQuery[id] && !got[id] {
			r.missing = append(r.missing, id)
		}
	}
	return r
}

// describe lists ids with the events that carried them (event id, tx).
func (r posTally) describe(ids []int64) string {
	var parts []string
	for _, id := range head(ids, 10) {
		var evs []string
		for _, ev := range r.byID[id] {
			evs = append(evs, fmt.Sprintf("%s tx %d", ev.ID, ev.Tx))
		}
		if len(evs) == 0 {
			parts = append(parts, fmt.Sprint(id))
			continue
		}
		parts = append(parts, fmt.Sprintf("%d (%s)", id, strings.Join(evs, ", ")))
	}
	if len(ids) > 10 {
		parts = append(parts, fmt.Sprintf("... %d in all", len(ids)))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// rowID returns a chat_message event's row id (data.id), 0 when missing.
func rowID(ev wire.Event) int64 {
	var row struct {
		ID int64 `json:"id"`
	}
	_ = json.Unmarshal(ev.Data, &row)
	return row.ID
}

// rowAuthor returns a chat_message event's author column.
func rowAuthor(ev wire.Event) string {
	var row struct {
		Author string `json:"author"`
	}
	_ = json.Unmarshal(ev.Data, &row)
	return row.Author
}

// TestPositionRefused checks the answers to positions that cannot be used:
// a garbage token is refused with "bad_position" and the connection stays
// usable (a later subscribe from a valid position on the same WebSocket
// delivers); a token of the right shape naming another database is refused
// with "foreign_position", on WebSocket and SSE alike; one older than the
// rooms' history TTL with "position_too_old".
func TestPositionRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, base, db := startSystem(ctx, t)

	// One row through the whole path first, so the edge knows where events
	// come from.
	warm, err := wire.Dial(ctx, base, wire.WebSocket, wire.Options{Rooms: []string{"pb"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(warm.Close)
	if _, err := warm.WaitSubscribed(ctx, "pb"); err != nil {
		t.Fatal(err)
	}
	insertRowID(ctx, t, db, "pb")
	nextEvent(ctx, t, warm)

	var token string
	if err := db.QueryRow(ctx, `SELECT rowcast.position()`).Scan(&token); err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 6 || parts[0] != "p1" || strings.Trim(token, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._") != "" {
		t.Fatalf("rowcast.position() = %q, want p1.<database>.<...> of [A-Za-z0-9._]", token)
	}
	stale := slices.Clone(parts)
	stale[2] = "1000" // taken in 1970: older than any history TTL
	tooOld := strings.Join(stale, ".")
	parts[1] = otherHex(parts[1])
	foreign := strings.Join(parts, ".")

	conn, err := wire.Dial(ctx, base, wire.WebSocket, wire.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	for _, bad := range []string{"garbage", "p1.garbage", "p1.zz.1.2.3.", token[:strings.LastIndexByte(token, '.')], "p1." + strings.Repeat("0", 16) + ".1.9.3."} {
		if err := conn.Send(map[string]string{"type": "subscribe", "room": "pb", "position": bad}); err != nil {
			t.Fatal(err)
		}
		expectRefused(ctx, t, fmt.Sprintf("websocket frame, position %q", bad), conn, "pb", "bad_position")
	}
	if err := conn.Send(map[string]string{"type": "subscribe", "room": "pc", "position": foreign}); err != nil {
		t.Fatal(err)
	}
	expectRefused(ctx, t, "websocket frame, another database's position", conn, "pc", "foreign_position")
	if err := conn.Send(map[string]string{"type": "subscribe", "room": "pc", "position": tooOld}); err != nil {
		t.Fatal(err)
	}
	expectRefused(ctx, t, "websocket frame, a position older than the history TTL", conn, "pc", "position_too_old")

	// The same connection still works: subscribe from the real token.
	if err := conn.Send(map[string]string{"type": "subscribe", "room": "pb", "position": token}); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.WaitSubscribed(ctx, "pb"); err != nil {
		t.Fatalf("valid subscribe after refusals: %v", err)
	}
	id := insertRowID(ctx, t, db, "pb")
	if ev := nextEvent(ctx, t, conn); rowID(ev) != id {
		t.Fatalf("after refusals: got row %d (%s), want %d", rowID(ev), ev.ID, id)
	}

	// In the URL, on both transports.
	for _, tr := range []wire.Transport{wire.WebSocket, wire.SSE} {
		for _, tc := range []struct{ position, code string }{
			{"p1.garbage", "bad_position"}, {"garbage", "bad_position"}, {"pb@garbage", "bad_position"}, {"pb@" + foreign, "foreign_position"}, {foreign, "foreign_position"},
		} {
			what := fmt.Sprintf("%s URL, position %.40q", tr, tc.position)
			c, err := wire.Dial(ctx, base, tr, wire.Options{Rooms: []string{"pb"}, Position: tc.position})
			if err != nil {
				t.Errorf("%s: %v", what, err)
				continue
			}
			expectRefused(ctx, t, what, c, "pb", tc.code)
			c.Close()
		}
	}
}

// otherHex returns a hex string of s's length that differs from s.
func otherHex(s string) string {
	const digits = "0123456789abcdef"
	b := []byte(s)
	for i, ch := range b {
		b[i] = digits[(strings.IndexByte(digits, ch)+1)%len(digits)]
	}
	return string(b)
}

// insertRowID commits one row in room and returns its id.
func insertRowID(ctx context.Context, t *testing.T, db *pgx.Conn, room string) int64 {
	t.Helper()
	var id int64
	if err := db.QueryRow(ctx, `INSERT INTO chat_message (room, author, body) VALUES ($1, 'e2e', 'x') RETURNING id`, room).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// expectRefused reads conn's next control (no event may come before it)
// and checks it is an error for room with code.
func expectRefused(ctx context.Context, t *testing.T, what string, conn *wire.Conn, room, code string) {
	t.Helper()
	select {
	case f, ok := <-conn.C:
		switch {
		case !ok:
			t.Errorf("%s: connection ended, want an error frame %q: %v", what, code, conn.Err())
		case f.Event != nil:
			t.Errorf("%s: event %s arrived, want an error frame %q", what, f.Event.ID, code)
		case f.Control.Type != "error" || f.Control.Room != room || f.Control.Code != code:
			t.Errorf("%s: got %+v, want an error for room %s with code %q", what, *f.Control, room, code)
		}
	case <-ctx.Done():
		t.Fatalf("%s: no answer: %v", what, ctx.Err())
	}
}
