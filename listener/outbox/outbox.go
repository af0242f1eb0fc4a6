// Package outbox reads and removes captured changes from rowcast.outbox in
// PostgreSQL. It knows SQL, not Redis: the relay joins the two.
package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Row is one captured change.
type Row struct {
	ID         int64
	Room       string
	Table      string
	Op         string
	Data       []byte // the row as JSON text
	CapturedAt time.Time
}

// Store accesses the outbox through a pool. It is safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
}

// NewStore returns a Store on pool.
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

const selectOldest = `
	SELECT id, room, table_name, op, row_data::text, captured_at
	FROM rowcast.outbox ORDER BY id LIMIT $1`

const deleteIDs = `DELETE FROM rowcast.outbox WHERE id = ANY($1)`

// Oldest returns up to limit rows in id order. Rows stay in the outbox until
// Delete: a crash after Oldest loses nothing.
func (s *Store) Oldest(ctx context.Context, limit int) ([]Row, error) {
	rows, err := s.pool.Query(ctx, selectOldest, limit)
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	return collect(rows)
}

// DeleteThenOldest removes published rows and reads the next batch, in one
// round trip (a pipelined batch, run as one implicit transaction).
func (s *Store) DeleteThenOldest(ctx context.Context, ids []int64, limit int) ([]Row, error) {
	b := &pgx.Batch{}
	b.Queue(deleteIDs, ids)
	b.Queue(selectOldest, limit)
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return nil, fmt.Errorf("delete %d outbox rows: %w", len(ids), err)
	}
	rows, err := br.Query()
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	return collect(rows)
}

func collect(rows pgx.Rows) ([]Row, error) {
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Row, error) {
		var row Row
		var data string
		err := r.Scan(&row.ID, &row.Room, &row.Table, &row.Op, &data, &row.CapturedAt)
		row.Data = []byte(data)
		return row, err
	})
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	return out, nil
}

// Delete removes published rows.
func (s *Store) Delete(ctx context.Context, ids []int64) error {
	if _, err := s.pool.Exec(ctx, deleteIDs, ids); err != nil {
		return fmt.Errorf("delete %d outbox rows: %w", len(ids), err)
	}
	return nil
}

// Reject moves rows that can never be published to rowcast.rejected with the
// reason, in one statement.
func (s *Store) Reject(ctx context.Context, ids []int64, reason string) error {
	_, err := s.pool.Exec(ctx, `
		WITH moved AS (DELETE FROM rowcast.outbox WHERE id = ANY($1) RETURNING *)
		INSERT INTO rowcast.rejected SELECT moved.*, $2 FROM moved`, ids, reason)
	if err != nil {
		return fmt.Errorf("reject %d outbox rows: %w", len(ids), err)
	}
	return nil
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
