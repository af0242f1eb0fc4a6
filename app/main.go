// Command app is rowcast's edge server: browsers connect over WebSocket or
// Server-Sent Events and receive the row changes of the rooms they join.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/rowcast/rowcast/app/demo"
	"github.com/rowcast/rowcast/app/edge"
	"github.com/rowcast/rowcast/internal/logging"
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
	s, err := edge.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer s.Close()
	d, err := demo.New(ctx, demoCfg, log)
	if err != nil {
		return err
	}
	defer d.Close()
	s.Mount(d.Routes)
	return s.Run(ctx)
}
