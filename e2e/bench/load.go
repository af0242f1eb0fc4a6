package main

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// inserter writes chat_message rows at a fixed rate, like an application
// would: each of workers Postgres connections sends single-row INSERTs in
// autocommit (one statement, one implicit transaction, no BEGIN). Row seq
// goes to room seq % len(rooms); its body is "b<seq>.<send time, unix ns>."
// padded with 'x' so that the row's JSON is about rowSize bytes.
type inserter struct {
	db      *pgxpool.Pool
	rooms   []string
	bodyLen int
	workers int

	next int64    // first seq of the next phase
	ok   []uint64 // bit seq: committed (read only after run returns)
}

const insertSQL = `INSERT INTO chat_message (room, author, body) VALUES ($1, 'bench', $2)`

// rowOverhead approximates the JSON of a chat_message row without its body
// and room: {"id": N, "body": "", "room": "", "author": "bench",
// "created_at": "2026-01-01T00:00:00.000000+00:00"}.
const rowOverhead = 100

func newInserter(db *pgxpool.Pool, rooms []string, rowSize, workers int) *inserter {
	return &inserter{db: db, rooms: rooms, bodyLen: max(40, rowSize-rowOverhead-len(rooms[0])), workers: max(workers, 1)}
}

// committed reports whether row seq was committed. Call it only after run
// has returned.
func (in *inserter) committed(seq int64) bool {
	w := int(seq / 64)
	return w < len(in.ok) && in.ok[w]&(1<<(seq%64)) != 0
}

// insertFigures describe one run of the inserter.
type insertFigures struct {
	lo, hi    int64 // rows issued: [lo, hi)
	committed int64
	failed    int64
	firstErr  error
	took      time.Duration // first send to last commit
	exec      []int64       // ns per INSERT: just before the statement is written to its return
	lag       []int64       // ns per INSERT: from the row's due time to its send (waiting for a free connection)
}

func (f insertFigures) rate() float64 {
	if f.took <= 0 {
		return 0
	}
	return float64(f.committed) / f.took.Seconds()
}

// insertJob is one row to send: its seq and when the schedule wanted it sent.
type insertJob struct {
	seq int64
	due time.Time
}

