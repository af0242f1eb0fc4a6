package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rowcast/rowcast/e2e/proc"
	"github.com/rowcast/rowcast/internal/testenv"
)

// bins holds the listener and app binaries, built once for the package.
var bins struct {
	dir      string
	app      string
	listener string
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "rowcast-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	bins.dir = dir
	bins.app = filepath.Join(dir, "app")
	bins.listener = filepath.Join(dir, "listener")
	for out, pkg := range map[string]string{bins.app: "../app", bins.listener: "../listener"} {
		args := []string{"build", "-o", out, pkg}
		if os.Getenv("ROWCAST_E2E_RACE") == "1" {
			args = []string{"build", "-race", "-o", out, pkg}
		}
		cmd := exec.Command("go", args...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: build %s: %v\n", pkg, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// stack is Postgres and Redis in containers (see testenv.StartStack),
// migrated by the listener binary.
type stack struct {
	*testenv.Stack
	pgURL    string // Stack.PostgresURL
	redisURL string // Stack.RedisURL
}

func startStack(ctx context.Context, t *testing.T, opts ...testenv.StackOption) *stack {
	t.Helper()
	ts, err := testenv.StartStack(ctx, t, opts...)
	if err != nil {
		t.Fatal(err)
	}
	s := &stack{Stack: ts, pgURL: ts.PostgresURL, redisURL: ts.RedisURL}
	out, err := runOnce(ctx, bins.listener, s.env(), "migrate")
	if err != nil {
		t.Fatalf("listener migrate: %v\n%s", err, out)
	}
	return s
}

func (s *stack) env(extra ...string) []string {
	return append([]string{"DATABASE_URL=" + s.pgURL, "REDIS_URL=" + s.redisURL}, extra...)
}

// startProc starts a binary that the test stops at its end; its output is
// shown when the test fails.
func startProc(t *testing.T, name, bin string, env []string, args ...string) *proc.Process {
	t.Helper()
	p, err := proc.Start(name, bin, env, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.Stop(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("--- %s output ---\n%s", name, p.Output())
		}
	})
	return p
}

func runOnce(ctx context.Context, bin string, env []string, args ...string) (string, error) {
	return proc.RunOnce(ctx, bin, env, args...)
}

// freeAddr returns a loopback address nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := proc.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// startApp starts an edge server and waits until /readyz answers 200.
func startApp(ctx context.Context, t *testing.T, s *stack, extra ...string) (*proc.Process, string) {
	t.Helper()
	return startAppAt(ctx, t, s, freeAddr(t), extra...)
}

// startAppAt is startApp on a given address (to restart an app in place).
func startAppAt(ctx context.Context, t *testing.T, s *stack, addr string, extra ...string) (*proc.Process, string) {
	t.Helper()
	p := startProc(t, "app "+addr, bins.app, s.env(append([]string{"LISTEN_ADDR=" + addr, "ROWCAST_DEMO=true"}, extra...)...))
	base := "http://" + addr
	if err := p.WaitHTTP(ctx, base+"/readyz"); err != nil {
		t.Fatal(err)
	}
	return p, base
}

// startSystem starts a stack, one listener and one app (with appEnv), and
// opens a database connection for the test's inserts.
func startSystem(ctx context.Context, t *testing.T, appEnv ...string) (*stack, string, *pgx.Conn) {
	t.Helper()
	s := startStack(ctx, t)
	startListener(ctx, t, s)
	_, base := startApp(ctx, t, s, appEnv...)
	db, err := pgx.Connect(ctx, s.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	return s, base, db
}

// startListener starts a listener and waits until it leads or stands by.
func startListener(ctx context.Context, t *testing.T, s *stack, extra ...string) *proc.Process {
	t.Helper()
	p := startProc(t, "listener", bins.listener, s.env(append([]string{"HEALTH_ADDR=127.0.0.1:0", "ROWCAST_POLL_INTERVAL=500ms"}, extra...)...))
	if _, err := p.WaitLog(ctx, "leading"); err != nil {
		t.Fatal(err)
	}
	return p
}

// report records a figure for the run's summary: it goes to the test log
// and, when ROWCAST_E2E_REPORT names a file, is appended to it (go test
// hides passing tests' output; `task test` prints that file at the end).
func report(t *testing.T, format string, args ...any) {
	t.Helper()
	line := fmt.Sprintf(format, args...)
	t.Log(line)
	path := os.Getenv("ROWCAST_E2E_REPORT")
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Errorf("report: %v", err)
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s: %s\n", t.Name(), strings.TrimRight(line, "\n"))
}

// percentiles formats p50/p99/max of ds.
func percentiles(ds []time.Duration) string {
	if len(ds) == 0 {
		return "no samples"
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	at := func(q float64) time.Duration { return s[min(len(s)-1, int(q*float64(len(s))))] }
	return fmt.Sprintf("n=%d p50=%s p99=%s max=%s", len(s),
		at(0.50).Round(10*time.Microsecond), at(0.99).Round(10*time.Microsecond), s[len(s)-1].Round(10*time.Microsecond))
}
