// Package demo is rowcast's demo application: a chat page (GET /) that
// shows a room's recent rows of public.chat_message (GET /api/history, with
// the snapshot position to subscribe from) and then the rows as they arrive
// through the edge, and the form's API (POST /api/messages) that inserts
// them, so they come back through the trigger like anyone's. The edge server mounts it with
// edge.Server.Mount; the page loads the edge's /rowcast.js.
//
// Each handler lives in its own file; Routes lists them.
package demo

import (
	"context"
	"embed"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/labstack/echo/v4"

	"github.com/rowcast/rowcast/internal/connect"
	"github.com/rowcast/rowcast/internal/env"
)

//go:embed static
var static embed.FS

// Config is the demo's configuration.
type Config struct {
	Enabled     bool   // ROWCAST_DEMO: serve the APIs that use the database (the page is always served)
	DatabaseURL string // DATABASE_URL, required when Enabled: where the form inserts chat messages
}

// ConfigFromEnv reads the configuration; the error names every bad setting.
func ConfigFromEnv(lookup func(string) (string, bool)) (Config, error) {
	r := env.New(lookup)
	c := Config{Enabled: r.Bool("ROWCAST_DEMO", false)}
	if c.Enabled {
		c.DatabaseURL = r.URL("DATABASE_URL", "", "postgres", "postgresql")
	}
	return c, r.Err()
}

// App serves the demo's page and APIs. Its handlers are safe for concurrent
// use; the caller of New must call Close once they are no longer served.
type App struct {
	log *slog.Logger
	db  *pgxpool.Pool // nil unless cfg.Enabled
}

// New builds the demo; when enabled it makes the database pool (without
// connecting yet).
func New(ctx context.Context, cfg Config, log *slog.Logger) (*App, error) {
	a := &App{log: log}
	if cfg.Enabled {
		db, err := connect.PostgresPool(ctx, "DATABASE_URL", cfg.DatabaseURL)
		if err != nil {
			return nil, err
		}
		a.db = db
	}
	return a, nil
}

// Routes adds the demo's page and APIs to g; pass it to edge.Server.Mount.
func (a *App) Routes(g *echo.Group) {
	g.FileFS("/", "static/index.html", static)
	g.POST("/api/messages", a.handlePostMessage)
	g.GET("/api/history", a.handleHistory)
}

// Close closes the database pool, waiting for the queries in flight. Later
// calls do nothing.
func (a *App) Close() error {
	if a.db != nil {
		a.db.Close() // idempotent
	}
	return nil
}
