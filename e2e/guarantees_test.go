package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"

	"github.com/rowcast/rowcast/e2e/wire"
)

func insertRow(ctx context.Context, t *testing.T, conn *pgx.Conn, room, body string) {
	t.Helper()
	if _, err := conn.Exec(ctx, `INSERT INTO chat_message (room, author, body) VALUES ($1, 'g', $2)`, room, body); err != nil {
		t.Fatal(err)
	}
}

// nextEvent returns the next event on conn, failing on anything but
// subscribed confirmations.
func nextEvent(ctx context.Context, t *testing.T, conn *wire.Conn) wire.Event {
	t.Helper()
	for {
		select {
		case f, ok := <-conn.C:
			if !ok {
				t.Fatalf("connection ended: %v", conn.Err())
			}
			if f.Event != nil {
				return *f.Event
			}
			if f.Control.Type != "subscribed" {
				t.Fatalf("unexpected control %+v", *f.Control)
			}
		case <-ctx.Done():
			t.Fatal("no event before the deadline")
		}
	}
}

// nextControl returns the next control message, failing on events.
func nextControl(ctx context.Context, t *testing.T, conn *wire.Conn) wire.Control {
	t.Helper()
	select {
	case f, ok := <-conn.C:
		if !ok {
			t.Fatalf("connection ended: %v", conn.Err())
		}
		if f.Control == nil {
			t.Fatalf("want a control message, got event %s", f.Event.ID)
		}
		return *f.Control
	case <-ctx.Done():
		t.Fatal("no control message before the deadline")
	}
	panic("unreachable")
}

