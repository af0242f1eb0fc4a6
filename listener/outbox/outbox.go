// Package outbox reads and removes captured changes from rowcast.outbox in
// PostgreSQL. It knows SQL, not Redis: the relay joins the two.
package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rowcast/rowcast/realtime"
)

// Row is one captured change.
type Row struct {
	ID         int64
	Room       string
	Table      string
	Op         string
	Data       []byte // the row as JSON text
	CapturedAt time.Time
	// Tx is the id of the transaction that made the change (0 for a row
	// captured before migration 00006): a snapshot position tells by it
	// whether a page already showed the change.
	Tx int64
}

// Store accesses the outbox through a pool. It is safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
}

// NewStore returns a Store on pool.
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// Published is what the relay records once Redis accepted a batch: the ids
// of the rows to delete and each room's new position.
type Published struct {
	IDs       []int64
	Positions map[realtime.Room]realtime.Position
	// WAL, in WAL mode, is the last message published (IDs is empty there:
	// nothing is in the outbox).
	WAL *WALProgress
}

// WALProgress is the last message published in WAL mode: its transaction's
// commit position and its own, as int64 LSNs.
type WALProgress struct {
	Slot   string
	Commit int64
	LSN    int64
}

// Covers reports whether the message at lsn, of the transaction that
// commits at commit, was published: it is not after p in commit order.
func (p WALProgress) Covers(commit, lsn int64) bool {
	return commit < p.Commit || (commit == p.Commit && lsn <= p.LSN)
}

const selectOldest = `
	SELECT id, room, table_name, op, row_data::text, captured_at, coalesce(tx::text::bigint, 0)
	FROM rowcast.outbox ORDER BY id LIMIT $1`

// recordRows deletes published rows ($1) and stores their rooms' new
// positions ($2–$6) in one statement: Postgres runs a data-modifying WITH
// part to completion whether or not it is read. Empty arrays are fine.
const recordRows = `
	WITH deleted AS (DELETE FROM rowcast.outbox WHERE id = ANY($1::bigint[]))
	` + upsertPositions

// recordThenOldest is recordRows followed by the read of the next rows
// ($7 of them), in one statement. Its snapshot is the statement's, taken
// before the deletion, so the rows it deletes are left out by id ($1 must
// not be NULL): the read steps over each of them, so this suits only a
// few ids (see RecordThenOldest).
const recordThenOldest = `
	WITH deleted AS (DELETE FROM rowcast.outbox WHERE id = ANY($1::bigint[])),
	recorded AS (` + upsertPositions + `)
	SELECT id, room, table_name, op, row_data::text, captured_at, coalesce(tx::text::bigint, 0)
	FROM rowcast.outbox WHERE id <> ALL($1::bigint[]) ORDER BY id LIMIT $7`

// oneStatementIDs is the most ids RecordThenOldest records in one statement
// with the read; more go as a batch of two.
const oneStatementIDs = 16

// upsertPositions stores rooms' new positions.
const upsertPositions = `INSERT INTO rowcast.room_position AS p (room, epoch, last_offset, redis_run, max_tx, updated_at)
	SELECT room, epoch, last_offset, redis_run, max_tx, now()
	FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[]) AS u(room, epoch, last_offset, redis_run, max_tx)
	ON CONFLICT (room) DO UPDATE SET epoch = EXCLUDED.epoch, last_offset = EXCLUDED.last_offset,
		redis_run = EXCLUDED.redis_run, max_tx = EXCLUDED.max_tx, updated_at = EXCLUDED.updated_at`

// mark returns the recorded positions of rooms $1 and marks them as in
// flight for session $2, in one statement (Postgres runs a data-modifying
// WITH part whether or not it is read; the positions come from the
// statement's snapshot, before the mark). Every room comes back, one without
// a position with the database's history floor as its highest transaction.
const mark = `
	WITH prior AS (
		SELECT room, epoch, last_offset, redis_run, inflight, max_tx
		FROM rowcast.room_position WHERE room = ANY($1)
	), marked AS (
		INSERT INTO rowcast.room_position AS p (room, inflight)
		SELECT unnest($1::text[]), $2
		ON CONFLICT (room) DO UPDATE SET inflight = EXCLUDED.inflight
		WHERE p.inflight IS DISTINCT FROM EXCLUDED.inflight
	)
	SELECT u.room, coalesce(p.epoch, ''), coalesce(p.last_offset, 0), coalesce(p.redis_run, ''),
		coalesce(p.inflight, ''), greatest(coalesce(p.max_tx, 0), (SELECT history_floor FROM rowcast.source))
	FROM unnest($1::text[]) AS u(room) LEFT JOIN prior AS p USING (room)`

