package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The capture modes the listener runs in (its ROWCAST_CAPTURE), and W's
// baseline without a trigger.
const (
	modeNotify = "notify" // outbox row + NOTIFY (skipped while the listener drains)
	modeWAL    = "wal"    // pg_logical_emit_message, read from a replication slot
	modePlain  = "plain"  // W only: the table has no capture trigger
)

// walSlot is the replication slot the listener reads in WAL mode (its
// ROWCAST_WAL_SLOT default).
const walSlot = "rowcast"

// capture states, as in rowcast.capture_state (migration 00005).
const stateWAL = 2

func parseCapture(s string) ([]string, error) {
	switch s {
	case modeNotify:
		return []string{modeNotify}, nil
	case modeWAL:
		return []string{modeWAL}, nil
	case "both":
		return []string{modeNotify, modeWAL}, nil
	}
	return nil, fmt.Errorf("unknown capture mode %q (want notify, wal or both)", s)
}

// parseSyncs reads -synchronous-commit: a comma-separated list of settings.
func parseSyncs(s string) ([]string, error) {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		p := strings.ToLower(strings.TrimSpace(part))
		switch p {
		case "on", "off", "local", "remote_write", "remote_apply":
			out = append(out, p)
		default:
			return nil, fmt.Errorf("bad synchronous_commit %q (want on, off, local, remote_write or remote_apply)", part)
		}
	}
	return out, nil
}

// variant is one way a load row runs: the listener's capture mode and the
// synchronous_commit of the inserting sessions ("" = the server's).
type variant struct {
	mode, sync string
}

// variants are the (mode, synchronous_commit) pairs each load row runs in,
// interleaved. Unless -synchronous-commit is given, NOTIFY rows use the
// server's setting and WAL rows on: logical decoding streams only flushed
// WAL, and with synchronous_commit=off a commit waits for the WAL writer
// (wal_writer_delay, 200 ms) before the listener can see it.
func (o options) variants() []variant {
	var out []variant
	for _, m := range o.modes {
		switch {
		case len(o.syncs) > 0:
			for _, s := range o.syncs {
				out = append(out, variant{m, s})
			}
		case m == modeWAL:
			out = append(out, variant{m, "on"})
		default:
			out = append(out, variant{m, ""})
		}
	}
	return out
}

// wModes are W's rows: plain, then each capture mode (both unless -capture
// names one).
func (o options) wModes() []string {
	if !o.captureSet {
		return []string{modePlain, modeNotify, modeWAL}
	}
	return append([]string{modePlain}, o.modes...)
}

// syncLabel is how a row's synchronous_commit is printed.
func (s *stack) syncLabel(v string) string {
	if v == "" {
		return s.serverSync + " (server)"
	}
	return v
}

// insertPool is the pool the inserter of a row uses: the bench's own for
// the server's synchronous_commit, else one whose sessions set it.
func (s *stack) insertPool(ctx context.Context, sync string) (*pgxpool.Pool, error) {
	if sync == "" {
		return s.db, nil
	}
	if p, ok := s.pools[sync]; ok {
		return p, nil
	}
	pcfg, err := pgxpool.ParseConfig(s.pgURL)
	if err != nil {
		return nil, err
	}
	pcfg.MaxConns = int32(max(4, s.cfg.dbConns+1))
	pcfg.ConnConfig.RuntimeParams["synchronous_commit"] = sync
	p, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("connect postgres (synchronous_commit=%s): %w", sync, err)
	}
	s.tb.Cleanup(p.Close)
	s.pools[sync] = p
	return p, nil
}

// captureState reads rowcast.capture_state.
// A schema from before capture modes (a -src checkout of an older commit)
// has no state: it always notifies, which reads as 0.
func (s *stack) captureState(ctx context.Context) (int64, error) {
	var st int64
	err := s.db.QueryRow(ctx, `SELECT coalesce((SELECT last_value FROM pg_sequences
		WHERE schemaname = 'rowcast' AND sequencename = 'capture_state'), 0)`).Scan(&st)
	return st, err
}

// prepareMode readies the database for a listener in mode (no listener of
// the bench runs). A WAL-mode listener switches writers itself. For NOTIFY
// mode after a WAL-mode one, writers are switched back to the outbox and
// the slot (which holds WAL back while nobody reads it) is dropped with the
// progress recorded for it; the previous row waited until everything
// committed was published, so the slot holds nothing unread.
func (s *stack) prepareMode(ctx context.Context, mode string) error {
	if s.cfg.noListener || mode == modeWAL {
		return nil
	}
	st, err := s.captureState(ctx)
	if err != nil {
		return fmt.Errorf("read capture state: %w", err)
	}
	if st != stateWAL {
		return nil
	}
	progress("capture: back to NOTIFY mode (state 0, slot %s dropped)", walSlot)
	if _, err := s.db.Exec(ctx, `SELECT rowcast.set_state(0)`); err != nil {
		return fmt.Errorf("capture state 0: %w", err)
	}
	// The walsender of a listener that just stopped may hold the slot a
	// moment longer.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := s.db.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, walSlot)
		var pe *pgconn.PgError
		if err == nil || !errors.As(err, &pe) || pe.Code != "55006" || time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("drop slot %s: %w", walSlot, err)
			}
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := s.db.Exec(ctx, `DELETE FROM rowcast.wal_progress WHERE slot = $1`, walSlot); err != nil {
		return fmt.Errorf("forget WAL progress: %w", err)
	}
	return nil
}

// waitMode waits, after a listener in mode took the lead, until writers
// capture the way mode says: in WAL mode, until the listener switched the
// capture state (the slot exists by then).
func (s *stack) waitMode(ctx context.Context, mode string) error {
	if mode != modeWAL {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		st, err := s.captureState(ctx)
		if err == nil && st == stateWAL {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the WAL-mode listener did not switch writers to the slot (state %d, %v): %w", st, err, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// armWAL leaves the database capturing into the slot with no listener
// running: a WAL-mode listener creates the slot, switches writers and is
// stopped. L's backlog then waits in the slot.
func (s *stack) armWAL(ctx context.Context) error {
	st, err := s.captureState(ctx)
	if err != nil {
		return err
	}
	var slots int
	if err := s.db.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, walSlot).Scan(&slots); err != nil {
		return err
	}
	if st == stateWAL && slots == 1 {
		return nil
	}
	p, err := s.startListenerNow(ctx, modeWAL)
	if err != nil {
		return err
	}
	p.stop()
	return nil
}

// walCaughtUp reports whether the slot's confirmed position has passed lsn.
func (s *stack) walCaughtUp(ctx context.Context, lsn string) (bool, error) {
	var done bool
	err := s.db.QueryRow(ctx, `SELECT coalesce(bool_or(confirmed_flush_lsn >= $1::pg_lsn), false)
		FROM pg_replication_slots WHERE slot_name = $2`, lsn, walSlot).Scan(&done)
	return done, err
}

// scrapeCounter reads an unlabelled counter or gauge from base's /metrics.
func scrapeCounter(base, name string) (float64, bool) {
	if base == "" {
		return 0, false
	}
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(base + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return 0, false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// publishedMetric counts the events a listener published to Redis.
const publishedMetric = "rowcast_listener_published_total"
