// Command app is rowcast's edge server: browsers connect over WebSocket or
// Server-Sent Events and receive the row changes of the rooms they join.
//
// With REDIS_URL set, events come from Redis, where listeners publish them.
// Without it, the app is the whole pipeline in one process: it runs the
// relay itself and hands events to its clients in memory (realtime/membus).
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rowcast/rowcast/app/demo"
	"github.com/rowcast/rowcast/app/edge"
	"github.com/rowcast/rowcast/internal/logging"
	"github.com/rowcast/rowcast/listener/service"
	"github.com/rowcast/rowcast/realtime/membus"
)

func main() {
	log := logging.New(os.Getenv("LOG_FORMAT"))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, log); err != nil {
		log.Error("app failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger) error {
	cfg, err := edge.ConfigFromEnv(os.LookupEnv)
	demoCfg, demoErr := demo.ConfigFromEnv(os.LookupEnv)
	if err := errors.Join(err, demoErr); err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	if cfg.RedisURL == "" {
		return runAlone(ctx, cfg, demoCfg, log)
	}
	s, err := edge.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	return serve(ctx, s, demoCfg, log)
}

// runAlone runs the relay in-process on a memory bus: one binary and one
// Postgres, nothing else.
func runAlone(ctx context.Context, cfg edge.Config, demoCfg demo.Config, log *slog.Logger) error {
	rcfg, err := service.EmbeddedConfigFromEnv(os.LookupEnv)
	if err != nil {
		return fmt.Errorf("configuration: REDIS_URL is not set, so the app relays from Postgres itself: %w", err)
	}
	bus := membus.New(membus.Options{HistoryLen: rcfg.History.Len, HistoryTTL: rcfg.History.TTL})
	rel, err := service.NewEmbedded(ctx, rcfg, bus, log)
	if err != nil {
		return err
	}
	defer rel.Close()
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = rel.CheckSchema(cctx)
	cancel()
	if err != nil {
		return err
	}
	s, err := edge.NewWithBus(ctx, cfg, bus, log)
	if err != nil {
		return err
	}
	log.Info("no REDIS_URL: relaying in-process to this app's clients only")
	// The relay fails the app when another process relays the database.
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	relayDone := make(chan struct{})
	go func() {
		defer close(relayDone)
		if err := rel.Run(ctx); err != nil {
			stop(err)
		}
	}()
	err = serve(ctx, s, demoCfg, log)
	stop(nil)
	<-relayDone
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

// serve mounts the demo on s and serves until ctx ends.
func serve(ctx context.Context, s *edge.Server, demoCfg demo.Config, log *slog.Logger) error {
	defer s.Close()
	d, err := demo.New(ctx, demoCfg, log)
	if err != nil {
		return err
	}
	defer d.Close()
	s.Mount(d.Routes)
	return s.Run(ctx)
}