// Oldest returns up to limit rows in id order. Rows stay in the outbox until
// Record: a crash after Oldest loses nothing.
func (s *Store) Oldest(ctx context.Context, limit int) ([]Row, error) {
	rows, err := s.pool.Query(ctx, selectOldest, limit)
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	return collect(rows)
}

// Mark returns the recorded positions of rooms and marks them as in flight
// for session: until the session releases them (Release), a later leader
// knows that Redis may hold a publish of theirs that Postgres never
// recorded, and such a room's position comes back Unsure. A session marks a
// room once, before its first publish of the room; the mark stays while the
// session lives.
func (s *Store) Mark(ctx context.Context, session string, rooms []realtime.Room) (map[realtime.Room]realtime.Position, error) {
	names := make([]string, len(rooms))
	for i, r := range rooms {
		names[i] = string(r)
	}
	rows, err := s.pool.Query(ctx, mark, names, session)
	if err != nil {
		return nil, fmt.Errorf("mark %d rooms: %w", len(rooms), err)
	}
	out := make(map[realtime.Room]realtime.Position, len(rooms))
	var (
		room, epoch, run, inflight string
		offset, maxTx              int64
	)
	_, err = pgx.ForEachRow(rows, []any{&room, &epoch, &offset, &run, &inflight, &maxTx}, func() error {
		out[realtime.Room(room)] = realtime.Position{
			Last:   realtime.ID{Epoch: epoch, Offset: uint64(offset)},
			Run:    run,
			Unsure: inflight != "" && inflight != session,
			MaxTx:  uint64(maxTx),
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("mark %d rooms: %w", len(rooms), err)
	}
	return out, nil
}

// Release clears session's in-flight marks, except on the rooms in keep
// (their last publish has an unknown outcome). Call it only when the
// session ends with everything it published recorded: a later leader then
// trusts those rooms' recorded positions as complete.
func (s *Store) Release(ctx context.Context, session string, keep []string) error {
	if keep == nil {
		keep = []string{} // NULL would match nothing
	}
	_, err := s.pool.Exec(ctx, `UPDATE rowcast.room_position SET inflight = NULL
		WHERE inflight = $1 AND NOT room = ANY($2)`, session, keep)
	if err != nil {
		return fmt.Errorf("release the marks of session %s: %w", session, err)
	}
	return nil
}

// Record deletes published rows and stores their rooms' positions in one
// statement (in WAL mode, with the progress, one pipelined transaction).
func (s *Store) Record(ctx context.Context, p Published) error {
	var err error
	switch {
	case len(p.IDs) == 0 && len(p.Positions) == 0 && p.WAL == nil:
		return nil
	case p.WAL == nil:
		_, err = s.pool.Exec(ctx, recordRows, recordArgs(p)...)
	default:
		b := &pgx.Batch{}
		queueWAL(b, p)
		b.Queue(recordRows, recordArgs(p)...)
		err = s.pool.SendBatch(ctx, b).Close()
	}
	if err != nil {
		return fmt.Errorf("record %d published rows: %w", len(p.IDs), err)
	}
	return nil
}

// RecordThenOldest is Record followed by Oldest in one round trip and one
// transaction. After a few rows (a row from its notification), in NOTIFY
// mode, that is one statement, which costs the listener less than two.
// After more (a batch from a backlog) it is a pipelined batch of the record
// statement and the read: the read then has a snapshot of its own, without
// the rows just deleted, which one statement would have to step over
// (ORDER BY id LIMIT walks them first) and filter out by id, at a cost to
// Postgres that grows with the batch.
func (s *Store) RecordThenOldest(ctx context.Context, p Published, limit int) ([]Row, error) {
	if p.WAL == nil && len(p.IDs) <= oneStatementIDs {
		rows, err := s.pool.Query(ctx, recordThenOldest, append(recordArgs(p), limit)...)
		if err != nil {
			return nil, fmt.Errorf("record %d published rows, read outbox: %w", len(p.IDs), err)
		}
		return collect(rows)
	}
	b := &pgx.Batch{}
	queueWAL(b, p)
	b.Queue(recordRows, recordArgs(p)...)
	b.Queue(selectOldest, limit)
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	for range b.Len() - 1 {
		if _, err := br.Exec(); err != nil {
			return nil, fmt.Errorf("record %d published rows: %w", len(p.IDs), err)
		}
	}
	rows, err := br.Query()
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	return collect(rows)
}

// queueWAL queues the WAL progress of p, if any.
func queueWAL(b *pgx.Batch, p Published) {
	if w := p.WAL; w != nil {
		b.Queue(`INSERT INTO rowcast.wal_progress (slot, commit_lsn, msg_lsn) VALUES ($1, $2, $3)
			ON CONFLICT (slot) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn, msg_lsn = EXCLUDED.msg_lsn`, w.Slot, w.Commit, w.LSN)
	}
}

// recordArgs returns the arguments $1–$6 of recordRows and
// recordThenOldest; none is NULL.
func recordArgs(p Published) []any {
	n := len(p.Positions)
	ids := p.IDs
	if ids == nil {
		ids = []int64{}
	}
	rooms, epochs, offsets, runs := make([]string, 0, n), make([]string, 0, n), make([]int64, 0, n), make([]string, 0, n)
	maxTxs := make([]int64, 0, n)
	for r, pos := range p.Positions {
		rooms = append(rooms, string(r))
		epochs = append(epochs, pos.Last.Epoch)
		offsets = append(offsets, int64(pos.Last.Offset))
		runs = append(runs, pos.Run)
		maxTxs = append(maxTxs, int64(pos.MaxTx))
	}
	return []any{ids, rooms, epochs, offsets, runs, maxTxs}
}

func collect(rows pgx.Rows) ([]Row, error) {
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Row, error) {
		var row Row
		var data string
		err := r.Scan(&row.ID, &row.Room, &row.Table, &row.Op, &data, &row.CapturedAt, &row.Tx)
		row.Data = []byte(data)
		return row, err
	})
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	return out, nil
}

