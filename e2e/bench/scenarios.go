package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	process "github.com/rowcast/rowcast/e2e/proc"
)

// loadSpec is a load scenario: clients spread over rooms, rows inserted at
// each of rates in turn for dur.
type loadSpec struct {
	name        string
	tr          transport
	run         int // 1-based; names the rooms, so runs never share one
	clients     int
	rooms       int
	rates       []float64
	dur         time.Duration
	rowSize     int
	connectRate int
	workers     int
	drain       time.Duration // wait for late deliveries after the last insert
	// stopAt ends a stepped scenario after the first step whose send→recv
	// p99 reaches it, or that loses anything (0: run every step).
	stopAt time.Duration
	// profile, when set, saves a CPU profile of the app during the first
	// phase into this directory.
	profile string
	// mode is the listener's capture mode; sync the synchronous_commit of
	// the inserting sessions ("" = the server's).
	mode, sync string
	// phase, when set, is called as each phase starts; what it returns is
	// called with the phase's row before the row is emitted (soak's
	// per-minute figures).
	phase func(ctx context.Context) func(*loadRow)
}

// runID names this process's rooms so runs never share a room's history.
var runID = func() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}()

func roomNames(prefix string, n int) []string {
	rooms := make([]string, n)
	for i := range rooms {
		rooms[i] = fmt.Sprintf("%s%s-%d", prefix, runID, i)
	}
	return rooms
}

// sourceAddrs is how many loopback source addresses n connections use.
func sourceAddrs(n int) int { return 1 + n/4000 }

