package main

import (
	"context"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestSmoke runs S1 scaled down over both transports against the real
// system and checks that every committed row reached every client of its
// room exactly once. It prints the figures and asserts nothing about time.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	progressW = tWriter{t}
	raiseFileLimit(1 << 16)
	s, err := startStack(ctx, t, stackConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range []transport{ws, sse} {
		spec := loadSpec{name: "smoke", tr: tr, clients: 20, rooms: 5, rates: []float64{50}, dur: 3 * time.Second,
			rowSize: 1024, connectRate: 200, workers: 4, drain: 10 * time.Second, mode: modeNotify}
		rows, err := s.runLoad(ctx, spec, func(loadRow) {})
		if err != nil {
			t.Fatalf("%s: %v", tr, err)
		}
		r := rows[0]
		t.Logf("\n| %s |\n| %s |", strings.Join(loadHeader, " | "), strings.Join((&loadGroup{runs: rows[:1], of: 1}).cells(), " | "))
		if r.ins.committed == 0 || r.expected == 0 {
			t.Fatalf("%s: nothing committed (%d) or expected (%d): %s", tr, r.ins.committed, r.expected, r.note)
		}
		if r.missing != 0 || r.dups != 0 || r.unexpected != 0 || r.ended != 0 || r.connectFailed != 0 || r.distinct != r.expected {
			t.Errorf("%s: expected %d, distinct %d, missing %d, duplicates %d, uncommitted %d, closed %d, connect failures %d: %s",
				tr, r.expected, r.distinct, r.missing, r.dups, r.unexpected, r.ended, r.connectFailed, r.note)
		}
		if r.reorder != 0 || r.foreign != 0 {
			t.Errorf("%s: %d event ids not rising within their room, %d unparsed", tr, r.reorder, r.foreign)
		}
	}
	// The app alone (no REDIS_URL) relays in-process: the same load, all
	// delivered. Before W, which leaves the database in WAL mode (a NOTIFY-
	// mode relay refuses it).
	t.Run("memory bus", func(t *testing.T) {
		progressW = tWriter{t}
		s.cfg.memoryBus, s.cfg.noListener = true, true
		defer func() { s.cfg.memoryBus, s.cfg.noListener = false, false }()
		spec := loadSpec{name: "smoke-memory", tr: ws, clients: 20, rooms: 5, rates: []float64{50}, dur: 3 * time.Second,
			rowSize: 1024, connectRate: 200, workers: 4, drain: 10 * time.Second, mode: modeNotify}
		rows, err := s.runLoad(ctx, spec, func(loadRow) {})
		if err != nil {
			t.Fatal(err)
		}
		r := rows[0]
		if r.expected == 0 || r.missing != 0 || r.dups != 0 || r.distinct != r.expected {
			t.Errorf("memory bus: expected %d, distinct %d, missing %d, duplicates %d: %s", r.expected, r.distinct, r.missing, r.dups, r.note)
		}
	})
	// W scaled down: 2 s of pgbench per row, one run; every row of the
	// watched table must be published, in both capture modes.
	t.Run("W", func(t *testing.T) {
		if _, err := pgbenchPath(); err != nil {
			t.Skip(err)
		}
		progressW = tWriter{t}
		var rows []wRow
		for _, mode := range []string{modePlain, modeNotify, modeWAL} {
			row, err := s.runW(ctx, 1, mode, wSpec{dur: 2 * time.Second, drain: 10 * time.Second})
			if err != nil {
				t.Fatalf("W %s: %v", mode, err)
			}
			if row.tps <= 0 || row.rows == 0 || row.rows != row.txns {
				t.Errorf("W %s: tps %.0f, %d rows in the table for %d transactions", mode, row.tps, row.rows, row.txns)
			}
			if mode != modePlain && (!row.pubOK || row.gap() != 0) {
				t.Errorf("W %s: %s", mode, row.delivery())
			}
			rows = append(rows, row)
		}
		cells, _ := wTable(rows)
		for _, c := range cells {
			t.Logf("| %s |", strings.Join(c, " | "))
		}
	})
	// WT scaled down: 1 s per row, one run; every trigger in both states.
	t.Run("WT", func(t *testing.T) {
		if _, err := pgbenchPath(); err != nil {
			t.Skip(err)
		}
		progressW = tWriter{t}
		rows, err := s.runWT(ctx, 1, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != len(wtStates)*len(wtTriggers) {
			t.Fatalf("WT: %d rows, want %d", len(rows), len(wtStates)*len(wtTriggers))
		}
		for _, r := range rows {
			if r.tps <= 0 || r.txns == 0 {
				t.Errorf("WT %s, %s: %.0f tps, %d transactions", r.state, r.trigger, r.tps, r.txns)
			}
		}
		var left int
		if err := s.db.QueryRow(ctx, `SELECT count(*) FROM rowcast.outbox WHERE table_name LIKE 'public.bench\_wt\_%'`).Scan(&left); err != nil || left != 0 {
			t.Errorf("WT left %d outbox rows behind (%v)", left, err)
		}
		for _, c := range wtTable(rows) {
			t.Logf("| %s |", strings.Join(c, " | "))
		}
	})
}

// tWriter sends progress lines to the test log.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestSpread(t *testing.T) {
	for _, tc := range []struct {
		xs        []float64
		med       float64
		text      string
		textNoRng string
	}{
		{[]float64{1.51, 1.38, 1.42}, 1.42, "1.42 (1.38–1.51)", "1.42"},
		{[]float64{4, 1, 3, 2}, 2.5, "2.50 (1.00–4.00)", "2.50"}, // even count: the mean of the middle two
		{[]float64{0.7}, 0.7, "0.70", "0.70"},                    // one run: no range
		{nil, 0, "n/a", "n/a"},
	} {
		s := spreadOf(tc.xs)
		if s.med != tc.med || s.text(2, true) != tc.text || s.text(2, false) != tc.textNoRng {
			t.Errorf("spreadOf(%v) = %+v, %q, %q; want median %v, %q, %q", tc.xs, s, s.text(2, true), s.text(2, false), tc.med, tc.text, tc.textNoRng)
		}
	}
	xs := []float64{3, 1, 2}
	spreadOf(xs)
	if !slices.Equal(xs, []float64{3, 1, 2}) {
		t.Errorf("spreadOf reordered its input: %v", xs)
	}
}

func TestLoadGroupCells(t *testing.T) {
	row := func(run int, p50 time.Duration, missing int64) loadRow {
		return loadRow{scenario: "S1", tr: ws, run: run, clients: 100, rooms: 10, rate: 200, expected: 4000, delivered: 4000 - missing,
			missing: missing, latSend: dist{n: 4000, p50: p50, p90: 2 * p50, p99: 3 * p50, peak: 4 * p50}, load: "1.5"}
	}
	g := groupLoad([]loadRow{row(1, 1420*time.Microsecond, 0), row(2, 1380*time.Microsecond, 3), row(3, 1510*time.Microsecond, 0)}, 3)
	if len(g) != 1 || len(g[0].runs) != 3 {
		t.Fatalf("groups %+v", g)
	}
	c := g[0].cells()
	col := func(name string) string { return c[slices.Index(loadHeader, name)] }
	for name, want := range map[string]string{
		"runs":             "3",
		"expected":         "12000",
		"delivered":        "11997",
		"missing":          "3 (0+3+0)",
		"dup":              "0",
		"send→recv p50 ms": "1.42 (1.38–1.51)",
		"send→recv max ms": "5.68 (5.52–6.04)",
		"load1":            "1.50",
	} {
		if got := col(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if len(c) != len(loadHeader) {
		t.Errorf("%d cells for %d columns", len(c), len(loadHeader))
	}
	if slices.Index(loadHeader, "send→recv p50 ms") > slices.Index(loadHeader, "capture→recv p50 ms") {
		t.Error("send→recv must come before capture→recv")
	}
	short := groupLoad([]loadRow{row(1, time.Millisecond, 0)}, 3)[0].cells()
	if got := short[slices.Index(loadHeader, "runs")]; got != "1 of 3" {
		t.Errorf("runs of a step reached once = %q", got)
	}
}

func TestMergeCells(t *testing.T) {
	runs := [][]string{
		{"S3", "ws", "10000", "0", "16.7/307.4", "29.8", "n/a", "1.20"},
		{"S3", "ws", "10000", "2", "16.5/310.0", "30.12", "n/a", "3.40"},
		{"S3", "ws", "9998", "1", "16.9/305.0", "29.5", "n/a", "2.00"},
	}
	got := mergeCells(runs, []int{3}, []int{7})
	want := []string{"S3", "ws", "10000", "3", "16.7/307.4", "29.80", "n/a", "1.20–3.40"}
	if !slices.Equal(got, want) {
		t.Errorf("mergeCells = %q, want %q", got, want)
	}
	if got := mergeCells([][]string{{"a"}, {"b"}}, nil, nil); got[0] != "a, b" {
		t.Errorf("mixed text = %q", got[0])
	}
}

func TestHandoffQuantileInterpolates(t *testing.T) {
	bounds := []float64{.001, .002, .005, 1e9}
	h0 := latencyHist{bounds: bounds, counts: []float64{10, 10, 10, 10}}
	// Between the scrapes: 40 events ≤ 1 ms, 40 in (1, 2] ms, 20 in (2, 5] ms.
	h := latencyHist{bounds: bounds, counts: []float64{50, 90, 110, 110}}
	near := func(q bucketQuantile, ms float64) bool {
		return q.ok && !q.over && math.Abs(float64(q.d)/float64(time.Millisecond)-ms) < 1e-6
	}
	if q := h.quantile(h0, 0.5); !near(q, 1.25) { // rank 50: 10 of the 40 events in (1, 2]
		t.Errorf("p50 = %+v, want 1.25 ms", q)
	}
	if q := h.quantile(h0, 0.2); !near(q, 0.5) { // rank 20 of the 40 in [0, 1]
		t.Errorf("p20 = %+v, want 0.5 ms", q)
	}
	if q := h.quantile(h0, 0.99); !near(q, 4.85) { // rank 99: 19 of the 20 in (2, 5]
		t.Errorf("p99 = %+v, want 4.85 ms", q)
	}
	over := latencyHist{bounds: bounds, counts: []float64{10, 10, 10, 20}}
	if q := over.quantile(h0, 0.5); !q.ok || !q.over || q.d != 5*time.Millisecond {
		t.Errorf("quantile in +Inf = %+v, want the last bound, over", q)
	}
	if q := h0.quantile(h0, 0.5); q.ok {
		t.Errorf("no events: %+v", q)
	}
	if q := h.quantile(latencyHist{}, 0.5); q.ok {
		t.Errorf("mismatched scrapes: %+v", q)
	}
}

func TestTreeCPUCoversSelf(t *testing.T) {
	own := procUsage(os.Getpid()).cpu // first: the tree is read later, never with less
	self, ok := treeCPU(os.Getpid())
	if !ok || self < own {
		t.Errorf("treeCPU(self) = %v, %v; own CPU before %v", self, ok, own)
	}
	if _, ok := treeCPU(1 << 30); ok {
		t.Error("treeCPU of a missing process is ok")
	}
}

func TestVariants(t *testing.T) {
	both, _ := parseCapture("both")
	for _, tc := range []struct {
		o    options
		want []variant
	}{
		{options{modes: []string{modeNotify}}, []variant{{modeNotify, ""}}},
		// WAL rows default to on: logical decoding streams only flushed WAL.
		{options{modes: both}, []variant{{modeNotify, ""}, {modeWAL, "on"}}},
		{options{modes: both, syncs: []string{"on"}}, []variant{{modeNotify, "on"}, {modeWAL, "on"}}},
		{options{modes: []string{modeWAL}, syncs: []string{"off", "on"}}, []variant{{modeWAL, "off"}, {modeWAL, "on"}}},
	} {
		if got := tc.o.variants(); !slices.Equal(got, tc.want) {
			t.Errorf("variants(%v, %v) = %v, want %v", tc.o.modes, tc.o.syncs, got, tc.want)
		}
	}
	if got := (options{modes: []string{modeNotify}}).wModes(); !slices.Equal(got, []string{modePlain, modeNotify, modeWAL}) {
		t.Errorf("W modes without -capture = %v", got)
	}
	if got := (options{modes: []string{modeWAL}, captureSet: true}).wModes(); !slices.Equal(got, []string{modePlain, modeWAL}) {
		t.Errorf("W modes with -capture wal = %v", got)
	}
	if _, err := parseSyncs("on,sometimes"); err == nil {
		t.Error("parseSyncs accepted a bad setting")
	}
}

func TestWTableShares(t *testing.T) {
	rows := []wRow{
		{run: 1, mode: modePlain, tps: 1000, txns: 10000, rows: 10000},
		{run: 1, mode: modeNotify, tps: 700, txns: 7000, rows: 7000, published: 7000, pubOK: true},
		{run: 2, mode: modeNotify, tps: 500, txns: 5000, rows: 5000, published: 4990, pubOK: true},
		{run: 2, mode: modePlain, tps: 500, txns: 5000, rows: 5000},
	}
	cells, _ := wTable(rows)
	col := func(row int, name string) string { return cells[row][slices.Index(wHeader, name)] }
	if len(cells) != 2 || col(1, "capture") != modeNotify {
		t.Fatalf("rows %q", cells)
	}
	// Shares within each run: 70% and 100%, median 85%.
	if got := col(1, "share of plain %"); got != "85.0 (70.0–100.0)" {
		t.Errorf("share = %q", got)
	}
	if got := col(1, "target"); got != "≥ 65%: met" {
		t.Errorf("target = %q", got)
	}
	if got := col(1, "delivered"); got != "gap 10 of 12000 (0+10)" {
		t.Errorf("delivered = %q", got)
	}
}
