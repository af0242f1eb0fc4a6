package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/rowcast/rowcast/realtime"
)

// TestBrowser drives the demo page (/ and /rowcast.js) in headless Chromium:
// rows committed in Postgres appear in the page, in order, and in its
// console, over WebSocket and, behind a proxy that refuses upgrades, over the
// SSE fallback; tabs share one connection, all see a message posted through
// the form, and another takes over when the first closes; without Web Locks
// each tab connects on its own; an app restart loses and repeats nothing.
func TestBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("browser e2e needs Docker and Chromium")
	}
	chromium := chromiumPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s := startStack(ctx, t)
	startListener(ctx, t, s)
	_, base := startApp(ctx, t, s)
	browser := startBrowser(ctx, t, chromium)
	db, err := pgx.Connect(ctx, s.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.WithoutCancel(ctx))

	var ws, sse latencies
	t.Run("websocket", func(t *testing.T) {
		ws = checkDemoPage(ctx, t, browser, db, base, "websocket")
	})
	t.Run("sse_fallback", func(t *testing.T) {
		p := startProxy(t, base, true)
		sse = checkDemoPage(ctx, t, browser, db, p.url, "sse")
		if p.wsRefused.Load() == 0 {
			t.Error("the page never tried WebSocket: the proxy refused no upgrade")
		}
	})
	for _, l := range []struct {
		name string
		lat  latencies
	}{{"websocket", ws}, {"sse      ", sse}} {
		t.Logf("insert-to-browser latency, %s one row at a time: %s; in bursts: %s",
			l.name, percentiles(l.lat.paced), percentiles(l.lat.burst))
		report(t, "browser insert-to-DOM latency %s: paced %s; burst %s", l.name, percentiles(l.lat.paced), percentiles(l.lat.burst))
	}

	t.Run("post_errors", func(t *testing.T) { checkPostErrors(t, base) })
	t.Run("shared_tabs", func(t *testing.T) { checkSharedTabs(ctx, t, browser, db, base) })
	t.Run("no_tab_sharing", func(t *testing.T) { checkWithoutTabSharing(ctx, t, browser, db, base) })
	t.Run("history_lost", func(t *testing.T) { checkHistoryLost(ctx, t, browser, db, s, base) })
	t.Run("app_restart", func(t *testing.T) { checkAppRestart(ctx, t, browser, db, s) })
}

// shownMessage is one message as the demo page lists it.
type shownMessage struct {
	ID        string  `json:"id"`
	Author    string  `json:"author"`
	Body      string  `json:"body"`
	LatencyMs float64 `json:"latencyMs"`
}

const listMessages = `[...document.querySelectorAll("#messages li[data-id]")].map((li) => ({
	id: li.dataset.id, author: li.querySelector(".author").textContent,
	body: li.querySelector(".body").textContent, latencyMs: Number(li.dataset.latencyMs)}))`

// eventLogPrefix starts the console line the demo page logs per event.
const eventLogPrefix = "rowcast event "

// latencies are what the demo page measured from capture (the row's "at")
// to arrival: for rows committed one at a time, each awaited in the page,
// and for rows committed in bursts (whose queueing and transaction time
// count too).
type latencies struct{ paced, burst []time.Duration }

const pacedRows = 40

