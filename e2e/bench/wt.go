package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// WT measures the capture trigger alone, which is what the primary pays
// for capture once the listener and Redis run elsewhere: pgbench's
// throughput of single-row INSERTs into a table without a trigger, with the
// generic rowcast.capture() and with the function rowcast.watch() writes
// for the table, the capture state held at 2 (WAL mode) and at 1 (NOTIFY
// mode while the listener drains: an outbox row, no NOTIFY). No listener
// runs and no slot exists; the outbox rows it leaves are deleted.
const wtTablePrefix = "public.bench_wt_"

// The triggers WT compares.
const (
	wtNone     = "none"
	wtGeneric  = "generic rowcast.capture()"
	wtPerTable = "rowcast.watch()'s function"
)

var wtTriggers = []string{wtNone, wtGeneric, wtPerTable}

// wtStates are the capture states WT holds, with their names.
var wtStates = []struct {
	state int
	name  string
}{{stateWAL, "2 (WAL mode)"}, {1, "1 (NOTIFY mode, listener draining)"}}

type wtRow struct {
	run     int
	state   string
	trigger string
	tps     float64
	txns    int64
}

// wtTableName is the table of one trigger.
func wtTableName(trigger string) string {
	switch trigger {
	case wtGeneric:
		return wtTablePrefix + "generic"
	case wtPerTable:
		return wtTablePrefix + "table"
	}
	return wtTablePrefix + "none"
}

// runWT runs one WT run: every trigger in each state, in an order that
// rotates with run.
func (s *stack) runWT(ctx context.Context, run int, dur time.Duration) ([]wtRow, error) {
	bin, err := pgbenchPath()
	if err != nil {
		return nil, err
	}
	if err := s.prepareMode(ctx, modeNotify); err != nil {
		return nil, err
	}
	defer func() {
		// Back to NOTIFY mode without a listener: the state a listener
		// starting next expects to find, and no rows of these tables left
		// for it.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_, _ = s.db.Exec(cctx, `SELECT setval('rowcast.capture_state', 0, true)`)
		_, _ = s.db.Exec(cctx, `DELETE FROM rowcast.outbox WHERE table_name LIKE 'public.bench\_wt\_%'`)
	}()
	secs := max(1, int(dur.Round(time.Second)/time.Second))
	var rows []wtRow
	for _, st := range wtStates {
		if _, err := s.db.Exec(ctx, `SELECT setval('rowcast.capture_state', $1, true)`, st.state); err != nil {
			return rows, fmt.Errorf("capture state %d: %w", st.state, err)
		}
		for i := range wtTriggers {
			trigger := wtTriggers[(i+run-1)%len(wtTriggers)]
			tbl := wtTableName(trigger)
			if err := s.prepareWT(ctx, tbl, trigger); err != nil {
				return rows, err
			}
			script := filepath.Join(s.bins.dir, fmt.Sprintf("wt-%d-%s.sql", run, strings.TrimPrefix(tbl, wtTablePrefix)))
			body := strings.Repeat("x", max(40, wRowSize-85))
			sql := fmt.Sprintf("\\set r random(0, %d)\nINSERT INTO %s (room, body) VALUES ('wt' || :r, '%s');\n", wRooms-1, tbl, body)
			if err := os.WriteFile(script, []byte(sql), 0o644); err != nil {
				return rows, err
			}
			cmd := exec.CommandContext(ctx, bin, "-n", "-c", strconv.Itoa(wClients), "-j", strconv.Itoa(wThreads), "-T", strconv.Itoa(secs),
				"-f", script, s.pgURL)
			cmd.Env = append(os.Environ(), "PGOPTIONS=-c synchronous_commit=off")
			out, err := cmd.CombinedOutput()
			if err != nil {
				return rows, fmt.Errorf("pgbench: %w\n%s", err, out)
			}
			m := tpsRE.FindSubmatch(out)
			if m == nil {
				return rows, fmt.Errorf("pgbench printed no tps:\n%s", out)
			}
			row := wtRow{run: run, state: st.name, trigger: trigger}
			row.tps, _ = strconv.ParseFloat(string(m[1]), 64)
			if m := txnsRE.FindSubmatch(out); m != nil {
				row.txns, _ = strconv.ParseInt(string(m[1]), 10, 64)
			}
			progress("WT state %s, %s, run %d: %.0f tps", st.name, trigger, run, row.tps)
			rows = append(rows, row)
		}
	}
	return rows, nil
}

