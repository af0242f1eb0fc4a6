// Command bench is rowcast's load benchmark. It runs the real system —
// Postgres, Redis, the listener and the app — and measures what a browser
// would see: insert-to-client latency, deliveries per second, lost and
// duplicated events, and the CPU and memory the app and listener use.
//
//	go run ./e2e/bench -scenario S1 -transport ws
//	go run ./e2e/bench -scenario all -transport both -runs 3
//	go run ./e2e/bench -native -scenario S1,S2,S4 -transport both -runs 3
//
// By default it starts Postgres and Redis containers (internal/testenv);
// with -native it runs Postgres 15 and Redis 7 from the Debian packages as
// processes on loopback instead (no docker-proxy hop), Postgres with
// synchronous_commit=off and wal_level=logical. It builds and runs the app and listener as child
// processes. With DATABASE_URL and REDIS_URL set it uses those servers
// instead; with -app it drives an app that is already running (and
// -no-listener when a listener runs too).
//
// Scenarios: S1 100 clients over 10 rooms, 200 rows/s of 1 KiB for 20 s;
// S2 1,000 clients, 500 rows/s; S3 10,000 idle connections (memory per
// connection); S4 1,000 clients while the rate steps up until the
// send→recv p99 reaches 50 ms or anything is lost; L the listener alone
// draining a backlog of 100,000 rows (outbox rows, or in WAL mode messages
// waiting in the slot); W the capture cost on the primary: pgbench's
// single-row INSERT throughput into a plain table and into a watched one in
// each capture mode, with a check that every row was published; WT the
// capture trigger alone (no trigger, the generic one, the one watch()
// writes) with the capture state held in WAL mode and in NOTIFY mode; soak 10
// minutes at 1,000 rows/s with per-minute latency, outbox dead tuples and
// the listener's outbox read time (not in all).
//
// -capture notify|wal|both runs the listener with that ROWCAST_CAPTURE;
// both runs every row in both modes, interleaved. WAL rows insert with
// synchronous_commit=on unless -synchronous-commit says otherwise: logical
// decoding streams only flushed WAL.
//
// The publisher is shaped like an application: -db-conns connections (4),
// each sending single-row INSERTs in autocommit, scheduled at the target
// rate and handed to whichever connection is free.
//
// The headline latency is send→recv: the receipt time minus the time read
// just before the INSERT was written to Postgres (carried in the row's
// body), so it includes the commit, the listener, Redis and the app. After
// it come capture→recv (receipt minus the event's "at", taken by the
// trigger inside the transaction, same kernel clock), the INSERT's own
// round trip, and capture→app from the app's histogram, interpolated
// within its buckets.
//
// With -runs N each row runs N times, interleaved (S1 ws, S1 sse, S1 ws,
// ...); the table gives each figure's median, the latency percentiles with
// their range over the runs ("1.42 (1.38–1.51)"), and the delivery counts
// summed over the runs, each run's shown when any is not 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	selfPID     = os.Getpid()
	selfProfile string
)

// out receives progress lines (stderr; tests point it at t.Log).
var (
	progressMu sync.Mutex
	progressW  io.Writer = os.Stderr
)

func progress(format string, args ...any) {
	progressMu.Lock()
	defer progressMu.Unlock()
	fmt.Fprintf(progressW, time.Now().Format("15:04:05 ")+format+"\n", args...)
}

type options struct {
	scenarios   []string
	transports  []transport
	duration    time.Duration
	clients     int
	rooms       int
	rate        float64
	steps       []float64
	rowSize     int
	connectRate int
	workers     int
	drain       time.Duration
	backlog     int
	profile     string
	runs        int
	stack       stackConfig
	// modes are the listener's capture modes each row runs in (-capture);
	// captureSet says -capture was given (W then runs only those).
	modes      []string
	captureSet bool
	// syncs are the synchronous_commit settings of the inserting sessions
	// (-synchronous-commit); none: per mode (see variants).
	syncs []string
}