// checkDemoPage opens the demo page at base (transport "auto"), expects it
// to connect over want, inserts rows and checks the page shows and logs
// each once, in commit order.
func checkDemoPage(ctx context.Context, t *testing.T, browser context.Context, db *pgx.Conn, base, want string) latencies {
	room := "browser-" + want
	page := openTab(t, browser, want, base+"/?room="+room)
	page.waitFor(t, "connected over "+want, fmt.Sprintf(
		`document.getElementById("transport").dataset.state === "open" && `+
			`document.getElementById("transport").dataset.transport === %q && `+
			`document.getElementById("messages").dataset.subscribed === %q`, want, room))

	var bodies []string
	// One row at a time, each awaited in the page: latency without queueing.
	for i := range pacedRows {
		body := fmt.Sprintf("%s-paced-%d", want, i)
		bodies = append(bodies, body)
		insertMessages(ctx, t, db, room, []string{body})
		page.waitFor(t, "row "+body, shownCount(len(bodies)))
	}
	// A burst: single-row transactions back to back, then one transaction
	// of many rows (they reach the page batched).
	for i := range 20 {
		body := fmt.Sprintf("%s-burst-%d", want, i)
		bodies = append(bodies, body)
		insertMessages(ctx, t, db, room, []string{body})
	}
	var batch []string
	for i := range 30 {
		batch = append(batch, fmt.Sprintf("%s-tx-%d", want, i))
	}
	insertMessages(ctx, t, db, room, batch)
	bodies = append(bodies, batch...)
	page.waitFor(t, "every row", shownCount(len(bodies)))

	shown := eval[[]shownMessage](t, page, listMessages)
	checkShown(t, shown, bodies)

	// The console holds the same events, in the same order.
	var logged []string
	for _, line := range page.waitConsole(t, eventLogPrefix, len(bodies)) {
		var ev struct {
			ID   string
			Room string
			Data struct{ Body string }
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("console line %q: %v", line, err)
		}
		logged = append(logged, ev.Data.Body)
	}
	if strings.Join(logged, ",") != strings.Join(bodies, ",") {
		t.Errorf("console logged %d events %v, want %v", len(logged), logged, bodies)
	}
	if ex := page.exceptions(); len(ex) > 0 {
		t.Errorf("page exceptions: %v", ex)
	}

	// The room picker: leave the room, join another (over SSE, the stream
	// is reopened with the new room).
	other := room + "-2"
	eval[bool](t, page, fmt.Sprintf(`(() => { const r = document.getElementById("room"); r.value = %q; `+
		`return r.dispatchEvent(new Event("change")); })()`, other))
	page.waitFor(t, "the other room", fmt.Sprintf(`document.getElementById("messages").dataset.subscribed === %q && `+
		`document.getElementById("transport").dataset.state === "open"`, other))
	insertMessages(ctx, t, db, room, []string{"left behind"})
	insertMessages(ctx, t, db, other, []string{"in the other room"})
	page.waitFor(t, "the other room's row", shownCount(1))
	checkShown(t, eval[[]shownMessage](t, page, listMessages), []string{"in the other room"})

	if got := eval[string](t, page, `document.getElementById("transport").dataset.transport`); got != want {
		t.Errorf("transport shown at the end = %q, want %q", got, want)
	}

	var lat latencies
	for i, m := range shown {
		d := time.Duration(m.LatencyMs * float64(time.Millisecond))
		if i < pacedRows {
			lat.paced = append(lat.paced, d)
		} else {
			lat.burst = append(lat.burst, d)
		}
	}
	return lat
}

