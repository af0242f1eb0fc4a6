package outbox_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/rowcast/rowcast/internal/connect"
	"github.com/rowcast/rowcast/internal/testenv"
	"github.com/rowcast/rowcast/listener/outbox"
	"github.com/rowcast/rowcast/migrations"
	"github.com/rowcast/rowcast/realtime"
)

// migratedPostgres starts PostgreSQL with rowcast's migrations applied and
// returns its URL.
func migratedPostgres(ctx context.Context, t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	url := testenv.PostgresURL(ctx, t)
	if _, err := migrations.Up(ctx, url); err != nil {
		t.Fatal(err)
	}
	return url
}

// The capture trigger, against a real Postgres: what reaches the outbox, what
// never does, and how many wake-ups a transaction costs.
func TestCaptureTrigger(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url := migratedPostgres(ctx, t)
	db, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := db.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`CREATE TABLE public.account (id int PRIMARY KEY, team text, name text, password_hash text, email text)`)
	exec(`SELECT rowcast.watch('public.account', 'team', 'password_hash', 'email')`)

	listen, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer listen.Close(ctx)
	if _, err := listen.Exec(ctx, "LISTEN rowcast"); err != nil {
		t.Fatal(err)
	}

	// One transaction of 70 rows: its first 16 travel in their
	// notifications, the rest share one plain wake-up. A row too large for a
	// notification wakes the listener without it.
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 70 {
		if _, err := tx.Exec(ctx, `INSERT INTO public.account VALUES ($1, 'blue', 'n', 'secret-hash', 'a@b.c')`, i); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	exec(`UPDATE public.account SET name = 'm' WHERE id = 1`)
	exec(`DELETE FROM public.account WHERE id = 2`)
	exec(`INSERT INTO public.account VALUES (100, NULL, 'no room', 'h', 'e')`) // not captured
	exec(`INSERT INTO public.account VALUES (101, 'blue', repeat('x', 9000), 'h', 'e')`)
	var notified []outbox.Row
	plain := 0
	for {
		wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		n, err := listen.WaitForNotification(wctx)
		cancel()
		if err != nil {
			break
		}
		if row, ok := outbox.ParseNotification(n.Payload); ok {
			notified = append(notified, row)
		} else if n.Payload == "" {
			plain++
		} else {
			t.Errorf("notification payload is neither a row nor empty: %.80q", n.Payload)
		}
	}
	// 16 rows of the transaction, the UPDATE, the DELETE; one plain wake-up
	// for the transaction's other 54 rows, one for the large row.
	if len(notified) != 18 || plain != 2 {
		t.Errorf("%d notifications with a row and %d plain, want 18 and 2", len(notified), plain)
	}

	pool, err := connect.PostgresPool(ctx, "DATABASE_URL", url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store := outbox.NewStore(pool)
	rows, err := store.Oldest(ctx, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 73 {
		t.Fatalf("%d outbox rows, want 73", len(rows))
	}
	ops := map[string]int{}
	byID := map[int64]outbox.Row{}
	for _, r := range rows {
		ops[r.Op]++
		byID[r.ID] = r
		if r.Room != "blue" || r.Table != "public.account" {
			t.Fatalf("row %+v", r)
		}
		if strings.Contains(string(r.Data), "secret-hash") || strings.Contains(string(r.Data), "a@b.c") ||
			strings.Contains(string(r.Data), "password_hash") {
			t.Fatalf("a hidden column left the database: %s", r.Data)
		}
	}
	if ops["INSERT"] != 71 || ops["UPDATE"] != 1 || ops["DELETE"] != 1 {
		t.Fatalf("ops %v", ops)
	}
	// A notified row is the outbox row, byte for byte: both paths publish
	// the same event.
	for _, n := range notified {
		r, ok := byID[n.ID]
		if !ok || r.Room != n.Room || r.Table != n.Table || r.Op != n.Op || string(r.Data) != string(n.Data) ||
			!r.CapturedAt.Equal(n.CapturedAt) {
			t.Fatalf("notified row %+v\n  outbox row %+v", n, r)
		}
	}
	n, oldest, err := store.Depth(ctx)
	if err != nil || n != 73 || oldest.IsZero() {
		t.Fatalf("depth %d, oldest %v, %v", n, oldest, err)
	}
	next, err := store.RecordThenOldest(ctx, outbox.Published{IDs: []int64{rows[0].ID, rows[1].ID}}, 10)
	if err != nil || len(next) != 10 || next[0].ID != rows[2].ID {
		t.Fatalf("RecordThenOldest: %d rows, %v", len(next), err)
	}
	// More ids than one statement takes: the record and the read go as a
	// batch, and the read still leaves out what was just deleted.
	var many []int64
	for _, r := range rows[3:23] {
		many = append(many, r.ID)
	}
	next, err = store.RecordThenOldest(ctx, outbox.Published{IDs: many}, 10)
	if err != nil || len(next) != 10 || next[0].ID != rows[2].ID || next[1].ID != rows[23].ID {
		t.Fatalf("RecordThenOldest of %d ids: %d rows, %v", len(many), len(next), err)
	}
	if err := store.Reject(ctx, []int64{rows[2].ID}, "test"); err != nil {
		t.Fatal(err)
	}
	var reason string
	if err := db.QueryRow(ctx, `SELECT reason FROM rowcast.rejected WHERE id = $1`, rows[2].ID).Scan(&reason); err != nil || reason != "test" {
		t.Fatalf("rejected row: %q, %v", reason, err)
	}

	// Watching a table without the named room or hidden column fails loudly.
	exec(`CREATE TABLE public.broken (id int, room text)`)
	if _, err := db.Exec(ctx, `SELECT rowcast.watch('public.broken', 'team')`); err == nil || !strings.Contains(err.Error(), "no column team") {
		t.Fatalf("missing room column: %v", err)
	}
	if _, err := db.Exec(ctx, `SELECT rowcast.watch('public.broken', 'room', 'secret')`); err == nil || !strings.Contains(err.Error(), "no column secret to hide") {
		t.Fatalf("missing hidden column: %v", err)
	}
	// A trigger attached by hand runs the generic capture function, which
	// checks at write.
	exec(`CREATE TRIGGER rowcast_capture AFTER INSERT ON public.broken FOR EACH ROW EXECUTE FUNCTION rowcast.capture('team')`)
	if _, err := db.Exec(ctx, `INSERT INTO public.broken VALUES (1, 'a')`); err == nil || !strings.Contains(err.Error(), "no column team") {
		t.Fatalf("missing room column: %v", err)
	}
	// A row far over NOTIFY's 8000-byte payload limit is captured like any other.
	exec(`INSERT INTO public.account VALUES (200, 'big', $1, 'h', 'e')`, strings.Repeat("x", 100_000))
	big, err := store.Oldest(ctx, 1000)
	if err != nil || !strings.Contains(string(big[len(big)-1].Data), strings.Repeat("x", 100_000)) {
		t.Fatalf("big row not captured whole: %v", err)
	}
	// Each row carries the transaction that made it, which snapshot
	// positions are checked against.
	var last int64
	if err := db.QueryRow(ctx, `SELECT xmin::text::bigint FROM public.account WHERE id = 200`).Scan(&last); err != nil {
		t.Fatal(err)
	}
	if got := big[len(big)-1].Tx; got == 0 || uint32(got) != uint32(last) {
		t.Errorf("outbox row's tx %d, want the inserting transaction (xmin %d)", got, last)
	}

	// Watching again rewrites the table's function (here: email is no
	// longer hidden); unwatch removes trigger and function.
	exec(`SELECT rowcast.watch('public.account', 'team', 'password_hash')`)
	exec(`UPDATE public.account SET name = 'again' WHERE id = 200`)
	again, err := store.Oldest(ctx, 1000)
	if err != nil || !strings.Contains(string(again[len(again)-1].Data), `"email": "e"`) || strings.Contains(string(again[len(again)-1].Data), "password_hash") {
		t.Fatalf("after watching again: %s, %v", again[len(again)-1].Data, err)
	}
	exec(`SELECT rowcast.unwatch('public.account')`)
	exec(`DELETE FROM public.account WHERE id = 200`)
	after, err := store.Oldest(ctx, 1000)
	if err != nil || len(after) != len(again) {
		t.Fatalf("unwatched table still captured: %d rows before, %d after, %v", len(again), len(after), err)
	}
	var fns int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM pg_proc WHERE proname = 'capture_' || 'public.account'::regclass::oid`).Scan(&fns); err != nil || fns != 0 {
		t.Fatalf("unwatch left the capture function: %d, %v", fns, err)
	}
}

// Positions: marking a room returns its recorded position; a mark left by
// another session that never released it makes the position "unsure" (a
// publish may have happened that was never recorded); recording keeps the
// mark, releasing clears it.
func TestMarkAndRecordPositions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url := migratedPostgres(ctx, t)
	pool, err := connect.PostgresPool(ctx, "DATABASE_URL", url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store := outbox.NewStore(pool)
	mark := func(session string, rooms ...realtime.Room) map[realtime.Room]realtime.Position {
		t.Helper()
		got, err := store.Mark(ctx, session, rooms)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := mark("s1", "r1", "r2"); got["r1"] != (realtime.Position{}) || got["r2"] != (realtime.Position{}) {
		t.Fatalf("new rooms: %+v, want zero positions", got)
	}
	if got := mark("s1", "r1"); got["r1"].Unsure {
		t.Fatalf("marked again by its own session: %+v, want not unsure", got["r1"])
	}
	rec := realtime.Position{Last: realtime.ID{Epoch: "e1", Offset: 1}, Run: "run1", MaxTx: 42}
	if err := store.Record(ctx, outbox.Published{Positions: map[realtime.Room]realtime.Position{"r1": rec}}); err != nil {
		t.Fatal(err)
	}
	// s1 dies; s2 takes over: both rooms are unsure, r1 at its record.
	got := mark("s2", "r1", "r2")
	if want := (realtime.Position{Last: rec.Last, Run: rec.Run, Unsure: true, MaxTx: rec.MaxTx}); got["r1"] != want || !got["r2"].Unsure {
		t.Fatalf("after s1 died: %+v, want r1 %+v and r2 unsure", got, want)
	}
	// s2 ends cleanly with r2 stuck: r1's mark goes, r2 keeps it.
	if err := store.Release(ctx, "s2", []string{"r2"}); err != nil {
		t.Fatal(err)
	}
	got = mark("s3", "r1", "r2")
	if got["r1"] != rec || !got["r2"].Unsure {
		t.Fatalf("after s2 released all but r2: %+v, want r1 %+v and r2 unsure", got, rec)
	}
	// Positions of idle rooms are forgotten, those another session marked kept.
	if err := store.Release(ctx, "s3", []string{"r2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.ForgetIdle(ctx, "s4", time.Microsecond); err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, `SELECT room FROM rowcast.room_position ORDER BY room`)
	if err != nil {
		t.Fatal(err)
	}
	if left, err := pgx.CollectRows(rows, pgx.RowTo[string]); err != nil || len(left) != 1 || left[0] != "r2" {
		t.Fatalf("positions left after forgetting idle rooms: %v, %v; want [r2] (marked by s3)", left, err)
	}

	// Changes lost before they were published (an invalidated WAL slot):
	// every room's floor, and that of rooms without a position, rises to
	// the current transaction horizon, above every lost change.
	var horizon uint64
	if err := pool.QueryRow(ctx, `SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint`).Scan(&horizon); err != nil {
		t.Fatal(err)
	}
	if _, err := store.LoseAll(ctx); err != nil {
		t.Fatal(err)
	}
	got = mark("s5", "r2", "fresh")
	if got["r2"].MaxTx < horizon || got["fresh"].MaxTx < horizon || got["r2"].Last.Epoch != outbox.LostEpoch {
		t.Fatalf("after LoseAll: %+v; want both floors at or above %d and r2's epoch %q", got, horizon, outbox.LostEpoch)
	}
}

// The capture state: writers skip the NOTIFY while the listener drains,
// and a listener going back to sleep learns which transactions may have
// read the old state, so it can wait for them before trusting LISTEN.
func TestCaptureStateSkipsWakeUps(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url := migratedPostgres(ctx, t)
	pool, err := connect.PostgresPool(ctx, "DATABASE_URL", url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store := outbox.NewStore(pool)
	listen, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer listen.Close(ctx)
	if _, err := listen.Exec(ctx, "LISTEN rowcast"); err != nil {
		t.Fatal(err)
	}
	notifications := func() int {
		n := 0
		for {
			// Notifications are delivered with the commit that sent them: a
			// committed one is already in the connection's buffer or on
			// the wire, so a short wait finds each.
			wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			_, err := listen.WaitForNotification(wctx)
			cancel()
			if err != nil {
				return n
			}
			n++
		}
	}
	insert := func(q interface {
		Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
	}, body string) {
		t.Helper()
		if _, err := q.Exec(ctx, `INSERT INTO public.chat_message (room, author, body) VALUES ('s', 'a', $1)`, body); err != nil {
			t.Fatal(err)
		}
	}

	if st, err := store.State(ctx); err != nil || st != outbox.Notify {
		t.Fatalf("initial state %v, %v; want Notify", st, err)
	}
	insert(pool, "asleep")
	if n := notifications(); n != 1 {
		t.Fatalf("%d notifications while asleep, want 1", n)
	}

	if err := store.Wake(ctx); err != nil {
		t.Fatal(err)
	}
	insert(pool, "awake")
	// A transaction that wrote while the listener drained, still open when
	// it goes back to sleep.
	late, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Rollback(ctx)
	insert(late, "late")
	var lateXID int64
	if err := late.QueryRow(ctx, `SELECT pg_current_xact_id()::text::bigint`).Scan(&lateXID); err != nil {
		t.Fatal(err)
	}
	fence, err := store.SetState(ctx, outbox.Notify)
	if err != nil {
		t.Fatal(err)
	}
	if fence <= lateXID {
		t.Fatalf("fence %d is not above the open writer %d", fence, lateXID)
	}
	if ok, err := store.Settled(ctx, fence); err != nil || ok {
		t.Fatalf("Settled %v, %v while the writer is open; want false", ok, err)
	}
	if err := late.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := store.Settled(ctx, fence); err != nil || !ok {
		t.Fatalf("Settled %v, %v after the commit; want true", ok, err)
	}
	// Neither the awake row nor the late one notified; both are in the
	// outbox for the listener's read after the wait.
	if n := notifications(); n != 0 {
		t.Fatalf("%d notifications while awake, want 0", n)
	}
	rows, err := store.Oldest(ctx, 10)
	if err != nil || len(rows) != 3 {
		t.Fatalf("%d outbox rows (%v), want 3", len(rows), err)
	}
	insert(pool, "asleep again")
	if n := notifications(); n != 1 {
		t.Fatalf("%d notifications after sleeping, want 1", n)
	}

	// WAL mode: a logical decoding message, no outbox row, no notification.
	if _, err := store.SetState(ctx, outbox.WALMode); err != nil {
		t.Fatal(err)
	}
	insert(pool, "wal")
	if n := notifications(); n != 0 {
		t.Fatalf("%d notifications in WAL mode, want 0", n)
	}
	if depth, _, err := store.Depth(ctx); err != nil || depth != 4 {
		t.Fatalf("outbox depth %d (%v) in WAL mode, want the 4 earlier rows", depth, err)
	}
}