// run inserts rate rows per second for dur. Row i of the phase is due at
// start + i/rate; the scheduler hands it, at that time, to a queue that
// every connection takes from, so a slow INSERT holds back only the
// connection it runs on: a row waits only when all workers are busy. When
// Postgres falls that far behind, rows wait in a bounded queue (the wait
// shows as lag) and scheduling stops at dur + 2 s, so the achieved rate
// shows the shortfall. The send time (in the row's body and the start of
// the INSERT's round trip) is read just before pgx writes the statement.
func (in *inserter) run(ctx context.Context, rate float64, dur time.Duration) insertFigures {
	total := int64(rate * dur.Seconds())
	f := insertFigures{lo: in.next, hi: in.next}
	in.next += total
	if need := int(in.next/64) + 1; need > len(in.ok) {
		in.ok = append(in.ok, make([]uint64, need-len(in.ok))...)
	}
	// One connection per worker, held for the phase and with the statement
	// prepared before the clock starts: no pool hand-off or Parse in the
	// measured round trips.
	conns := make([]*pgxpool.Conn, 0, in.workers)
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	for range in.workers {
		c, err := in.db.Acquire(ctx)
		if err == nil {
			_, err = c.Conn().Prepare(ctx, insertSQL, insertSQL)
		}
		if err != nil {
			if c != nil {
				c.Release()
			}
			f.firstErr = fmt.Errorf("insert connection: %w", err)
			return f
		}
		conns = append(conns, c)
	}

	jobs := make(chan insertJob, 4096)
	var (
		mu          sync.Mutex
		wg          sync.WaitGroup
		first, last time.Time
	)
	for _, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pad := bytes.Repeat([]byte{'x'}, in.bodyLen)
			body := make([]byte, 0, in.bodyLen+64)
			var (
				exec, lag    []int64
				okSeqs       []int64
				failed       int64
				firstErr     error
				wFirst, wEnd time.Time
			)
			for j := range jobs {
				ectx, cancel := context.WithTimeout(ctx, 10*time.Second)
				room := in.rooms[j.seq%int64(len(in.rooms))]
				body = append(body[:0], 'b')
				body = strconv.AppendInt(body, j.seq, 10)
				body = append(body, '.')
				t0 := time.Now()
				body = strconv.AppendInt(body, t0.UnixNano(), 10)
				body = append(body, '.')
				body = append(body, pad[:max(0, in.bodyLen-len(body))]...)
				_, err := conn.Exec(ectx, insertSQL, room, body)
				t1 := time.Now()
				cancel()
				exec = append(exec, int64(t1.Sub(t0)))
				lag = append(lag, int64(max(0, t0.Sub(j.due))))
				if err != nil {
					failed++
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				okSeqs = append(okSeqs, j.seq)
				if wFirst.IsZero() {
					wFirst = t0
				}
				wEnd = t1
			}
			mu.Lock()
			defer mu.Unlock()
			for _, seq := range okSeqs {
				in.ok[seq/64] |= 1 << (seq % 64)
			}
			if !wFirst.IsZero() {
				if first.IsZero() || wFirst.Before(first) {
					first = wFirst
				}
				if wEnd.After(last) {
					last = wEnd
				}
			}
			f.committed += int64(len(okSeqs))
			f.failed += failed
			if f.firstErr == nil {
				f.firstErr = firstErr
			}
			f.exec = append(f.exec, exec...)
			f.lag = append(f.lag, lag...)
		}()
	}

	wait := time.NewTimer(time.Hour)
	defer wait.Stop()
	start := time.Now()
	stop := time.NewTimer(dur + 2*time.Second)
	defer stop.Stop()
	interval := float64(time.Second) / rate
	var issued int64
schedule:
	for issued < total {
		due := start.Add(time.Duration(float64(issued) * interval))
		if d := time.Until(due); d > 0 {
			wait.Reset(d)
			select {
			case <-wait.C:
			case <-ctx.Done():
				break schedule
			}
		}
		select {
		case jobs <- insertJob{seq: f.lo + issued, due: due}:
			issued++
		case <-stop.C:
			break schedule // Postgres is this far behind: the achieved rate shows it
		case <-ctx.Done():
			break schedule
		}
	}
	close(jobs)
	wg.Wait()
	f.hi = f.lo + issued
	if !first.IsZero() {
		f.took = last.Sub(first)
	}
	return f
}

// dist is a latency distribution.
type dist struct {
	n                   int
	p50, p90, p99, peak time.Duration
}

func distOf(xs []int64) dist {
	if len(xs) == 0 {
		return dist{}
	}
	slices.Sort(xs)
	at := func(q float64) time.Duration { return time.Duration(xs[min(len(xs)-1, int(q*float64(len(xs))))]) }
	return dist{n: len(xs), p50: at(0.50), p90: at(0.90), p99: at(0.99), peak: time.Duration(xs[len(xs)-1])}
}

// ms formats a duration in milliseconds with two decimals.
func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64)
}

// mib formats bytes in MiB.
func mib(b int64) string {
	return strconv.FormatFloat(float64(b)/(1<<20), 'f', 1, 64)
}

// kib formats bytes in KiB.
func kib(b float64) string {
	return strconv.FormatFloat(b/1024, 'f', 1, 64)
}

// secs formats CPU time in seconds, or "n/a".
func secs(d time.Duration, ok bool) string {
	if !ok {
		return "n/a"
	}
	return strconv.FormatFloat(d.Seconds(), 'f', 2, 64)
}

// snapshot is the CPU and memory of everything under test at one moment.
type snapshot struct {
	app, lis     usage
	redis, pg    time.Duration
	rOK, pgOK    bool
	host         time.Duration
	hostOK       bool
	at           time.Time
	appPID, lPID int
}