func main() {
	var (
		o                   options
		scenario, tr, steps string
		capture, syncCommit string
		timeout             time.Duration
	)
	flag.StringVar(&scenario, "scenario", "S1", "S1, S2, S3, S4, L, W, WT, soak, a comma-separated list, or all (all but soak)")
	flag.StringVar(&capture, "capture", modeNotify, "the listener's capture mode (ROWCAST_CAPTURE): notify, wal, or both (each row in both, interleaved); W runs plain, notify and wal unless this is given")
	flag.StringVar(&tr, "transport", "ws", "ws, sse or both")
	flag.DurationVar(&o.duration, "duration", 0, "override each scenario's duration (S4: per step; S3: how long connections are held)")
	flag.IntVar(&o.clients, "clients", 0, "override the number of clients")
	flag.IntVar(&o.rooms, "rooms", 0, "override the number of rooms")
	flag.Float64Var(&o.rate, "rate", 0, "override the insert rate of S1 and S2 (rows/s)")
	flag.StringVar(&steps, "steps", "250,500,1000,1500,2000", "S4's insert rates (rows/s)")
	flag.IntVar(&o.rowSize, "row-size", 1024, "approximate JSON size of each inserted row (bytes)")
	flag.IntVar(&o.connectRate, "connect-rate", 1000, "new connections per second")
	flag.IntVar(&o.workers, "db-conns", 4, "Postgres connections inserting rows, each sending single-row INSERTs in autocommit")
	flag.IntVar(&o.runs, "runs", 1, "run each scenario row this many times, interleaved (S1 ws, S1 sse, S1 ws, ...), and print medians with their range")
	flag.BoolVar(&o.stack.native, "native", false, "run Postgres 15 (synchronous_commit=off, wal_level=logical) and Redis 7 as local processes from the Debian packages postgresql-15 and redis-server, not containers")
	flag.DurationVar(&o.drain, "drain", 10*time.Second, "after the last insert, wait this long without progress for missing events")
	flag.IntVar(&o.backlog, "backlog", 100000, "L: outbox rows to drain")
	flag.StringVar(&o.profile, "pprof", "", "directory for pprof profiles (first run): app and listener CPU profiles and 2 s execution traces during S1 and S2, app heap in S3, listener CPU in L")
	flag.StringVar(&o.stack.src, "src", os.Getenv("ROWCAST_BENCH_SRC"), "module directory to build app and listener from (default: this one)")
	flag.StringVar(&o.stack.appURL, "app", "", "base URL of a running app to drive instead of starting one (http://host:port)")
	flag.IntVar(&o.stack.appPID, "app-pid", 0, "PID of the -app process, for its CPU and memory")
	flag.BoolVar(&o.stack.memoryBus, "memory-bus", false, "start the app without REDIS_URL, so it relays in-process on its memory bus (no listener; NOTIFY mode; app CPU includes the relay; L is not run)")
	flag.BoolVar(&o.stack.noListener, "no-listener", false, "a listener already runs against DATABASE_URL: do not start one (L is not run)")
	flag.IntVar(&o.stack.listenPID, "listener-pid", 0, "PID of that listener, for its CPU and memory")
	flag.StringVar(&syncCommit, "synchronous-commit", "", "synchronous_commit of the bench's INSERT sessions, e.g. off to leave the disk's fsync out of the latency, or a comma-separated list (each row runs with each); "+
		"default: the server's for NOTIFY rows and on for WAL rows (logical decoding streams only flushed WAL: with off a commit may wait for the WAL writer, 200 ms). W's pgbench sessions always use off")
	flag.DurationVar(&o.stack.walSettle, "wal-settle", 3*time.Second, "after a WAL-mode listener takes the lead, wait this long before measuring: its first read of the slot "+
		"collects a whole batch unless the stream pauses for 100 ms, which holds the first rows back batch size / rate under steady load (0: measure that too)")
	flag.BoolVar(&o.stack.verbose, "v", false, "log container start-up")
	flag.DurationVar(&timeout, "timeout", 0, "bound on the whole run (default 1h per run)")
	flag.StringVar(&selfProfile, "cpuprofile", "", "write the bench's own CPU profile to this file")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: go run ./e2e/bench [flags]\n\n"+
			"Runs Postgres, Redis, the listener and the app and measures send→recv latency (the time from just before\n"+
			"the INSERT is written to the client's receipt), throughput, lost and duplicated events, CPU and memory.\n"+
			"Latency columns: send→recv p50/p90/p99/max, then capture→recv, the INSERT's round trip, capture→publish\n"+
			"(the listener's histogram) and capture→app (the app's), interpolated within histogram buckets. Postgres and Redis: containers, or with -native local\n"+
			"processes. With -runs N: medians of N interleaved runs, latencies with their range (min–max).\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if selfProfile != "" {
		f, err := os.Create(selfProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}

	flag.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "capture":
			o.captureSet = true
		case "synchronous-commit":
			if strings.TrimSpace(syncCommit) == "" {
				syncCommit = "-" // given, but empty: the server's
			}
		}
	})
	var err error
	if o.scenarios, err = parseScenarios(scenario); err == nil {
		if o.transports, err = parseTransports(tr); err == nil {
			if o.steps, err = parseFloats(steps); err == nil {
				if o.modes, err = parseCapture(capture); err == nil {
					switch syncCommit {
					case "":
					case "-":
						o.syncs = []string{""}
					default:
						o.syncs, err = parseSyncs(syncCommit)
					}
				}
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	o.stack.dbConns = o.workers
	o.stack.statStatements = slices.Contains(o.scenarios, "soak")
	if timeout <= 0 {
		timeout = time.Duration(max(o.runs, 1)) * time.Hour
	}
	switch {
	case o.runs < 1:
		err = errors.New("-runs must be at least 1")
	case o.workers < 1:
		err = errors.New("-db-conns must be at least 1")
	case o.stack.native && o.stack.appURL != "":
		err = errors.New("-native starts its own servers; -app drives an app that uses other ones")
	case o.stack.memoryBus && (o.stack.noListener || o.stack.appURL != "" || len(o.modes) > 1 || o.modes[0] != modeNotify):
		err = errors.New("-memory-bus starts its own app, which relays in NOTIFY mode: drop -no-listener, -app and -capture")
	case o.stack.noListener && len(o.modes) > 1:
		err = errors.New("-no-listener: the bench cannot switch a listener it did not start; -capture names that listener's mode")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if o.stack.memoryBus {
		// The app is its own listener: nothing to start, switch or drain.
		o.stack.noListener = true
		progress("bus: memory (the app runs without REDIS_URL and relays in-process; its CPU includes the relay's)")
	}
	if o.stack.appURL != "" && (os.Getenv("DATABASE_URL") == "" || os.Getenv("REDIS_URL") == "") {
		fmt.Fprintln(os.Stderr, "bench: -app needs DATABASE_URL and REDIS_URL of the servers that app uses")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	tb := &mainTB{verbose: o.stack.verbose}
	defer tb.runCleanups() // on a panic; after the explicit call below there is nothing left
	res, err := run(ctx, tb, o)
	tb.runCleanups()
	res.print(os.Stdout)
	pprof.StopCPUProfile()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// results are the rows of the three tables.
type results struct {
	runs     int
	load     []loadRow
	idle     []idleRow
	listener []listenerRow
	w        []wRow
	wt       []wtRow
	soak     [][]loadRow // one soak run per entry, a row per minute
	notRun   []string
}

// run runs the selected scenarios; a scenario that fails is reported and the
// others still run.
func run(ctx context.Context, tb testing.TB, o options) (*results, error) {
	res := &results{runs: o.runs}
	limit := raiseFileLimit(1 << 20)
	progress("open-file limit %d; load %s", limit, loadavg())
	debug.SetGCPercent(400) // the bench's own GC competes with the app for the CPU
	if o.profile != "" {
		if err := os.MkdirAll(o.profile, 0o755); err != nil {
			return res, err
		}
	}
	s, err := startStack(ctx, tb, o.stack)
	if err != nil {
		return res, err
	}
	var errs []error
	fail := func(what string, err error) {
		progress("%s: %v", what, err)
		res.notRun = append(res.notRun, fmt.Sprintf("%s: %v", what, err))
		errs = append(errs, fmt.Errorf("%s: %w", what, err))
	}
	pick := func(v, def int) int {
		if v > 0 {
			return v
		}
		return def
	}
	dur := func(def time.Duration) time.Duration {
		if o.duration > 0 {
			return o.duration
		}
		return def
	}
	rate := func(def float64) []float64 {
		if o.rate > 0 {
			return []float64{o.rate}
		}
		return []float64{def}
	}
	emit := func(r loadRow) {
		c := (&loadGroup{runs: []loadRow{r}, of: 1}).cells()
		c[slices.Index(loadHeader, "runs")] = fmt.Sprintf("run %d/%d", r.run, o.runs)
		progress("| %s |", strings.Join(c, " | "))
	}
	what := func(sc string, tr transport, mode string, run int) string {
		w := sc
		if tr != "" {
			w += " " + string(tr)
		}
		if mode != "" {
			w += " " + mode
		}
		if o.runs > 1 {
			w += fmt.Sprintf(" run %d", run)
		}
		return w
	}
	for _, sc := range o.scenarios {
		// Runs are interleaved: S1 ws, S1 sse, S1 ws, S1 sse, ...
		for run := 1; run <= o.runs; run++ {
			profile := ""
			if run == 1 {
				profile = o.profile
			}
			switch sc {
			case "S1", "S2", "S4", "soak":
				for _, tr := range o.transports {
					for _, v := range o.variants() {
						if ctx.Err() != nil {
							break
						}
						spec := loadSpec{name: sc, tr: tr, run: run, rowSize: o.rowSize, connectRate: o.connectRate, workers: o.workers, drain: o.drain,
							mode: v.mode, sync: v.sync}
						switch sc {
						case "S1":
							spec.clients, spec.rooms, spec.rates, spec.dur = pick(o.clients, 100), pick(o.rooms, 10), rate(200), dur(20*time.Second)
							spec.profile = profile
						case "S2":
							spec.clients, spec.rooms, spec.rates, spec.dur = pick(o.clients, 1000), pick(o.rooms, 10), rate(500), dur(20*time.Second)
							spec.profile = profile
						case "S4":
							spec.clients, spec.rooms, spec.rates, spec.dur = pick(o.clients, 1000), pick(o.rooms, 10), o.steps, dur(10*time.Second)
							spec.stopAt = 50 * time.Millisecond
						case "soak":
							s.soakSpec(&spec, pick(o.clients, 10), pick(o.rooms, 10), rate(1000)[0], dur(10*time.Minute))
						}
						rows, err := s.runLoad(ctx, spec, emit)
						if sc == "soak" {
							if len(rows) > 0 {
								res.soak = append(res.soak, rows)
							}
						} else {
							res.load = append(res.load, rows...)
						}
						if err != nil {
							fail(what(sc, tr, v.mode, run), err)
						}
					}
				}
			case "S3":
				for _, tr := range o.transports {
					for _, mode := range o.modes {
						if ctx.Err() != nil {
							break
						}
						row, err := s.runIdle(ctx, run, tr, mode, pick(o.clients, 10000), pick(o.rooms, 10), o.connectRate, dur(10*time.Second), profile)
						if err != nil {
							fail(what("S3", tr, mode, run), err)
							continue
						}
						row.run = run
						progress("| %s |", strings.Join(row.cells(), " | "))
						res.idle = append(res.idle, row)
					}
				}
			case "L":
				for _, mode := range o.modes {
					if ctx.Err() != nil {
						break
					}
					row, err := s.runListener(ctx, run, mode, o.backlog, pick(o.rooms, 10), o.rowSize, profile)
					if err != nil {
						fail(what("L", "", mode, run), err)
						continue
					}
					row.run = run
					progress("| %s |", strings.Join(row.cells(), " | "))
					res.listener = append(res.listener, row)
				}
			case "W":
				modes := o.wModes()
				// The order rotates from run to run, so that no mode always
				// follows the same one.
				for i := range modes {
					mode := modes[(i+run-1)%len(modes)]
					if ctx.Err() != nil {
						break
					}
					row, err := s.runW(ctx, run, mode, wSpec{dur: dur(10 * time.Second), drain: o.drain})
					if err != nil {
						fail(what("W", "", mode, run), err)
						continue
					}
					progress("W %s run %d: %.0f tps, %s; %d rows behind at pgbench's end, caught up %.2f s later", mode, run, row.tps, row.delivery(),
						row.behind, row.caughtUp.Seconds())
					res.w = append(res.w, row)
				}
			case "WT":
				rows, err := s.runWT(ctx, run, dur(10*time.Second))
				res.wt = append(res.wt, rows...)
				if err != nil {
					fail(what("WT", "", "", run), err)
				}
			}
		}
	}
	return res, errors.Join(errs...)
}

func (r *results) print(w io.Writer) {
	if r == nil {
		return
	}
	table := func(header []string, rows [][]string) {
		fmt.Fprintf(w, "\n| %s |\n|%s\n", strings.Join(header, " | "), strings.Repeat(" --- |", len(header)))
		for _, c := range rows {
			fmt.Fprintf(w, "| %s |\n", strings.Join(c, " | "))
		}
	}
	if r.runs > 1 && len(r.load)+len(r.idle)+len(r.listener)+len(r.w)+len(r.wt) > 0 {
		fmt.Fprintf(w, "\nEach row: medians of %d interleaved runs; latency percentiles with their range (min–max) over the runs. "+
			"expected, delivered, missing, dup, closed (and S3 failed, closed; L rejected) are totals over the runs, "+
			"each run's count in parentheses when not 0.\n", r.runs)
	}
	var notes []string
	if len(r.load) > 0 {
		var rows [][]string
		for _, g := range groupLoad(r.load, r.runs) {
			rows = append(rows, g.cells())
			notes = append(notes, g.notes()...)
		}
		table(loadHeader, rows)
	}
	runName := func(run int) string {
		if r.runs > 1 {
			return fmt.Sprintf(" run %d", run)
		}
		return ""
	}
	if len(r.idle) > 0 {
		// A line per transport and capture mode.
		var order []string
		by := map[string][][]string{}
		for _, x := range r.idle {
			k := string(x.tr) + " " + x.mode
			if by[k] == nil {
				order = append(order, k)
			}
			by[k] = append(by[k], x.cells())
			if x.failed > 0 {
				notes = append(notes, fmt.Sprintf("S3 %s %s%s: %d connections failed: %v", x.tr, x.mode, runName(x.run), x.failed, x.firstErr))
			}
			if x.profileErr != nil {
				notes = append(notes, fmt.Sprintf("S3 %s %s%s: heap profile: %v", x.tr, x.mode, runName(x.run), x.profileErr))
			}
		}
		var rows [][]string
		for _, k := range order {
			runs := by[k]
			_, mode, _ := strings.Cut(k, " ")
			rows = append(rows, slices.Insert(mergeCells(runs, idleSum, idleSpan), 2, mode, strconv.Itoa(len(runs))))
		}
		table(slices.Insert(slices.Clone(idleHeader), 2, "capture", "runs"), rows)
	}
	if len(r.listener) > 0 {
		var order []string
		by := map[string][][]string{}
		for _, x := range r.listener {
			if by[x.mode] == nil {
				order = append(order, x.mode)
			}
			by[x.mode] = append(by[x.mode], x.cells())
			if x.profileErr != nil {
				notes = append(notes, fmt.Sprintf("L %s%s: profile: %v", x.mode, runName(x.run), x.profileErr))
			}
		}
		var rows [][]string
		for _, mode := range order {
			runs := by[mode]
			rows = append(rows, slices.Insert(mergeCells(runs, listenerSum, listenerSpan), 1, mode, strconv.Itoa(len(runs))))
		}
		table(slices.Insert(slices.Clone(listenerHeader), 1, "capture", "runs"), rows)
	}
	if len(r.w) > 0 {
		fmt.Fprintf(w, "\nW: pgbench -c %d -j %d, one single-row INSERT of about %d bytes per transaction, synchronous_commit=off. "+
			"tps and the shares of plain are medians over the runs (a share is taken within each run), with their range.\n", wClients, wThreads, wRowSize)
		rows, wnotes := wTable(r.w)
		table(wHeader, rows)
		notes = append(notes, wnotes...)
	}
	if len(r.wt) > 0 {
		fmt.Fprintf(w, "\nWT: the capture trigger alone (no listener, no slot, the capture state held), pgbench -c %d -j %d as in W. "+
			"tps and the shares of no trigger are medians over the runs (a share is taken within each run and state), with their range.\n", wClients, wThreads)
		table(wtHeader, wtTable(r.wt))
	}
	for _, run := range r.soak {
		printSoak(w, table, run)
	}
	for _, n := range append(notes, r.notRun...) {
		fmt.Fprintln(w, "- "+n)
	}
}

func parseScenarios(s string) ([]string, error) {
	all := []string{"S1", "S2", "S3", "S4", "L", "W", "WT"}
	if strings.EqualFold(s, "all") {
		return all, nil
	}
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		p := strings.ToUpper(strings.TrimSpace(part))
		if p == "SOAK" {
			p = "soak"
		} else if !slices.Contains(all, p) {
			return nil, fmt.Errorf("unknown scenario %q (want S1, S2, S3, S4, L, W, WT, soak or all)", part)
		}
		out = append(out, p)
	}
	return out, nil
}

func parseTransports(s string) ([]transport, error) {
	switch s {
	case "ws":
		return []transport{ws}, nil
	case "sse":
		return []transport{sse}, nil
	case "both":
		return []transport{ws, sse}, nil
	}
	return nil, fmt.Errorf("unknown transport %q (want ws, sse or both)", s)
}

func parseFloats(s string) ([]float64, error) {
	var out []float64
	for part := range strings.SplitSeq(s, ",") {
		f, err := strconv.ParseFloat(strings.TrimSpace(part), 64)
		if err != nil || f <= 0 {
			return nil, fmt.Errorf("bad rate %q", part)
		}
		out = append(out, f)
	}
	return out, nil
}

// mainTB lets the command use internal/testenv, whose functions take a
// testing.TB, outside a test. testing.TB cannot be implemented outside the
// testing package (it has an unexported method), so the interface is
// embedded, nil, and the methods testenv and testcontainers call are
// defined here: Helper, Cleanup, Log(f), Error(f), Fatal(f), Fail(Now),
// Failed, Name, TempDir, Context. Any other method would panic on the nil
// interface.
type mainTB struct {
	testing.TB
	verbose bool

	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

// errFailNow unwinds a cleanup that called FailNow (testcontainers'
// require.NoError does when a container cannot be removed).
var errFailNow = errors.New("FailNow")

func (t *mainTB) Helper()      {}
func (t *mainTB) Name() string { return "rowcast-bench" }
func (t *mainTB) Context() context.Context {
	return context.Background()
}

func (t *mainTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}

func (t *mainTB) Logf(format string, args ...any) {
	if t.verbose {
		progress(format, args...)
	}
}
func (t *mainTB) Log(args ...any) { t.Logf("%s", fmt.Sprint(args...)) }
func (t *mainTB) Errorf(format string, args ...any) {
	t.Fail()
	progress("error: "+format, args...)
}
func (t *mainTB) Error(args ...any) { t.Errorf("%s", fmt.Sprint(args...)) }
func (t *mainTB) Fatalf(format string, args ...any) {
	t.Errorf(format, args...)
	t.FailNow()
}
func (t *mainTB) Fatal(args ...any) { t.Fatalf("%s", fmt.Sprint(args...)) }
func (t *mainTB) Fail() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.failed = true
}
func (t *mainTB) FailNow() {
	t.Fail()
	panic(errFailNow)
}
func (t *mainTB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}
func (t *mainTB) TempDir() string {
	dir, err := os.MkdirTemp("", "rowcast-bench")
	if err != nil {
		panic(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// runCleanups runs the registered cleanups, last first; a panicking one
// does not stop the others.
func (t *mainTB) runCleanups() {
	for {
		t.mu.Lock()
		n := len(t.cleanups)
		if n == 0 {
			t.mu.Unlock()
			return
		}
		f := t.cleanups[n-1]
		t.cleanups = t.cleanups[:n-1]
		t.mu.Unlock()
		func() {
			defer func() {
				if r := recover(); r != nil && r != errFailNow {
					progress("cleanup panicked: %v", r)
				}
			}()
			f()
		}()
	}
}