// checkSharedTabs opens three tabs of one origin: the first holds the only
// connection, the others are served through it, one of them in another
// room. A message typed and sent in the second reaches the first two; when
// the first closes the second takes over and resumes both rooms without
// losing or repeating a row.
func checkSharedTabs(ctx context.Context, t *testing.T, browser context.Context, db *pgx.Conn, base string) {
	p := startProxy(t, base, false) // a new origin, and counts the connections
	room := "browser-tabs"
	url := p.url + "/?room=" + room
	ready := func(role, room string) string {
		return fmt.Sprintf(`document.getElementById("transport").dataset.role === %q && `+
			`document.getElementById("transport").dataset.state === "open" && `+
			`document.getElementById("messages").dataset.subscribed === %q`, role, room)
	}
	a := openTab(t, browser, "A", url)
	a.waitFor(t, "tab A to hold the connection", ready("leader", room))
	b := openTab(t, browser, "B", url)
	b.waitFor(t, "tab B to use tab A's connection", ready("follower", room))
	// Tab C wants a room of its own: tab A's connection joins it for C.
	otherRoom := room + "-c"
	c := openTab(t, browser, "C", p.url+"/?room="+otherRoom)
	c.waitFor(t, "tab C to use tab A's connection", ready("follower", otherRoom))
	insertMessages(ctx, t, db, otherRoom, []string{"for tab C"})
	c.waitFor(t, "tab C's row", shownCount(1))

	// Client-side validation answers at once and posts nothing.
	b.do(t, "send an empty form", chromedp.Click(chromedp.CSS(`#post button`)))
	b.waitFor(t, "the validation error", `document.getElementById("error").textContent === "name is empty"`)

	b.do(t, "type and send a message",
		chromedp.SendKeys(chromedp.CSS(`#post input[name=author]`), "bee"),
		chromedp.SendKeys(chromedp.CSS(`#post input[name=body]`), "hello from tab B"),
		chromedp.Click(chromedp.CSS(`#post button`)))
	for _, tb := range []*tab{a, b} {
		tb.waitFor(t, "the posted message", shownCount(1))
	}
	b.waitFor(t, "the form to clear", `document.querySelector("#post input[name=body]").value === "" && document.getElementById("error").textContent === ""`)
	for _, tb := range []*tab{a, b} {
		shown := eval[[]shownMessage](t, tb, listMessages)
		checkShown(t, shown, []string{"hello from tab B"})
		if len(shown) > 0 && shown[0].Author != "bee" {
			t.Errorf("tab %s: author %q, want bee", tb.name, shown[0].Author)
		}
	}
	if ws, sse := p.ws.Load(), p.sse.Load(); ws != 1 || sse != 0 {
		t.Errorf("three tabs opened %d WebSocket and %d SSE connections, want 1 and 0", ws, sse)
	}
	// Tab B had a user gesture (the typing), so it played the chime.
	b.waitFor(t, "a chime", `Number(document.getElementById("mute").dataset.beeps) >= 1`)

	// Tab A closes: B, next in the lock's queue, takes over, connects and
	// resumes its room and C's after the last ids they saw, so rows
	// committed meanwhile arrive exactly once.
	a.close()
	insertMessages(ctx, t, db, room, []string{"while tab B takes over"})
	insertMessages(ctx, t, db, otherRoom, []string{"for tab C, during the takeover"})
	b.waitFor(t, "tab B to take over", ready("leader", room))
	b.waitFor(t, "the row committed during the takeover", shownCount(2))
	c.waitFor(t, "tab C's row committed during the takeover", shownCount(2))
	checkShown(t, eval[[]shownMessage](t, c, listMessages), []string{"for tab C", "for tab C, during the takeover"})
	b.do(t, "send another message",
		chromedp.SendKeys(chromedp.CSS(`#post input[name=body]`), "tab B alone"),
		chromedp.Click(chromedp.CSS(`#post button`)))
	b.waitFor(t, "the second posted message", shownCount(3))
	checkShown(t, eval[[]shownMessage](t, b, listMessages), []string{"hello from tab B", "while tab B takes over", "tab B alone"})
	if ws := p.ws.Load(); ws != 2 {
		t.Errorf("WebSocket connections after the takeover: %d, want 2", ws)
	}
	for _, tb := range []*tab{b, c} {
		if ex := tb.exceptions(); len(ex) > 0 {
			t.Errorf("tab %s: page exceptions: %v", tb.name, ex)
		}
	}
}

