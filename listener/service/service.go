// Package service wires the listener process: configuration, the Postgres
// and Redis connections, the relay, and a small health server.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/rowcast/rowcast/internal/connect"
	"github.com/rowcast/rowcast/internal/env"
	"github.com/rowcast/rowcast/listener/outbox"
	"github.com/rowcast/rowcast/listener/relay"
	"github.com/rowcast/rowcast/listener/walslot"
	"github.com/rowcast/rowcast/migrations"
	"github.com/rowcast/rowcast/realtime"
	"github.com/rowcast/rowcast/realtime/redisbus"
)

// Config is the listener's configuration.
type Config struct {
	DatabaseURL       string // queries (may go through PgBouncer)
	ListenDatabaseURL string // LISTEN and the leader lock: must be a direct connection
	RedisURL          string
	RedisAddrMap      map[string]string // REDIS_ADDRESS_MAP: Redis-announced address -> address to dial
	HealthAddr        string
	// Capture is "notify" (outbox + NOTIFY, the default) or "wal" (logical
	// decoding messages read from the replication slot WALSlot).
	Capture string
	WALSlot string
	Relay   relay.Config
	History redisbus.HistoryLimits
}

// ConfigFromEnv reads the configuration; the error names every bad setting.
func ConfigFromEnv(lookup func(string) (string, bool)) (Config, error) {
	r := env.New(lookup)
	c := readConfig(r)
	c.RedisURL = connect.RedisURLFromEnv(r)
	c.RedisAddrMap = connect.RedisAddrMapFromEnv(r)
	c.HealthAddr = r.String("HEALTH_ADDR", ":8081")
	return c, r.Err()
}

// EmbeddedConfigFromEnv reads the relay's configuration for an app that
// runs it in-process on its own bus: no Redis, no health server (the app's
// serves).
func EmbeddedConfigFromEnv(lookup func(string) (string, bool)) (Config, error) {
	r := env.New(lookup)
	c := readConfig(r)
	return c, r.Err()
}

// readConfig reads the Postgres and relay settings.
func readConfig(r *env.Reader) Config {
	c := Config{
		DatabaseURL: r.URL("DATABASE_URL", "", "postgres", "postgresql"),
		Capture:     r.String("ROWCAST_CAPTURE", CaptureNotify),
		WALSlot:     r.String("ROWCAST_WAL_SLOT", "rowcast"),
		Relay: relay.Config{
			BatchSize:     r.Int("ROWCAST_BATCH_SIZE", 500, 1, 10000),
			PollInterval:  r.Duration("ROWCAST_POLL_INTERVAL", 2*time.Second, 10*time.Millisecond, time.Minute),
			MaxEventBytes: r.Int("ROWCAST_MAX_EVENT_BYTES", 1<<20, 1024, 64<<20),
			MaxBackoff:    r.Duration("ROWCAST_MAX_BACKOFF", 5*time.Second, 10*time.Millisecond, 5*time.Minute),
		},
		History: redisbus.HistoryLimits{
			Len: r.Int("ROWCAST_HISTORY_LEN", 1000, 1, 1_000_000),
			TTL: r.Duration("ROWCAST_HISTORY_TTL", 24*time.Hour, time.Second, 90*24*time.Hour),
		},
	}
	c.ListenDatabaseURL = r.URL("LISTEN_DATABASE_URL", c.DatabaseURL, "postgres", "postgresql")
	if c.Capture != CaptureNotify && c.Capture != CaptureWAL {
		r.Fail("ROWCAST_CAPTURE", "%q: want %s or %s", c.Capture, CaptureNotify, CaptureWAL)
	}
	if !validSlotName(c.WALSlot) {
		r.Fail("ROWCAST_WAL_SLOT", "%q: want 1-63 lower-case letters, digits or underscores", c.WALSlot)
	}
	return c
}

