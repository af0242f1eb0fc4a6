package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/rowcast/rowcast/e2e/wire"
	"github.com/rowcast/rowcast/internal/testenv"
)

// TestContainerRuntimeImage proves the production image as Fly.io runs it:
// the Dockerfile's final stage (static binaries in an empty image, non-root)
// runs `listener migrate` once, then the listener and the app as separate
// containers that reach Postgres and Redis by name. A row committed in
// Postgres reaches a WebSocket client of the app container, and SIGTERM (a
// deploy) drains the client with `reconnect` and close code 1012.
func TestContainerRuntimeImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds an image and runs containers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	n, err := testenv.NewNetwork(ctx, t) // also fails clearly without Docker
	if err != nil {
		t.Fatal(err)
	}
	provider, err := testcontainers.NewDockerProvider()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = provider.Close() })
	image := buildRuntimeImage(ctx, t, provider.Client())

	s, err := testenv.StartStack(ctx, t, testenv.OnNetwork(n))
	if err != nil {
		t.Fatal(err)
	}

	// What the Machines get from [env] and the secrets, with the services'
	// names on the Docker network.
	env := map[string]string{
		"DATABASE_URL":          s.NetworkPostgresURL,
		"REDIS_URL":             s.NetworkRedisURL,
		"LOG_FORMAT":            "json",
		"ROWCAST_DRAIN_TIMEOUT": "2s",
	}

	// The release command.
	migrate := startRuntime(ctx, t, runtimeSpec{
		name: "listener migrate", image: image, network: n, alias: "migrate", env: env,
		cmd:  []string{"/listener", "migrate"},
		wait: wait.ForExit().WithExitTimeout(time.Minute).WithPollInterval(100 * time.Millisecond),
	})
	if code, err := migrate.exitCode(ctx); err != nil || code != 0 {
		t.Fatalf("listener migrate: exit code %d, %v\n%s", code, err, migrate.logs())
	}

	listener := startRuntime(ctx, t, runtimeSpec{
		name: "listener", image: image, network: n, alias: "listener", env: env,
		cmd: []string{"/listener"},
	})
	if err := listener.waitLog(ctx, "leading"); err != nil {
		t.Fatal(err)
	}

	app := startRuntime(ctx, t, runtimeSpec{
		name: "app", image: image, network: n, alias: "app", env: env,
		cmd:     []string{"/app"},
		publish: "8080/tcp",
	})
	base, err := app.baseURL(ctx, "8080/tcp")
	if err != nil {
		t.Fatal(err)
	}
	if err := app.waitOK(ctx, base+"/readyz"); err != nil {
		t.Fatal(err)
	}

	conn, err := wire.Dial(ctx, base, wire.WebSocket, wire.Options{Rooms: []string{"lobby"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	if _, err := conn.WaitSubscribed(ctx, "lobby"); err != nil {
		t.Fatal(err)
	}

	body := fmt.Sprintf("from the runtime image %d", time.Now().UnixNano())
	db, err := pgx.Connect(ctx, s.PostgresURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	committed := time.Now()
	if _, err := db.Exec(ctx, "INSERT INTO chat_message (room, author, body) VALUES ($1, $2, $3)", "lobby", "e2e", body); err != nil {
		t.Fatal(err)
	}
	if err := waitChat(ctx, conn, body); err != nil {
		t.Fatal(err)
	}
	t.Logf("row committed → WebSocket client through the containers: %s", time.Since(committed).Round(time.Millisecond))

	// A deploy: the engine sends SIGTERM, as Fly does with kill_signal.
	stopTimeout := 30 * time.Second
	stopped := make(chan error, 1)
	stopAt := time.Now()
	go func() { stopped <- app.ctr.Stop(ctx, &stopTimeout) }()
	gotReconnect, err := waitDrained(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if !gotReconnect {
		t.Errorf("the client was closed without a reconnect control message first")
	}
	var ce *websocket.CloseError
	if !errors.As(conn.Err(), &ce) || ce.Code != websocket.CloseServiceRestart {
		t.Errorf("connection ended with %v, want close code %d (draining)", conn.Err(), websocket.CloseServiceRestart)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("stop app: %v", err)
	}
	took := time.Since(stopAt)
	code, err := app.exitCode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		t.Errorf("app exited with code %d after SIGTERM, want 0 (137 means it was killed after %s)", code, stopTimeout)
	}
	t.Logf("app drained and exited in %s", took.Round(time.Millisecond))
}

// waitChat reads frames until the chat_message event with body arrives.
func waitChat(ctx context.Context, conn *wire.Conn, body string) error {
	for {
		select {
		case f, ok := <-conn.C:
			if !ok {
				return fmt.Errorf("connection ended before the event arrived: %v", conn.Err())
			}
			if f.Event == nil {
				continue
			}
			var row struct {
				Body string `json:"body"`
			}
			if err := json.Unmarshal(f.Event.Data, &row); err != nil {
				return fmt.Errorf("event %s data: %w", f.Event.ID, err)
			}
			if f.Event.Room == "lobby" && f.Event.Table == "public.chat_message" && f.Event.Op == "INSERT" && row.Body == body {
				return nil
			}
		case <-ctx.Done():
			return fmt.Errorf("waiting for the chat_message event: %w", ctx.Err())
		}
	}
}

// waitDrained reads frames until the server ends the connection and reports
// whether a reconnect control message came first.
func waitDrained(ctx context.Context, conn *wire.Conn) (bool, error) {
	reconnect := false
	for {
		select {
		case f, ok := <-conn.C:
			if !ok {
				return reconnect, nil
			}
			if f.Control != nil && f.Control.Type == "reconnect" {
				reconnect = true
			}
		case <-ctx.Done():
			return reconnect, fmt.Errorf("waiting for the drain to end the connection: %w", ctx.Err())
		}
	}
}