// checkPostErrors checks the demo's POST /api/messages refuses bad input
// with a status and a JSON error the page can show.
func checkPostErrors(t *testing.T, base string) {
	for _, c := range []struct {
		body   string
		status int
		error  string
	}{
		{`{"room":"lobby","author":"a","body":"  "}`, http.StatusBadRequest, "message is empty"},
		{`{"room":"lobby","author":"a","body":"` + strings.Repeat("é", 501) + `"}`, http.StatusBadRequest, "message is longer than 500 characters"},
		{`{"room":"lobby","author":"","body":"hi"}`, http.StatusBadRequest, "name is empty"},
		{`{"room":"no spaces","author":"a","body":"hi"}`, http.StatusBadRequest, "room must be 1-128 characters of A-Z a-z 0-9 _ . : -"},
		{`{"room":"lobby",`, http.StatusBadRequest, "body must be JSON {room, author, body}"},
		{`{"room":"lobby","author":"a","body":"` + strings.Repeat("x", 20<<10) + `"}`, http.StatusRequestEntityTooLarge, "request body is larger than 16 KiB"},
	} {
		resp, err := http.Post(base+"/api/messages", "application/json", strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		var answer struct{ Error string }
		err = json.NewDecoder(resp.Body).Decode(&answer)
		resp.Body.Close()
		if resp.StatusCode != c.status || err != nil || answer.Error != c.error {
			t.Errorf("post %.40s: %d %q (%v), want %d %q", c.body, resp.StatusCode, answer.Error, err, c.status, c.error)
		}
	}
}

// checkWithoutTabSharing opens two tabs in a browser without Web Locks and
// BroadcastChannel: each connects on its own, and both get the rows.
func checkWithoutTabSharing(ctx context.Context, t *testing.T, browser context.Context, db *pgx.Conn, base string) {
	p := startProxy(t, base, false)
	room := "browser-solo"
	var tabs []*tab
	for _, name := range []string{"D", "E"} {
		tb := openTab(t, browser, name, p.url+"/?room="+room, withoutTabSharing())
		tb.waitFor(t, "its own connection", fmt.Sprintf(`document.getElementById("transport").dataset.role === "solo" && `+
			`document.getElementById("transport").dataset.state === "open" && `+
			`document.getElementById("messages").dataset.subscribed === %q`, room))
		tabs = append(tabs, tb)
	}
	insertMessages(ctx, t, db, room, []string{"to every tab"})
	for _, tb := range tabs {
		tb.waitFor(t, "the row", shownCount(1))
		checkShown(t, eval[[]shownMessage](t, tb, listMessages), []string{"to every tab"})
	}
	if ws := p.ws.Load(); ws != 2 {
		t.Errorf("two tabs without tab sharing opened %d WebSocket connections, want 2", ws)
	}
}

// checkHistoryLost empties Redis under a connected page: the room's next
// event starts a new epoch, the page is told (reset) and shows a notice, and
// the event still arrives.
func checkHistoryLost(ctx context.Context, t *testing.T, browser context.Context, db *pgx.Conn, s *stack, base string) {
	room := "browser-reset"
	page := openTab(t, browser, "reset", base+"/?room="+room)
	page.waitFor(t, "connected", fmt.Sprintf(`document.getElementById("transport").dataset.state === "open" && `+
		`document.getElementById("messages").dataset.subscribed === %q`, room))
	insertMessages(ctx, t, db, room, []string{"before the loss"})
	page.waitFor(t, "the first row", shownCount(1))

	opts, err := redis.ParseURL(s.redisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatalf("flush redis: %v", err)
	}
	insertMessages(ctx, t, db, room, []string{"after the loss"})
	page.waitFor(t, "the second row", shownCount(2))
	page.waitFor(t, "the reset notice", `document.querySelector("#messages li.notice") !== null`)
	shown := eval[[]shownMessage](t, page, listMessages)
	checkShown(t, shown, []string{"before the loss", "after the loss"})
	if len(shown) == 2 && strings.Split(shown[0].ID, "-")[0] == strings.Split(shown[1].ID, "-")[0] {
		t.Errorf("ids %s and %s share an epoch after Redis lost the history", shown[0].ID, shown[1].ID)
	}
}

// checkAppRestart stops the app the page is connected to (SIGTERM: it tells
// clients to reconnect) and starts another behind the same origin; rows
// committed meanwhile reach the page exactly once, in order.
func checkAppRestart(ctx context.Context, t *testing.T, browser context.Context, db *pgx.Conn, s *stack) {
	first, base := startApp(ctx, t, s, "ROWCAST_DRAIN_TIMEOUT=1s")
	p := startProxy(t, base, false)
	room := "browser-restart"
	page := openTab(t, browser, "restart", p.url+"/?room="+room)
	page.waitFor(t, "connected", fmt.Sprintf(`document.getElementById("transport").dataset.state === "open" && `+
		`document.getElementById("messages").dataset.subscribed === %q`, room))
	bodies := []string{"before the restart"}
	insertMessages(ctx, t, db, room, bodies)
	page.waitFor(t, "the first row", shownCount(1))

	// The browser's "online" event (the network is back) reconnects at once.
	before := p.ws.Load() + p.sse.Load()
	if state := eval[string](t, page, `dispatchEvent(new Event("online")), document.getElementById("transport").dataset.state`); state != "reconnecting" {
		t.Errorf("state after the online event = %q, want reconnecting", state)
	}
	page.waitFor(t, "reconnected", `document.getElementById("transport").dataset.state === "open"`)
	if after := p.ws.Load() + p.sse.Load(); after != before+1 {
		t.Errorf("connections after the online event: %d, want %d", after, before+1)
	}

	if err := first.Stop(syscall.SIGTERM); err != nil {
		t.Fatalf("stop app: %v", err)
	}
	for i := range 5 {
		bodies = append(bodies, fmt.Sprintf("while the app is down %d", i))
	}
	insertMessages(ctx, t, db, room, bodies[1:])
	_, base = startApp(ctx, t, s)
	p.retarget(t, base)
	bodies = append(bodies, "after the restart")
	insertMessages(ctx, t, db, room, bodies[len(bodies)-1:])
	page.waitFor(t, "every row", shownCount(len(bodies)))
	checkShown(t, eval[[]shownMessage](t, page, listMessages), bodies)
	if n := p.ws.Load() + p.sse.Load(); n < 2 {
		t.Errorf("the page opened %d connections, want a second one after the restart", n)
	}
	t.Logf("after the restart: %s (%d WebSocket, %d SSE connections)",
		eval[string](t, page, `document.getElementById("transport").textContent`), p.ws.Load(), p.sse.Load())
	if ex := page.exceptions(); len(ex) > 0 {
		t.Errorf("page exceptions: %v", ex)
	}
}

// shownCount is a condition: the page lists at least n messages.
func shownCount(n int) string {
	return fmt.Sprintf(`document.querySelectorAll("#messages li[data-id]").length >= %d`, n)
}

// checkShown checks the page lists exactly the rows of bodies, in order,
// with increasing ids and a latency each.
func checkShown(t *testing.T, shown []shownMessage, bodies []string) {
	t.Helper()
	if len(shown) != len(bodies) {
		t.Errorf("page lists %d messages, want %d", len(shown), len(bodies))
	}
	for i := range min(len(shown), len(bodies)) {
		if shown[i].Body != bodies[i] {
			t.Errorf("message %d = %q, want %q", i, shown[i].Body, bodies[i])
			break
		}
	}
	var lastEpoch string
	var lastOffset uint64
	for i, m := range shown {
		epoch, off, ok := strings.Cut(m.ID, "-")
		n, err := strconv.ParseUint(off, 10, 64)
		if !ok || err != nil {
			t.Errorf("message %d: bad id %q", i, m.ID)
			continue
		}
		if epoch == lastEpoch && n <= lastOffset {
			t.Errorf("message %d: id %s does not follow %s-%d", i, m.ID, lastEpoch, lastOffset)
		}
		lastEpoch, lastOffset = epoch, n
		if m.LatencyMs < 0 {
			t.Errorf("message %d: no latency (%v ms)", i, m.LatencyMs)
		}
	}
}

// insertMessages commits bodies as chat messages of room in one transaction.
func insertMessages(ctx context.Context, t *testing.T, db *pgx.Conn, room string, bodies []string) {
	t.Helper()
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		for _, body := range bodies {
			if _, err := tx.Exec(ctx, `INSERT INTO chat_message (room, author, body) VALUES ($1, 'e2e', $2)`, room, body); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("insert into %s: %v", room, err)
	}
}

// TestBrowserToken: rowcast.js presents a JWT from its token option (a
// function, as an app that refreshes tokens would pass) on every connect; the
// room the token grants is delivered, and one it does not grant is refused.
func TestBrowserToken(t *testing.T) {
	if testing.Short() {
		t.Skip("browser e2e needs Docker and Chromium")
	}
	chromium := chromiumPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, base, db := startSystem(ctx, t, "ROWCAST_AUTH_SECRET="+testSecret, "ROWCAST_PUBLIC_ROOMS=lobby")
	browser := startBrowser(ctx, t, chromium)
	tb := openTab(t, browser, "token", base+"/")
	tok := token(t, testSecret, []string{"team:*"}, time.Now().Add(time.Hour))
	eval[bool](t, tb, `(() => {
		window.__got = []; window.__controls = [];
		import("/rowcast.js").then((m) => {
			const rc = m.connect({ token: async () => "`+tok+`", share: false, name: "token-test" });
			rc.on("control", (c) => window.__controls.push(c.type + " " + (c.room || "") + " " + (c.code || "")));
			rc.subscribe("team:7", (ev) => window.__got.push(ev.data.body));
			window.__rc = rc;
		});
		return true;
	})()`)
	tb.waitFor(t, "team:7 subscribed", `(window.__controls || []).includes("subscribed team:7 ")`)
	insertRow(ctx, t, db, "team:7", "for the team")
	tb.waitFor(t, "the team row", `(window.__got || []).includes("for the team")`)

	// A room outside the token: refused, and the granted room keeps flowing.
	eval[bool](t, tb, `(window.__rc.subscribe("secret", () => window.__got.push("LEAK")), true)`)
	tb.waitFor(t, "the refusal", `window.__controls.some((c) => c.startsWith("error secret forbidden"))`)
	insertRow(ctx, t, db, "secret", "must not leak")
	insertRow(ctx, t, db, "team:7", "after the refusal")
	tb.waitFor(t, "the next team row", `window.__got.includes("after the refusal")`)
	if got := eval[[]string](t, tb, `window.__got`); slices.Contains(got, "LEAK") || len(got) != 2 {
		t.Fatalf("page received %v", got)
	}
}

// TestBrowserPageLoad: page load to live with a snapshot position. Rows
// exist before the page loads and a writer keeps committing while it loads
// (its history query, then the subscribe from the history's position) and
// after: the page lists the history's rows, then every later row, each
// exactly once, in commit order, whichever side of the snapshot it fell.
func TestBrowserPageLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("browser e2e needs Docker and Chromium")
	}
	chromium := chromiumPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, base, db := startSystem(ctx, t)
	browser := startBrowser(ctx, t, chromium)
	for _, transport := range []string{"websocket", "sse"} {
		t.Run(transport, func(t *testing.T) { checkPageLoad(ctx, t, browser, s.pgURL, db, base, transport) })
	}
}