// MigrateConfig is what `listener migrate` needs: Postgres only.
type MigrateConfig struct {
	ListenDatabaseURL string // migrations take a session lock: a direct connection
	Capture           string
}

// MigrateConfigFromEnv reads the migration's configuration; REDIS_URL and
// the relay's settings are not read, so a bad or missing one does not stop
// a migration.
func MigrateConfigFromEnv(lookup func(string) (string, bool)) (MigrateConfig, error) {
	r := env.New(lookup)
	db := r.URL("DATABASE_URL", "", "postgres", "postgresql")
	c := MigrateConfig{
		ListenDatabaseURL: r.URL("LISTEN_DATABASE_URL", db, "postgres", "postgresql"),
		Capture:           r.String("ROWCAST_CAPTURE", CaptureNotify),
	}
	if c.Capture != CaptureNotify && c.Capture != CaptureWAL {
		r.Fail("ROWCAST_CAPTURE", "%q: want %s or %s", c.Capture, CaptureNotify, CaptureWAL)
	}
	return c, r.Err()
}

// The capture modes ROWCAST_CAPTURE takes.
const (
	CaptureNotify = "notify"
	CaptureWAL    = "wal"
)

// validSlotName is Postgres's rule for replication slot names.
func validSlotName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// Main is one listener process.
type Main struct {
	cfg    Config
	log    *slog.Logger
	pool   *pgxpool.Pool
	rdb    redis.UniversalClient
	relay  *relay.Relay
	health net.Listener
	reg    *prometheus.Registry
}

// New builds the process without connecting: services may come up later.
// A bad HEALTH_ADDR is an error here.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Main, error) {
	listenCfg, err := connect.PostgresConfig("LISTEN_DATABASE_URL", cfg.ListenDatabaseURL)
	if err != nil {
		return nil, err
	}
	pool, err := connect.PostgresPool(ctx, "DATABASE_URL", cfg.DatabaseURL)
	if err != nil {
		return nil, err
	}
	rcfg, err := connect.ParseRedis(cfg.RedisURL)
	if err != nil {
		pool.Close()
		return nil, err
	}
	rcfg.AddrMap = cfg.RedisAddrMap
	rdb := rcfg.Client()
	ln, err := net.Listen("tcp", cfg.HealthAddr)
	if err != nil {
		pool.Close()
		rdb.Close()
		return nil, fmt.Errorf("HEALTH_ADDR %q: %w", cfg.HealthAddr, err)
	}
	store := outbox.NewStore(pool)
	rel := newRelay(cfg, listenCfg, store, redisbus.NewPublisher(rdb, cfg.History), log)
	return &Main{cfg: cfg, log: log, pool: pool, rdb: rdb, relay: rel, health: ln, reg: newRegistry(rel, store, pool)}, nil
}

// newRelay builds the relay of cfg publishing to pub.
func newRelay(cfg Config, listenCfg *pgx.ConnConfig, store *outbox.Store, pub realtime.Publisher, log *slog.Logger) *relay.Relay {
	connectListen := func(ctx context.Context) (*pgx.Conn, error) { return pgx.ConnectConfig(ctx, listenCfg) }
	if cfg.Relay.ForgetAfter == 0 {
		cfg.Relay.ForgetAfter = 2 * cfg.History.TTL
	}
	rel := relay.New(cfg.Relay, connectListen, store, pub, log)
	if cfg.Capture == CaptureWAL {
		rel.CaptureWAL(listenCfg.Config.Copy(), cfg.WALSlot)
	}
	return rel
}

// Embedded is the relay of an app that runs it in-process, publishing to
// the app's own bus. It is exclusive: with another relay on the database
// (a listener, or another such app) the two could not share events.
type Embedded struct {
	cfg   Config
	pool  *pgxpool.Pool
	relay *relay.Relay
}

