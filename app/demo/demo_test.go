package demo

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/labstack/echo/v4"

	"github.com/rowcast/rowcast/internal/testenv"
	"github.com/rowcast/rowcast/migrations"
	"github.com/rowcast/rowcast/realtime"
)

func lookup(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestConfigFromEnv(t *testing.T) {
	for _, c := range []struct {
		env  map[string]string
		want Config
		errs []string // all must appear in the error; none: no error
	}{
		{nil, Config{}, nil},
		{map[string]string{"DATABASE_URL": "not read when off"}, Config{}, nil},
		{map[string]string{"ROWCAST_DEMO": "true", "DATABASE_URL": "postgres://u@db/rowcast"},
			Config{Enabled: true, DatabaseURL: "postgres://u@db/rowcast"}, nil},
		{map[string]string{"ROWCAST_DEMO": "true"}, Config{}, []string{"DATABASE_URL: required"}},
		{map[string]string{"ROWCAST_DEMO": "true", "DATABASE_URL": "http://db"}, Config{}, []string{"DATABASE_URL", "scheme"}},
		{map[string]string{"ROWCAST_DEMO": "maybe"}, Config{}, []string{"ROWCAST_DEMO", "not true or false"}},
	} {
		got, err := ConfigFromEnv(lookup(c.env))
		if len(c.errs) == 0 {
			if err != nil || got != c.want {
				t.Errorf("%v: %+v, %v; want %+v", c.env, got, err, c.want)
			}
			continue
		}
		for _, w := range c.errs {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %v, want it to name %q", c.env, err, w)
			}
		}
	}
}

func TestValidatePost(t *testing.T) {
	ok := postMessage{Room: "lobby", Author: "ann", Body: "hello"}
	if msg := validatePost(ok); msg != "" {
		t.Fatalf("valid message refused: %s", msg)
	}
	for _, c := range []struct {
		edit func(*postMessage)
		want string
	}{
		{func(m *postMessage) { m.Body = "" }, "message is empty"},
		{func(m *postMessage) { m.Body = strings.Repeat("é", 501) }, "longer than 500"},
		{func(m *postMessage) { m.Author = "" }, "name is empty"},
		{func(m *postMessage) { m.Author = strings.Repeat("a", 41) }, "longer than 40"},
		{func(m *postMessage) { m.Room = "a b" }, "room must be"},
		{func(m *postMessage) { m.Room = "" }, "room must be"},
	} {
		m := ok
		c.edit(&m)
		if msg := validatePost(m); !strings.Contains(msg, c.want) {
			t.Errorf("%+v: %q, want %q", m, msg, c.want)
		}
	}
	// Limits count characters, not bytes.
	if msg := validatePost(postMessage{Room: "r", Author: strings.Repeat("é", 40), Body: strings.Repeat("é", 500)}); msg != "" {
		t.Errorf("multi-byte message at the limits refused: %s", msg)
	}
}

// serve mounts the demo on a fresh router and serves one request.
func serve(a *App, method, target, body string) *httptest.ResponseRecorder {
	e := echo.New()
	a.Routes(e.Group(""))
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, req)
	return rec
}

func TestRoutes(t *testing.T) {
	off, err := New(t.Context(), Config{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if rec := serve(off, http.MethodGet, "/", ""); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "rowcast demo") {
		t.Errorf("GET /: %d", rec.Code)
	}
	if rec := serve(off, http.MethodPost, "/api/messages", `{}`); rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "ROWCAST_DEMO") {
		t.Errorf("POST with the form off: %d %s", rec.Code, rec.Body)
	}

	// On, with a database that is never reached: bad input is refused
	// before any query.
	on, err := New(t.Context(), Config{Enabled: true, DatabaseURL: "postgres://u@127.0.0.1:1/db"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		body string
		code int
		want string
	}{
		{`nope`, http.StatusBadRequest, "body must be JSON"},
		{`{"room":"lobby","author":" ","body":"hi"}`, http.StatusBadRequest, "name is empty"},
		{`{"room":"lobby","author":"ann","body":"` + strings.Repeat("x", 17<<10) + `"}`, http.StatusRequestEntityTooLarge, "16 KiB"},
	} {
		if rec := serve(on, http.MethodPost, "/api/messages", c.body); rec.Code != c.code || !strings.Contains(rec.Body.String(), c.want) {
			t.Errorf("POST %.40s: %d %s, want %d %q", c.body, rec.Code, rec.Body, c.code, c.want)
		}
	}
	if rec := serve(off, http.MethodGet, "/api/history?room=lobby", ""); rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "ROWCAST_DEMO") {
		t.Errorf("GET /api/history with the demo off: %d %s", rec.Code, rec.Body)
	}
	for _, target := range []string{"/api/history", "/api/history?room=", "/api/history?room=a%20b", "/api/history?room=" + strings.Repeat("r", 129)} {
		if rec := serve(on, http.MethodGet, target, ""); rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "room must be 1-128 characters") {
			t.Errorf("GET %.40s: %d %s, want 400 naming the room rule", target, rec.Code, rec.Body)
		}
	}
	if rec := serve(on, http.MethodGet, "/api/history?room=lobby", ""); rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "database unavailable") {
		t.Errorf("GET /api/history without a reachable database: %d %s, want 503", rec.Code, rec.Body)
	}
	for _, a := range []*App{off, on, on} { // twice: Close is idempotent
		if err := a.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
}