// prepareWT readies one trigger's table: created, its trigger attached,
// empty, the outbox vacuumed and a checkpoint taken.
func (s *stack) prepareWT(ctx context.Context, tbl, trigger string) error {
	stmts := []string{
		`CREATE TABLE IF NOT EXISTS ` + tbl + ` (id bigserial PRIMARY KEY, room text NOT NULL, body text NOT NULL,
			created_at timestamptz NOT NULL DEFAULT now())`,
	}
	switch trigger {
	case wtGeneric:
		stmts = append(stmts, `SELECT rowcast.unwatch('`+tbl+`')`,
			`CREATE TRIGGER rowcast_capture AFTER INSERT OR UPDATE OR DELETE ON `+tbl+` FOR EACH ROW EXECUTE FUNCTION rowcast.capture('room')`)
	case wtPerTable:
		stmts = append(stmts, `SELECT rowcast.watch('`+tbl+`', 'room')`)
	}
	stmts = append(stmts, `TRUNCATE `+tbl+` RESTART IDENTITY`,
		`DELETE FROM rowcast.outbox WHERE table_name LIKE 'public.bench\_wt\_%'`, `VACUUM rowcast.outbox`)
	for _, q := range stmts {
		if _, err := s.db.Exec(ctx, q); err != nil {
			return fmt.Errorf("WT %s: %s: %w", trigger, strings.Fields(q)[0], err)
		}
	}
	_, _ = s.db.Exec(ctx, `CHECKPOINT`) // needs a superuser; see prepareW
	return nil
}

var wtHeader = []string{"scenario", "capture state", "trigger", "runs", "tps", "share of no trigger %"}

// wtTable groups WT rows by state and trigger: medians over the runs, and
// each row's share of the table without a trigger in the same state and run.
func wtTable(rows []wtRow) [][]string {
	type key struct{ state, trigger string }
	var order []key
	by := map[key][]wtRow{}
	none := map[string]map[int]float64{}
	for _, r := range rows {
		k := key{r.state, r.trigger}
		if by[k] == nil {
			order = append(order, k)
		}
		by[k] = append(by[k], r)
		if r.trigger == wtNone {
			if none[r.state] == nil {
				none[r.state] = map[int]float64{}
			}
			none[r.state][r.run] = r.tps
		}
	}
	// State by state, the triggers in wtTriggers' order.
	rank := func(k key) int {
		for i, st := range wtStates {
			for j, t := range wtTriggers {
				if st.name == k.state && t == k.trigger {
					return i*len(wtTriggers) + j
				}
			}
		}
		return len(wtStates) * len(wtTriggers)
	}
	for i := 1; i < len(order); i++ {
		for j := i; j > 0 && rank(order[j]) < rank(order[j-1]); j-- {
			order[j], order[j-1] = order[j-1], order[j]
		}
	}
	var out [][]string
	for _, k := range order {
		runs := by[k]
		var tps, share []float64
		for _, r := range runs {
			tps = append(tps, r.tps)
			if p, ok := none[r.state][r.run]; ok && p > 0 {
				share = append(share, 100*r.tps/p)
			}
		}
		shareText := spreadOf(share).text(1, true)
		if k.trigger == wtNone {
			shareText = "100"
		}
		out = append(out, []string{"WT", k.state, k.trigger, strconv.Itoa(len(runs)), spreadOf(tps).text(0, true), shareText})
	}
	return out
}
