package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// W measures what capture costs the primary: pgbench's throughput of
// single-row INSERTs into a table without the capture trigger (plain), and
// watched by rowcast in each capture mode, with the listener, Redis and an
// app running (no clients). After each watched row the bench checks that
// the listener published every row the table holds.
const (
	wClients   = 8   // pgbench -c
	wThreads   = 2   // pgbench -j
	wRowSize   = 250 // the row's JSON, about
	wTableName = "public.bench_w"
	wRooms     = 10
)

// wTargets are the shares of plain's throughput each mode should keep.
var wTargets = map[string]float64{modeNotify: 65, modeWAL: 85}

type wSpec struct {
	dur   time.Duration // pgbench -T (whole seconds)
	drain time.Duration // after pgbench, wait this long without progress for the listener
}

// wRow is one W row of one run.
type wRow struct {
	run            int
	mode           string // plain, notify or wal
	tps            float64
	txns, failedTx int64
	rows           int64 // in the table afterwards
	published      int64 // by the listener meanwhile
	pubOK          bool
	caughtUp       time.Duration // from pgbench's end until every row was published
	behind         int64         // rows not yet published when pgbench ended
	dur            time.Duration // pgbench's -T
	pg, redis      time.Duration // during pgbench
	app, lis       time.Duration // until caught up
	pgbench        time.Duration
	others         time.Duration // the rest of the machine during pgbench
	othersOK       bool
	pgOK, redisOK  bool
	appOK, lisOK   bool
	load           string
	note           string
}

func (r wRow) gap() int64 { return r.rows - r.published }

// delivery says whether every row was published.
func (r wRow) delivery() string {
	switch {
	case r.mode == modePlain:
		return "no capture"
	case !r.pubOK:
		return "published: n/a"
	case r.gap() == 0:
		return fmt.Sprintf("delivered all %d", r.rows)
	case r.gap() < 0:
		return fmt.Sprintf("published %d more than the %d rows", -r.gap(), r.rows)
	}
	return fmt.Sprintf("gap: %d of %d rows not published", r.gap(), r.rows)
}

// pgbenchPath finds pgbench: Postgres 15's, else the one on PATH.
func pgbenchPath() (string, error) {
	if p := filepath.Join(pgBinDir, "pgbench"); fileExists(p) {
		return p, nil
	}
	if p, err := exec.LookPath("pgbench"); err == nil {
		return p, nil
	}
	return "", errors.New("W needs pgbench: install the Debian package postgresql-client-15 (apt-get install -y postgresql-client-15)")
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// prepareW readies the table for a row: the trigger on or off, the table
// empty, the outbox vacuumed and a checkpoint taken, so that every row
// starts alike.
func (s *stack) prepareW(ctx context.Context, mode string) error {
	stmts := []string{
		`CREATE TABLE IF NOT EXISTS ` + wTableName + ` (id bigserial PRIMARY KEY, room text NOT NULL, body text NOT NULL,
			created_at timestamptz NOT NULL DEFAULT now())`,
	}
	if mode == modePlain {
		stmts = append(stmts, `DROP TRIGGER IF EXISTS rowcast_capture ON `+wTableName)
	} else {
		stmts = append(stmts, `SELECT rowcast.watch('`+wTableName+`', 'room')`)
	}
	stmts = append(stmts, `TRUNCATE `+wTableName+` RESTART IDENTITY`, `VACUUM rowcast.outbox`)
	for _, q := range stmts {
		if _, err := s.db.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", strings.Fields(q)[0], err)
		}
	}
	// A checkpoint needs a superuser (or pg_checkpoint); without it rows
	// start less alike, which the interleaving spreads.
	_, _ = s.db.Exec(ctx, `CHECKPOINT`)
	return nil
}

var (
	tpsRE    = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)
	txnsRE   = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
	failedRE = regexp.MustCompile(`number of failed transactions: (\d+)`)
)