// Reject moves rows that can never be published to rowcast.rejected with the
// reason, in one statement.
func (s *Store) Reject(ctx context.Context, ids []int64, reason string) error {
	_, err := s.pool.Exec(ctx, `
		WITH moved AS (DELETE FROM rowcast.outbox WHERE id = ANY($1) RETURNING *)
		INSERT INTO rowcast.rejected (id, room, table_name, op, row_data, captured_at, tx, reason)
		SELECT id, room, table_name, op, row_data, captured_at, tx, $2 FROM moved`, ids, reason)
	if err != nil {
		return fmt.Errorf("reject %d outbox rows: %w", len(ids), err)
	}
	return nil
}

// ForgetIdle removes the recorded positions of rooms not published for
// longer than idle (and not marked by another session than the caller's),
// and returns how many. Forgetting is
// safe: Redis has expired such a room, and a room without a position whose
// Redis state survived anyway starts a new epoch rather than trust it.
func (s *Store) ForgetIdle(ctx context.Context, session string, idle time.Duration) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM rowcast.room_position
		WHERE (inflight IS NULL OR inflight = $2) AND updated_at < now() - $1::interval`, idle, session)
	if err != nil {
		return 0, fmt.Errorf("forget idle room positions: %w", err)
	}
	return tag.RowsAffected(), nil
}

// Depth returns how many rows wait in the outbox and the capture time of the
// oldest (zero when empty).
func (s *Store) Depth(ctx context.Context) (int64, time.Time, error) {
	var n int64
	var oldest *time.Time
	err := s.pool.QueryRow(ctx, `SELECT count(*), min(captured_at) FROM rowcast.outbox`).Scan(&n, &oldest)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("outbox depth: %w", err)
	}
	if oldest == nil {
		return n, time.Time{}, nil
	}
	return n, *oldest, nil
}

// CaptureState is what the capture trigger does with each row; see
// migration 00005.
type CaptureState int64

// The capture states, as stored in rowcast.capture_state.
const (
	Notify  CaptureState = 0 // outbox row + NOTIFY: the listener sleeps on LISTEN
	Drain   CaptureState = 1 // outbox row only: the listener is reading the outbox
	WALMode CaptureState = 2 // a logical decoding message instead of an outbox row
)

// State returns the capture state.
func (s *Store) State(ctx context.Context) (CaptureState, error) {
	var v int64
	if err := s.pool.QueryRow(ctx, `SELECT last_value FROM rowcast.capture_state`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read capture state: %w", err)
	}
	return CaptureState(v), nil
}

// Wake tells writers that the listener is draining: they stop notifying.
// Only the leading relay calls it, and it must Sleep before it waits on
// LISTEN again.
func (s *Store) Wake(ctx context.Context) error {
	if _, err := s.pool.Exec(ctx, `SELECT setval('rowcast.capture_state', 1, true)`); err != nil {
		return fmt.Errorf("wake capture: %w", err)
	}
	return nil
}

// SetState sets the capture state and returns a fence: the transactions that
// may have read the previous state are below it, so what they write is
// seen only once Settled(fence) is true.
func (s *Store) SetState(ctx context.Context, st CaptureState) (int64, error) {
	var fence int64
	err := s.pool.QueryRow(ctx, `SELECT rowcast.set_state($1)::text::bigint`, int64(st)).Scan(&fence)
	if err != nil {
		return 0, fmt.Errorf("set capture state %d: %w", st, err)
	}
	return fence, nil
}

// Settled reports whether every transaction below fence has ended.
func (s *Store) Settled(ctx context.Context, fence int64) (bool, error) {
	var ok bool
	err := s.pool.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot()) >= $1::bigint::text::xid8`, fence).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("wait for transactions below %d: %w", fence, err)
	}
	return ok, nil
}

