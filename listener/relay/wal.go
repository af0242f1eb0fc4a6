package relay

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/rowcast/rowcast/listener/outbox"
	"github.com/rowcast/rowcast/listener/walslot"
	"github.com/rowcast/rowcast/realtime"
)

// Publication is the pgoutput publication WAL mode streams (migration
// 00005 creates it; messages need no table in it).
const Publication = "rowcast_wal"

// walCapture is what WAL mode needs beyond NOTIFY mode.
type walCapture struct {
	conn *pgconn.Config // a direct connection: replication does not pass PgBouncer
	slot string

	invalidations atomic.Int64
}

// CaptureWAL switches the relay to WAL mode (ROWCAST_CAPTURE=wal): the
// leader tells writers to emit logical decoding messages instead of outbox
// rows, and reads them from the replication slot named slot, over conn.
// Call it before Run.
func (r *Relay) CaptureWAL(conn *pgconn.Config, slot string) {
	r.wal = &walCapture{conn: conn, slot: slot}
}

// WALSlot returns the replication slot the relay reads, "" in NOTIFY mode.
func (r *Relay) WALSlot() string {
	if r.wal == nil {
		return ""
	}
	return r.wal.slot
}

// SlotInvalidations returns how many times the relay found its slot
// invalidated (changes were lost: every room with a recorded position
// starts a new epoch, so its clients are told to reset).
func (r *Relay) SlotInvalidations() int64 {
	if r.wal == nil {
		return 0
	}
	return r.wal.invalidations.Load()
}

// relayWAL is the leader's work in WAL mode: open the slot, switch writers
// to it and drain what they left in the outbox, then publish the slot's
// messages batch by batch, confirming a position only after Redis accepted
// and Postgres recorded everything before it.
func (r *Relay) relayWAL(ctx context.Context, conn *pgx.Conn, session string) error {
	r.log.Info("leading: relaying WAL slot", "session", session, "slot", r.wal.slot)
	qctx, cancel := context.WithTimeout(ctx, opTimeout)
	err := walslot.CheckWALLevel(qctx, conn)
	cancel()
	if err != nil {
		return err
	}
	// Whatever an earlier leader published committed before this point.
	var started int64
	qctx, cancel = context.WithTimeout(ctx, opTimeout)
	err = conn.QueryRow(qctx, `SELECT (pg_current_wal_lsn() - '0/0')::bigint`).Scan(&started)
	cancel()
	if err != nil {
		return fmt.Errorf("read the wal position: %w", err)
	}
	// The slot exists before writers switch to it: no message is emitted
	// without a slot to keep it.
	rd, err := r.openSlot(ctx, conn)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = rd.Close(cctx)
	}()
	if err := r.switchToWAL(ctx, session); err != nil {
		return err
	}
	qctx, cancel = context.WithTimeout(ctx, opTimeout)
	progress, err := r.store.Progress(qctx, r.wal.slot)
	cancel()
	if err != nil {
		return err
	}
	r.readyOnce.Do(func() { close(r.ready) })

	nextPoll := time.Now().Add(r.cfg.PollInterval)
	for resuming := true; ; resuming = false {
		rctx, cancel := context.WithDeadline(ctx, nextPoll)
		b, err := rd.Read(rctx, r.cfg.BatchSize)
		cancel()
		if err == nil && resuming {
			b, err = r.fillResumed(ctx, rd, b, progress, started)
		}
		if ctx.Err() != nil {
			r.release(ctx, session)
			return nil
		}
		if errors.Is(err, context.DeadlineExceeded) {
			// Nothing to read for a while: prove the lock's connection and
			// do the slow chores.
			pctx, cancel := context.WithTimeout(ctx, r.pingTimeout())
			perr := conn.Ping(pctx)
			cancel()
			if perr != nil {
				return fmt.Errorf("ping lock connection: %w", perr)
			}
			r.upkeep(ctx, session)
			nextPoll = time.Now().Add(r.cfg.PollInterval)
			continue
		}
		if err != nil {
			return fmt.Errorf("read slot %s: %w", r.wal.slot, err)
		}
		if err := r.publishMessages(ctx, session, b.Messages, &progress); err != nil {
			return err
		}
		if b.Through != 0 {
			cctx, cancel := context.WithTimeout(ctx, opTimeout)
			err := rd.Confirm(cctx, b.Through)
			cancel()
			if err != nil {
				return fmt.Errorf("confirm slot %s at %s: %w", r.wal.slot, b.Through, err)
			}
		}
	}
}

// resumeGap is how long the first read after a start waits for more
// messages once the stream has paused: what was sent is received sooner.
const resumeGap = 100 * time.Millisecond

// fillResumed makes the first batch after a start hold at least a batch
// size of messages past progress, or every message that committed before
// started (the WAL position when this leader took over), or everything
// available. A leader that stopped after Redis accepted its last batch and
// before Postgres recorded it left Redis ahead by at most a batch size, of
// messages committed before the takeover, and Redis adopts such a publish
// only when the repeat covers all of it (see redisbus.Publish); batches
// follow what the stream delivered, not fixed boundaries.
func (r *Relay) fillResumed(ctx context.Context, rd *walslot.Reader, b walslot.Batch, progress outbox.WALProgress, started int64) (walslot.Batch, error) {
	after := func(msgs []walslot.Message) bool {
		return len(msgs) > 0 && int64(msgs[len(msgs)-1].Commit) > started
	}
	fresh := func(msgs []walslot.Message) (n int) {
		for _, m := range msgs {
			if !progress.Covers(int64(m.Commit), int64(m.LSN)) {
				n++
			}
		}
		return n
	}
	for n := fresh(b.Messages); n < r.cfg.BatchSize && !after(b.Messages); {
		rctx, cancel := context.WithTimeout(ctx, resumeGap)
		more, err := rd.Read(rctx, r.cfg.BatchSize-n)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return b, nil // caught up
		}
		if err != nil {
			return b, err
		}
		b.Messages = append(b.Messages, more.Messages...)
		if more.Through != 0 {
			b.Through = more.Through
		}
		n += fresh(more.Messages)
	}
	return b, nil
}

