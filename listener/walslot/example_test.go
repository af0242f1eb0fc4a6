package walslot_test

import (
	"context"
	"log/slog"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/rowcast/rowcast/listener/walslot"
)

// The leader's loop: read a batch, hand it on, confirm its Through. After a
// crash everything unconfirmed comes again with the same LSNs.
func ExampleReader() {
	ctx := context.Background()
	conf, err := pgconn.ParseConfig("postgres://rowcast:rowcast@localhost:5432/rowcast")
	if err != nil {
		panic(err)
	}
	r, err := walslot.Open(ctx, conf, walslot.Config{Slot: "rowcast", Publication: "rowcast_wal"}, slog.Default())
	if err != nil {
		panic(err) // errors.Is(err, walslot.ErrSlotInvalidated): DropSlot and resynchronise
	}
	defer r.Close(context.Background())
	publish := func([]walslot.Message) error { return nil } // e.g. to Redis, keyed by Message.LSN

	for {
		b, err := r.Read(ctx, 500)
		if err != nil {
			panic(err)
		}
		if err := publish(b.Messages); err != nil {
			panic(err)
		}
		if b.Through != 0 {
			if err := r.Confirm(ctx, b.Through); err != nil {
				panic(err)
			}
		}
	}
}
