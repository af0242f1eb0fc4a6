package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"
)

// soak holds the insert rate for a long stretch (10 minutes by default) and
// reports every minute on its own: send→recv latency, the outbox's dead
// tuples, and how long the listener's outbox read takes, to show whether
// anything drifts as the outbox churns (every row is inserted, then
// deleted by the listener).

// soakFigures are one minute's figures beyond the load row's.
type soakFigures struct {
	// The listener's outbox read (SELECT ... FROM rowcast.outbox ORDER BY
	// id LIMIT $1) in pg_stat_statements, during the minute.
	readCalls int64
	readMean  float64 // ms
	readOK    bool
	// An equivalent read with EXPLAIN ANALYZE in the middle of the minute.
	explain     float64 // ms
	explainBufs int64   // shared buffers hit + read
	explainOK   bool
	// pg_stat_user_tables of rowcast.outbox at the end of the minute.
	live, dead, autovac int64
	statOK              bool
	err                 error
}

// outboxReadLike matches the listener's outbox read in pg_stat_statements.
const outboxReadLike = `%FROM rowcast.outbox ORDER BY id LIMIT%`

const outboxExplain = `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
	SELECT id, room, table_name, op, row_data::text, captured_at FROM rowcast.outbox ORDER BY id LIMIT 500`