// migratedPostgres starts PostgreSQL with rowcast's migrations applied and
// returns its URL.
func migratedPostgres(ctx context.Context, t *testing.T) string {
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

type historyAnswer struct {
	Position string `json:"position"`
	Messages []struct {
		ID        int64     `json:"id"`
		Room      string    `json:"room"`
		Author    string    `json:"author"`
		Body      string    `json:"body"`
		CreatedAt time.Time `json:"created_at"`
	} `json:"messages"`
}

// getHistory serves GET /api/history?room=room and decodes the answer.
func getHistory(t *testing.T, a *App, room string) (historyAnswer, *realtime.Snapshot) {
	t.Helper()
	rec := serve(a, http.MethodGet, "/api/history?room="+room, "")
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /api/history?room=%s: %d %s", room, rec.Code, rec.Body)
	}
	if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", cc)
	}
	var h historyAnswer
	if err := json.Unmarshal(rec.Body.Bytes(), &h); err != nil {
		t.Fatalf("history body %q: %v", rec.Body, err)
	}
	snap, err := realtime.ParseSnapshot(h.Position)
	if err != nil || !strings.HasPrefix(h.Position, "p1.") {
		t.Fatalf("position %q: %v", h.Position, err)
	}
	return h, snap
}

// GET /api/history against a real Postgres: the room's 50 newest rows,
// oldest first, and a position whose snapshot is the one the rows were read
// at (it saw the committed rows' transactions, not a running one's).
func TestHistory(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	url := migratedPostgres(ctx, t)
	a, err := New(ctx, Config{Enabled: true, DatabaseURL: url}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	db, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.WithoutCancel(ctx))

	if h, _ := getHistory(t, a, "empty"); len(h.Messages) != 0 {
		t.Errorf("a room without rows: %d messages, want none", len(h.Messages))
	}

	insert := func(db interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	}, room string) (id, tx int64) {
		t.Helper()
		err := db.QueryRow(ctx, `INSERT INTO chat_message (room, author, body) VALUES ($1, 'ann', 'hi')
			RETURNING id, pg_current_xact_id()::text::bigint`, room).Scan(&id, &tx)
		if err != nil {
			t.Fatal(err)
		}
		return id, tx
	}
	var ids []int64
	var lastTx int64
	for i := range 60 {
		id, tx := insert(db, "hist")
		ids = append(ids, id)
		lastTx = tx
		if i%10 == 0 {
			insert(db, "other") // interleaved: must not show up
		}
	}
	// A transaction still running when the history is read.
	open, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Rollback(context.WithoutCancel(ctx))
	openID, openTx := insert(open, "hist")

	h, snap := getHistory(t, a, "hist")
	got := make([]int64, 0, len(h.Messages))
	for _, m := range h.Messages {
		got = append(got, m.ID)
		if m.Room != "hist" || m.Author != "ann" || m.Body != "hi" || m.CreatedAt.IsZero() {
			t.Errorf("message %+v: want room hist, author ann, body hi, a created_at", m)
		}
	}
	if want := ids[len(ids)-50:]; !slices.Equal(got, want) {
		t.Errorf("history ids %v, want the 50 newest committed, oldest first: %v", got, want)
	}
	if !snap.Saw(uint64(lastTx)) {
		t.Errorf("position %s did not see transaction %d, whose row the history holds", h.Position, lastTx)
	}
	if snap.Saw(uint64(openTx)) {
		t.Errorf("position %s saw transaction %d, still running when the history was read", h.Position, openTx)
	}

	// Once it commits, the next history holds its row and its position saw it.
	if err := open.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	h, snap = getHistory(t, a, "hist")
	if n := len(h.Messages); n != 50 || h.Messages[n-1].ID != openID {
		t.Errorf("after the commit: %d messages ending with %d, want 50 ending with %d", n, h.Messages[n-1].ID, openID)
	}
	if !snap.Saw(uint64(openTx)) {
		t.Errorf("position %s after the commit did not see transaction %d", h.Position, openTx)
	}
}
