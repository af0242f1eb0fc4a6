package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

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

// stack is Postgres and Redis in containers, migrated.
type stack struct {
	pg       *testenv.Postgres
	redis    *testenv.Redis
	pgURL    string
	redisURL string
}

func startStack(ctx context.Context, t *testing.T) *stack {
	t.Helper()
	var (
		s      stack
		wg     sync.WaitGroup
		pgErr  error
		redErr error
	)
	wg.Add(2)
	go func() { defer wg.Done(); s.pg, pgErr = testenv.StartPostgres(ctx, t) }()
	go func() { defer wg.Done(); s.redis, redErr = testenv.StartRedis(ctx, t) }()
	wg.Wait()
	if pgErr != nil {
		t.Fatalf("start postgres: %v", pgErr)
	}
	if redErr != nil {
		t.Fatalf("start redis: %v", redErr)
	}
	var err error
	if s.pgURL, err = s.pg.URL(ctx); err != nil {
		t.Fatal(err)
	}
	if s.redisURL, err = s.redis.URL(ctx); err != nil {
		t.Fatal(err)
	}
	out, err := runOnce(ctx, bins.listener, s.env(), "migrate")
	if err != nil {
		t.Fatalf("listener migrate: %v\n%s", err, out)
	}
	return &s
}

func (s *stack) env(extra ...string) []string {
	return append([]string{"DATABASE_URL=" + s.pgURL, "REDIS_URL=" + s.redisURL}, extra...)
}

// runOnce runs a binary to completion and returns its combined output.
func runOnce(ctx context.Context, bin string, env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// proc is a running rowcast binary. Its output is kept and shown when the
// test fails.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func startProc(t *testing.T, name, bin string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("--- %s output ---\n%s", name, p.out.String())
		}
	})
	return p
}

// stop signals the process and waits for it to exit (SIGKILL after 15 s).
func (p *proc) stop(sig syscall.Signal) error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	return p.err
}

// waitLog waits until the process output contains s.
func (p *proc) waitLog(ctx context.Context, s string) (string, error) {
	for {
		out := p.out.String()
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, s) {
				return line, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%s never logged %q: %w\n%s", p.name, s, ctx.Err(), out)
		case <-p.done:
			return "", fmt.Errorf("%s exited (%v) before logging %q\n%s", p.name, p.err, s, p.out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// freeAddr returns a loopback address nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startApp starts an edge server and waits until /readyz answers 200.
func startApp(ctx context.Context, t *testing.T, s *stack, extra ...string) (*proc, string) {
	t.Helper()
	return startAppAt(ctx, t, s, freeAddr(t), extra...)
}

// startAppAt is startApp on a given address (to restart an app in place).
func startAppAt(ctx context.Context, t *testing.T, s *stack, addr string, extra ...string) (*proc, string) {
	t.Helper()
	p := startProc(t, "app "+addr, bins.app, s.env(append([]string{"LISTEN_ADDR=" + addr, "ROWCAST_DEMO=true"}, extra...)...))
	base := "http://" + addr
	if err := waitReady(ctx, base+"/readyz", p); err != nil {
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
func startListener(ctx context.Context, t *testing.T, s *stack, extra ...string) *proc {
	t.Helper()
	p := startProc(t, "listener", bins.listener, s.env(append([]string{"HEALTH_ADDR=127.0.0.1:0", "ROWCAST_POLL_INTERVAL=500ms"}, extra...)...))
	if _, err := p.waitLog(ctx, "leading"); err != nil {
		t.Fatal(err)
	}
	return p
}

// waitReady polls a readiness endpoint: the process exposes no other signal
// across a process boundary.
func waitReady(ctx context.Context, url string, p *proc) error {
	for {
		resp, err := http.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready at %s: %w\n%s", p.name, url, ctx.Err(), p.out.String())
		case <-p.done:
			return fmt.Errorf("%s exited (%v)\n%s", p.name, p.err, p.out.String())
		case <-time.After(25 * time.Millisecond):
		}
	}
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
