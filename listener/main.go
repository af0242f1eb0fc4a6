// Command listener moves captured row changes from the PostgreSQL outbox to
// Redis. One listener leads; others stand by and take over within seconds.
//
//	listener          run the relay
//	listener migrate  apply the SQL migrations and exit
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rowcast/rowcast/internal/logging"
	"github.com/rowcast/rowcast/listener/service"
	"github.com/rowcast/rowcast/migrations"
)

func main() {
	log := logging.New(os.Getenv("LOG_FORMAT"))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], log); err != nil {
		log.Error("listener failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, log *slog.Logger) error {
	if len(args) > 0 {
		switch args[0] {
		case "migrate":
			return migrate(ctx, log)
		default:
			return fmt.Errorf("unknown command %q (want: migrate, or none to run)", args[0])
		}
	}
	cfg, err := service.ConfigFromEnv(os.LookupEnv)
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	m, err := service.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := m.CheckSchema(cctx); err != nil {
		return err
	}
	return m.Run(ctx)
}

// migrate applies the SQL migrations; it needs only Postgres.
func migrate(ctx context.Context, log *slog.Logger) error {
	cfg, err := service.MigrateConfigFromEnv(os.LookupEnv)
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if cfg.Capture == service.CaptureWAL {
		if err := checkWAL(ctx, cfg.ListenDatabaseURL); err != nil {
			return err
		}
	}
	// Migrations take a session lock: use the direct connection, as a
	// transaction-mode pooler would break it.
	applied, err := migrations.Up(ctx, cfg.ListenDatabaseURL)
	if err != nil {
		return fmt.Errorf("migrate LISTEN_DATABASE_URL (or DATABASE_URL): %w", err)
	}
	log.Info("migrations applied", "versions", applied)
	return nil
}

// checkWAL refuses to prepare WAL capture on a server without
// wal_level=logical.
func checkWAL(ctx context.Context, url string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("connect to LISTEN_DATABASE_URL (or DATABASE_URL): %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return service.CheckWAL(ctx, conn)
}
