package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"

	"github.com/rowcast/rowcast/internal/testenv"
	"github.com/rowcast/rowcast/listener/relay"
)

// newWALRelay builds a relay in WAL mode on e's database.
func newWALRelay(t *testing.T, e env, name string, tune ...func(*relay.Config)) *relay.Relay {
	t.Helper()
	r, _ := newRelay(t, e, name, tune...)
	conf, err := pgconn.ParseConfig(e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	r.CaptureWAL(conf, "rowcast")
	return r
}

// runRelay runs r until the returned stop is called; stop waits for Run
// to return.
func runRelay(ctx context.Context, t *testing.T, r *relay.Relay) (stop func()) {
	t.Helper()
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(rctx) }()
	select {
	case <-r.Ready():
	case <-ctx.Done():
		t.Fatal("relay never became ready")
	}
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// bodies returns the bodies of room's history in order.
func bodies(ctx context.Context, t *testing.T, e env, room string) []string {
	t.Helper()
	entries, err := e.rdb.XRange(ctx, "rowcast:{"+room+"}:history", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, 0, len(entries))
	for _, x := range entries {
		var ev struct {
			Data struct {
				Body string `json:"body"`
			} `json:"data"`
		}
		if err := json.Unmarshal([]byte(fmt.Sprint(x.Values["e"])), &ev); err != nil {
			t.Fatalf("event %v: %v", x.Values["e"], err)
		}
		out = append(out, ev.Data.Body)
	}
	return out
}

func captureState(ctx context.Context, t *testing.T, db *pgx.Conn) int64 {
	t.Helper()
	var v int64
	if err := db.QueryRow(ctx, `SELECT last_value FROM rowcast.capture_state`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// WAL mode from the switch on: rows a writer put in the outbox before go
// out first; then the slot's messages go out in commit order, nothing
// reaches the outbox, and a relay that was down while writes went on
// publishes each of them once on its return.
func TestWALModeRelaysInCommitOrder(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := setup(t)
	db := dial(ctx, t, e.pgURL)
	insert := func(conn *pgx.Conn, body string) {
		t.Helper()
		exec(ctx, t, conn, `INSERT INTO chat_message (room, author, body) VALUES ('w', 'x', $1)`, body)
	}
	insert(db, "before the switch")
	stop := runRelay(ctx, t, newWALRelay(t, e, "wal"))
	if st := captureState(ctx, t, db); st != 2 {
		t.Fatalf("capture state %d after a WAL relay started, want 2", st)
	}
	waitFor(ctx, t, "the outbox row", func() bool { return historyLen(ctx, t, e.rdb, "w") == 1 })

	// b takes its place in the WAL first but commits after c.
	late := dial(ctx, t, e.pgURL)
	tx, err := late.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO chat_message (room, author, body) VALUES ('w', 'x', 'b')`); err != nil {
		t.Fatal(err)
	}
	insert(db, "c")
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "b and c", func() bool { return historyLen(ctx, t, e.rdb, "w") == 3 })

	// Down while writes go on: the slot keeps them.
	stop()
	for i := range 50 {
		insert(db, fmt.Sprint("while down ", i))
	}
	runRelay(ctx, t, newWALRelay(t, e, "wal-again"))
	waitFor(ctx, t, "the rows written while down", func() bool { return historyLen(ctx, t, e.rdb, "w") == 53 })
	got := bodies(ctx, t, e, "w")
	want := []string{"before the switch", "c", "b"}
	for i := range 50 {
		want = append(want, fmt.Sprint("while down ", i))
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("history %q,\nwant %q", got, want)
	}
	var left int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM rowcast.outbox`).Scan(&left); err != nil || left != 0 {
		t.Fatalf("%d rows in the outbox in WAL mode (%v)", left, err)
	}
	// A NOTIFY-mode listener refuses a database that captures in WAL mode
	// (its changes wait in the slot); it says so instead of relaying.
	if err := relay.CheckNotifyMode(ctx, db); err == nil || !strings.Contains(err.Error(), "ROWCAST_CAPTURE=wal") {
		t.Fatalf("NOTIFY mode on a WAL-mode database: %v, want an error naming ROWCAST_CAPTURE=wal", err)
	}
}

// A relay stopped in the middle of a transaction larger than Redis's
// dedupe window gets the whole transaction again from the slot (its
// position moves only at commits); the progress recorded in Postgres skips
// what was published, so no event is published twice.
func TestWALRestartInsideALargeTransaction(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := setup(t)
	db := dial(ctx, t, e.pgURL)
	tune := func(c *relay.Config) { c.BatchSize = 500 }
	stop := runRelay(ctx, t, newWALRelay(t, e, "first", tune))
	const rows = 30_000
	exec(ctx, t, db, `INSERT INTO chat_message (room, author, body) SELECT 'big', 'x', 'r' || i FROM generate_series(1, $1) AS i`, rows)
	// The room's counter: each event published once moves it by one.
	seq := func() int64 {
		n, err := e.rdb.Get(ctx, "rowcast:{big}:seq").Int64()
		if err != nil && err != redis.Nil {
			t.Fatal(err)
		}
		return n
	}
	waitFor(ctx, t, "more than the dedupe window", func() bool { return seq() > 12_000 })
	stop()
	if n := seq(); n >= rows {
		t.Fatalf("the relay published all %d rows before it stopped; the test needs it stopped inside", n)
	}
	runRelay(ctx, t, newWALRelay(t, e, "second", tune))
	waitFor(ctx, t, "the whole transaction", func() bool { return seq() >= rows })
	// Publish what follows: once it is there, anything the restarted relay
	// would have published twice is there too.
	exec(ctx, t, db, `INSERT INTO chat_message (room, author, body) VALUES ('big', 'x', 'next')`)
	waitFor(ctx, t, "the next row", func() bool {
		b := bodies(ctx, t, e, "big")
		return len(b) > 0 && b[len(b)-1] == "next"
	})
	if n := seq(); n != rows+1 {
		t.Fatalf("the room's counter is at %d after %d rows: %d published twice", n, rows+1, n-rows-1)
	}
	got := bodies(ctx, t, e, "big")
	if len(got) < 2 || got[len(got)-2] != fmt.Sprint("r", rows) {
		t.Fatalf("history ends %q, want r%d then next", got[max(0, len(got)-2):], rows)
	}
}

// A slot invalidated by max_slot_wal_keep_size lost the changes it held:
// the relay says so, creates the slot again, and every room it had
// published starts a new epoch, so its clients are told to reset.
func TestWALInvalidatedSlotStartsNewEpochs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := setup(t, testenv.PostgresOptions(testenv.WithArgs("-c", "max_slot_wal_keep_size=1MB")))
	db := dial(ctx, t, e.pgURL)
	stop := runRelay(ctx, t, newWALRelay(t, e, "first"))
	exec(ctx, t, db, `INSERT INTO chat_message (room, author, body) VALUES ('inv', 'x', 'kept')`)
	waitFor(ctx, t, "the first row", func() bool { return historyLen(ctx, t, e.rdb, "inv") == 1 })
	epoch, err := e.rdb.Get(ctx, "rowcast:{inv}:epoch").Result()
	if err != nil {
		t.Fatal(err)
	}
	stop()
	// Written while no relay reads, then pushed out of the WAL the slot may
	// keep.
	exec(ctx, t, db, `INSERT INTO chat_message (room, author, body) VALUES ('inv', 'x', 'lost')`)
	for captureStatus := ""; captureStatus != "lost"; {
		exec(ctx, t, db, `INSERT INTO chat_message (room, author, body) SELECT 'pad', 'x', repeat('p', 1000) FROM generate_series(1, 1000)`)
		exec(ctx, t, db, `SELECT pg_switch_wal()`)
		exec(ctx, t, db, `CHECKPOINT`)
		if err := db.QueryRow(ctx, `SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = 'rowcast'`).Scan(&captureStatus); err != nil {
			t.Fatal(err)
		}
		if ctx.Err() != nil {
			t.Fatal("the slot was never invalidated")
		}
	}
	r := newWALRelay(t, e, "after")
	runRelay(ctx, t, r)
	if n := r.SlotInvalidations(); n != 1 {
		t.Fatalf("%d slot invalidations seen, want 1", n)
	}
	exec(ctx, t, db, `INSERT INTO chat_message (room, author, body) VALUES ('inv', 'x', 'after')`)
	waitFor(ctx, t, "the row after", func() bool {
		b := bodies(ctx, t, e, "inv")
		return len(b) > 0 && b[len(b)-1] == "after"
	})
	again, err := e.rdb.Get(ctx, "rowcast:{inv}:epoch").Result()
	if err != nil {
		t.Fatal(err)
	}
	if again == epoch {
		t.Fatalf("room kept epoch %s after its changes were lost: its clients would never be told", epoch)
	}
	if b := bodies(ctx, t, e, "inv"); len(b) != 1 {
		t.Fatalf("new epoch's history %q, want only the row after", b)
	}
}
