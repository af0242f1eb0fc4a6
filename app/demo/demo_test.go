package demo

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"
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
	for _, a := range []*App{off, on, on} { // twice: Close is idempotent
		if err := a.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
}
