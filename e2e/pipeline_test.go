package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rowcast/rowcast/e2e/wire"
)

// sentRow is a chat_message the test committed.
type sentRow struct {
	room, body string
}

// TestPipeline proves the whole path, in each capture mode: rows committed
// in Postgres reach WebSocket and SSE clients through the trigger, the
// listener, Redis and the edge, each client getting exactly its rooms' rows,
// once, in commit order.
func TestPipeline(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	for _, mode := range captureModes {
		t.Run(mode, func(t *testing.T) { testPipeline(t, mode) })
	}
}

func testPipeline(t *testing.T, mode string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := startStack(ctx, t)
	startListener(ctx, t, s, "ROWCAST_CAPTURE="+mode)
	_, base := startApp(ctx, t, s)

	type client struct {
		name  string
		tr    wire.Transport
		rooms []string
		conn  *wire.Conn
	}
	clients := []*client{
		{name: "ws-a", tr: wire.WebSocket, rooms: []string{"room-a"}},
		{name: "ws-ab", tr: wire.WebSocket, rooms: []string{"room-a", "room-b"}},
		{name: "sse-b", tr: wire.SSE, rooms: []string{"room-b"}},
		{name: "sse-ab", tr: wire.SSE, rooms: []string{"room-a", "room-b"}},
	}
	for _, c := range clients {
		conn, err := wire.Dial(ctx, base, c.tr, wire.Options{Rooms: c.rooms})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		t.Cleanup(conn.Close)
		if _, err := conn.WaitSubscribed(ctx, c.rooms...); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		c.conn = conn
	}

	// A WebSocket client can also join by message after connecting.
	late, err := wire.Dial(ctx, base, wire.WebSocket, wire.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(late.Close)
	if err := late.Send(map[string]string{"type": "subscribe", "room": "room-b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := late.WaitSubscribed(ctx, "room-b"); err != nil {
		t.Fatal(err)
	}
	clients = append(clients, &client{name: "ws-b-by-message", tr: wire.WebSocket, rooms: []string{"room-b"}, conn: late})

	sent := commitRows(ctx, t, s.pgURL)

	latency := map[wire.Transport][]time.Duration{}
	for _, c := range clients {
		var want []string
		for _, r := range sent {
			for _, room := range c.rooms {
				if r.room == room {
					want = append(want, r.room+"/"+r.body)
				}
			}
		}
		got, lat := collect(ctx, t, c.name, c.conn, len(want))
		expectNoMore(t, c.name, c.conn)
		latency[c.tr] = append(latency[c.tr], lat...)
		assertSameOrderPerRoom(t, c.name, want, got)
	}
	report(t, mode+": insert-to-client latency, bursts, websocket: %s", percentiles(latency[wire.WebSocket]))
	report(t, mode+": insert-to-client latency, bursts, sse:       %s", percentiles(latency[wire.SSE]))

	// Paced: one row at a time, each awaited by every client of its room,
	// so the figure is the pipeline's own latency, not a queue's.
	db, err := pgx.Connect(ctx, s.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	paced := map[wire.Transport][]time.Duration{}
	for i := range 50 {
		if _, err := db.Exec(ctx, `INSERT INTO chat_message (room, author, body) VALUES ('room-a', 'e2e', $1)`, fmt.Sprint("paced-", i)); err != nil {
			t.Fatal(err)
		}
		for _, c := range clients {
			if !slices.Contains(c.rooms, "room-a") {
				continue
			}
			got, lat := collect(ctx, t, c.name, c.conn, 1)
			if got[0] != fmt.Sprint("room-a/paced-", i) {
				t.Fatalf("%s: paced row %d arrived as %q", c.name, i, got[0])
			}
			paced[c.tr] = append(paced[c.tr], lat...)
		}
	}
	report(t, mode+": insert-to-client latency, paced,  websocket: %s", percentiles(paced[wire.WebSocket]))
	report(t, mode+": insert-to-client latency, paced,  sse:       %s", percentiles(paced[wire.SSE]))
}

// commitRows inserts rows in several transactions: single rows in
// alternating rooms, one row far over NOTIFY's 8000-byte limit, and one
// transaction with many rows. It returns them in commit order.
func commitRows(ctx context.Context, t *testing.T, url string) []sentRow {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var sent []sentRow
	insert := func(tx pgx.Tx, r sentRow) {
		if _, err := tx.Exec(ctx, `INSERT INTO chat_message (room, author, body) VALUES ($1, 'e2e', $2)`, r.room, r.body); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, r)
	}
	inTx := func(f func(pgx.Tx)) {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		f(tx)
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	rooms := []string{"room-a", "room-b"}
	for i := range 40 {
		inTx(func(tx pgx.Tx) { insert(tx, sentRow{rooms[i%2], fmt.Sprintf("single-%d", i)}) })
	}
	inTx(func(tx pgx.Tx) { insert(tx, sentRow{"room-a", "big-" + strings.Repeat("x", 20000)}) })
	inTx(func(tx pgx.Tx) {
		for i := range 200 {
			insert(tx, sentRow{rooms[i%2], fmt.Sprintf("batch-%d", i)})
		}
	})
	inTx(func(tx pgx.Tx) { insert(tx, sentRow{"room-c", "nobody-listens"}) })
	for i := range 20 {
		inTx(func(tx pgx.Tx) { insert(tx, sentRow{rooms[i%2], fmt.Sprintf("tail-%d", i)}) })
	}
	return sent
}

// collect reads n events from conn, returning "room/body" per event and the latencies from
// capture to receipt.
func collect(ctx context.Context, t *testing.T, name string, conn *wire.Conn, n int) ([]string, []time.Duration) {
	t.Helper()
	var got []string
	var lat []time.Duration
	for len(got) < n {
		select {
		case f, ok := <-conn.C:
			if !ok {
				t.Fatalf("%s: connection ended after %d of %d events: %v", name, len(got), n, conn.Err())
			}
			if f.Event == nil {
				if f.Control.Type != "subscribed" {
					t.Fatalf("%s: unexpected control %+v", name, *f.Control)
				}
				continue
			}
			var row struct{ Body string }
			if err := json.Unmarshal(f.Event.Data, &row); err != nil {
				t.Fatalf("%s: event data: %v", name, err)
			}
			got = append(got, f.Event.Room+"/"+row.Body)
			lat = append(lat, f.Event.Received.Sub(f.Event.At))
		case <-ctx.Done():
			t.Fatalf("%s: got %d of %d events before timeout", name, len(got), n)
		}
	}
	return got, lat
}

// expectNoMore checks that no further event follows promptly: anything more
// would be a duplicate or a foreign room's row. A short wait cannot make this
// check pass wrongly, only miss a very late extra.
func expectNoMore(t *testing.T, name string, conn *wire.Conn) {
	t.Helper()
	select {
	case f, ok := <-conn.C:
		if ok && f.Event != nil {
			t.Errorf("%s: extra event after all expected: %s %s", name, f.Event.Room, f.Event.ID)
		}
	case <-time.After(300 * time.Millisecond):
	}
}

// assertSameOrderPerRoom checks got holds exactly want's rows, each once,
// in want's order within each room (rooms are independent streams).
func assertSameOrderPerRoom(t *testing.T, name string, want, got []string) {
	t.Helper()
	byRoom := func(xs []string) map[string][]string {
		m := map[string][]string{}
		for _, x := range xs {
			room, _, _ := strings.Cut(x, "/")
			m[room] = append(m[room], x)
		}
		return m
	}
	w, g := byRoom(want), byRoom(got)
	if len(w) != len(g) {
		t.Errorf("%s: rooms received %d, want %d", name, len(g), len(w))
	}
	for room, ws := range w {
		gs := g[room]
		if len(gs) != len(ws) {
			t.Errorf("%s: room %s: %d events, want %d", name, room, len(gs), len(ws))
			continue
		}
		for i := range ws {
			if gs[i] != ws[i] {
				t.Errorf("%s: room %s event %d = %.40q, want %.40q", name, room, i, gs[i], ws[i])
				break
			}
		}
	}
}
