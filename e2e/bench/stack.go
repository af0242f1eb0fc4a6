package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	process "github.com/rowcast/rowcast/e2e/proc"
	"github.com/rowcast/rowcast/internal/testenv"
)

// stackConfig says where the system under test comes from.
type stackConfig struct {
	src        string // module directory the binaries are built from ("" = the current one)
	appURL     string // an app already running (not started by the bench)
	appPID     int    // its PID, for CPU and memory figures (0 = unknown)
	noListener bool   // a listener already runs: do not start one
	// memoryBus starts the app without REDIS_URL: it relays in-process on
	// its memory bus (no listener; Redis, if started, stays idle), and the
	// app's CPU includes the relay's.
	memoryBus bool
	listenPID int  // its PID (0 = unknown)
	native    bool // run Postgres and Redis as processes of this machine, not containers
	dbConns   int  // connections the inserter holds (the pool allows a few more)
	// statStatements loads pg_stat_statements into the native Postgres
	// (soak reads the listener's outbox query from it).
	statStatements bool
	// walSettle is how long the bench waits, after a WAL-mode listener
	// took the lead and switched writers, before it measures: the
	// listener's first read of the slot after a start collects a whole
	// batch (ROWCAST_BATCH_SIZE messages) unless the stream pauses for
	// 100 ms, so under steady load the first rows wait batch size / rate
	// (2.5 s at 200 rows/s). An idle poll interval (2 s) ends that read.
	walSettle time.Duration
	verbose   bool
}

// stack is Postgres, Redis and the binaries: containers started through
// internal/testenv or native processes (both stopped by tb's cleanup), or
// the servers named by DATABASE_URL and REDIS_URL.
type stack struct {
	cfg      stackConfig
	tb       testing.TB
	pgURL    string
	redisURL string
	// pgCPU and redisCPU read the servers' CPU time (nil when they are not
	// the bench's): the containers' cgroups, or the native processes.
	pgCPU, redisCPU func() (time.Duration, bool)
	bins            struct{ dir, app, listener string }
	db              *pgxpool.Pool            // the server's synchronous_commit
	pools           map[string]*pgxpool.Pool // inserting pools by synchronous_commit (see insertPool)
	serverSync      string                   // the server's synchronous_commit
	pgss            *bool                    // pg_stat_statements can be read (nil: not checked yet)
}

func startStack(ctx context.Context, tb testing.TB, cfg stackConfig) (*stack, error) {
	s := &stack{cfg: cfg, tb: tb, pools: map[string]*pgxpool.Pool{}}
	if err := s.build(ctx); err != nil {
		return nil, err
	}
	s.pgURL, s.redisURL = os.Getenv("DATABASE_URL"), os.Getenv("REDIS_URL")
	switch {
	case cfg.native && (s.pgURL != "" || s.redisURL != ""):
		return nil, errors.New("-native starts its own Postgres and Redis: unset DATABASE_URL and REDIS_URL")
	case cfg.native:
		if err := s.startNative(ctx); err != nil {
			return nil, err
		}
	case s.pgURL != "" && s.redisURL != "":
		progress("using DATABASE_URL and REDIS_URL")
	case s.pgURL != "" || s.redisURL != "":
		return nil, errors.New("set both DATABASE_URL and REDIS_URL, or neither (containers are started)")
	default:
		if err := s.startContainers(ctx); err != nil {
			return nil, err
		}
	}
	out, err := process.RunOnce(ctx, s.bins.listener, s.env(), "migrate")
	if err != nil {
		return nil, fmt.Errorf("listener migrate: %w\n%s", err, out)
	}
	pcfg, err := pgxpool.ParseConfig(s.pgURL)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	pcfg.MaxConns = int32(max(16, cfg.dbConns+4))
	if s.db, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
		return nil, fmt.Errorf("connect postgres: %w", err)
	}
	tb.Cleanup(s.db.Close)
	var level string
	if err := s.db.QueryRow(ctx, `SELECT current_setting('synchronous_commit'), current_setting('wal_level')`).Scan(&s.serverSync, &level); err != nil {
		return nil, fmt.Errorf("read server settings: %w", err)
	}
	progress("Postgres: synchronous_commit=%s, wal_level=%s", s.serverSync, level)
	return s, nil
}