// openSlot opens the slot, creating it when missing. An invalidated slot
// held changes that are gone: every room with a recorded position is
// marked so that its next publish starts a new epoch (its clients get
// reset before anything newer), and the slot is created anew.
func (r *Relay) openSlot(ctx context.Context, conn *pgx.Conn) (*walslot.Reader, error) {
	cfg := walslot.Config{Slot: r.wal.slot, Publication: Publication}
	rd, err := r.openActive(ctx, cfg)
	if !errors.Is(err, walslot.ErrSlotInvalidated) {
		if err != nil {
			return nil, fmt.Errorf("open slot %s: %w", r.wal.slot, err)
		}
		return rd, nil
	}
	r.wal.invalidations.Add(1)
	qctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	// Rooms first: a crash after this point finds the slot still lost and
	// does it again.
	rooms, err := r.store.LoseAll(qctx)
	if err != nil {
		return nil, err
	}
	clear(r.known)
	r.log.Error("replication slot invalidated (max_slot_wal_keep_size?): changes were lost; every room starts a new epoch and its clients are told to reset",
		"slot", r.wal.slot, "rooms", rooms)
	if err := walslot.DropSlot(qctx, conn, r.wal.slot); err != nil && !errors.Is(err, walslot.ErrNoSlot) {
		return nil, err
	}
	if err := r.store.ForgetProgress(qctx, r.wal.slot); err != nil {
		return nil, err
	}
	rd, err = r.openActive(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open slot %s again: %w", r.wal.slot, err)
	}
	return rd, nil
}

// openActive opens the slot, waiting while another connection still
// streams it: this relay holds the leadership, so that is a leader that
// died a moment ago and whose server process has not ended yet.
func (r *Relay) openActive(ctx context.Context, cfg walslot.Config) (*walslot.Reader, error) {
	deadline := time.Now().Add(opTimeout)
	for {
		rd, err := walslot.Open(ctx, r.wal.conn, cfg, r.log)
		if !errors.Is(err, walslot.ErrSlotActive) || time.Now().After(deadline) {
			return rd, err
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// switchToWAL tells writers to emit messages, and publishes what writers
// that read the previous state put in the outbox: the rows of every
// transaction below the fence, read once they have all ended.
func (r *Relay) switchToWAL(ctx context.Context, session string) error {
	qctx, cancel := context.WithTimeout(ctx, opTimeout)
	fence, err := r.store.SetState(qctx, outbox.WALMode)
	cancel()
	if err != nil {
		return err
	}
	r.fence, r.fencePause = fence, 100*time.Microsecond
	for {
		settled, err := r.settled(ctx)
		if err != nil {
			return err
		}
		if err := r.drainOutbox(ctx, session, nil); err != nil {
			return err
		}
		if settled || ctx.Err() != nil {
			return nil
		}
		t := time.NewTimer(r.fencePause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		r.fencePause = min(2*r.fencePause, maxFencePause)
	}
}

// publishMessages publishes one batch of the slot and records it with the
// rooms' positions. Messages up to progress were published before a
// restart in the middle of their transaction and are skipped. Rooms stuck
// on a failed Cluster master are retried here: the slot's position moves
// past a message only once it is published.
func (r *Relay) publishMessages(ctx context.Context, session string, msgs []walslot.Message, progress *outbox.WALProgress) error {
	rows := make([]outbox.Row, 0, len(msgs))
	var malformed []outbox.Row
	for _, m := range msgs {
		lsn := int64(m.LSN)
		if progress.Covers(int64(m.Commit), lsn) {
			continue
		}
		row, ok := outbox.ParseMessage(m.Content, lsn)
		if !ok {
			malformed = append(malformed, outbox.Row{ID: lsn, Data: m.Content, CapturedAt: time.Now()})
			continue
		}
		rows = append(rows, row)
	}
	if len(malformed) > 0 {
		r.log.Warn("rejecting malformed capture messages", "count", len(malformed), "example lsn", pglogrepl.LSN(malformed[0].ID))
		qctx, cancel := context.WithTimeout(ctx, opTimeout)
		err := r.store.RejectRows(qctx, malformed, "malformed capture message")
		cancel()
		if err != nil {
			return err
		}
	}
	done := outbox.Published{Positions: map[realtime.Room]realtime.Position{}}
	for first := true; first || len(r.stuck) > 0; first = false {
		if !first {
			t := time.NewTimer(stuckRetry)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
			rows = nil // only the stuck rooms' events go out again
		}
		res, err := r.publish(ctx, session, rows, false)
		if err != nil {
			return err
		}
		for room, pos := range res.Positions {
			done.Positions[room] = pos
			r.known[room] = pos
		}
	}
	// Progress only moves forward: a batch the restart skipped whole leaves
	// it where it was.
	if n := len(msgs); n > 0 && !progress.Covers(int64(msgs[n-1].Commit), int64(msgs[n-1].LSN)) {
		*progress = outbox.WALProgress{Slot: r.wal.slot, Commit: int64(msgs[n-1].Commit), LSN: int64(msgs[n-1].LSN)}
		done.WAL = progress
	}
	// Recorded even when shutdown has begun (see drainOutbox).
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	defer cancel()
	return r.store.Record(qctx, done)
}
