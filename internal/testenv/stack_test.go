package testenv_test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/rowcast/rowcast/internal/testenv"
)

// TestStartStack starts both servers on a network with Redis persistence
// switched on: the URLs work from the host and from the network, the extra
// arguments reach redis-server, and its data survives Stop/Start.
func TestStartStack(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	nw, err := testenv.NewNetwork(ctx, t)
	if err != nil {
		t.Fatal(err)
	}
	s, err := testenv.StartStack(ctx, t,
		testenv.OnNetwork(nw),
		testenv.RedisOptions(testenv.WithArgs("--appendonly", "yes", "--appendfsync", "always")))
	if err != nil {
		t.Fatal(err)
	}
	if s.Topology != testenv.Single || s.Redis == nil || s.Network != nw {
		t.Fatalf("stack = %+v", s)
	}
	if u, err := s.Redis.URL(ctx); err != nil || u != s.RedisURL {
		t.Errorf("RedisURL %q, Redis.URL() %q, %v", s.RedisURL, u, err)
	}
	if u, err := s.Postgres.URL(ctx); err != nil || u != s.PostgresURL {
		t.Errorf("PostgresURL %q, Postgres.URL() %q, %v", s.PostgresURL, u, err)
	}
	if want := "postgres://rowcast:rowcast@postgres:5432/rowcast?sslmode=disable"; s.NetworkPostgresURL != want {
		t.Errorf("NetworkPostgresURL = %q, want %q", s.NetworkPostgresURL, want)
	}
	if want := "redis://redis:6379/0"; s.NetworkRedisURL != want {
		t.Errorf("NetworkRedisURL = %q, want %q", s.NetworkRedisURL, want)
	}

	pgSelect1(ctx, t, s.PostgresURL)
	rdb := newRedis(t, s.RedisURL)
	if got, err := rdb.ConfigGet(ctx, "appendonly").Result(); err != nil || got["appendonly"] != "yes" {
		t.Fatalf("CONFIG GET appendonly = %v, %v; want yes (WithArgs overrides the default)", got, err)
	}

	// The containers reach each other by alias.
	for _, hop := range []struct {
		from *testenv.Redis
		to   string
	}{{s.Redis, testenv.PostgresAlias + "/5432"}, {s.Redis, testenv.RedisAlias + "/6379"}} {
		code, out, err := hop.from.Container().Exec(ctx, []string{"bash", "-c", "exec 3<>/dev/tcp/" + hop.to + " && echo connected"})
		if err != nil {
			t.Fatal(err)
		}
		if msg, _ := io.ReadAll(out); code != 0 || !strings.Contains(string(msg), "connected") {
			t.Errorf("connect to %s from the network: exit %d: %s", hop.to, code, msg)
		}
	}

	// With persistence on, the data is kept in the container across a restart.
	if err := rdb.Set(ctx, "kept", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.Redis.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Redis.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := rdb.Get(ctx, "kept").Result(); err != nil || got != "v" {
		t.Fatalf("GET kept after restart = %q, %v; want v", got, err)
	}

	// SIGKILL: nothing is flushed, but appendfsync always wrote every
	// command before answering it.
	if err := rdb.Set(ctx, "kept", "after kill", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.Redis.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if state, err := s.Redis.Container().State(ctx); err != nil || state.Running {
		t.Fatalf("after Kill the container is running=%v (%v)", state != nil && state.Running, err)
	}
	if err := s.Redis.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := rdb.Get(ctx, "kept").Result(); err != nil || got != "after kill" {
		t.Fatalf("GET kept after kill and start = %q, %v; want %q", got, err, "after kill")
	}
}

// TestStartStackWithoutPostgres starts Redis alone.
func TestStartStackWithoutPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := testenv.StartStack(ctx, t, testenv.WithoutPostgres())
	if err != nil {
		t.Fatal(err)
	}
	if s.Postgres != nil || s.PostgresURL != "" || s.Redis == nil {
		t.Fatalf("stack = %+v", s)
	}
	if err := newRedis(t, s.RedisURL).Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
}

// TestStartStackUnknownTopology checks that a topology StartStack does not
// know is refused before any container starts.
func TestStartStackUnknownTopology(t *testing.T) {
	_, err := testenv.StartStack(context.Background(), t, testenv.WithTopology(testenv.Topology(99)))
	if err == nil || !strings.Contains(err.Error(), "Topology(99) is not supported") {
		t.Fatalf("StartStack with an unknown topology: %v", err)
	}
}