// statStatements reports whether pg_stat_statements can be read (the
// extension is created when the library is loaded).
func (s *stack) statStatements(ctx context.Context) bool {
	if s.pgss != nil {
		return *s.pgss
	}
	ok := false
	if _, err := s.db.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`); err == nil {
		var n int64
		ok = s.db.QueryRow(ctx, `SELECT count(*) FROM pg_stat_statements`).Scan(&n) == nil
	}
	if !ok {
		progress("soak: pg_stat_statements is not loaded (shared_preload_libraries): the listener's read is timed by EXPLAIN ANALYZE only")
	}
	s.pgss = &ok
	return ok
}

// outboxReads sums the calls and execution time of the listener's outbox
// read so far.
func (s *stack) outboxReads(ctx context.Context) (calls int64, total float64, err error) {
	err = s.db.QueryRow(ctx, `SELECT coalesce(sum(calls), 0)::bigint, coalesce(sum(total_exec_time), 0)
		FROM pg_stat_statements WHERE query LIKE $1 AND query NOT ILIKE '%EXPLAIN%' AND query NOT LIKE '%pg_stat_statements%'`,
		outboxReadLike).Scan(&calls, &total)
	return calls, total, err
}

// explainOutbox times a read like the listener's.
func (s *stack) explainOutbox(ctx context.Context) (ms float64, bufs int64, err error) {
	var plan string
	if err := s.db.QueryRow(ctx, outboxExplain).Scan(&plan); err != nil {
		return 0, 0, err
	}
	var out []struct {
		Plan struct {
			Hit  int64 `json:"Shared Hit Blocks"`
			Read int64 `json:"Shared Read Blocks"`
		} `json:"Plan"`
		Time float64 `json:"Execution Time"`
	}
	if err := json.Unmarshal([]byte(plan), &out); err != nil || len(out) == 0 {
		return 0, 0, fmt.Errorf("EXPLAIN output %q: %v", plan, err)
	}
	return out[0].Time, out[0].Plan.Hit + out[0].Plan.Read, nil
}

// soakSpec makes spec a soak: phases of a minute (the total rounded to
// whole minutes; one shorter phase when it is under a minute) at rate.
func (s *stack) soakSpec(spec *loadSpec, clients, rooms int, rate float64, total time.Duration) {
	phase := min(total, time.Minute)
	n := max(1, int((total+30*time.Second)/time.Minute))
	if total < time.Minute {
		n = 1
	}
	spec.clients, spec.rooms, spec.dur = clients, rooms, phase
	spec.rates = make([]float64, n)
	for i := range spec.rates {
		spec.rates[i] = rate
	}
	spec.phase = func(ctx context.Context) func(*loadRow) {
		f := &soakFigures{}
		pgss := s.statStatements(ctx)
		var calls0 int64
		var total0 float64
		if pgss {
			calls0, total0, f.err = s.outboxReads(ctx)
		}
		explained := make(chan struct{})
		var explainErr error
		go func() {
			defer close(explained)
			select {
			case <-time.After(phase / 2):
			case <-ctx.Done():
				return
			}
			ms, bufs, err := s.explainOutbox(ctx)
			if err != nil {
				explainErr = err
				return
			}
			f.explain, f.explainBufs, f.explainOK = ms, bufs, true
		}()
		return func(r *loadRow) {
			<-explained
			if pgss && f.err == nil {
				calls, total, err := s.outboxReads(ctx)
				if err == nil && calls > calls0 {
					f.readCalls, f.readMean, f.readOK = calls-calls0, (total-total0)/float64(calls-calls0), true
				}
				f.err = err
			}
			// The statistics collector reports with a delay of up to a
			// second or so.
			f.statOK = s.db.QueryRow(ctx, `SELECT n_live_tup, n_dead_tup, autovacuum_count FROM pg_stat_user_tables
				WHERE relid = 'rowcast.outbox'::regclass`).Scan(&f.live, &f.dead, &f.autovac) == nil
			r.soak = f
			if explainErr != nil {
				r.note = joinNote(r.note, "EXPLAIN: "+explainErr.Error())
			}
			if f.err != nil {
				r.note = joinNote(r.note, "soak figures: "+f.err.Error())
			}
		}
	}
}

var soakHeader = []string{"minute", "capture", "sync commit", "clients/rooms", "achieved ins/s", "expected", "delivered", "missing", "dup",
	"send→recv p50 ms", "send→recv p99 ms", "send→recv max ms", "outbox live/dead tuples", "outbox autovacuums",
	"listener outbox reads", "listener read mean ms", "EXPLAIN ANALYZE read ms (buffers)", "listener CPU s", "postgres CPU s", "load1"}

// printSoak prints one soak run: a line per minute, then first against
// last minute.
func printSoak(w io.Writer, table func([]string, [][]string), rows []loadRow) {
	if len(rows) == 0 {
		return
	}
	r0 := rows[0]
	fmt.Fprintf(w, "\nsoak %s, %s, run %d: %g rows/s, a line per %s.\n", r0.tr, r0.mode, r0.run, r0.rate, r0.dur)
	var cells [][]string
	var notes []string
	for i, r := range rows {
		f := r.soak
		if f == nil {
			f = &soakFigures{}
		}
		tup, reads, mean, expl := "n/a", "n/a", "n/a", "n/a"
		if f.statOK {
			tup = fmt.Sprintf("%d/%d", f.live, f.dead)
		}
		if f.readOK {
			reads, mean = strconv.FormatInt(f.readCalls, 10), strconv.FormatFloat(f.readMean, 'f', 3, 64)
		}
		if f.explainOK {
			expl = fmt.Sprintf("%.3f (%d)", f.explain, f.explainBufs)
		}
		av := "n/a"
		if f.statOK {
			av = strconv.FormatInt(f.autovac, 10)
		}
		cells = append(cells, []string{
			strconv.Itoa(i + 1), r.mode, r.sync, fmt.Sprintf("%d/%d", r.clients, r.rooms),
			strconv.FormatFloat(r.ins.rate(), 'f', 0, 64), strconv.FormatInt(r.expected, 10), strconv.FormatInt(r.delivered, 10),
			strconv.FormatInt(r.missing, 10), strconv.FormatInt(r.dups, 10),
			ms(r.latSend.p50), ms(r.latSend.p99), ms(r.latSend.peak), tup, av, reads, mean, expl,
			secs(r.cpu.lis, r.cpu.lisOK), secs(r.cpu.pg, r.cpu.pgOK), r.load,
		})
		if r.note != "" {
			notes = append(notes, fmt.Sprintf("minute %d: %s", i+1, r.note))
		}
	}
	table(soakHeader, cells)
	for _, n := range notes {
		fmt.Fprintln(w, "- "+n)
	}
	if len(rows) < 2 {
		return
	}
	first, last := rows[0], rows[len(rows)-1]
	drift := func(what string, a, b, floor float64, unit string, ok bool) {
		if !ok {
			fmt.Fprintf(w, "- %s: n/a\n", what)
			return
		}
		verdict := "no drift"
		if b > 1.5*a && b-a > floor {
			verdict = "DRIFTED up"
		} else if a > 1.5*b && a-b > floor {
			verdict = "lower at the end"
		}
		change := "n/a"
		if a > 0 {
			change = fmt.Sprintf("%+.0f%%", 100*(b-a)/a)
		}
		fmt.Fprintf(w, "- %s: minute 1 %.3f %s, minute %d %.3f %s (%s): %s\n", what, a, unit, len(rows), b, unit, change, verdict)
	}
	msf := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	fs, ls := first.soak, last.soak
	if fs == nil || ls == nil {
		fs, ls = &soakFigures{}, &soakFigures{}
	}
	fmt.Fprintf(w, "\nFirst against last minute (drift: more than 1.5× and more than the floor):\n")
	drift("send→recv p50 (floor 0.5 ms)", msf(first.latSend.p50), msf(last.latSend.p50), 0.5, "ms", first.latSend.n > 0 && last.latSend.n > 0)
	drift("send→recv p99 (floor 1 ms)", msf(first.latSend.p99), msf(last.latSend.p99), 1, "ms", first.latSend.n > 0 && last.latSend.n > 0)
	drift("listener outbox read mean (floor 0.05 ms)", fs.readMean, ls.readMean, 0.05, "ms", fs.readOK && ls.readOK)
	drift("EXPLAIN ANALYZE read (floor 0.05 ms)", fs.explain, ls.explain, 0.05, "ms", fs.explainOK && ls.explainOK)
	drift("outbox n_dead_tup (floor 10000)", float64(fs.dead), float64(ls.dead), 10000, "tuples", fs.statOK && ls.statOK)
}
