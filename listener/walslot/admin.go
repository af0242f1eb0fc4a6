package walslot

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Querier runs SQL on an ordinary (not replication) connection. *pgx.Conn,
// *pgxpool.Pool and pgx.Tx implement it; the functions below use it for one
// statement each and may be called concurrently when the Querier allows it.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// CheckWALLevel returns an error that tells the operator what to do unless
// the server runs with wal_level=logical, which WAL capture needs.
func CheckWALLevel(ctx context.Context, q Querier) error {
	var level string
	if err := q.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		return fmt.Errorf("check wal_level: %w", err)
	}
	if level != "logical" {
		return fmt.Errorf("wal_level is %q: WAL capture (ROWCAST_CAPTURE=wal) needs wal_level=logical (set it and restart Postgres)", level)
	}
	return nil
}

// Retained reports how much WAL the slot holds back, in bytes
// (pg_current_wal_lsn() - restart_lsn; 0 once the slot is lost), and its
// wal_status: "reserved", "extended", "unreserved" or "lost". It returns an
// error wrapping ErrNoSlot when the slot does not exist.
func Retained(ctx context.Context, q Querier, slot string) (bytes int64, walStatus string, err error) {
	err = q.QueryRow(ctx, `SELECT coalesce((pg_current_wal_lsn() - restart_lsn)::bigint, 0), coalesce(wal_status, '')
		FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, slot).Scan(&bytes, &walStatus)
	if errors.Is(err, pgx.ErrNoRows) {
		err = ErrNoSlot
	}
	if err != nil {
		return 0, "", fmt.Errorf("retained by slot %q: %w", slot, err)
	}
	return bytes, walStatus, nil
}

// DropSlot drops the slot, e.g. after ErrSlotInvalidated; the next Open
// creates it again, starting at the current WAL position. It returns an
// error wrapping ErrNoSlot when the slot does not exist and ErrSlotActive
// while a connection streams it.
func DropSlot(ctx context.Context, q Querier, slot string) error {
	_, err := q.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot)
	switch pgCode(err) {
	case "":
	case "42704": // undefined_object
		err = fmt.Errorf("%w: %w", ErrNoSlot, err)
	case "55006": // object_in_use
		err = fmt.Errorf("%w: %w", ErrSlotActive, err)
	}
	if err != nil {
		return fmt.Errorf("drop slot %q: %w", slot, err)
	}
	return nil
}