func (s *stack) snapshot(appPID, lisPID int) snapshot {
	sn := snapshot{at: time.Now(), appPID: appPID, lPID: lisPID}
	sn.app = procUsage(appPID)
	sn.lis = procUsage(lisPID)
	if s.redisCPU != nil {
		sn.redis, sn.rOK = s.redisCPU()
	}
	if s.pgCPU != nil {
		sn.pg, sn.pgOK = s.pgCPU()
	}
	sn.host, sn.hostOK = hostBusy()
	return sn
}

// cpuDelta is what each part used between two snapshots.
type cpuDelta struct {
	app, lis, redis, pg     time.Duration
	appOK, lisOK, rOK, pgOK bool
	appHWM, lisHWM, appRSS  int64
	host                    time.Duration // every process of the machine
	hostOK                  bool
}

// others is the CPU used meanwhile by processes outside the system under
// test and the bench (other work on the machine, Docker's port proxies).
func (d cpuDelta) others(bench time.Duration) (time.Duration, bool) {
	if !d.hostOK || !d.appOK {
		return 0, false
	}
	return max(d.host-d.app-d.lis-d.redis-d.pg-bench, 0), true
}

func diff(a, b snapshot) cpuDelta {
	return cpuDelta{
		app: b.app.cpu - a.app.cpu, appOK: a.app.ok && b.app.ok, appHWM: b.app.hwm, appRSS: b.app.rss,
		lis: b.lis.cpu - a.lis.cpu, lisOK: a.lis.ok && b.lis.ok, lisHWM: b.lis.hwm,
		redis: b.redis - a.redis, rOK: a.rOK && b.rOK,
		pg: b.pg - a.pg, pgOK: a.pgOK && b.pgOK,
		host: b.host - a.host, hostOK: a.hostOK && b.hostOK,
	}
}

// loadRow is one phase of a load scenario in one run.
type loadRow struct {
	scenario      string
	tr            transport
	mode          string // the listener's capture mode
	sync          string // synchronous_commit of the inserting sessions, as printed
	run           int    // 1-based
	clients       int
	rooms         int
	rate          float64
	dur           time.Duration
	connectFailed int
	connectErr    error

	ins      insertFigures
	insExec  dist // the INSERT's round trip
	insLag   dist // due time to send
	expected int64
	// delivered counts every event frame received, duplicates included.
	delivered, distinct, missing, dups, reorder, unexpected, foreign int64
	ended                                                            int
	endReason                                                        string
	latSend, lat                                                     dist // send→recv, capture→recv
	window                                                           time.Duration
	cpu                                                              cpuDelta
	benchCPU                                                         time.Duration
	handoff                                                          [2]bucketQuantile // capture → app hand-off p50, p99
	publish                                                          [2]bucketQuantile // capture → Redis accepted (listener) p50, p99
	load                                                             string
	note                                                             string
	soak                                                             *soakFigures // soak only
}

func (r loadRow) perSecond() float64 {
	if r.window <= 0 {
		return 0
	}
	return float64(r.delivered) / r.window.Seconds()
}

// ok reports whether everything committed arrived once.
func (r loadRow) ok() bool {
	return r.missing == 0 && r.dups == 0 && r.unexpected == 0 && r.ended == 0 && r.connectFailed == 0
}

// loadHeader heads the load table: send→recv first, the headline latency.
var loadHeader = []string{
	"scenario", "transport", "capture", "sync commit", "runs", "clients/rooms", "target ins/s", "achieved ins/s", "expected", "delivered", "missing", "dup",
	"closed", "send→recv p50 ms", "send→recv p90 ms", "send→recv p99 ms", "send→recv max ms",
	"capture→recv p50 ms", "capture→recv p99 ms", "insert p50 ms", "insert p99 ms",
	"capture→publish p50 ms (interpolated)", "capture→publish p99 ms (interpolated)",
	"capture→app p50 ms (interpolated)", "capture→app p99 ms (interpolated)",
	"deliveries/s", "app CPU s", "app µs/delivery", "app peak RSS MiB", "listener CPU s", "listener CPU µs/row", "listener peak RSS MiB",
	"redis CPU s", "postgres CPU s", "bench CPU s", "other CPU s", "load1",
}

