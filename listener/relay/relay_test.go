package relay_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/rowcast/rowcast/internal/connect"
	"github.com/rowcast/rowcast/internal/testenv"
	"github.com/rowcast/rowcast/listener/outbox"
	"github.com/rowcast/rowcast/listener/relay"
	"github.com/rowcast/rowcast/migrations"
	"github.com/rowcast/rowcast/realtime"
	"github.com/rowcast/rowcast/realtime/redisbus"
)

type env struct {
	pgURL string
	rdb   redis.UniversalClient
}

func setup(t *testing.T, opts ...testenv.StackOption) env {
	t.Helper()
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	ctx := context.Background()
	s, err := testenv.StartStack(ctx, t, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := migrations.Up(ctx, s.PostgresURL); err != nil {
		t.Fatal(err)
	}
	rdb, err := connect.Redis(s.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	return env{pgURL: s.PostgresURL, rdb: rdb}
}

// newRelay builds a relay; its LISTEN connections are tracked so a test
// can cut them.
func newRelay(t *testing.T, e env, name string, tune ...func(*relay.Config)) (*relay.Relay, *connTracker) {
	t.Helper()
	return newRelayWith(t, e, name, redisbus.NewPublisher(e.rdb, redisbus.HistoryLimits{Len: 10000, TTL: time.Hour}), tune...)
}

// newRelayWith builds a relay that publishes with pub.
func newRelayWith(t *testing.T, e env, name string, pub realtime.Publisher, tune ...func(*relay.Config)) (*relay.Relay, *connTracker) {
	t.Helper()
	ctx := context.Background()
	pool, err := connect.PostgresPool(ctx, "DATABASE_URL", e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	cfg, err := connect.PostgresConfig("LISTEN_DATABASE_URL", e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	tr := &connTracker{}
	dial := func(ctx context.Context) (*pgx.Conn, error) {
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err == nil {
			tr.set(c)
		}
		return c, err
	}
	log := slog.New(slog.NewTextHandler(testLogWriter(), &slog.HandlerOptions{Level: slog.LevelDebug})).With("relay", name)
	rcfg := relay.Config{BatchSize: 50, PollInterval: 100 * time.Millisecond, MaxEventBytes: 1 << 20, MaxBackoff: 200 * time.Millisecond}
	for _, f := range tune {
		f(&rcfg)
	}
	r := relay.New(rcfg, dial, outbox.NewStore(pool), pub, log)
	return r, tr
}

type connTracker struct {
	mu sync.Mutex
	c  *pgx.Conn
}

func (t *connTracker) set(c *pgx.Conn) { t.mu.Lock(); t.c = c; t.mu.Unlock() }

// pid returns the backend pid of the current LISTEN connection.
func (t *connTracker) pid() uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.c.PgConn().PID()
}

// historyLen returns how many events room's history holds.
func historyLen(ctx context.Context, t *testing.T, rdb redis.UniversalClient, room string) int64 {
	n, err := rdb.XLen(ctx, "rowcast:{"+room+"}:history").Result()
	if err != nil && err != redis.Nil {
		t.Fatal(err)
	}
	return n
}

func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// dial opens a connection to url, closed when the test ends.
func dial(ctx context.Context, t *testing.T, url string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func exec(ctx context.Context, t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatal(err)
	}
}

// cancelAfterPublish ends the relay (cancel) as soon as a publish went
// through: shutdown begins between the publish and its record.
type cancelAfterPublish struct {
	realtime.Publisher
	cancel context.CancelFunc
}

func (p cancelAfterPublish) Publish(ctx context.Context, events []realtime.Event, recorded map[realtime.Room]realtime.Position) (realtime.PublishResult, error) {
	res, err := p.Publisher.Publish(ctx, events, recorded)
	if err == nil && len(events) > 0 {
		p.cancel()
	}
	return res, err
}

// A row published when shutdown begins is still recorded: left in the
// outbox, the next leader would publish it again, and a bus without Redis's
// dedupe (one process, no Redis) would show it twice.
func TestPublishedRowIsRecordedAtShutdown(t *testing.T) {
	e := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := dial(ctx, t, e.pgURL)
	exec(ctx, t, db, `CREATE TABLE public.note (id int PRIMARY KEY, room text)`)
	exec(ctx, t, db, `SELECT rowcast.watch('public.note', 'room')`)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	pub := cancelAfterPublish{Publisher: redisbus.NewPublisher(e.rdb, redisbus.HistoryLimits{Len: 10000, TTL: time.Hour}), cancel: stop}
	r, _ := newRelayWith(t, e, "shutdown", pub)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	// Before or after the relay leads: a notification or its first read
	// of the outbox brings the row.
	exec(ctx, t, db, `INSERT INTO public.note VALUES (1, 'shutdown')`)
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("the relay did not stop")
	}
	if n := historyLen(ctx, t, e.rdb, "shutdown"); n != 1 {
		t.Fatalf("room history holds %d events, want the one row", n)
	}
	var left int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM rowcast.outbox`).Scan(&left); err != nil || left != 0 {
		t.Fatalf("%d published rows left in the outbox (%v): the next leader would publish them again", left, err)
	}
}

// A row whose transaction took its id early but commits late must still be
// published: the relay removes rows by id, it keeps no high-water mark.
func TestLateCommitIsNotSkipped(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := setup(t)
	r, _ := newRelay(t, e, "only")
	go r.Run(ctx)
	<-r.Ready()

	early := dial(ctx, t, e.pgURL)
	tx, err := early.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO chat_message (room, author, body) VALUES ('late', 'x', 'early id, late commit')`); err != nil {
		t.Fatal(err)
	}
	other := dial(ctx, t, e.pgURL)
	exec(ctx, t, other, `INSERT INTO chat_message (room, author, body) VALUES ('late', 'y', 'later id, early commit')`)
	waitFor(ctx, t, "the early commit to be published", func() bool { return historyLen(ctx, t, e.rdb, "late") == 1 })
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the late commit to be published", func() bool { return historyLen(ctx, t, e.rdb, "late") == 2 })
	// The rows leave the outbox once the publish is recorded, just after
	// Redis has them.
	waitFor(ctx, t, "the outbox to empty", func() bool {
		var left int
		err := other.QueryRow(ctx, `SELECT count(*) FROM rowcast.outbox`).Scan(&left)
		return err == nil && left == 0
	})
}

// Two relays: one leads; when its connection dies the standby takes over,
// and no row is published twice or lost.
func TestStandbyTakesOver(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := setup(t)
	r1, c1 := newRelay(t, e, "one")
	r2, _ := newRelay(t, e, "two")
	ctx1, stop1 := context.WithCancel(ctx)
	defer stop1()
	go r1.Run(ctx1)
	<-r1.Ready()
	go r2.Run(ctx)

	conn := dial(ctx, t, e.pgURL)
	insert := func(from, n int) {
		for i := from; i < from+n; i++ {
			exec(ctx, t, conn, `INSERT INTO chat_message (room, author, body) VALUES ('ha', 'x', $1)`, fmt.Sprint(i))
		}
	}
	insert(0, 20)
	waitFor(ctx, t, "first rows", func() bool { return historyLen(ctx, t, e.rdb, "ha") == 20 })
	if r2.Leader() {
		t.Fatal("both relays lead")
	}
	// Kill the leader's session from the server side, and stop it so it
	// cannot come back as leader.
	stop1()
	exec(ctx, t, conn, `SELECT pg_terminate_backend($1)`, c1.pid())
	insert(20, 20)
	<-r2.Ready()
	waitFor(ctx, t, "the standby to publish", func() bool { return historyLen(ctx, t, e.rdb, "ha") == 40 })
	if !r2.Leader() {
		t.Fatal("standby does not lead")
	}
}

// Rows travel in their notifications, but a notification is trusted only for
// a row no read of the outbox can have returned: a row that commits late with
// an id below one the relay read goes through the outbox, and rows read from
// the outbox are not published again when their notifications arrive.
func TestNotifiedRowsArePublishedOnceInCommitOrder(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := setup(t)
	db := dial(ctx, t, e.pgURL)
	late := dial(ctx, t, e.pgURL)
	insert := func(conn *pgx.Conn, body string) {
		t.Helper()
		exec(ctx, t, conn, `INSERT INTO chat_message (room, author, body) VALUES ('once', 'x', $1)`, body)
	}
	// a takes the lowest id and commits last; b and c are in the outbox
	// before the relay starts, so its first read returns them.
	tx, err := late.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO chat_message (room, author, body) VALUES ('once', 'x', 'a')`); err != nil {
		t.Fatal(err)
	}
	insert(db, "b")
	insert(db, "c")
	r, _ := newRelay(t, e, "only")
	go r.Run(ctx)
	<-r.Ready()
	waitFor(ctx, t, "b and c", func() bool { return historyLen(ctx, t, e.rdb, "once") == 2 })
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "a", func() bool { return historyLen(ctx, t, e.rdb, "once") == 3 })
	// A burst: some rows come from their notifications, others from the
	// reads that follow each publish.
	const burst = 200
	var wg sync.WaitGroup
	for w := range 4 {
		conn, err := pgx.Connect(ctx, e.pgURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		wg.Go(func() {
			for i := w; i < burst; i += 4 {
				if _, err := conn.Exec(ctx, `INSERT INTO chat_message (room, author, body) VALUES ('once', 'x', $1)`, fmt.Sprint("d", i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	waitFor(ctx, t, "the burst", func() bool { return historyLen(ctx, t, e.rdb, "once") >= 3+burst })
	waitFor(ctx, t, "the outbox to empty", func() bool {
		var left int
		err := db.QueryRow(ctx, `SELECT count(*) FROM rowcast.outbox`).Scan(&left)
		return err == nil && left == 0
	})
	got := bodies(ctx, t, e, "once")
	seen := map[string]int{}
	for _, b := range got {
		seen[b]++
	}
	order := got[:min(3, len(got))]
	if len(got) != 3+burst || len(seen) != 3+burst {
		t.Errorf("history holds %d events of %d rows, want %d, each once", len(got), len(seen), 3+burst)
	}
	if fmt.Sprint(order) != "[b c a]" {
		t.Errorf("first events %v, want commit order [b c a]", order)
	}
}

// Bursts from many writers: the relay tells writers to stop notifying while
// it drains and to notify again before it sleeps, and no row waits for the
// safety poll (set far beyond the test's deadline), however the writers'
// commits interleave with the relay going to sleep.
func TestBurstsSkipWakeUpsAndLoseNone(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := setup(t)
	r, _ := newRelay(t, e, "only", func(c *relay.Config) { c.PollInterval = 10 * time.Minute })
	go r.Run(ctx)
	<-r.Ready()
	listen := dial(ctx, t, e.pgURL)
	exec(ctx, t, listen, "LISTEN rowcast")
	db := dial(ctx, t, e.pgURL)
	const writers, rounds, perWriter = 8, 6, 150
	conns := make([]*pgx.Conn, writers)
	for i := range conns {
		conns[i] = dial(ctx, t, e.pgURL)
	}
	total := 0
	for round := range rounds {
		var wg sync.WaitGroup
		for w, conn := range conns {
			wg.Go(func() {
				for i := range perWriter {
					if _, err := conn.Exec(ctx, `INSERT INTO chat_message (room, author, body) VALUES ('burst', 'x', $1)`,
						fmt.Sprint(round, "-", w, "-", i)); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		total += writers * perWriter
		waitFor(ctx, t, fmt.Sprintf("round %d published", round), func() bool { return historyLen(ctx, t, e.rdb, "burst") == int64(total) })
		// Idle again: the relay went back to sleep on LISTEN.
		waitFor(ctx, t, "the relay to sleep", func() bool { return captureState(ctx, t, db) == 0 })
	}
	notified := 0
	for {
		wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		_, err := listen.WaitForNotification(wctx)
		cancel()
		if err != nil {
			break
		}
		notified++
	}
	t.Logf("%d rows, %d notifications", total, notified)
	if notified >= total {
		t.Errorf("%d notifications for %d rows: writers never skipped the wake-up while the relay drained", notified, total)
	}
	var left int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM rowcast.outbox`).Scan(&left); err != nil || left != 0 {
		t.Errorf("%d rows left in the outbox (%v)", left, err)
	}
}