// runLoad connects the clients, runs each rate as a phase and returns one
// row per phase. A fresh app and listener serve each scenario, so their
// peak RSS is this scenario's.
func (s *stack) runLoad(ctx context.Context, spec loadSpec, emit func(loadRow)) ([]loadRow, error) {
	pool, err := s.insertPool(ctx, spec.sync)
	if err != nil {
		return nil, err
	}
	var lis *proc
	if !s.cfg.noListener {
		if lis, err = s.startListener(ctx, spec.mode); err != nil {
			return nil, err
		}
		defer lis.stop()
	}
	a, err := s.startApp(ctx)
	if err != nil {
		return nil, err
	}
	defer a.stop()
	lisPID := s.cfg.listenPID
	if lis != nil {
		lisPID = lis.pid()
	}

	// Rooms are never shared between runs or variants.
	rooms := roomNames(fmt.Sprintf("b%s%s%d%s%s-", spec.name, spec.tr, spec.run, spec.mode, spec.sync), spec.rooms)
	label := fmt.Sprintf("%s %s %s sync=%s", spec.name, spec.tr, spec.mode, s.syncLabel(spec.sync))
	progress("%s: connecting %d clients over %d rooms at %d/s", label, spec.clients, spec.rooms, spec.connectRate)
	f := connectFleet(ctx, newDialers(sourceAddrs(spec.clients)), spec.tr, a.base, spec.clients, rooms, spec.connectRate)
	defer f.close()
	if len(f.clients) == 0 {
		return nil, fmt.Errorf("no client connected: %v", f.firstErr)
	}
	if f.failed > 0 {
		progress("  %d clients failed to connect: %v", f.failed, f.firstErr)
	}
	progress("  %d connected in %s", len(f.clients), f.took.Round(time.Millisecond))

	in := newInserter(pool, rooms, spec.rowSize, spec.workers)
	var rows []loadRow
	for i, rate := range spec.rates {
		row := loadRow{scenario: spec.name, tr: spec.tr, mode: spec.mode, sync: s.syncLabel(spec.sync), run: max(spec.run, 1),
			clients: len(f.clients), rooms: spec.rooms, rate: rate, dur: spec.dur, connectFailed: f.failed, connectErr: f.firstErr}
		switch {
		case spec.phase != nil:
			row.scenario = fmt.Sprintf("%s m%d", spec.name, i+1)
		case len(spec.rates) > 1:
			row.scenario = fmt.Sprintf("%s@%g", spec.name, rate)
		}
		var finish func(*loadRow)
		if spec.phase != nil {
			finish = spec.phase(ctx)
		}
		progress("%s: inserting %g rows/s for %s", label, rate, spec.dur)
		var profDone chan error
		if spec.profile != "" && i == 0 {
			secsN := max(1, int((spec.dur - 2*time.Second).Seconds()))
			targets := map[string]*proc{"app": a.proc, "listener": lis}
			profDone = make(chan error, 2*len(targets))
			for who, p := range targets {
				base := filepath.Join(spec.profile, fmt.Sprintf("%s-%s-%s%s", who, spec.name, spec.tr, modeSuffix(spec.mode)))
				go func() {
					time.Sleep(time.Second)
					profDone <- saveProfile(ctx, p, "/debug/pprof/profile?seconds="+strconv.Itoa(secsN), base+".cpu.pprof")
				}()
				// A short execution trace shows where an event waits:
				// go tool trace -pprof=sched <file>.
				go func() {
					time.Sleep(2 * time.Second)
					profDone <- saveProfile(ctx, p, "/debug/pprof/trace?seconds=2", base+".trace")
				}()
			}
		}
		d0 := f.counters.distinct.Load()
		before := s.snapshot(a.pid, lisPID)
		benchBefore := procUsage(selfPID)
		hist0, _ := scrapeHist(a.base, handoffMetric)
		pub0, _ := scrapeHist(lis.metricsURL(), publishMetric)
		ins := in.run(ctx, rate, spec.dur)
		row.ins = ins
		row.insExec, row.insLag = distOf(ins.exec), distOf(ins.lag)
		if ins.failed > 0 || ins.firstErr != nil {
			row.note = fmt.Sprintf("%d inserts failed: %v", ins.failed, ins.firstErr)
		}
		if row.insLag.p99 > 10*time.Millisecond {
			row.note = joinNote(row.note, fmt.Sprintf("rows sent late (timer wake-up, or every connection busy): due→send p50/p99/max %s/%s/%s ms",
				ms(row.insLag.p50), ms(row.insLag.p99), ms(row.insLag.peak)))
		}
		// Expected: every committed row once per client of its room.
		perRoom := make([]int64, spec.rooms)
		for seq := ins.lo; seq < ins.hi; seq++ {
			if in.committed(seq) {
				perRoom[seq%int64(spec.rooms)]++
			}
		}
		for _, c := range f.clients {
			row.expected += perRoom[c.room]
		}
		// Wait until everything arrived, or no more arrives for drain.
		last, lastN := time.Now(), f.counters.distinct.Load()
		for f.counters.distinct.Load()-d0 < row.expected && time.Since(last) < spec.drain && ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
			if n := f.counters.distinct.Load(); n != lastN {
				last, lastN = time.Now(), n
			}
		}
		after := s.snapshot(a.pid, lisPID)
		row.window = last.Sub(before.at)
		row.cpu = diff(before, after)
		row.benchCPU = procUsage(selfPID).cpu - benchBefore.cpu
		hist1, _ := scrapeHist(a.base, handoffMetric)
		row.handoff = [2]bucketQuantile{hist1.quantile(hist0, 0.5), hist1.quantile(hist0, 0.99)}
		pub1, _ := scrapeHist(lis.metricsURL(), publishMetric)
		row.publish = [2]bucketQuantile{pub1.quantile(pub0, 0.5), pub1.quantile(pub0, 0.99)}
		row.load = loadavg()
		if ctx.Err() != nil {
			row.note = joinNote(row.note, "interrupted: the figures are partial")
		}

		var lat, latSend []int64
		for _, c := range f.clients {
			pf := c.take(ins.lo, ins.hi, in.committed)
			row.delivered += pf.events
			row.distinct += pf.distinct
			row.missing += pf.missing
			row.dups += pf.dups
			row.reorder += pf.reorder
			row.unexpected += pf.unexpected
			row.foreign += pf.foreign
			if pf.ended {
				row.ended++
				if row.endReason == "" {
					row.endReason = pf.closedBy
				}
			}
			lat = append(lat, pf.lat...)
			latSend = append(latSend, pf.latSend...)
		}
		row.lat, row.latSend = distOf(lat), distOf(latSend)
		if row.ended > 0 {
			row.note = joinNote(row.note, fmt.Sprintf("%d connections closed by the server (%s)", row.ended, row.endReason))
		}
		if row.reorder > 0 || row.foreign > 0 || row.unexpected > 0 {
			row.note = joinNote(row.note, fmt.Sprintf("ids not rising within a room %d, unparsed %d, uncommitted yet delivered %d", row.reorder, row.foreign, row.unexpected))
		}
		if row.connectFailed > 0 {
			row.note = joinNote(row.note, fmt.Sprintf("%d clients failed to connect: %v", row.connectFailed, row.connectErr))
		}
		for range cap(profDone) {
			if err := <-profDone; err != nil {
				row.note = joinNote(row.note, "profile: "+err.Error())
			}
		}
		if finish != nil {
			finish(&row)
		}
		rows = append(rows, row)
		emit(row)
		if spec.stopAt > 0 && (row.latSend.p99 >= spec.stopAt || !row.ok()) {
			break
		}
		if ins.rate() < 0.9*rate {
			rows[len(rows)-1].note = joinNote(row.note, "inserts could not keep the rate: stopped")
			break
		}
	}
	return rows, nil
}