func (s *stack) startContainers(ctx context.Context) error {
	progress("starting Postgres and Redis containers")
	ts, err := testenv.StartStack(ctx, s.tb)
	if err != nil {
		return err
	}
	s.pgURL, s.redisURL = ts.PostgresURL, ts.RedisURL
	pgCtr, redisCtr := ts.Postgres.Container().GetContainerID(), ts.Redis.Container().GetContainerID()
	s.pgCPU = func() (time.Duration, bool) { return containerCPU(pgCtr) }
	s.redisCPU = func() (time.Duration, bool) { return containerCPU(redisCtr) }
	return nil
}

func (s *stack) env(extra ...string) []string {
	return append([]string{"DATABASE_URL=" + s.pgURL, "REDIS_URL=" + s.redisURL}, extra...)
}

// debugHook is compiled into the benchmark's copies of the binaries through
// go build -overlay (the source tree is not touched): with
// ROWCAST_BENCH_DEBUG_ADDR set, the process serves pprof and its Go memory
// figures on that address. Without it, nothing changes.
const debugHook = `package main

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
)

func init() {
	addr := os.Getenv("ROWCAST_BENCH_DEBUG_ADDR")
	if addr == "" {
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/memstats", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("gc") {
			runtime.GC()
		}
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		_ = json.NewEncoder(w).Encode(map[string]uint64{
			"heap_alloc": m.HeapAlloc, "heap_inuse": m.HeapInuse, "stack_inuse": m.StackInuse,
			"sys": m.Sys, "goroutines": uint64(runtime.NumGoroutine()),
		})
	})
	go func() { _ = http.ListenAndServe(addr, mux) }()
}
`

// build compiles the app and the listener (plus debugHook) into a temporary
// directory.
func (s *stack) build(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "rowcast-bench-bin")
	if err != nil {
		return err
	}
	s.tb.Cleanup(func() { os.RemoveAll(dir) })
	s.bins.dir = dir
	s.bins.app = filepath.Join(dir, "app")
	s.bins.listener = filepath.Join(dir, "listener")
	hook := filepath.Join(dir, "bench_debug_hook.go")
	if err := os.WriteFile(hook, []byte(debugHook), 0o644); err != nil {
		return err
	}
	progress("building app and listener from %s", orDot(s.cfg.src))
	for out, pkg := range map[string]string{s.bins.app: "github.com/rowcast/rowcast/app", s.bins.listener: "github.com/rowcast/rowcast/listener"} {
		if out == s.bins.app && s.cfg.appURL != "" {
			continue
		}
		list := exec.CommandContext(ctx, "go", "list", "-f", "{{.Dir}}", pkg)
		list.Dir = s.cfg.src
		pkgDir, err := list.Output()
		if err != nil {
			return fmt.Errorf("go list %s: %w", pkg, err)
		}
		overlay, _ := json.Marshal(map[string]map[string]string{"Replace": {
			filepath.Join(strings.TrimSpace(string(pkgDir)), "zz_bench_debug_hook.go"): hook,
		}})
		ovFile := out + ".overlay.json"
		if err := os.WriteFile(ovFile, overlay, 0o644); err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, "go", "build", "-overlay", ovFile, "-o", out, pkg)
		cmd.Dir = s.cfg.src
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
		}
	}
	return nil
}

func orDot(s string) string {
	if s == "" {
		return "."
	}
	return s
}

// proc is a child process of the bench, with the address of its debug hook
// (pprof and Go memory figures, served by the build overlay).
type proc struct {
	*process.Process
	debug   string
	metrics string // base URL serving /metrics, when known
}

