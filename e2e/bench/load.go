package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// inserter writes chat_message rows at a fixed rate. Row seq goes to room
// seq % len(rooms); its body is "b<seq>.<send time, unix ns>." padded with
// 'x' so that the row's JSON is about rowSize bytes.
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
	return &inserter{db: db, rooms: rooms, bodyLen: max(40, rowSize-rowOverhead-len(rooms[0])), workers: workers}
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
	exec      []int64       // ns per INSERT round trip
}

func (f insertFigures) rate() float64 {
	if f.took <= 0 {
		return 0
	}
	return float64(f.committed) / f.took.Seconds()
}

// run inserts rate rows per second for dur: a 2 ms ticker schedules the
// rows that are due, and workers (one pool connection each) send them. When
// Postgres falls behind, rows wait in a bounded queue; scheduling stops at
// dur + 2 s, so the achieved rate shows the shortfall.
func (in *inserter) run(ctx context.Context, rate float64, dur time.Duration) insertFigures {
	total := int64(rate * dur.Seconds())
	f := insertFigures{lo: in.next}
	in.next += total
	if need := int(in.next/64) + 1; need > len(in.ok) {
		in.ok = append(in.ok, make([]uint64, need-len(in.ok))...)
	}
	jobs := make(chan int64, 4096)
	var (
		mu    sync.Mutex
		wg    sync.WaitGroup
		first time.Time
		last  time.Time
	)
	for range in.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := make([]byte, 0, in.bodyLen)
			var exec []int64
			var okSeqs []int64
			var failed int64
			var firstErr error
			for seq := range jobs {
				t0 := time.Now()
				body = append(body[:0], 'b')
				body = strconv.AppendInt(body, seq, 10)
				body = append(body, '.')
				body = strconv.AppendInt(body, t0.UnixNano(), 10)
				body = append(body, '.')
				for len(body) < in.bodyLen {
					body = append(body, 'x')
				}
				ectx, cancel := context.WithTimeout(ctx, 10*time.Second)
				_, err := in.db.Exec(ectx, insertSQL, in.rooms[seq%int64(len(in.rooms))], string(body))
				cancel()
				t1 := time.Now()
				exec = append(exec, int64(t1.Sub(t0)))
				if err != nil {
					failed++
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				okSeqs = append(okSeqs, seq)
				mu.Lock()
				if first.IsZero() || t0.Before(first) {
					first = t0
				}
				if t1.After(last) {
					last = t1
				}
				mu.Unlock()
			}
			mu.Lock()
			defer mu.Unlock()
			for _, seq := range okSeqs {
				in.ok[seq/64] |= 1 << (seq % 64)
			}
			f.committed += int64(len(okSeqs))
			f.failed += failed
			if f.firstErr == nil {
				f.firstErr = firstErr
			}
			f.exec = append(f.exec, exec...)
		}()
	}

	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	deadline := start.Add(dur + 2*time.Second)
	var issued int64
schedule:
	for issued < total {
		due := min(total, int64(time.Since(start).Seconds()*rate)+1)
	queue:
		for issued < due {
			select {
			case jobs <- f.lo + issued:
				issued++
			default:
				break queue // Postgres is behind: try again next tick
			}
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-tick.C:
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
	sn.redis, sn.rOK = containerCPU(s.redisCtr)
	sn.pg, sn.pgOK = containerCPU(s.pgCtr)
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
func (d cpuDelta) others(bench time.Duration) string {
	if !d.hostOK || !d.appOK {
		return "n/a"
	}
	o := d.host - d.app - d.lis - d.redis - d.pg - bench
	return secs(max(o, 0), true)
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

// loadRow is one phase of a load scenario: one line of the results table.
type loadRow struct {
	scenario      string
	tr            transport
	clients       int
	rooms         int
	rate          float64
	dur           time.Duration
	connectFailed int
	connectErr    error

	ins      insertFigures
	insExec  dist
	expected int64
	// delivered counts every event frame received, duplicates included.
	delivered, distinct, missing, dups, reorder, unexpected, foreign int64
	ended                                                            int
	endReason                                                        string
	lat, latSend                                                     dist
	window                                                           time.Duration
	cpu                                                              cpuDelta
	benchCPU                                                         time.Duration
	handoff                                                          []string // capture → app hand-off p50, p99 (bucket bounds, ms)
	load                                                             string
	note                                                             string
}

func (r loadRow) perSecond() float64 {
	if r.window <= 0 {
		return 0
	}
	return float64(r.delivered) / r.window.Seconds()
}

// usPerDelivery is the app's CPU per delivered event, in microseconds.
func (r loadRow) usPerDelivery() string {
	if !r.cpu.appOK || r.delivered == 0 {
		return "n/a"
	}
	return strconv.FormatFloat(float64(r.cpu.app)/float64(time.Microsecond)/float64(r.delivered), 'f', 2, 64)
}

// ok reports whether everything committed arrived once.
func (r loadRow) ok() bool {
	return r.missing == 0 && r.dups == 0 && r.unexpected == 0 && r.ended == 0 && r.connectFailed == 0
}

var loadHeader = []string{
	"scenario", "transport", "clients/rooms", "target ins/s", "achieved ins/s", "expected", "delivered", "missing", "dup",
	"closed", "p50 ms", "p90 ms", "p99 ms", "max ms", "send→recv p50/p99 ms", "deliveries/s", "app CPU s", "app µs/delivery",
	"app peak RSS MiB", "listener CPU s", "listener peak RSS MiB", "redis CPU s", "postgres CPU s", "bench CPU s",
	"other CPU s", "insert p50/p99 ms", "capture→app p50/p99 ms", "load1",
}

func (r loadRow) cells() []string {
	return []string{
		r.scenario, string(r.tr), fmt.Sprintf("%d/%d", r.clients, r.rooms),
		strconv.FormatFloat(r.rate, 'f', 0, 64), strconv.FormatFloat(r.ins.rate(), 'f', 0, 64),
		strconv.FormatInt(r.expected, 10), strconv.FormatInt(r.delivered, 10),
		strconv.FormatInt(r.missing, 10), strconv.FormatInt(r.dups, 10), strconv.Itoa(r.ended),
		ms(r.lat.p50), ms(r.lat.p90), ms(r.lat.p99), ms(r.lat.peak), ms(r.latSend.p50) + "/" + ms(r.latSend.p99),
		strconv.FormatFloat(r.perSecond(), 'f', 0, 64),
		secs(r.cpu.app, r.cpu.appOK), r.usPerDelivery(), mibOK(r.cpu.appHWM, r.cpu.appOK),
		secs(r.cpu.lis, r.cpu.lisOK), mibOK(r.cpu.lisHWM, r.cpu.lisOK),
		secs(r.cpu.redis, r.cpu.rOK), secs(r.cpu.pg, r.cpu.pgOK), secs(r.benchCPU, r.benchCPU > 0), r.cpu.others(r.benchCPU),
		ms(r.insExec.p50) + "/" + ms(r.insExec.p99), strings.Join(r.handoff, "/"), r.load,
	}
}

func mibOK(b int64, ok bool) string {
	if !ok {
		return "n/a"
	}
	return mib(b)
}