// NewEmbedded builds the in-process relay without connecting.
func NewEmbedded(ctx context.Context, cfg Config, pub realtime.Publisher, log *slog.Logger) (*Embedded, error) {
	listenCfg, err := connect.PostgresConfig("LISTEN_DATABASE_URL", cfg.ListenDatabaseURL)
	if err != nil {
		return nil, err
	}
	pool, err := connect.PostgresPool(ctx, "DATABASE_URL", cfg.DatabaseURL)
	if err != nil {
		return nil, err
	}
	cfg.Relay.Exclusive = true
	return &Embedded{cfg: cfg, pool: pool, relay: newRelay(cfg, listenCfg, outbox.NewStore(pool), pub, log)}, nil
}

// Relay returns the embedded relay.
func (e *Embedded) Relay() *relay.Relay { return e.relay }

// CheckSchema fails when the database lacks migrations, naming the fix.
func (e *Embedded) CheckSchema(ctx context.Context) error { return checkSchema(ctx, e.cfg, e.pool) }

// Run relays until ctx ends, or fails with a clear error when another
// process relays the database.
func (e *Embedded) Run(ctx context.Context) error {
	err := e.relay.Run(ctx)
	if errors.Is(err, relay.ErrAnotherLeader) {
		return fmt.Errorf("%w: without REDIS_URL this app relays to its own clients only, and two such "+
			"processes cannot share events; set REDIS_URL (and run listeners) to run more than one", err)
	}
	return err
}

// Close closes the database pool.
func (e *Embedded) Close() { e.pool.Close() }

// HealthAddr returns the health server's bound address.
func (m *Main) HealthAddr() string { return m.health.Addr().String() }

// Relay returns the process's relay.
func (m *Main) Relay() *relay.Relay { return m.relay }

// CheckSchema fails when the database lacks migrations, naming the fix.
func (m *Main) CheckSchema(ctx context.Context) error { return checkSchema(ctx, m.cfg, m.pool) }

func checkSchema(ctx context.Context, cfg Config, pool *pgxpool.Pool) error {
	n, err := migrations.Pending(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("check schema at DATABASE_URL: %w", err)
	}
	if n > 0 {
		return fmt.Errorf("database schema is %d migration(s) behind: run `listener migrate` first", n)
	}
	if cfg.Capture == CaptureWAL {
		return CheckWAL(ctx, pool)
	}
	return nil
}

// CheckWAL fails unless the server can serve WAL capture, naming the fix.
func CheckWAL(ctx context.Context, q walslot.Querier) error {
	if err := walslot.CheckWALLevel(ctx, q); err != nil {
		return fmt.Errorf("ROWCAST_CAPTURE=wal: %w", err)
	}
	return nil
}

// Run relays until ctx ends, then releases leadership and closes everything.
func (m *Main) Run(ctx context.Context) error {
	defer m.pool.Close()
	defer m.rdb.Close()

	srv := &http.Server{Handler: m.healthHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(m.health); err != nil && !errors.Is(err, http.ErrServerClosed) {
			m.log.Error("health server", "err", err)
		}
	}()
	m.log.Info("listener started", "health", m.HealthAddr())
	// On SIGTERM Run returns after releasing the advisory lock, so a
	// standby takes over at once.
	err := m.relay.Run(ctx)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	m.log.Info("listener stopped")
	return err
}

func (m *Main) healthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		var problems []string
		if err := m.pool.Ping(ctx); err != nil {
			problems = append(problems, "postgres: "+err.Error())
		}
		if err := m.rdb.Ping(ctx).Err(); err != nil {
			problems = append(problems, "redis: "+err.Error())
		}
		if len(problems) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			for _, p := range problems {
				fmt.Fprintln(w, p)
			}
			return
		}
		role := "standby"
		if m.relay.Leader() {
			role = "leader"
		}
		if m.cfg.Capture == CaptureWAL {
			role += " wal"
		}
		fmt.Fprintf(w, "ok %s\n", role)
	})
	return mux
}