// loadGroup is one line of the load table: the runs of one phase
// (scenario, rate and transport). Figures are medians over the runs;
// latency percentiles add their range; delivery counts are summed.
type loadGroup struct {
	runs []loadRow
	of   int // runs asked for (an S4 step may be reached by fewer)
}

// groupLoad groups rows by scenario (with its rate), transport, capture
// mode and synchronous_commit, in the order they first appear.
func groupLoad(rows []loadRow, of int) []*loadGroup {
	var out []*loadGroup
	idx := map[string]*loadGroup{}
	for _, r := range rows {
		k := r.scenario + " " + string(r.tr) + " " + r.mode + " " + r.sync
		g := idx[k]
		if g == nil {
			g = &loadGroup{of: of}
			idx[k] = g
			out = append(out, g)
		}
		g.runs = append(g.runs, r)
	}
	return out
}

// figure collects one figure of each run that has it.
func (g *loadGroup) figure(f func(loadRow) (float64, bool)) spread {
	var xs []float64
	for _, r := range g.runs {
		if v, ok := f(r); ok {
			xs = append(xs, v)
		}
	}
	return spreadOf(xs)
}

// msOf is a latency figure in milliseconds, absent when nothing was measured.
func msOf(f func(loadRow) dist, pick func(dist) time.Duration) func(loadRow) (float64, bool) {
	return func(r loadRow) (float64, bool) {
		d := f(r)
		return float64(pick(d)) / float64(time.Millisecond), d.n > 0
	}
}