func (s *stack) startProc(name, bin string, env []string, args ...string) (*proc, error) {
	debug, err := process.FreeAddr()
	if err != nil {
		return nil, err
	}
	p, err := process.Start(name, bin, append(env, "ROWCAST_BENCH_DEBUG_ADDR="+debug), args...)
	if err != nil {
		return nil, err
	}
	s.tb.Cleanup(func() { _ = p.Stop(syscall.SIGTERM) })
	return &proc{Process: p, debug: debug}, nil
}

func (p *proc) pid() int { return p.PID() }

// metricsURL is the base URL of p's /metrics, or "" (also for a nil p: a
// listener the bench did not start).
func (p *proc) metricsURL() string {
	if p == nil {
		return ""
	}
	return p.metrics
}

// stop sends SIGTERM and waits (SIGKILL after 15 s).
func (p *proc) stop() { _ = p.Stop(syscall.SIGTERM) }

// waitLog waits until the process output contains s.
func (p *proc) waitLog(ctx context.Context, s string) error {
	_, err := p.WaitLog(ctx, s)
	return err
}

// app is the edge server under test: started by the bench, or given.
type app struct {
	base string
	pid  int
	proc *proc // nil when not ours
}

// startApp starts a fresh app (so its peak RSS is this run's) and waits for
// /readyz.
func (s *stack) startApp(ctx context.Context) (*app, error) {
	if s.cfg.appURL != "" {
		return &app{base: strings.TrimRight(s.cfg.appURL, "/"), pid: s.cfg.appPID}, nil
	}
	addr, err := process.FreeAddr()
	if err != nil {
		return nil, err
	}
	env := s.env(
		"LISTEN_ADDR="+addr,
		// Every benchmark client comes from a few loopback addresses.
		"ROWCAST_MAX_CONNS_PER_IP=1000000",
	)
	if s.cfg.memoryBus {
		env = append(env, "REDIS_URL=") // the last value of a key wins
	}
	p, err := s.startProc("app", s.bins.app, env)
	if err != nil {
		return nil, err
	}
	a := &app{base: "http://" + addr, pid: p.pid(), proc: p}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := p.WaitHTTP(ctx, a.base+"/readyz"); err != nil {
		p.stop()
		return nil, fmt.Errorf("app not ready: %w", err)
	}
	return a, nil
}

func (a *app) stop() {
	if a.proc != nil {
		a.proc.stop()
	}
}

// memStats reads the Go memory figures of a process started by the bench
// (after a GC when gc is set); ok is false when they are not available.
func memStats(p *proc, gc bool) (m map[string]uint64, ok bool) {
	if p == nil {
		return nil, false
	}
	u := "http://" + p.debug + "/debug/memstats"
	if gc {
		u += "?gc=1"
	}
	c := http.Client{Timeout: 30 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		return nil, false
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		return nil, false
	}
	return m, true
}

// saveProfile fetches a pprof profile from a process started by the bench.
func saveProfile(ctx context.Context, p *proc, path, file string) error {
	if p == nil {
		return errors.New("not started by the bench: no profile")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.debug+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("profile %s: %s: %s", path, resp.Status, b)
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, resp.Body); err != nil {
		return err
	}
	return os.WriteFile(file, buf.Bytes(), 0o644)
}

// startListener starts a listener in capture mode (notify or wal) and
// waits until it leads and writers capture that way; in WAL mode also for
// walSettle (see stackConfig).
func (s *stack) startListener(ctx context.Context, mode string) (*proc, error) {
	p, err := s.startListenerNow(ctx, mode)
	if err == nil && mode == modeWAL && s.cfg.walSettle > 0 {
		progress("WAL mode: waiting %s for the listener's first read of the slot to end", s.cfg.walSettle)
		select {
		case <-time.After(s.cfg.walSettle):
		case <-ctx.Done():
		}
	}
	return p, err
}

