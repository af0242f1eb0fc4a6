package testenv_test

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"

	"github.com/rowcast/rowcast/internal/testenv"
)

// TestServers starts both servers on one network and goes through the
// faults the package offers: Stop/Start keeps the URL, Pause/Unpause freezes.
func TestServers(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	nw, err := testenv.NewNetwork(ctx, t)
	if err != nil {
		t.Fatal(err)
	}
	pg, err := testenv.StartPostgres(ctx, t, testenv.WithNetwork(nw, "pg"))
	if err != nil {
		t.Fatal(err)
	}
	rd, err := testenv.StartRedis(ctx, t, testenv.WithNetwork(nw, "cache"))
	if err != nil {
		t.Fatal(err)
	}

	pgURL, err := pg.URL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rdURL, err := rd.URL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{pgURL, rdURL} {
		if !strings.Contains(u, "@127.0.0.1:") && !strings.HasPrefix(u, "redis://127.0.0.1:") {
			t.Errorf("URL %q does not use 127.0.0.1", u)
		}
	}
	if want := "postgres://rowcast:rowcast@127.0.0.1:"; !strings.HasPrefix(pgURL, want) || !strings.HasSuffix(pgURL, "/rowcast?sslmode=disable") {
		t.Errorf("postgres URL = %q, want %s<port>/rowcast?sslmode=disable", pgURL, want)
	}
	t.Logf("postgres %s, redis %s", pgURL, rdURL)

	rdb := newRedis(t, rdURL)

	t.Run("connect", func(t *testing.T) {
		pgSelect1(ctx, t, pgURL)
		if err := rdb.Ping(ctx).Err(); err != nil {
			t.Fatalf("redis PING: %v", err)
		}
	})

	t.Run("network aliases", func(t *testing.T) {
		for _, c := range []struct {
			ctr   testcontainers.Container
			alias string
		}{{pg.Container(), "pg"}, {rd.Container(), "cache"}} {
			aliases, err := c.ctr.NetworkAliases(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if alias := c.alias; !slices.Contains(aliases[nw.Name()], alias) {
				t.Errorf("aliases on %s = %v, want %q", nw.Name(), aliases[nw.Name()], alias)
			}
		}
		// The redis container reaches postgres by its alias.
		code, out, err := rd.Container().Exec(ctx, []string{"bash", "-c", "exec 3<>/dev/tcp/pg/5432 && echo connected"})
		if err != nil {
			t.Fatalf("exec in redis container: %v", err)
		}
		if code != 0 {
			msg, _ := io.ReadAll(out)
			t.Fatalf("connect from redis container to pg:5432: exit %d: %s", code, msg)
		}
	})

	t.Run("postgres stop start keeps URL and data", func(t *testing.T) {
		conn := pgConnect(ctx, t, pgURL)
		if _, err := conn.Exec(ctx, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)"); err != nil {
			t.Fatal(err)
		}
		_ = conn.Close(ctx)

		start := time.Now()
		if err := pg.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("postgres stopped in %v", time.Since(start).Round(time.Millisecond))
		if c, err := pgx.Connect(ctx, pgURL+"&connect_timeout=2"); err == nil {
			_ = c.Close(ctx)
			t.Fatal("connected to a stopped postgres")
		}

		start = time.Now()
		if err := pg.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("postgres started again in %v", time.Since(start).Round(time.Millisecond))
		after, err := pg.URL(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if after != pgURL {
			t.Fatalf("URL changed across restart: %q then %q", pgURL, after)
		}
		conn = pgConnect(ctx, t, pgURL) // the old URL
		defer conn.Close(ctx)
		var v int
		if err := conn.QueryRow(ctx, "SELECT v FROM kept").Scan(&v); err != nil || v != 42 {
			t.Fatalf("row written before restart: v=%d err=%v", v, err)
		}
	})

	t.Run("redis stop start keeps URL", func(t *testing.T) {
		if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if err := rd.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
		err := rdb.Ping(short).Err()
		cancelShort()
		if err == nil {
			t.Fatal("PING answered by a stopped redis")
		}
		if err := rd.Start(ctx); err != nil {
			t.Fatal(err)
		}
		after, err := rd.URL(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if after != rdURL {
			t.Fatalf("URL changed across restart: %q then %q", rdURL, after)
		}
		// The client made before the restart, with the old URL, reconnects.
		if err := rdb.Ping(ctx).Err(); err != nil {
			t.Fatalf("PING after restart: %v", err)
		}
		// Persistence is off: the restart lost the key.
		if err := rdb.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
			t.Fatalf("GET k after restart: err=%v, want redis.Nil", err)
		}
	})

	t.Run("postgres pause unpause", func(t *testing.T) {
		conn := pgConnect(ctx, t, pgURL)
		defer conn.Close(context.Background())
		if err := pg.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		short, cancelShort := context.WithTimeout(ctx, time.Second)
		_, err := conn.Exec(short, "SELECT 1")
		cancelShort()
		if err == nil {
			_ = pg.Unpause(ctx)
			t.Fatal("SELECT 1 answered by a paused postgres")
		}
		if err := pg.Unpause(ctx); err != nil {
			t.Fatal(err)
		}
		// The connection above was cancelled; a new one works at once.
		pgSelect1(ctx, t, pgURL)
	})

	t.Run("redis pause unpause", func(t *testing.T) {
		if err := rd.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		short, cancelShort := context.WithTimeout(ctx, time.Second)
		err := rdb.Ping(short).Err()
		cancelShort()
		if err == nil {
			_ = rd.Unpause(ctx)
			t.Fatal("PING answered by a paused redis")
		}
		if err := rd.Unpause(ctx); err != nil {
			t.Fatal(err)
		}
		if err := rdb.Ping(ctx).Err(); err != nil {
			t.Fatalf("PING after unpause: %v", err)
		}
	})

	t.Run("container left paused is removed quickly", func(t *testing.T) {
		var ctr testcontainers.Container
		begin := time.Now()
		t.Run("leave paused", func(t *testing.T) {
			r, err := testenv.StartRedis(ctx, t)
			if err != nil {
				t.Fatal(err)
			}
			ctr = r.Container()
			if err := r.Pause(ctx); err != nil {
				t.Fatal(err)
			}
		})
		if ctr == nil {
			t.FailNow()
		}
		if _, err := ctr.State(ctx); err == nil {
			t.Error("container still exists after its test ended")
		}
		if d := time.Since(begin); d > 8*time.Second {
			t.Errorf("start, pause and cleanup took %v", d)
		}
	})
}

// TestNoDocker checks the error when DOCKER_HOST points at nothing.
func TestNoDocker(t *testing.T) {
	t.Setenv("DOCKER_HOST", "unix:///nonexistent/rowcast-testenv/docker.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	_, err := testenv.StartPostgres(ctx, t)
	if err == nil {
		t.Fatal("StartPostgres succeeded without a Docker engine")
	}
	if !errors.Is(err, testenv.ErrNoDocker) {
		t.Errorf("error %q does not match ErrNoDocker", err)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || !strings.Contains(msg, "no Docker engine reachable") ||
		!strings.HasSuffix(msg, "start Docker or set DOCKER_HOST") {
		t.Errorf("error is not one sentence naming the problem: %q", msg)
	}
	t.Log(msg)
}

// TestMissingImage checks that an image that cannot be found points at the
// build script.
func TestMissingImage(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	_, err := testenv.StartRedis(ctx, t, testenv.WithImage("rowcast/testenv-missing-image:0"))
	if err == nil {
		t.Fatal("StartRedis succeeded with a missing image")
	}
	if !strings.Contains(err.Error(), "scripts/build-images.sh") {
		t.Errorf("error does not mention scripts/build-images.sh: %v", err)
	}
	t.Log(err)
}

func pgConnect(ctx context.Context, t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect to postgres: %v", err)
	}
	return conn
}

func pgSelect1(ctx context.Context, t *testing.T, url string) {
	t.Helper()
	conn := pgConnect(ctx, t, url)
	defer conn.Close(ctx)
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1: got %d, %v", one, err)
	}
}

func newRedis(t *testing.T, url string) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opt.ContextTimeoutEnabled = true // honour the short deadlines of the fault checks
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}