// modeSuffix tells profiles of WAL-mode rows apart (NOTIFY mode keeps the
// names it always had).
func modeSuffix(mode string) string {
	if mode == modeWAL {
		return "-wal"
	}
	return ""
}

func joinNote(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// idleRow is the app's memory with n idle connections.
type idleRow struct {
	run                int
	tr                 transport
	mode               string
	clients, failed    int
	firstErr           error
	connectTook        time.Duration
	rss0, rss1         int64
	heap0, heap1       int64 // Go heap in use after a GC (0: not available)
	stack0, stack1     int64
	goroutines         uint64
	ended              int
	hold               time.Duration
	load               string
	profileErr, memErr error
}

// Columns of idleRow.cells that several runs add up, and those given as a
// range (see mergeCells).
var idleSum, idleSpan = []int{3, 10}, []int{11}

var idleHeader = []string{"scenario", "transport", "connections", "failed", "connect s", "app RSS before/after MiB",
	"RSS KiB/conn", "Go heap KiB/conn", "Go stacks KiB/conn", "goroutines", "closed during hold", "load1"}

func (r idleRow) cells() []string {
	n := float64(max(r.clients, 1))
	heap, stack := "n/a", "n/a"
	if r.heap1 > 0 {
		heap = kib(float64(r.heap1-r.heap0) / n)
		stack = kib(float64(r.stack1-r.stack0) / n)
	}
	return []string{"S3", string(r.tr), strconv.Itoa(r.clients), strconv.Itoa(r.failed), secs(r.connectTook, true),
		mib(r.rss0) + "/" + mib(r.rss1), kib(float64(r.rss1-r.rss0) / n), heap, stack,
		strconv.FormatUint(r.goroutines, 10), strconv.Itoa(r.ended), r.load}
}

// runIdle holds n idle connections and measures the app's memory per
// connection: RSS delta / n, and the Go heap delta after a GC.
func (s *stack) runIdle(ctx context.Context, run int, tr transport, mode string, n, nrooms, connectRate int, hold time.Duration, profile string) (idleRow, error) {
	row := idleRow{tr: tr, mode: mode, hold: hold}
	var lis *proc
	if !s.cfg.noListener {
		var err error
		if lis, err = s.startListener(ctx, mode); err != nil {
			return row, err
		}
		defer lis.stop()
	}
	a, err := s.startApp(ctx)
	if err != nil {
		return row, err
	}
	defer a.stop()
	time.Sleep(time.Second)
	if m, ok := memStats(a.proc, true); ok {
		row.heap0, row.stack0 = int64(m["heap_alloc"]), int64(m["stack_inuse"])
	}
	row.rss0 = procUsage(a.pid).rss

	rooms := roomNames(fmt.Sprintf("bS3%s%d%s-", tr, run, mode), nrooms)
	progress("S3 %s %s: connecting %d idle clients at %d/s", tr, mode, n, connectRate)
	f := connectFleet(ctx, newDialers(sourceAddrs(n)), tr, a.base, n, rooms, connectRate)
	defer f.close()
	row.clients, row.failed, row.firstErr, row.connectTook = len(f.clients), f.failed, f.firstErr, f.took
	progress("  %d connected in %s (%d failed: %v); holding %s", len(f.clients), f.took.Round(time.Millisecond), f.failed, f.firstErr, hold)
	select {
	case <-time.After(hold):
	case <-ctx.Done():
		return row, ctx.Err()
	}
	if m, ok := memStats(a.proc, true); ok {
		row.heap1, row.stack1, row.goroutines = int64(m["heap_alloc"]), int64(m["stack_inuse"]), m["goroutines"]
	} else {
		row.heap0 = 0
	}
	row.rss1 = procUsage(a.pid).rss
	if row.rss1 == 0 {
		row.rss0 = 0
	}
	if profile != "" && a.proc != nil {
		row.profileErr = saveProfile(ctx, a.proc, "/debug/pprof/heap", filepath.Join(profile, fmt.Sprintf("app-S3-%s%s.heap.pprof", tr, modeSuffix(mode))))
	}
	row.ended = f.ended()
	row.load = loadavg()
	return row, nil
}

// listenerRow is the L scenario: a backlog moved from the outbox to Redis.
type listenerRow struct {
	run            int
	mode           string
	backlog        int
	backlogBytes   int64 // the backlog's size: the outbox table, or the WAL the slot holds
	bytesOK        bool
	rooms          int
	insertTook     time.Duration
	startToLead    time.Duration
	drainTook      time.Duration
	lisCPU         time.Duration
	lisOK          bool
	lisHWM         int64
	redis, pg      time.Duration
	rOK, pgOK      bool
	others         string
	load           string
	profileErr     error
	rejectedBefore int64
	rejectedAfter  int64
}

// Columns of listenerRow.cells that several runs add up, and those given
// as a range (see mergeCells).
var listenerSum, listenerSpan = []int{14}, []int{15}

var listenerHeader = []string{"scenario", "backlog rows", "rooms", "backlog MiB", "backlog insert s", "start→leading s", "drain s", "rows/s",
	"listener CPU s", "listener µs/row", "listener peak RSS MiB", "redis CPU s", "postgres CPU s", "other CPU s", "rejected", "load1"}

func (r listenerRow) rate() float64 {
	if r.drainTook <= 0 {
		return 0
	}
	return float64(r.backlog) / r.drainTook.Seconds()
}

func (r listenerRow) cells() []string {
	per := "n/a"
	if r.lisOK && r.backlog > 0 {
		per = strconv.FormatFloat(float64(r.lisCPU)/float64(time.Microsecond)/float64(r.backlog), 'f', 2, 64)
	}
	size := "n/a"
	if r.bytesOK {
		size = mib(r.backlogBytes)
	}
	return []string{"L", strconv.Itoa(r.backlog), strconv.Itoa(r.rooms), size, secs(r.insertTook, true), secs(r.startToLead, true),
		secs(r.drainTook, true), strconv.FormatFloat(r.rate(), 'f', 0, 64), secs(r.lisCPU, r.lisOK), per,
		mibOK(r.lisHWM, r.lisOK), secs(r.redis, r.rOK), secs(r.pg, r.pgOK), r.others,
		strconv.FormatInt(r.rejectedAfter-r.rejectedBefore, 10), r.load}
}

// runListener inserts a backlog with no listener running, starts one and
// times it until the backlog is published: in NOTIFY mode until the outbox
// is empty; in WAL mode, where the backlog waits in the slot (a WAL-mode
// listener ran and stopped before the insert), until the listener's
// published counter reaches the backlog.
func (s *stack) runListener(ctx context.Context, run int, mode string, backlog, nrooms, rowSize int, profile string) (listenerRow, error) {
	row := listenerRow{mode: mode, backlog: backlog, rooms: nrooms}
	if s.cfg.noListener {
		return row, errors.New("not run: the listener is not the bench's (-no-listener)")
	}
	if mode == modeWAL {
		if err := s.armWAL(ctx); err != nil {
			return row, fmt.Errorf("arm WAL capture: %w", err)
		}
	} else if err := s.prepareMode(ctx, mode); err != nil {
		return row, err
	}
	var left int64
	if err := s.db.QueryRow(ctx, `SELECT count(*) FROM rowcast.outbox`).Scan(&left); err != nil {
		return row, err
	}
	if left > 0 {
		return row, fmt.Errorf("the outbox holds %d rows before the backlog: is another listener stopped or missing?", left)
	}
	_ = s.db.QueryRow(ctx, `SELECT count(*) FROM rowcast.rejected`).Scan(&row.rejectedBefore)
	room := fmt.Sprintf("bL%d%s-%s", run, mode, runID)
	bodyLen := max(40, rowSize-rowOverhead-len(room)-3)
	progress("L %s: inserting a backlog of %d rows over %d rooms", mode, backlog, nrooms)
	t0 := time.Now()
	if _, err := s.db.Exec(ctx, `
		INSERT INTO chat_message (room, author, body)
		SELECT $1 || '-' || (g % $2), 'bench', 'b' || g || '.0.' || repeat('x', $3)
		FROM generate_series(1, $4) AS g`, room, nrooms, bodyLen, backlog); err != nil {
		return row, fmt.Errorf("insert backlog: %w", err)
	}
	row.insertTook = time.Since(t0)
	if mode == modeWAL {
		row.bytesOK = s.db.QueryRow(ctx, `SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1`,
			walSlot).Scan(&row.backlogBytes) == nil
	} else {
		row.bytesOK = s.db.QueryRow(ctx, `SELECT pg_total_relation_size('rowcast.outbox')`).Scan(&row.backlogBytes) == nil
	}

	before := s.snapshot(selfPID, 0)
	progress("L %s: starting the listener", mode)
	health, err := process.FreeAddr()
	if err != nil {
		return row, err
	}
	start := time.Now()
	p, err := s.startProc("listener", s.bins.listener, s.env("HEALTH_ADDR="+health, "ROWCAST_CAPTURE="+mode))
	if err != nil {
		return row, err
	}
	p.metrics = "http://" + health
	defer p.stop()
	profDone := make(chan error, 1)
	if profile != "" {
		go func() {
			// The hook listens a moment after the process starts.
			for range 200 {
				if resp, err := http.Get("http://" + p.debug + "/debug/memstats"); err == nil {
					resp.Body.Close()
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			profDone <- saveProfile(ctx, p, "/debug/pprof/profile?seconds=5", filepath.Join(profile, "listener-L"+modeSuffix(mode)+".cpu.pprof"))
		}()
	} else {
		profDone <- nil
	}
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	err = p.waitLog(lctx, "leading")
	cancel()
	if err != nil {
		return row, err
	}
	lead := time.Now()
	row.startToLead = lead.Sub(start)
	deadline := lead.Add(10 * time.Minute)
	for {
		var more bool
		if mode == modeWAL {
			n, _ := scrapeCounter(p.metrics, publishedMetric)
			more = n < float64(backlog)
		} else if err := s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM rowcast.outbox)`).Scan(&more); err != nil {
			return row, err
		}
		if !more {
			break
		}
		if time.Now().After(deadline) {
			return row, errors.New("backlog not published after 10 minutes")
		}
		select {
		case <-ctx.Done():
			return row, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	row.drainTook = time.Since(lead)
	u := procUsage(p.pid())
	after := s.snapshot(selfPID, 0)
	row.lisCPU, row.lisOK, row.lisHWM = u.cpu, u.ok, u.hwm
	d := diff(before, after)
	row.redis, row.rOK, row.pg, row.pgOK = d.redis, d.rOK, d.pg, d.pgOK
	// The bench stands in as "app" in the snapshots: others excludes it.
	d.lis, d.lisOK = u.cpu, u.ok
	row.others = secs(d.others(0))
	row.load = loadavg()
	_ = s.db.QueryRow(ctx, `SELECT count(*) FROM rowcast.rejected`).Scan(&row.rejectedAfter)
	row.profileErr = <-profDone
	return row, nil
}