// Progress returns the last message recorded as published from slot (zero
// when none is).
func (s *Store) Progress(ctx context.Context, slot string) (WALProgress, error) {
	p := WALProgress{Slot: slot}
	err := s.pool.QueryRow(ctx, `SELECT commit_lsn, msg_lsn FROM rowcast.wal_progress WHERE slot = $1`, slot).Scan(&p.Commit, &p.LSN)
	if errors.Is(err, pgx.ErrNoRows) {
		return p, nil
	}
	if err != nil {
		return p, fmt.Errorf("read wal progress of slot %s: %w", slot, err)
	}
	return p, nil
}

// ForgetProgress removes slot's progress: a slot created anew starts
// positions that have nothing to do with the old one's.
func (s *Store) ForgetProgress(ctx context.Context, slot string) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM rowcast.wal_progress WHERE slot = $1`, slot); err != nil {
		return fmt.Errorf("forget wal progress of slot %s: %w", slot, err)
	}
	return nil
}

// RejectRows stores rows that can never be published, which are not in the
// outbox (WAL mode), in rowcast.rejected with the reason.
func (s *Store) RejectRows(ctx context.Context, rows []Row, reason string) error {
	b := &pgx.Batch{}
	for _, r := range rows {
		b.Queue(`INSERT INTO rowcast.rejected (id, room, table_name, op, row_data, captured_at, tx, reason)
			VALUES ($1, $2, $3, $4, coalesce($5::text::jsonb, 'null'), $6, nullif($7, 0)::text::xid8, $8)`,
			r.ID, r.Room, r.Table, r.Op, validJSON(r.Data), r.CapturedAt, r.Tx, reason)
	}
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("reject %d rows: %w", len(rows), err)
	}
	return nil
}

// validJSON returns data when it is JSON, else data as a JSON string, so a
// rejected row is stored whatever it holds.
func validJSON(data []byte) string {
	if json.Valid(data) {
		return string(data)
	}
	b, _ := json.Marshal(string(data))
	return string(b)
}

// LostEpoch is the epoch recorded for rooms whose changes were lost before
// they reached Redis (an invalidated replication slot): it matches no epoch
// Redis holds, so each room's next publish starts a new epoch and its
// clients are told to reset.
const LostEpoch = "lost"

// LoseAll records that changes of every room may have been lost, and
// returns how many rooms it marked. Every lost change was committed before
// now, so the history floor (of every room, and of rooms without a position)
// rises to the current snapshot's xmax: a snapshot position from before the
// loss is told to reset.
func (s *Store) LoseAll(ctx context.Context) (int64, error) {
	b := &pgx.Batch{}
	floor := `pg_snapshot_xmax(pg_current_snapshot())::text::bigint`
	rooms := b.Queue(`UPDATE rowcast.room_position SET epoch = $1, max_tx = greatest(max_tx, `+floor+`), updated_at = now()`, LostEpoch)
	var n int64
	rooms.Exec(func(tag pgconn.CommandTag) error {
		n = tag.RowsAffected()
		return nil
	})
	b.Queue(`UPDATE rowcast.source SET history_floor = greatest(history_floor, ` + floor + `)`)
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return 0, fmt.Errorf("mark every room's history lost: %w", err)
	}
	return n, nil
}

// Source returns the id that names this database in snapshot positions
// (migration 00006).
func (s *Store) Source(ctx context.Context) (string, error) {
	var id string
	if err := s.pool.QueryRow(ctx, `SELECT id FROM rowcast.source`).Scan(&id); err != nil {
		return "", fmt.Errorf("read the database's source id: %w", err)
	}
	return id, nil
}