// startListenerNow is startListener without the WAL-mode settling.
func (s *stack) startListenerNow(ctx context.Context, mode string) (*proc, error) {
	if mode == "" {
		mode = modeNotify
	}
	if err := s.prepareMode(ctx, mode); err != nil {
		return nil, err
	}
	health, err := process.FreeAddr()
	if err != nil {
		return nil, err
	}
	p, err := s.startProc("listener", s.bins.listener, s.env("HEALTH_ADDR="+health, "ROWCAST_CAPTURE="+mode))
	if err != nil {
		return nil, err
	}
	p.metrics = "http://" + health
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := p.waitLog(ctx, "leading"); err != nil {
		p.stop()
		return nil, err
	}
	if err := s.waitMode(ctx, mode); err != nil {
		p.stop()
		return nil, fmt.Errorf("%w\n%s", err, p.Output())
	}
	return p, nil
}

// usage is what a process or container used: CPU time, and memory for a
// process.
type usage struct {
	cpu      time.Duration
	rss, hwm int64 // bytes
	ok       bool
}

// procStat returns the fields of /proc/PID/stat after the command name
// (which is in parentheses and may hold spaces): f[0] is the state (field
// 3), f[1] the parent's PID, f[11] utime, f[12] stime, f[13] cutime and
// f[14] cstime (the CPU of waited-for children).
func procStat(pid int) ([]string, bool) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, false
	}
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return nil, false
	}
	f := strings.Fields(string(stat[i+1:]))
	return f, len(f) >= 15
}

func ticks(f []string, idx ...int) time.Duration {
	var n int64
	for _, i := range idx {
		v, _ := strconv.ParseInt(f[i], 10, 64)
		n += v
	}
	return time.Duration(n) * time.Second / clockTicks
}

// procUsage reads /proc/PID/stat (utime+stime) and /proc/PID/status (VmRSS,
// VmHWM: resident now and at its peak).
func procUsage(pid int) usage {
	if pid <= 0 {
		return usage{}
	}
	f, ok := procStat(pid)
	if !ok {
		return usage{}
	}
	u := usage{cpu: ticks(f, 11, 12), ok: true}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			u.rss = kb << 10
		case "VmHWM":
			u.hwm = kb << 10
		}
	}
	return u
}

// treeCPU is the CPU time of process root and all its descendants: each
// one's utime+stime plus cutime+cstime, which hold the children it has
// already waited for. For a Postgres postmaster that is every backend,
// those still running and those that have ended. ok is false when root is
// gone.
func treeCPU(root int) (time.Duration, bool) {
	rf, ok := procStat(root)
	if !ok {
		return 0, false
	}
	total := ticks(rf, 11, 12, 13, 14)
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return total, true
	}
	children := map[int][]int{}
	cpu := map[int]time.Duration{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == root {
			continue
		}
		f, ok := procStat(pid)
		if !ok {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], pid)
		cpu[pid] = ticks(f, 11, 12, 13, 14)
	}
	queue := slices.Clone(children[root])
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		total += cpu[pid]
		queue = append(queue, children[pid]...)
	}
	return total, true
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// containerCPU reads a container's CPU time from its cgroup (v1 cpuacct or
// v2 cpu.stat); ok is false when neither is readable.
func containerCPU(id string) (time.Duration, bool) {
	if id == "" {
		return 0, false
	}
	for _, f := range []string{
		"/sys/fs/cgroup/cpuacct/docker/" + id + "/cpuacct.usage",
		"/sys/fs/cgroup/cpu,cpuacct/docker/" + id + "/cpuacct.usage",
	} {
		if b, err := os.ReadFile(f); err == nil {
			ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			return time.Duration(ns), err == nil
		}
	}
	for _, f := range []string{
		"/sys/fs/cgroup/system.slice/docker-" + id + ".scope/cpu.stat",
		"/sys/fs/cgroup/docker/" + id + "/cpu.stat",
	} {
		if b, err := os.ReadFile(f); err == nil {
			for line := range strings.SplitSeq(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
					us, err := strconv.ParseInt(v, 10, 64)
					return time.Duration(us) * time.Microsecond, err == nil
				}
			}
		}
	}
	return 0, false
}

