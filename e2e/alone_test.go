package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rowcast/rowcast/e2e/proc"
	"github.com/rowcast/rowcast/e2e/wire"
	"github.com/rowcast/rowcast/internal/testenv"
)

// alone is the one-process system: Postgres and an app without REDIS_URL,
// which runs the relay itself on its in-process bus.
type alone struct {
	pg   *testenv.Postgres
	url  string
	env  []string
	addr string
}

func startAlone(ctx context.Context, t *testing.T) *alone {
	t.Helper()
	pg, err := testenv.StartPostgres(ctx, t)
	if err != nil {
		t.Fatal(err)
	}
	url, err := pg.URL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"DATABASE_URL=" + url, "REDIS_URL=", "ROWCAST_DEMO=true", "ROWCAST_POLL_INTERVAL=500ms"}
	if out, err := runOnce(ctx, bins.listener, env, "migrate"); err != nil {
		t.Fatalf("listener migrate without REDIS_URL: %v\n%s", err, out)
	}
	return &alone{pg: pg, url: url, env: env, addr: freeAddr(t)}
}

// startApp starts the app at a.addr and waits until it serves and leads.
func (a *alone) startApp(ctx context.Context, t *testing.T, extra ...string) (*proc.Process, string) {
	t.Helper()
	env := append(append(slices.Clone(a.env), "LISTEN_ADDR="+a.addr), extra...)
	p := startProc(t, "app alone "+a.addr, bins.app, env)
	base := "http://" + a.addr
	if err := p.WaitHTTP(ctx, base+"/readyz"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.WaitLog(ctx, "leading"); err != nil {
		t.Fatal(err)
	}
	return p, base
}

// TestAlone runs the pipeline with REDIS_URL unset: one app and one
// Postgres. Every row reaches WebSocket and SSE clients once and in order,
// through a Postgres restart and pause and a 50,000-row transaction; a client that
// was away resumes from the bus's history; clients resuming
// across an app restart get reset (the in-process bus starts new epochs);
// snapshot positions work; a second such app on the database refuses to
// run, naming REDIS_URL.
func TestAlone(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	a := startAlone(ctx, t)
	app, base := a.startApp(ctx, t)

	dial := func(t *testing.T, name string, tr wire.Transport, o wire.Options) *wire.Conn {
		t.Helper()
		conn, err := wire.Dial(ctx, base, tr, o)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Cleanup(conn.Close)
		if _, err := conn.WaitSubscribed(ctx, o.Rooms...); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return conn
	}
	ws := dial(t, "ws", wire.WebSocket, wire.Options{Rooms: []string{"room-a", "room-b"}})
	sse := dial(t, "sse", wire.SSE, wire.Options{Rooms: []string{"room-a", "room-b"}})

	var want []string
	for _, r := range commitRows(ctx, t, a.url) {
		if r.room != "room-c" {
			want = append(want, r.room+"/"+r.body)
		}
	}
	for name, conn := range map[string]*wire.Conn{"ws": ws, "sse": sse} {
		got, lat := collect(ctx, t, name, conn, len(want))
		assertSameOrderPerRoom(t, name, want, got)
		report(t, "alone (no REDIS_URL), %s: %d rows, capture to client %s", name, len(got), percentiles(lat))
	}

	db, err := pgx.Connect(ctx, a.url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { db.Close(context.Background()) }()
	insert := func(room, body string) {
		t.Helper()
		if _, err := db.Exec(ctx, `INSERT INTO chat_message (room, author, body) VALUES ($1, 'e2e', $2)`, room, body); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("snapshot position", func(t *testing.T) {
		insert("room-p", "seen")
		var token string
		if err := db.QueryRow(ctx, `SELECT rowcast.position()`).Scan(&token); err != nil {
			t.Fatal(err)
		}
		insert("room-p", "unseen")
		conn, err := wire.Dial(ctx, base, wire.WebSocket, wire.Options{Rooms: []string{"room-p"}, Position: token})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(conn.Close)
		// The replay comes before "subscribed"; the row may also still be
		// on its way, then it comes live.
		frames, err := conn.WaitSubscribed(ctx, "room-p")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, f := range frames {
			if f.Event != nil {
				got = append(got, f.Event.Room+"/"+wire.Body(*f.Event))
			}
		}
		if len(got) == 0 {
			got, _ = collect(ctx, t, "from a position", conn, 1)
		}
		if len(got) != 1 || got[0] != "room-p/unseen" {
			t.Errorf("from a position: got %v, want only the row the snapshot did not see", got)
		}
		expectNoMore(t, "from a position", conn)
	})

	t.Run("resume", func(t *testing.T) {
		// A client that was away gets what it missed from the bus's
		// history, then live.
		conn := dial(t, "resume", wire.SSE, wire.Options{Rooms: []string{"room-r"}})
		// watch stays: once it has the missed rows, they are published.
		watch := dial(t, "watch", wire.WebSocket, wire.Options{Rooms: []string{"room-r"}})
		insert("room-r", "first")
		if got, _ := collect(ctx, t, "resume", conn, 1); got[0] != "room-r/first" {
			t.Fatalf("got %v", got)
		}
		cursor := conn.Cursor()
		conn.Close()
		insert("room-r", "missed-1")
		insert("room-r", "missed-2")
		collect(ctx, t, "watch", watch, 3)
		back, err := wire.Dial(ctx, base, wire.SSE, wire.Options{Rooms: []string{"room-r"}, LastEventID: cursor})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(back.Close)
		frames, err := back.WaitSubscribed(ctx, "room-r")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, f := range frames {
			if f.Event != nil {
				got = append(got, wire.Body(*f.Event))
			}
		}
		if fmt.Sprint(got) != "[missed-1 missed-2]" {
			t.Errorf("resumed from %q: replayed %v, want the two missed rows", cursor, got)
		}
		insert("room-r", "live")
		if got, _ := collect(ctx, t, "resumed", back, 1); got[0] != "room-r/live" {
			t.Errorf("live after the resume: %v", got)
		}
	})

	t.Run("postgres restart", func(t *testing.T) {
		if err := a.pg.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if err := a.pg.Start(ctx); err != nil {
			t.Fatal(err)
		}
		db.Close(ctx)
		if db, err = pgx.Connect(ctx, a.url); err != nil {
			t.Fatal(err)
		}
		for i := range 10 {
			insert("room-a", fmt.Sprintf("after-restart-%d", i))
		}
		for name, conn := range map[string]*wire.Conn{"ws": ws, "sse": sse} {
			got, _ := collect(ctx, t, name, conn, 10)
			if got[0] != "room-a/after-restart-0" || got[9] != "room-a/after-restart-9" {
				t.Errorf("%s after a Postgres restart: %v", name, got)
			}
		}
	})

	t.Run("postgres pause", func(t *testing.T) {
		// An INSERT sent while Postgres is paused waits; once it runs again
		// the row comes through the relay's stalled connections.
		if err := a.pg.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		committed := make(chan error, 1)
		go func() {
			_, err := db.Exec(ctx, `INSERT INTO chat_message (room, author, body) VALUES ('room-a', 'e2e', 'after-pause')`)
			committed <- err
		}()
		if err := a.pg.Unpause(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-committed; err != nil {
			t.Fatal(err)
		}
		for name, conn := range map[string]*wire.Conn{"ws": ws, "sse": sse} {
			if got, _ := collect(ctx, t, name, conn, 1); got[0] != "room-a/after-pause" {
				t.Errorf("%s after a Postgres pause: %v", name, got)
			}
		}
	})

	t.Run("50,000-row transaction", func(t *testing.T) {
		const n = 50_000
		if _, err := db.Exec(ctx, `INSERT INTO chat_message (room, author, body)
			SELECT 'room-b', 'e2e', 'bulk-' || i FROM generate_series(1, $1) AS i`, n); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		// Both clients read at once: one left unread for seconds would be
		// a slow consumer, rightly cut off.
		type result struct {
			name string
			got  []string
			took time.Duration
			err  error
		}
		results := make(chan result, 2)
		for name, conn := range map[string]*wire.Conn{"ws": ws, "sse": sse} {
			go func() {
				got, err := readBodies(ctx, conn, n)
				results <- result{name, got, time.Since(start), err}
			}()
		}
		for range 2 {
			r := <-results
			if r.err != nil {
				t.Fatalf("%s: %v", r.name, r.err)
			}
			seen := map[string]bool{}
			for _, g := range r.got {
				seen[g] = true
			}
			if len(seen) != n || r.got[0] != "room-b/bulk-1" || r.got[n-1] != fmt.Sprintf("room-b/bulk-%d", n) {
				t.Errorf("%s: %d distinct of %d rows, first %s, last %s", r.name, len(seen), n, r.got[0], r.got[n-1])
			}
			report(t, "alone (no REDIS_URL): a %d-row transaction reached a %s client in %s", n, r.name, r.took.Round(time.Millisecond))
		}
	})

	t.Run("second app refuses", func(t *testing.T) {
		out, err := runOnce(ctx, bins.app, append(a.env, "LISTEN_ADDR="+freeAddr(t)))
		if err == nil || !strings.Contains(out, "REDIS_URL") || !strings.Contains(out, "another process relays") {
			t.Errorf("a second app without REDIS_URL on the same database: %v\n%s", err, out)
		}
	})

	t.Run("app restart resets resuming clients", func(t *testing.T) {
		insert("room-a", "before-restart")
		got, _ := collect(ctx, t, "sse", sse, 1)
		if got[0] != "room-a/before-restart" {
			t.Fatalf("got %v", got)
		}
		cursor := sse.Cursor()
		if err := app.Stop(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		_, base = a.startApp(ctx, t)
		conn, err := wire.Dial(ctx, base, wire.SSE, wire.Options{Rooms: []string{"room-a"}, LastEventID: cursor})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(conn.Close)
		frames, err := conn.WaitSubscribed(ctx, "room-a")
		if err != nil {
			t.Fatal(err)
		}
		reset := false
		for _, f := range frames {
			reset = reset || f.Control != nil && f.Control.Type == "reset" && f.Control.Room == "room-a"
		}
		if !reset {
			t.Errorf("resuming from %q after an app restart: no reset before subscribed (%d frames)", cursor, len(frames))
		}
		insert("room-a", "after-app-restart")
		if got, _ := collect(ctx, t, "after the app restart", conn, 1); got[0] != "room-a/after-app-restart" {
			t.Errorf("live after the app restart: %v", got)
		}
	})
}

// readBodies reads n events from conn as "room/body", failing on any
// control message but "subscribed".
func readBodies(ctx context.Context, conn *wire.Conn, n int) ([]string, error) {
	var got []string
	for len(got) < n {
		select {
		case f, ok := <-conn.C:
			if !ok {
				return got, fmt.Errorf("connection ended after %d of %d events: %v", len(got), n, conn.Err())
			}
			if f.Event != nil {
				got = append(got, f.Event.Room+"/"+wire.Body(*f.Event))
			} else if f.Control.Type != "subscribed" {
				return got, fmt.Errorf("after %d events: unexpected control %+v", len(got), *f.Control)
			}
		case <-ctx.Done():
			return got, fmt.Errorf("%d of %d events before the deadline", len(got), n)
		}
	}
	return got, nil
}