// runW runs one W row: pgbench against the table, in mode.
func (s *stack) runW(ctx context.Context, run int, mode string, spec wSpec) (wRow, error) {
	row := wRow{run: run, mode: mode}
	if mode != modePlain && s.cfg.noListener {
		return row, errors.New("not run: W reads the published counter of the bench's own listener (-no-listener)")
	}
	bin, err := pgbenchPath()
	if err != nil {
		return row, err
	}
	if mode == modePlain {
		// No slot, writers on the outbox: what a database without rowcast
		// has, apart from wal_level.
		err = s.prepareMode(ctx, modeNotify)
	}
	if err == nil {
		err = s.prepareW(ctx, mode)
	}
	if err != nil {
		return row, err
	}
	var (
		lis    *proc
		appPID int
	)
	if mode != modePlain {
		if lis, err = s.startListener(ctx, mode); err != nil {
			return row, err
		}
		defer lis.stop()
		a, err := s.startApp(ctx)
		if err != nil {
			return row, err
		}
		defer a.stop()
		appPID = a.pid
	}
	lisPID := 0
	if lis != nil {
		lisPID = lis.pid()
	}

	prefix := fmt.Sprintf("w%s-%d-%s-", runID, run, mode)
	body := strings.Repeat("x", max(40, wRowSize-85-len(prefix)-1))
	script := filepath.Join(s.bins.dir, fmt.Sprintf("w-%d-%s.sql", run, mode))
	sql := fmt.Sprintf("\\set r random(0, %d)\nINSERT INTO %s (room, body) VALUES ('%s' || :r, '%s');\n", wRooms-1, wTableName, prefix, body)
	if err := os.WriteFile(script, []byte(sql), 0o644); err != nil {
		return row, err
	}
	secsN := max(1, int(spec.dur.Round(time.Second)/time.Second))
	row.dur = time.Duration(secsN) * time.Second
	cmd := exec.CommandContext(ctx, bin, "-n", "-c", strconv.Itoa(wClients), "-j", strconv.Itoa(wThreads), "-T", strconv.Itoa(secsN),
		"-f", script, s.pgURL)
	cmd.Env = append(os.Environ(), "PGOPTIONS=-c synchronous_commit=off")
	var pub0 float64
	if lis != nil {
		pub0, row.pubOK = scrapeCounter(lis.metricsURL(), publishedMetric)
	}
	progress("W %s run %d: pgbench -c %d -j %d -T %d", mode, run, wClients, wThreads, secsN)
	before := s.snapshot(appPID, lisPID)
	out, err := cmd.CombinedOutput()
	ended := time.Now()
	if err != nil {
		return row, fmt.Errorf("pgbench: %w\n%s", err, out)
	}
	// pgbench's backends end after it does; their CPU moves to the
	// postmaster's children's time once it has reaped them. Reading the
	// process tree meanwhile could miss one.
	for range 100 {
		var n int
		if s.db.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'`).Scan(&n) != nil || n == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	atEnd := s.snapshot(appPID, lisPID)
	if ps := cmd.ProcessState; ps != nil {
		row.pgbench = ps.UserTime() + ps.SystemTime()
	}
	m := tpsRE.FindSubmatch(out)
	if m == nil {
		return row, fmt.Errorf("pgbench printed no tps:\n%s", out)
	}
	row.tps, _ = strconv.ParseFloat(string(m[1]), 64)
	if m := txnsRE.FindSubmatch(out); m != nil {
		row.txns, _ = strconv.ParseInt(string(m[1]), 10, 64)
	}
	if m := failedRE.FindSubmatch(out); m != nil {
		row.failedTx, _ = strconv.ParseInt(string(m[1]), 10, 64)
	}
	if err := s.db.QueryRow(ctx, `SELECT count(*) FROM `+wTableName).Scan(&row.rows); err != nil {
		return row, err
	}
	d := diff(before, atEnd)
	row.pg, row.pgOK, row.redis, row.redisOK = d.pg, d.pgOK, d.redis, d.rOK
	if d.hostOK && d.pgOK && d.rOK {
		row.others, row.othersOK = max(0, d.host-d.pg-d.redis-d.app-d.lis-row.pgbench), true
	}

	if lis != nil && row.pubOK {
		// Wait until the listener published every row, or stops making
		// progress. Each scrape of the listener's /metrics counts the
		// outbox (a full scan, slow while it is large and full of dead
		// tuples), so in NOTIFY mode the bench watches for an empty outbox
		// and scrapes once a second; in WAL mode the outbox stays empty.
		last, lastN := time.Now(), pub0
		if n, ok := scrapeCounter(lis.metricsURL(), publishedMetric); ok {
			row.behind = row.rows - int64(n-pub0)
			lastN = n
		}
		limit := ended.Add(5 * time.Minute)
		lastScrape := time.Now()
		for ctx.Err() == nil && time.Now().Before(limit) {
			scrape := mode == modeWAL || time.Since(lastScrape) >= time.Second
			if !scrape {
				var more bool
				if err := s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM rowcast.outbox)`).Scan(&more); err == nil && !more {
					scrape = true
				}
			}
			if scrape {
				lastScrape = time.Now()
				n, ok := scrapeCounter(lis.metricsURL(), publishedMetric)
				if ok && n != lastN {
					last, lastN = time.Now(), n
				}
				row.published = int64(lastN - pub0)
				if row.published >= row.rows {
					row.caughtUp = time.Since(ended)
					break
				}
			}
			if time.Since(last) > spec.drain {
				row.note = fmt.Sprintf("no progress for %s", spec.drain)
				break
			}
			if mode == modeWAL {
				time.Sleep(50 * time.Millisecond)
			} else {
				time.Sleep(20 * time.Millisecond)
			}
		}
		caught := s.snapshot(appPID, lisPID)
		dl := diff(before, caught)
		row.app, row.appOK, row.lis, row.lisOK = dl.app, dl.appOK, dl.lis, dl.lisOK
		if mode == modeNotify {
			var left int64
			if err := s.db.QueryRow(ctx, `SELECT count(*) FROM rowcast.outbox`).Scan(&left); err == nil && left > 0 {
				row.note = joinNote(row.note, fmt.Sprintf("%d rows left in the outbox", left))
			}
		}
	}
	if row.failedTx > 0 {
		row.note = joinNote(row.note, fmt.Sprintf("%d pgbench transactions failed", row.failedTx))
	}
	row.load = loadavg()
	return row, nil
}

var wHeader = []string{"scenario", "capture", "runs", "tps", "share of plain %", "target", "transactions", "delivered",
	"behind at pgbench end (rows)", "caught up s after pgbench", "sustained rows/s (rows ÷ (T + catch-up))", "postgres CPU µs/tx", "listener CPU µs/row", "app CPU s", "redis CPU s", "pgbench CPU s", "other CPU s", "load1"}

// wTable groups W rows by mode: medians over the runs, and each mode's
// share of the plain row of the same run.
func wTable(rows []wRow) ([][]string, []string) {
	var order []string
	by := map[string][]wRow{}
	plain := map[int]float64{}
	for _, r := range rows {
		if by[r.mode] == nil {
			order = append(order, r.mode)
		}
		by[r.mode] = append(by[r.mode], r)
		if r.mode == modePlain {
			plain[r.run] = r.tps
		}
	}
	var out [][]string
	var notes []string
	for _, mode := range order {
		runs := by[mode]
		fig := func(f func(wRow) (float64, bool)) spread {
			var xs []float64
			for _, r := range runs {
				if v, ok := f(r); ok {
					xs = append(xs, v)
				}
			}
			return spreadOf(xs)
		}
		share := fig(func(r wRow) (float64, bool) {
			p, ok := plain[r.run]
			return 100 * r.tps / p, ok && p > 0
		})
		target := "—"
		if t, ok := wTargets[mode]; ok && share.n > 0 {
			verdict := "met"
			if share.med < t {
				verdict = "missed"
			}
			target = fmt.Sprintf("≥ %g%%: %s", t, verdict)
		}
		shareText := "100"
		if mode != modePlain {
			shareText = share.text(1, true)
		}
		var txns, rowsN, gap int64
		allOK := true
		var gaps []string
		for _, r := range runs {
			txns += r.txns
			rowsN += r.rows
			gap += r.gap()
			allOK = allOK && r.pubOK
			gaps = append(gaps, strconv.FormatInt(r.gap(), 10))
			if r.note != "" {
				notes = append(notes, fmt.Sprintf("W %s run %d: %s", r.mode, r.run, r.note))
			}
		}
		delivered := "—"
		switch {
		case mode == modePlain:
		case !allOK:
			delivered = "n/a"
		case gap == 0:
			delivered = fmt.Sprintf("all (%d)", rowsN)
		default:
			delivered = fmt.Sprintf("gap %d of %d (%s)", gap, rowsN, strings.Join(gaps, "+"))
		}
		cpu := func(f func(wRow) (time.Duration, bool)) string {
			return fig(func(r wRow) (float64, bool) { d, ok := f(r); return d.Seconds(), ok }).text(2, false)
		}
		caught, perTx, perRow, behind, sustained := "—", "n/a", "—", "—", "—"
		if mode != modePlain {
			// What the primary and the listener keep up together: the rows
			// over pgbench's time plus the listener's catch-up.
			sustained = fig(func(r wRow) (float64, bool) {
				return float64(r.rows) / (r.dur.Seconds() + r.caughtUp.Seconds()), r.pubOK && r.gap() == 0 && r.dur > 0
			}).text(0, true)
			behind = fig(func(r wRow) (float64, bool) { return float64(r.behind), r.pubOK }).text(0, true)
			caught = fig(func(r wRow) (float64, bool) { return r.caughtUp.Seconds(), r.pubOK && r.gap() == 0 }).text(2, true)
			perRow = fig(func(r wRow) (float64, bool) {
				return float64(r.lis) / float64(time.Microsecond) / float64(r.rows), r.lisOK && r.rows > 0
			}).text(1, true)
		}
		perTx = fig(func(r wRow) (float64, bool) {
			return float64(r.pg) / float64(time.Microsecond) / float64(r.txns), r.pgOK && r.txns > 0
		}).text(1, true)
		load := (&loadGroup{runs: loadsOf(runs)}).loads()
		out = append(out, []string{
			"W", mode, strconv.Itoa(len(runs)),
			fig(func(r wRow) (float64, bool) { return r.tps, true }).text(0, true),
			shareText, target, strconv.FormatInt(txns, 10), delivered, behind, caught, sustained, perTx, perRow,
			cpu(func(r wRow) (time.Duration, bool) { return r.app, r.appOK }),
			cpu(func(r wRow) (time.Duration, bool) { return r.redis, r.redisOK }),
			cpu(func(r wRow) (time.Duration, bool) { return r.pgbench, r.pgbench > 0 }),
			cpu(func(r wRow) (time.Duration, bool) { return r.others, r.othersOK }),
			load,
		})
	}
	return out, notes
}

// loadsOf carries the rows' load1 into load rows, for loadGroup.loads.
func loadsOf(rows []wRow) []loadRow {
	out := make([]loadRow, len(rows))
	for i, r := range rows {
		out[i].load = r.load
	}
	return out
}