// The race the sleep protocol closes: a writer read "draining" (so sent no
// NOTIFY) and commits only after the relay told writers to notify again.
// The relay waits for it before it trusts LISTEN, so its row goes out at
// once, not at the safety poll (set far beyond the test's deadline).
func TestWriterThatMissedTheSleepIsNotStranded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := setup(t)
	r, _ := newRelay(t, e, "only", func(c *relay.Config) { c.PollInterval = 10 * time.Minute })
	go r.Run(ctx)
	<-r.Ready()
	db := dial(ctx, t, e.pgURL)
	writer := dial(ctx, t, e.pgURL)
	// Writers believe the relay drains: the open transaction's row sends no
	// wake-up, nor do the backlog rows below.
	exec(ctx, t, db, `SELECT setval('rowcast.capture_state', 1, true)`)
	tx, err := writer.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `INSERT INTO chat_message (room, author, body) VALUES ('late', 'x', 'missed the sleep')`); err != nil {
		t.Fatal(err)
	}
	exec(ctx, t, db, `INSERT INTO chat_message (room, author, body) SELECT 'late', 'x', 'backlog ' || i FROM generate_series(1, 20) AS i`)
	// One wake-up by hand: the relay drains the backlog, and goes to sleep
	// with the writer still open.
	exec(ctx, t, db, `NOTIFY rowcast`)
	waitFor(ctx, t, "the backlog", func() bool { return historyLen(ctx, t, e.rdb, "late") == 20 })
	waitFor(ctx, t, "the relay to tell writers to notify", func() bool { return captureState(ctx, t, db) == 0 })
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the row of the writer that missed the sleep", func() bool { return historyLen(ctx, t, e.rdb, "late") == 21 })
}

func testLogWriter() io.Writer {
	if os.Getenv("ROWCAST_TEST_LOG") != "" {
		return os.Stderr
	}
	return io.Discard
}