// A row committed right after "subscribed" is always delivered: the
// confirmation comes only once live delivery is in place. Each round uses a
// new room, so each is a fresh Redis subscription.
func TestNoEarlySubscribed(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	_, base, db := startSystem(ctx, t)
	for _, tr := range []wire.Transport{wire.WebSocket, wire.SSE} {
		for i := range 40 {
			room := fmt.Sprintf("early-%s-%d", tr, i)
			conn, err := wire.Dial(ctx, base, tr, wire.Options{Rooms: []string{room}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := conn.WaitSubscribed(ctx, room); err != nil {
				t.Fatal(err)
			}
			insertRow(ctx, t, db, room, "right after subscribed")
			ectx, cancel := context.WithTimeout(ctx, 10*time.Second)
			ev := nextEvent(ectx, t, conn)
			cancel()
			if ev.Room != room || wire.Body(ev) != "right after subscribed" {
				t.Fatalf("%s round %d: got %+v", tr, i, ev)
			}
			conn.Close()
		}
	}
}

// Resume: an SSE stream reconnecting with the browser's Last-Event-ID header
// (a cursor over all its rooms), and a WebSocket subscribe naming the last
// id, get exactly what they missed; an id from a lost history gets "reset".
func TestResume(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, base, db := startSystem(ctx, t)

	rooms := []string{"ra", "rb"}
	sse, err := wire.Dial(ctx, base, wire.SSE, wire.Options{Rooms: rooms})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sse.WaitSubscribed(ctx, rooms...); err != nil {
		t.Fatal(err)
	}
	insertRow(ctx, t, db, "ra", "a1")
	insertRow(ctx, t, db, "rb", "b1")
	nextEvent(ctx, t, sse)
	nextEvent(ctx, t, sse)
	cursor := sse.Cursor()
	sse.Close()
	if !strings.Contains(cursor, "ra@") || !strings.Contains(cursor, "rb@") {
		t.Fatalf("SSE id %q does not cover both rooms", cursor)
	}
	// Missed while disconnected:
	for i := 2; i <= 70; i++ {
		insertRow(ctx, t, db, rooms[i%2], fmt.Sprintf("m%d", i))
	}
	again, err := wire.Dial(ctx, base, wire.SSE, wire.Options{Rooms: rooms, Header: http.Header{"Last-Event-Id": {cursor}}})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	insertRow(ctx, t, db, "ra", "live")
	got := map[string][]string{}
	for n := 0; n < 70; n++ {
		ev := nextEvent(ctx, t, again)
		got[ev.Room] = append(got[ev.Room], wire.Body(ev))
	}
	wantA, wantB := []string{}, []string{}
	for i := 2; i <= 70; i++ {
		if i%2 == 0 {
			wantA = append(wantA, fmt.Sprintf("m%d", i))
		} else {
			wantB = append(wantB, fmt.Sprintf("m%d", i))
		}
	}
	wantA = append(wantA, "live")
	if strings.Join(got["ra"], ",") != strings.Join(wantA, ",") || strings.Join(got["rb"], ",") != strings.Join(wantB, ",") {
		t.Fatalf("resumed SSE got\n ra %v\n rb %v", got["ra"], got["rb"])
	}

	// A room with no events yet: the subscribed position ("<epoch>-0") is
	// enough to resume from its very first event.
	empty, err := wire.Dial(ctx, base, wire.SSE, wire.Options{Rooms: []string{"rempty"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := empty.WaitSubscribed(ctx, "rempty"); err != nil {
		t.Fatal(err)
	}
	emptyCursor := empty.Cursor()
	empty.Close()
	if !strings.HasSuffix(emptyCursor, "-0") {
		t.Fatalf("cursor of an unused room = %q, want <room>@<epoch>-0", emptyCursor)
	}
	insertRow(ctx, t, db, "rempty", "first ever")
	back, err := wire.Dial(ctx, base, wire.SSE, wire.Options{Rooms: []string{"rempty"}, LastEventID: emptyCursor})
	if err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(ctx, t, back); wire.Body(ev) != "first ever" {
		t.Fatalf("resume of an unused room got %q", wire.Body(ev))
	}
	back.Close()

	// WebSocket: subscribe with since.
	ws, err := wire.Dial(ctx, base, wire.WebSocket, wire.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	lastA := strings.Split(strings.Split(cursor, ",")[0], "@")[1] // ra@<id> sorts first
	if err := ws.Send(map[string]string{"type": "subscribe", "room": "ra", "since": lastA}); err != nil {
		t.Fatal(err)
	}
	var replayed []string
	for len(replayed) < len(wantA) {
		ev := nextEvent(ctx, t, ws)
		replayed = append(replayed, wire.Body(ev))
	}
	if strings.Join(replayed, ",") != strings.Join(wantA, ",") {
		t.Fatalf("WebSocket replay %v", replayed)
	}
	// The confirmation follows the replay and names where live delivery goes on.
	if c := nextControl(ctx, t, ws); c.Type != "subscribed" || c.Room != "ra" || c.Last == lastA {
		t.Fatalf("want subscribed ra after the replay, got %+v", c)
	}

	// An id from a history that no longer exists: an explicit reset.
	if err := ws.Send(map[string]string{"type": "subscribe", "room": "rb", "since": "gone0000-3"}); err != nil {
		t.Fatal(err)
	}
	if c := nextControl(ctx, t, ws); c.Type != "reset" || c.Room != "rb" {
		t.Fatalf("want reset for rb, got %+v", c)
	}
	if c := nextControl(ctx, t, ws); c.Type != "subscribed" || c.Room != "rb" {
		t.Fatalf("want subscribed after reset, got %+v", c)
	}

	// Bad input is refused with an error and harms nothing.
	if err := ws.Send(map[string]string{"type": "subscribe", "room": "bad room!"}); err != nil {
		t.Fatal(err)
	}
	if c := nextControl(ctx, t, ws); c.Type != "error" || c.Code != "bad_request" {
		t.Fatalf("want bad_request, got %+v", c)
	}
	insertRow(ctx, t, db, "ra", "still alive")
	if ev := nextEvent(ctx, t, ws); wire.Body(ev) != "still alive" {
		t.Fatalf("after a bad frame got %q", wire.Body(ev))
	}
	resp, err := http.Get(base + "/events?rooms=" + strings.Repeat("x", 200))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("overlong room: status %d", resp.StatusCode)
	}
}

// A client that stops reading is cut off with a reason; everyone else's
// delivery goes on.
func TestSlowClient(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e")
	}
	t.Run("redis", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_, base, db := startSystem(ctx, t, "ROWCAST_QUEUE_SIZE=128")
		testSlowClient(ctx, t, base, db)
	})
	t.Run("alone", func(t *testing.T) { // no REDIS_URL: the app's in-process bus
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		a := startAlone(ctx, t)
		_, base := a.startApp(ctx, t, "ROWCAST_QUEUE_SIZE=128")
		db, err := pgx.Connect(ctx, a.url)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close(context.Background())
		testSlowClient(ctx, t, base, db)
	})
}

func testSlowClient(ctx context.Context, t *testing.T, base string, db *pgx.Conn) {
	// The slow client: a raw WebSocket that reads nothing until the end.
	u := strings.Replace(base, "http", "ws", 1) + "/ws?rooms=slow"
	slow, _, err := websocket.DefaultDialer.DialContext(ctx, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	// A slow SSE stream: the response body is not read until the end.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/events?rooms=slow", nil)
	slowSSE, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer slowSSE.Body.Close()

	fast := []*wire.Subscriber{wire.NewSubscriber(base, wire.WebSocket, "slow"), wire.NewSubscriber(base, wire.SSE, "slow")}
	for _, f := range fast {
		go f.Run(ctx)
		<-f.Subscribed()
	}
	// 16 MB in all: far more than socket buffers and the queue hold.
	const rows = 1000
	big := strings.Repeat("y", 16<<10)
	for i := range rows {
		insertRow(ctx, t, db, "slow", fmt.Sprintf("%d-%s", i, big))
	}
	var lat []time.Duration
	for _, f := range fast {
		for f.Count() < rows {
			select {
			case <-f.Changed():
			case <-ctx.Done():
				t.Fatalf("%s client stalled at %d of %d while another client was slow", f.Transport, f.Count(), rows)
			}
		}
		for _, ev := range f.Events() {
			lat = append(lat, ev.Received.Sub(ev.At))
		}
		seen := map[string]bool{}
		for _, ev := range f.Events() {
			if seen[ev.ID] {
				t.Errorf("%s fast client got %s twice", f.Transport, ev.ID)
			}
			seen[ev.ID] = true
		}
		// A fast client on a loaded machine may itself fall behind the
		// queue once; it then resumes, so its delivery still completes.
		t.Logf("%s fast client: %d rows, %d reconnects", f.Transport, f.Count(), f.Connects()-1)
	}
	report(t, "others' latency while one client was slow: %s", percentiles(lat))

	// Now read the slow WebSocket: it ends with close code 4008.
	read := 0
	for {
		_, _, err := slow.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != 4008 {
				t.Fatalf("slow websocket ended with %v after %d frames, want close 4008", err, read)
			}
			break
		}
		read++
	}
	if read >= rows {
		t.Fatalf("slow websocket read all %d rows: it was never cut off", read)
	}
	// And the slow SSE stream ends with a closing control message.
	body := new(strings.Builder)
	buf := make([]byte, 64<<10)
	for {
		n, err := slowSSE.Body.Read(buf)
		body.Write(buf[:n])
		if err != nil {
			break
		}
	}
	if !strings.Contains(body.String(), `"type":"closing","code":"slow_consumer"`) {
		t.Fatalf("slow SSE stream did not end with closing slow_consumer (read %d bytes)", body.Len())
	}
}
