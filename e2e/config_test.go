package e2e

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Bad configuration and unreachable services give one clear error naming
// the problem: never a panic, never a silent hang.
func TestBadConfiguration(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	closed := "127.0.0.1:" + strings.Split(freeAddr(t), ":")[1] // nothing listens there
	cases := []struct {
		name string
		bin  string
		env  []string
		args []string
		want []string // all must appear in the output
	}{
		{"app without REDIS_URL or DATABASE_URL", bins.app, []string{"REDIS_URL=", "DATABASE_URL="}, nil, []string{"REDIS_URL is not set", "DATABASE_URL: required"}},
		{"app without REDIS_URL, Postgres unreachable", bins.app, []string{"REDIS_URL=", "DATABASE_URL=postgres://u:p@" + closed + "/db"}, nil, []string{"DATABASE_URL"}},
		{"app with a non-redis URL", bins.app, []string{"REDIS_URL=http://x"}, nil, []string{"REDIS_URL", "scheme", "want one of [redis rediss]"}},
		{"app with a bad listen address", bins.app, []string{"REDIS_URL=redis://" + closed, "LISTEN_ADDR=nonsense"}, nil, []string{"LISTEN_ADDR", "nonsense"}},
		{"app with bad numbers", bins.app, []string{"REDIS_URL=redis://" + closed, "ROWCAST_MAX_ROOMS=0", "ROWCAST_HEARTBEAT=soon"}, nil,
			[]string{"ROWCAST_MAX_ROOMS", "ROWCAST_HEARTBEAT"}},
		{"app demo without a database", bins.app, []string{"REDIS_URL=redis://" + closed, "ROWCAST_DEMO=true", "DATABASE_URL="}, nil, []string{"DATABASE_URL: required"}},
		{"app with a short auth secret", bins.app, []string{"REDIS_URL=redis://" + closed, "ROWCAST_AUTH_SECRET=abc"}, nil, []string{"ROWCAST_AUTH_SECRET", "too short"}},
		{"listener without DATABASE_URL", bins.listener, []string{"DATABASE_URL=", "REDIS_URL=redis://" + closed}, nil, []string{"DATABASE_URL: required"}},
		{"listener with an unparsable DATABASE_URL", bins.listener, []string{"DATABASE_URL=postgres://%zz", "REDIS_URL=redis://" + closed}, nil, []string{"DATABASE_URL"}},
		{"listener with Postgres unreachable", bins.listener, []string{"DATABASE_URL=postgres://u:p@" + closed + "/db", "REDIS_URL=redis://" + closed}, nil,
			[]string{"DATABASE_URL", "connect"}},
		{"migrate with Postgres unreachable (and no REDIS_URL: migrations need none)", bins.listener, []string{"DATABASE_URL=postgres://u:p@" + closed + "/db", "REDIS_URL="}, []string{"migrate"},
			[]string{"migrate", "DATABASE_URL"}},
		{"listener with an unknown command", bins.listener, []string{"DATABASE_URL=postgres://u:p@" + closed + "/db", "REDIS_URL=redis://" + closed}, []string{"dance"},
			[]string{"unknown command", "dance"}},
	}
	for _, c := range cases {
		out, err := runOnce(ctx, c.bin, append(c.env, "HEALTH_ADDR=127.0.0.1:0"), c.args...)
		if err == nil {
			t.Errorf("%s: exited 0\n%s", c.name, out)
			continue
		}
		if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
			t.Errorf("%s: panicked\n%s", c.name, out)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", c.name, w, out)
			}
		}
		if strings.Contains(out, ":p@") {
			t.Errorf("%s: password in the output:\n%s", c.name, out)
		}
	}

	// With real services: a database without the migrations is refused,
	// and an app whose Redis is unreachable runs but reports not ready.
	s := startStack(ctx, t)
	fresh := strings.Replace(s.pgURL, "/rowcast?", "/postgres?", 1) // the server's default database, never migrated
	if out, err := runOnce(ctx, bins.listener, []string{"DATABASE_URL=" + s.pgURL, "REDIS_URL="}, "migrate"); err != nil ||
		!strings.Contains(out, "migrations applied") {
		t.Errorf("migrate without REDIS_URL: %v\n%s", err, out)
	}
	out, err := runOnce(ctx, bins.listener, []string{"DATABASE_URL=" + fresh, "REDIS_URL=" + s.redisURL, "HEALTH_ADDR=127.0.0.1:0"})
	if err == nil || !strings.Contains(out, "run `listener migrate` first") {
		t.Errorf("unmigrated database: %v\n%s", err, out)
	}
	addr := freeAddr(t)
	app := startProc(t, "app without redis", bins.app, []string{"REDIS_URL=redis://" + closed, "LISTEN_ADDR=" + addr})
	if _, err := app.WaitLog(ctx, "redis subscription failed"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "redis") {
		t.Errorf("readyz without redis: %d %q", resp.StatusCode, body)
	}
	if resp, err := http.Get("http://" + addr + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Errorf("healthz without redis: %v", err)
	}
}
