package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
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
	"github.com/rowcast/rowcast/realtime/redisbus"
)

type env struct {
	pgURL string
	rdb   redis.UniversalClient
}

func setup(t *testing.T) env {
	t.Helper()
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	ctx := context.Background()
	s, err := testenv.StartStack(ctx, t)
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
func newRelay(t *testing.T, e env, name string) (*relay.Relay, *connTracker) {
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
	log := slog.New(slog.NewTextHandler(io.Discard, nil)).With("relay", name)
	r := relay.New(relay.Config{BatchSize: 50, PollInterval: 100 * time.Millisecond, MaxEventBytes: 1 << 20, MaxBackoff: 200 * time.Millisecond},
		dial, outbox.NewStore(pool), redisbus.NewPublisher(e.rdb, redisbus.HistoryLimits{Len: 10000, TTL: time.Hour}), log)
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

func exec(ctx context.Context, t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatal(err)
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

	early, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close(ctx)
	tx, err := early.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO chat_message (room, author, body) VALUES ('late', 'x', 'early id, late commit')`); err != nil {
		t.Fatal(err)
	}
	other, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
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

	conn, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
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
	db, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	late, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close(ctx)
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
	entries, err := e.rdb.XRange(ctx, "rowcast:{once}:history", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	var order []string
	for _, x := range entries {
		var ev struct {
			Data struct {
				Body string `json:"body"`
			} `json:"data"`
		}
		if err := json.Unmarshal([]byte(fmt.Sprint(x.Values["e"])), &ev); err != nil || ev.Data.Body == "" {
			t.Fatalf("event %v: %v", x.Values["e"], err)
		}
		seen[ev.Data.Body]++
		if len(order) < 3 {
			order = append(order, ev.Data.Body)
		}
	}
	if len(entries) != 3+burst || len(seen) != 3+burst {
		t.Errorf("history holds %d events of %d rows, want %d, each once", len(entries), len(seen), 3+burst)
	}
	if fmt.Sprint(order) != "[b c a]" {
		t.Errorf("first events %v, want commit order [b c a]", order)
	}
}
