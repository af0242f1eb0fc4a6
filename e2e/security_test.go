package e2e

import (
	"context"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"

	"github.com/rowcast/rowcast/e2e/wire"
)

const testSecret = "e2e-secret-0123456789abcdef"

func token(t *testing.T, secret string, rooms []string, exp time.Time) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"rooms": rooms, "exp": exp.Unix()}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// dialStatus tries a WebSocket upgrade and returns the HTTP status and the
// JSON error code of a refusal (101 on success).
func dialStatus(ctx context.Context, t *testing.T, base, query string, header http.Header) (int, string) {
	t.Helper()
	u := strings.Replace(base, "http", "ws", 1) + "/ws?" + query
	c, resp, err := websocket.DefaultDialer.DialContext(ctx, u, header)
	if err == nil {
		c.Close()
		return http.StatusSwitchingProtocols, ""
	}
	if resp == nil {
		t.Fatalf("dial %s: %v", u, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`"code":"([a-z_]+)"`).FindStringSubmatch(string(body))
	if m == nil {
		return resp.StatusCode, ""
	}
	return resp.StatusCode, m[1]
}

func TestSecurity(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := startStack(ctx, t)
	listener := startListener(ctx, t, s)
	_, base := startApp(ctx, t, s,
		"ROWCAST_AUTH_SECRET="+testSecret, "ROWCAST_PUBLIC_ROOMS=lobby,news:*",
		"ROWCAST_ALLOWED_ORIGINS=https://good.example", "ROWCAST_MAX_ROOMS=3",
		"ROWCAST_MAX_FRAME_BYTES=512", "ROWCAST_MAX_MESSAGES_PER_SECOND=5")
	hour := time.Now().Add(time.Hour)
	team := token(t, testSecret, []string{"team:*"}, hour)

	refusals := []struct {
		name, query string
		header      http.Header
		status      int
		code        string
	}{
		{"bad signature", "rooms=team:1&token=" + token(t, "not-the-secret-at-all", []string{"team:*"}, hour), nil, 401, "unauthorized"},
		{"garbage token", "rooms=team:1&token=abc.def.ghi", nil, 401, "unauthorized"},
		{"expired token", "rooms=team:1&token=" + token(t, testSecret, []string{"team:*"}, time.Now().Add(-time.Minute)), nil, 401, "token_expired"},
		{"forbidden room", "rooms=secret&token=" + team, nil, 403, "forbidden"},
		{"no token, private room", "rooms=team:1", nil, 403, "forbidden"},
		{"too many rooms", "rooms=news:1,news:2,news:3,news:4", nil, 400, "too_many_rooms"},
		{"hostile room name", "rooms=" + strings.Repeat("%7B", 3), nil, 400, "bad_request"},
		{"bad cursor", "rooms=lobby&lastEventId=lobby@@", nil, 400, "bad_request"},
		{"cross-site origin", "rooms=lobby", http.Header{"Origin": {"https://evil.example"}}, 403, "origin"},
	}
	for _, r := range refusals {
		status, code := dialStatus(ctx, t, base, r.query, r.header)
		if status != r.status || code != r.code {
			t.Errorf("%s: status %d code %q, want %d %q", r.name, status, code, r.status, r.code)
		}
	}
	if status, _ := dialStatus(ctx, t, base, "rooms=lobby", http.Header{"Origin": {"https://good.example"}}); status != 101 {
		t.Errorf("allowed origin refused: %d", status)
	}
	if status, _ := dialStatus(ctx, t, base, "rooms=news:x", nil); status != 101 {
		t.Errorf("public room without token refused: %d", status)
	}

	// SSE: same admission; CORS only for allowed origins.
	for origin, want := range map[string]string{"https://good.example": "https://good.example", "https://evil.example": ""} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/events?rooms=lobby", nil)
		req.Header.Set("Origin", origin)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got != want {
			t.Errorf("SSE from %s: Access-Control-Allow-Origin %q, want %q", origin, got, want)
		}
	}
	resp, err := http.Get(base + "/events?rooms=team:1&token=" + token(t, "wrong-secret-wrong-secret", []string{"*"}, hour))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("SSE with a bad token: status %d", resp.StatusCode)
	}

	// A forbidden subscribe is refused and changes nothing else.
	db, err := pgx.Connect(ctx, s.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	ws, err := wire.Dial(ctx, base, wire.WebSocket, wire.Options{Rooms: []string{"team:1"}, Token: team})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if _, err := ws.WaitSubscribed(ctx, "team:1"); err != nil {
		t.Fatal(err)
	}
	if err := ws.Send(map[string]string{"type": "subscribe", "room": "secret"}); err != nil {
		t.Fatal(err)
	}
	if c := nextControl(ctx, t, ws); c.Type != "error" || c.Code != "forbidden" || c.Room != "secret" {
		t.Fatalf("forbidden subscribe: got %+v", c)
	}
	insertRow(ctx, t, db, "secret", "must not leak")
	insertRow(ctx, t, db, "team:1", "team news")
	if ev := nextEvent(ctx, t, ws); ev.Room != "team:1" || wire.Body(ev) != "team news" {
		t.Fatalf("after a forbidden subscribe got %s %q", ev.Room, wire.Body(ev))
	}
	// Too many rooms by message.
	for _, r := range []string{"team:2", "team:3"} {
		if err := ws.Send(map[string]string{"type": "subscribe", "room": r}); err != nil {
			t.Fatal(err)
		}
		if c := nextControl(ctx, t, ws); c.Type != "subscribed" {
			t.Fatalf("subscribe %s: %+v", r, c)
		}
	}
	if err := ws.Send(map[string]string{"type": "subscribe", "room": "team:4"}); err != nil {
		t.Fatal(err)
	}
	if c := nextControl(ctx, t, ws); c.Code != "too_many_rooms" {
		t.Fatalf("fourth room: %+v", c)
	}
	// Inbound rate limit: a burst beyond 2x the rate is refused, not obeyed.
	for range 30 {
		if err := ws.Send(map[string]string{"type": "ping"}); err != nil {
			t.Fatal(err)
		}
	}
	limited := false
	for range 30 {
		if c := nextControl(ctx, t, ws); c.Code == "rate_limited" {
			limited = true
		}
	}
	if !limited {
		t.Error("30 pings at once were never rate limited")
	}

	// An oversized frame ends that connection with 1009; others are untouched.
	raw, _, err := websocket.DefaultDialer.DialContext(ctx, strings.Replace(base, "http", "ws", 1)+"/ws?rooms=lobby", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if err := raw.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping","pad":"`+strings.Repeat("x", 1000)+`"}`)); err != nil {
		t.Fatal(err)
	}
	for {
		if _, _, err := raw.ReadMessage(); err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != websocket.CloseMessageTooBig {
				t.Fatalf("oversized frame: %v, want close 1009", err)
			}
			break
		}
	}
	insertRow(ctx, t, db, "team:1", "still delivered")
	if ev := nextEvent(ctx, t, ws); wire.Body(ev) != "still delivered" {
		t.Fatalf("got %q", wire.Body(ev))
	}

	// A token that expires ends its connection with 4001.
	short, _, err := websocket.DefaultDialer.DialContext(ctx, strings.Replace(base, "http", "ws", 1)+"/ws?rooms=team:9&token="+
		token(t, testSecret, []string{"team:*"}, time.Now().Add(2*time.Second)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer short.Close()
	for {
		if _, _, err := short.ReadMessage(); err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != 4001 {
				t.Fatalf("expiring token: %v, want close 4001", err)
			}
			break
		}
	}

	// Metrics after this traffic.
	metric := func(url, name string) float64 {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` ([0-9.e+-]+)$`).FindStringSubmatch(string(body))
		if m == nil {
			t.Fatalf("%s lacks %s", url, name)
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	if v := metric(base+"/metrics", `rowcast_events_delivered_total{transport="websocket"}`); v < 2 {
		t.Errorf("delivered websocket = %v", v)
	}
	if v := metric(base+"/metrics", "rowcast_event_latency_seconds_count"); v < 2 {
		t.Errorf("latency observations = %v", v)
	}
	if v := metric(base+"/metrics", `rowcast_refused_total{reason="forbidden"}`); v < 1 {
		t.Errorf("forbidden refusals = %v", v)
	}
	metric(base+"/metrics", `rowcast_connections{transport="websocket"}`)
	metric(base+"/metrics", "rowcast_rooms")
	health := listenerHealth(ctx, t, listener)
	if v := metric(health+"/metrics", "rowcast_listener_batch_size_count"); v < 1 {
		t.Errorf("listener batches = %v", v)
	}
	if v := metric(health+"/metrics", "rowcast_listener_leader"); v != 1 {
		t.Errorf("listener leader = %v", v)
	}
	metric(health+"/metrics", "rowcast_outbox_depth")
	metric(health+"/metrics", "rowcast_outbox_oldest_age_seconds")
}

// Connections per client IP are capped.
func TestConnectionsPerIP(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := startStack(ctx, t)
	startListener(ctx, t, s)
	_, base := startApp(ctx, t, s, "ROWCAST_MAX_CONNS_PER_IP=2")
	var open []*wire.Conn
	for range 2 {
		c, err := wire.Dial(ctx, base, wire.SSE, wire.Options{Rooms: []string{"ip"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		open = append(open, c)
	}
	if status, code := dialStatus(ctx, t, base, "rooms=ip", nil); status != 429 || code != "too_many_connections" {
		t.Fatalf("third connection: %d %q", status, code)
	}
	open[0].Close()
	// The slot is freed when the stream ends; wait for the server to see it.
	for {
		status, _ := dialStatus(ctx, t, base, "rooms=ip", nil)
		if status == 101 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("slot never freed")
		case <-time.After(20 * time.Millisecond):
		}
	}
}