func (g *loadGroup) cells() []string {
	r0 := g.runs[0]
	lat := func(f func(loadRow) dist, pick func(dist) time.Duration) string {
		return g.figure(msOf(f, pick)).text(2, true)
	}
	send := func(r loadRow) dist { return r.latSend }
	capt := func(r loadRow) dist { return r.lat }
	exec := func(r loadRow) dist { return r.insExec }
	p50 := func(d dist) time.Duration { return d.p50 }
	p90 := func(d dist) time.Duration { return d.p90 }
	p99 := func(d dist) time.Duration { return d.p99 }
	peak := func(d dist) time.Duration { return d.peak }
	med := func(prec int, f func(loadRow) (float64, bool)) string { return g.figure(f).text(prec, false) }
	cpu := func(f func(loadRow) (time.Duration, bool)) string {
		return med(2, func(r loadRow) (float64, bool) { d, ok := f(r); return d.Seconds(), ok })
	}
	bucket := func(f func(loadRow) bucketQuantile) string {
		s := g.figure(func(r loadRow) (float64, bool) {
			q := f(r)
			return float64(q.d) / float64(time.Millisecond), q.ok
		}).text(2, true)
		for _, r := range g.runs {
			if f(r).over {
				return s + " (beyond the last bucket)"
			}
		}
		return s
	}
	handoff := func(i int) string { return bucket(func(r loadRow) bucketQuantile { return r.handoff[i] }) }
	publish := func(i int) string { return bucket(func(r loadRow) bucketQuantile { return r.publish[i] }) }
	runs := strconv.Itoa(len(g.runs))
	if len(g.runs) < g.of {
		runs = fmt.Sprintf("%d of %d", len(g.runs), g.of)
	}
	return []string{
		r0.scenario, string(r0.tr), r0.mode, r0.sync, runs,
		med(0, func(r loadRow) (float64, bool) { return float64(r.clients), true }) + "/" + strconv.Itoa(r0.rooms),
		strconv.FormatFloat(r0.rate, 'f', 0, 64),
		med(0, func(r loadRow) (float64, bool) { return r.ins.rate(), true }),
		g.sum(func(r loadRow) int64 { return r.expected }, false),
		g.sum(func(r loadRow) int64 { return r.delivered }, false),
		g.sum(func(r loadRow) int64 { return r.missing }, true),
		g.sum(func(r loadRow) int64 { return r.dups }, true),
		g.sum(func(r loadRow) int64 { return int64(r.ended) }, true),
		lat(send, p50), lat(send, p90), lat(send, p99), lat(send, peak),
		lat(capt, p50), lat(capt, p99), lat(exec, p50), lat(exec, p99),
		publish(0), publish(1), handoff(0), handoff(1),
		med(0, func(r loadRow) (float64, bool) { return r.perSecond(), true }),
		cpu(func(r loadRow) (time.Duration, bool) { return r.cpu.app, r.cpu.appOK }),
		med(2, func(r loadRow) (float64, bool) {
			return float64(r.cpu.app) / float64(time.Microsecond) / float64(r.delivered), r.cpu.appOK && r.delivered > 0
		}),
		med(1, func(r loadRow) (float64, bool) { return float64(r.cpu.appHWM) / (1 << 20), r.cpu.appOK }),
		cpu(func(r loadRow) (time.Duration, bool) { return r.cpu.lis, r.cpu.lisOK }),
		med(1, func(r loadRow) (float64, bool) {
			return float64(r.cpu.lis) / float64(time.Microsecond) / float64(r.ins.committed), r.cpu.lisOK && r.ins.committed > 0
		}),
		med(1, func(r loadRow) (float64, bool) { return float64(r.cpu.lisHWM) / (1 << 20), r.cpu.lisOK }),
		cpu(func(r loadRow) (time.Duration, bool) { return r.cpu.redis, r.cpu.rOK }),
		cpu(func(r loadRow) (time.Duration, bool) { return r.cpu.pg, r.cpu.pgOK }),
		cpu(func(r loadRow) (time.Duration, bool) { return r.benchCPU, r.benchCPU > 0 }),
		cpu(func(r loadRow) (time.Duration, bool) { return r.cpu.others(r.benchCPU) }),
		g.loads(),
	}
}

// sum adds a count over the runs; with perRun, a non-zero total also shows
// each run's count ("3 (0+3+0)").
func (g *loadGroup) sum(f func(loadRow) int64, perRun bool) string {
	var total int64
	parts := make([]string, len(g.runs))
	for i, r := range g.runs {
		n := f(r)
		total += n
		parts[i] = strconv.FormatInt(n, 10)
	}
	s := strconv.FormatInt(total, 10)
	if perRun && total != 0 && len(g.runs) > 1 {
		s += " (" + strings.Join(parts, "+") + ")"
	}
	return s
}

// loads is the range of load1 over the runs.
func (g *loadGroup) loads() string {
	var xs []float64
	for _, r := range g.runs {
		if v, err := strconv.ParseFloat(r.load, 64); err == nil {
			xs = append(xs, v)
		}
	}
	s := spreadOf(xs)
	switch {
	case s.n == 0:
		return "?"
	case s.lo == s.hi:
		return strconv.FormatFloat(s.lo, 'f', 2, 64)
	}
	return strconv.FormatFloat(s.lo, 'f', 2, 64) + "–" + strconv.FormatFloat(s.hi, 'f', 2, 64)
}

// notes are the runs' notes, each named by its run when there are several.
func (g *loadGroup) notes() []string {
	var out []string
	for _, r := range g.runs {
		if r.note == "" {
			continue
		}
		who := r.scenario + " " + string(r.tr) + " " + r.mode + " sync=" + r.sync
		if g.of > 1 {
			who += fmt.Sprintf(" run %d", r.run)
		}
		out = append(out, who+": "+r.note)
	}
	return out
}

func mibOK(b int64, ok bool) string {
	if !ok {
		return "n/a"
	}
	return mib(b)
}
