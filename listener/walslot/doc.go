// Package walslot reads rowcast's WAL capture messages from a PostgreSQL
// logical replication slot. In WAL capture mode the capture trigger calls
// pg_logical_emit_message(true, 'rowcast', <json>) inside the writing
// transaction; Open connects in replication mode, creates the slot (pgoutput,
// persistent) when it is missing and starts streaming it with messages on,
// and Reader.Read returns the committed messages with prefix Prefix in commit
// order, in batches. Messages of rolled-back transactions never appear. The
// caller hands each batch on and then calls Reader.Confirm with the batch's
// Through position; a new Open on the same slot delivers again everything
// after the last confirmed position, with the same LSNs, so Message.LSN is
// the idempotency key downstream. While nothing is outstanding the Reader
// reports the server's WAL end as flushed, so an idle slot does not hold WAL
// back. CheckWALLevel, Retained and DropSlot are the checks and the repair an
// operator needs around it (wal_level, retained WAL, an invalidated slot).
//
//	r, err := walslot.Open(ctx, connConfig, walslot.Config{Slot: "rowcast", Publication: "rowcast_wal"}, log)
//	...
//	defer r.Close(context.Background())
//	for {
//		b, err := r.Read(ctx, 500)
//		if err != nil {
//			return err // ctx ended, connection lost, or ErrSlotInvalidated
//		}
//		publish(b.Messages)
//		if b.Through != 0 {
//			if err := r.Confirm(ctx, b.Through); err != nil {
//				return err
//			}
//		}
//	}
package walslot
