package backend_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rowcast/rowcast/internal/testenv"
	"github.com/rowcast/rowcast/migrations"
	"github.com/rowcast/rowcast/realtime"
	"github.com/rowcast/rowcast/realtime/backend"
)

// Position against a real Postgres: the token names the transaction's
// snapshot, which saw what committed before it and nothing that committed
// after, whatever the order of the statements.
func TestPositionNamesTheTransactionsSnapshot(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url := testenv.PostgresURL(ctx, t)
	if _, err := migrations.Up(ctx, url); err != nil {
		t.Fatal(err)
	}
	conn := func() *pgx.Conn {
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	app, writer, open := conn(), conn(), conn()
	insert := func(c interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	}) uint64 {
		t.Helper()
		var tx uint64
		err := c.QueryRow(ctx, `WITH w AS (INSERT INTO chat_message (room, author, body) VALUES ('r', 'a', 'b'))
			SELECT pg_current_xact_id()::text::bigint`).Scan(&tx)
		if err != nil {
			t.Fatal(err)
		}
		return tx
	}
	before := insert(writer)
	running, err := open.Begin(ctx) // still open when the snapshot is taken, commits after
	if err != nil {
		t.Fatal(err)
	}
	late := insert(running)

	tx, err := app.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	var n int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM chat_message`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	after := insert(writer) // commits after the snapshot, before Position is called
	if err := running.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	pos, err := backend.Position(ctx, tx)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := realtime.ParseSnapshot(pos)
	if err != nil {
		t.Fatalf("Position returned %q: %v", pos, err)
	}
	if n != 1 || !snap.Saw(before) || snap.Saw(late) || snap.Saw(after) {
		t.Errorf("rows %d; saw before (tx %d) %v, running (tx %d) %v, after (tx %d) %v; want 1 row, only before seen",
			n, before, snap.Saw(before), late, snap.Saw(late), after, snap.Saw(after))
	}
	var src string
	if err := app.QueryRow(ctx, `SELECT id FROM rowcast.source`).Scan(&src); err != nil || snap.Source != src {
		t.Errorf("token source %q, database source %q (%v)", snap.Source, src, err)
	}

	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	rc, err := app.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Rollback(ctx)
	if _, err := backend.Position(ctx, rc); !errors.Is(err, backend.ErrReadCommitted) {
		t.Errorf("READ COMMITTED: %v, want ErrReadCommitted", err)
	}
}
