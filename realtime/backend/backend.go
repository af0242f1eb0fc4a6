// Package backend is for Go applications that render rows and hand the page
// a snapshot position: the browser subscribes from it (rowcast.js:
// subscribe(room, handler, { since: position })) and gets exactly the
// changes its rows did not show, then live.
//
//	tx, _ := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
//	defer tx.Rollback(ctx)
//	rows, _ := tx.Query(ctx, `SELECT ... FROM chat_message WHERE room = $1`, room)
//	...
//	pos, err := backend.Position(ctx, tx)
package backend

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// ErrReadCommitted is returned by Position in a READ COMMITTED transaction,
// where every statement has its own snapshot: the position would not name
// the one the rows were read with.
var ErrReadCommitted = errors.New("position needs a REPEATABLE READ or SERIALIZABLE transaction " +
	"(or select rowcast.position() in the same statement as the rows)")

// Querier is what Position needs of a transaction; pgx.Tx has it.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Position returns the snapshot position of tx: the token naming every
// change tx's queries saw. tx must be REPEATABLE READ or SERIALIZABLE, so
// that all its statements share one snapshot; any of them may come before
// or after Position.
func Position(ctx context.Context, tx Querier) (string, error) {
	var pos, iso string
	err := tx.QueryRow(ctx, `SELECT rowcast.position(), current_setting('transaction_isolation')`).Scan(&pos, &iso)
	if err != nil {
		return "", fmt.Errorf("rowcast position: %w", err)
	}
	if iso == "read committed" || iso == "read uncommitted" {
		return "", fmt.Errorf("rowcast position: transaction is %s: %w", iso, ErrReadCommitted)
	}
	return pos, nil
}