// loadavg is the 1-minute load average.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// raiseFileLimit lifts RLIMIT_NOFILE to its hard limit, higher when
// allowed. Children inherit it (Go restores the original limit in children
// only when the process never sets it itself).
func raiseFileLimit(want uint64) uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	if lim.Max < want {
		up := syscall.Rlimit{Cur: want, Max: want}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &up) == nil {
			return want
		}
	}
	lim.Cur = lim.Max
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	return lim.Cur
}

// Latency histograms the bench reads: the app's capture → hand-off to local
// client sockets, and the listener's capture → Redis accepted.
const (
	handoffMetric = "rowcast_event_latency_seconds"
	publishMetric = "rowcast_listener_publish_latency_seconds"
)

// latencyHist is a latency histogram scraped from /metrics: cumulative
// counts by upper bound.
type latencyHist struct {
	bounds []float64
	counts []float64
}

// scrapeHist reads histogram name from base's /metrics; ok is false when
// the process does not expose it.
func scrapeHist(base, name string) (h latencyHist, ok bool) {
	if base == "" {
		return h, false
	}
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(base + "/metrics")
	if err != nil {
		return h, false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return h, false
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return h, false
	}
	prefix := name + `_bucket{le="`
	for line := range strings.SplitSeq(string(b), "\n") {
		rest, found := strings.CutPrefix(line, prefix)
		if !found {
			continue
		}
		le, val, found := strings.Cut(rest, `"} `)
		if !found {
			continue
		}
		bound, err1 := strconv.ParseFloat(le, 64)
		if le == "+Inf" {
			bound, err1 = 1e9, nil
		}
		n, err2 := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err1 != nil || err2 != nil {
			continue
		}
		h.bounds = append(h.bounds, bound)
		h.counts = append(h.counts, n)
	}
	return h, len(h.bounds) > 0
}

// bucketQuantile is a quantile of a latency histogram, interpolated
// linearly within the bucket that holds it (as Prometheus's
// histogram_quantile does): the histogram does not know where in the
// bucket the events fell, so the figure is an estimate within the bucket's
// bounds.
type bucketQuantile struct {
	d    time.Duration
	ok   bool // events were counted
	over bool // the quantile is in the +Inf bucket: d is the last finite bound
}

// quantile returns the q-quantile of the events counted between h0 and h.
// The first bucket's lower bound is 0.
func (h latencyHist) quantile(h0 latencyHist, q float64) bucketQuantile {
	if len(h.counts) == 0 || len(h0.counts) != len(h.counts) {
		return bucketQuantile{}
	}
	n := len(h.counts)
	total := h.counts[n-1] - h0.counts[n-1]
	if total <= 0 {
		return bucketQuantile{}
	}
	rank := q * total
	var below float64 // events in the buckets under j
	for j := range h.counts {
		cum := h.counts[j] - h0.counts[j]
		if cum < rank {
			below = cum
			continue
		}
		lower := 0.0
		if j > 0 {
			lower = h.bounds[j-1]
		}
		if h.bounds[j] >= 1e9 { // +Inf
			return bucketQuantile{d: seconds(lower), ok: true, over: true}
		}
		v := h.bounds[j]
		if in := cum - below; in > 0 {
			v = lower + (h.bounds[j]-lower)*(rank-below)/in
		}
		return bucketQuantile{d: seconds(v), ok: true}
	}
	return bucketQuantile{}
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// hostBusy is the CPU time all CPUs of the machine spent not idle, from
// /proc/stat (user, nice, system, irq, softirq, steal).
func hostBusy() (time.Duration, bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, false
	}
	var busy int64
	for i, v := range f[1:9] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, false
		}
		busy += n
	}
	return time.Duration(busy) * time.Second / clockTicks, true
}
