package migrations

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/rowcast/rowcast/internal/testenv"
)

// Migration 00007 gives every table watched before it a capture function of
// its own, with the same room and hidden columns, and its Down puts the
// generic trigger back.
func TestPerTableCaptureMigration(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	url := testenv.PostgresURL(ctx, t)
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	p, err := newProvider(db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, 6); err != nil {
		t.Fatal(err)
	}
	exec := func(q string) {
		t.Helper()
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// The column names need quoting and one is not ASCII: the trigger's
	// arguments must come back byte for byte.
	exec(`CREATE TABLE public."Account" (id int PRIMARY KEY, "Team" text, name text, "pass word" text, "émail" text)`)
	exec(`SELECT rowcast.watch('public."Account"', 'Team', 'pass word', 'émail')`)
	capture := func() (fn, args string) {
		t.Helper()
		err := db.QueryRowContext(ctx, `SELECT n.nspname || '.' || p.proname, pg_get_triggerdef(t.oid)
			FROM pg_trigger AS t JOIN pg_proc AS p ON p.oid = t.tgfoid JOIN pg_namespace AS n ON n.oid = p.pronamespace
			WHERE t.tgrelid = 'public."Account"'::regclass AND t.tgname = 'rowcast_capture'`).Scan(&fn, &args)
		if err != nil {
			t.Fatal(err)
		}
		return fn, args[strings.LastIndex(args, "("):] // the arguments
	}
	// A table whose room column is gone keeps its (failing) generic
	// trigger: it must not hold back the migration.
	exec(`CREATE TABLE public.renamed (id int, room text)`)
	exec(`SELECT rowcast.watch('public.renamed', 'room')`)
	exec(`ALTER TABLE public.renamed RENAME COLUMN room TO team`)
	generic, genericArgs := capture()
	if generic != "rowcast.capture" {
		t.Fatalf("before 00007 the trigger runs %s", generic)
	}

	if _, err := p.UpTo(ctx, 7); err != nil {
		t.Fatal(err)
	}
	var kept string
	if err := db.QueryRowContext(ctx, `SELECT tgfoid::regproc::text FROM pg_trigger WHERE tgrelid = 'public.renamed'::regclass`).Scan(&kept); err != nil ||
		!strings.HasSuffix(kept, "capture") {
		t.Fatalf("the trigger without its room column runs %q, %v", kept, err)
	}
	fn, args := capture()
	if !strings.HasPrefix(fn, "rowcast.capture_") {
		t.Fatalf("after 00007 the trigger runs %s", fn)
	}
	if args != genericArgs {
		t.Fatalf("trigger arguments: %s, want %s", args, genericArgs)
	}
	exec(`INSERT INTO public."Account" VALUES (1, 'blue', 'ann', 'secret', 'a@b.c')`)
	var room, data string
	if err := db.QueryRowContext(ctx, `SELECT room, row_data::text FROM rowcast.outbox ORDER BY id DESC LIMIT 1`).Scan(&room, &data); err != nil {
		t.Fatal(err)
	}
	if room != "blue" || data != `{"id": 1, "Team": "blue", "name": "ann"}` {
		t.Fatalf("captured room %q, row %s", room, data)
	}

	if _, err := p.DownTo(ctx, 6); err != nil {
		t.Fatal(err)
	}
	if fn, args := capture(); fn != "rowcast.capture" || args != genericArgs {
		t.Fatalf("after 00007's Down the trigger runs %s%s", fn, args)
	}
	var left int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM pg_proc WHERE proname ~ '^capture_[0-9]+$'`).Scan(&left); err != nil || left != 0 {
		t.Fatalf("generated functions left after Down: %d, %v", left, err)
	}
}