// writtenRow is a row the test committed: its id and its transaction.
type writtenRow struct{ id, tx int64 }

// insertTracked commits one chat message and returns its id and transaction.
func insertTracked(ctx context.Context, db *pgx.Conn, room, body string) (writtenRow, error) {
	var r writtenRow
	err := db.QueryRow(ctx, `INSERT INTO chat_message (room, author, body) VALUES ($1, 'e2e', $2)
		RETURNING id, pg_current_xact_id()::text::bigint`, room, body).Scan(&r.id, &r.tx)
	return r, err
}

func checkPageLoad(ctx context.Context, t *testing.T, browser context.Context, pgURL string, db *pgx.Conn, base, transport string) {
	const before, maxWhile, after = 20, 200, 10
	room := "browser-load-" + transport
	var rows []writtenRow
	for i := range before {
		r, err := insertTracked(ctx, db, room, fmt.Sprintf("before %d", i))
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, r)
	}

	// The writer commits a row every few milliseconds while the page loads,
	// until the page is live (or maxWhile rows: the page keeps 500).
	wdb, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer wdb.Close(context.WithoutCancel(ctx))
	stop, done := make(chan struct{}), make(chan error, 1)
	var while []writtenRow
	go func() {
		tick := time.NewTicker(5 * time.Millisecond) // pacing, not synchronization
		defer tick.Stop()
		for i := range maxWhile {
			select {
			case <-stop:
				done <- nil
				return
			case <-tick.C:
			}
			r, err := insertTracked(ctx, wdb, room, fmt.Sprintf("while %d", i))
			if err != nil {
				done <- err
				return
			}
			while = append(while, r)
		}
		done <- nil
	}()

	page := openTab(t, browser, "load-"+transport, fmt.Sprintf("%s/?room=%s&transport=%s", base, room, transport))
	page.waitFor(t, "live from the history's position", fmt.Sprintf(
		`document.getElementById("messages").dataset.subscribed === %q && document.getElementById("transport").dataset.state === "open"`, room))
	// The page as it first goes live: the history's rows, oldest at the top.
	eval[bool](t, page, `(document.getElementById("messages").scrollTop = 0, window.scrollTo(0, 0), true)`)
	onLoad := page.screenshot(t, "page-load-"+transport+"-on-load")
	close(stop)
	if err := <-done; err != nil {
		t.Fatalf("writer: %v", err)
	}
	rows = append(rows, while...)
	for i := range after {
		r, err := insertTracked(ctx, db, room, fmt.Sprintf("after %d", i))
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, r)
	}

	// What the page must show, from the position it subscribed with: the
	// newest 50 rows its snapshot saw (the history), then every row it did
	// not see (the stream).
	token := eval[string](t, page, `document.getElementById("messages").dataset.position`)
	snap, err := realtime.ParseSnapshot(token)
	if err != nil {
		t.Fatalf("the page's position %q: %v", token, err)
	}
	var seen, unseen []int64
	for _, r := range rows {
		if snap.Saw(uint64(r.tx)) {
			seen = append(seen, r.id)
		} else {
			unseen = append(unseen, r.id)
		}
	}
	wantHistory := seen[max(0, len(seen)-50):]
	want := append(slices.Clone(wantHistory), unseen...)
	page.waitFor(t, "every row", fmt.Sprintf(`document.querySelectorAll("#messages li[data-row-id]").length >= %d && `+
		`document.querySelector("#messages li:last-child")?.dataset.rowId === "%d"`, len(want), rows[len(rows)-1].id))

	type shownRow struct {
		RowID   string `json:"rowId"`
		History bool   `json:"history"`
	}
	shown := eval[[]shownRow](t, page, `[...document.querySelectorAll("#messages li[data-row-id]")].map((li) => ({rowId: li.dataset.rowId, history: "history" in li.dataset}))`)
	count := map[int64]int{}
	var got []int64
	var fromHistory int
	for _, m := range shown {
		id, err := strconv.ParseInt(m.RowID, 10, 64)
		if err != nil {
			t.Fatalf("row id %q: %v", m.RowID, err)
		}
		count[id]++
		got = append(got, id)
		if m.History {
			fromHistory++
		}
	}
	for id, n := range count {
		if n > 1 {
			t.Errorf("row %d shown %d times", id, n)
		}
	}
	for _, id := range want {
		if count[id] == 0 {
			t.Errorf("row %d never shown", id)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("page shows rows %v,\nwant %v (history %d, then %d streamed)", got, want, len(wantHistory), len(unseen))
	}
	if fromHistory != len(wantHistory) {
		t.Errorf("%d rows rendered from the history, want %d", fromHistory, len(wantHistory))
	}
	if len(seen) <= 50 && !slices.Equal(wantHistory[:before], idsOf(rows[:before])) {
		t.Errorf("history does not start with the %d rows written before the page loaded", before)
	}
	if ex := page.exceptions(); len(ex) > 0 {
		t.Errorf("page exceptions: %v", ex)
	}
	path := page.screenshot(t, "page-load-"+transport)
	t.Logf("%s: %d rows before the load, %d while loading (%d of them in the history's snapshot), %d after; "+
		"shown %d (%d from history, %d streamed), each once; screenshots %s (on load), %s",
		transport, before, len(while), len(seen)-before, after, len(got), fromHistory, len(got)-fromHistory, onLoad, path)
}

func idsOf(rows []writtenRow) []int64 {
	ids := make([]int64, len(rows))
	for i, r := range rows {
		ids[i] = r.id
	}
	return ids
}
