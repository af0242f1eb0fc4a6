package walslot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Prefix is the pg_logical_emit_message prefix of rowcast's messages. Read
// returns only transactional messages with exactly this prefix; messages
// with other prefixes are skipped.
const Prefix = "rowcast"

// DefaultStatusInterval is the StatusInterval used when Config leaves it 0.
const DefaultStatusInterval = 10 * time.Second

// Errors that callers tell apart with errors.Is.
var (
	// ErrSlotInvalidated means the server invalidated the slot (wal_status
	// "lost", e.g. because it held back more than max_slot_wal_keep_size):
	// the changes it held are gone. Open and Read return it; the slot has to
	// be dropped (DropSlot) and the data reconciled another way.
	ErrSlotInvalidated = errors.New("replication slot invalidated: the WAL it needed was removed")
	// ErrSlotActive means another connection is streaming the slot, e.g.
	// another listener that is still leader. Open returns it; retrying later
	// is the remedy.
	ErrSlotActive = errors.New("replication slot is in use by another connection")
	// ErrNoSlot means the slot does not exist. Retained and DropSlot return it.
	ErrNoSlot = errors.New("replication slot does not exist")
)

// Config says which slot to stream and how. Slot and Publication are
// required.
type Config struct {
	// Slot is the replication slot's name: lower-case letters, digits and
	// underscores, at most 63 characters. Open creates it when missing.
	Slot string
	// Publication is the pgoutput publication to stream, e.g. one created
	// with "CREATE PUBLICATION rowcast_wal;" (no tables are needed for
	// messages). It must exist.
	Publication string
	// StatusInterval is how often a Reader reports its position while it
	// waits in Read; 0 means DefaultStatusInterval. It must stay well below
	// the server's wal_sender_timeout (60s by default).
	StatusInterval time.Duration
}

func (c *Config) validate() error {
	if !validSlotName(c.Slot) {
		return fmt.Errorf("slot name %q: want 1-63 lower-case letters, digits or underscores", c.Slot)
	}
	if c.Publication == "" {
		return errors.New("no publication")
	}
	if c.StatusInterval < 0 {
		return fmt.Errorf("status interval %v is negative", c.StatusInterval)
	}
	if c.StatusInterval == 0 {
		c.StatusInterval = DefaultStatusInterval
	}
	return nil
}

// validSlotName is PostgreSQL's rule for slot names
// (ReplicationSlotValidateName). It also makes the name safe to put into
// replication commands unquoted.
func validSlotName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// Message is one rowcast message of a committed transaction.
type Message struct {
	// LSN is the position of the message record itself (its end, which is
	// what pg_logical_emit_message returns). It is unique per message and
	// the same on every delivery: the idempotency key.
	LSN pglogrepl.LSN
	// Commit is the commit LSN of the message's transaction (the start of
	// its commit record: the last message of a transaction may have
	// LSN == Commit).
	Commit pglogrepl.LSN
	// Content is the message body, owned by the caller.
	Content []byte
}

// Batch is what one Read returns.
type Batch struct {
	// Messages are in commit order, and in WAL order within a transaction.
	// A transaction may be split over several batches.
	Messages []Message
	// Through is the position to Confirm once these messages and those of
	// all earlier batches are safely handled: the end LSN of the last
	// transaction that completed inside this batch. It is 0 when none did
	// (the middle of a transaction larger than the batch).
	Through pglogrepl.LSN
}

// Reader streams one logical replication slot over its own replication
// connection. Its methods must not be called concurrently: one goroutine
// runs the Read, hand on, Confirm loop and calls Close at the end.
type Reader struct {
	conn *pgconn.PgConn
	base *pgconn.Config // the caller's config, for status checks after a stream failure
	cfg  Config
	log  *slog.Logger

	track      tracker
	commit     pglogrepl.LSN // commit LSN of the open transaction (BEGIN's FinalLSN)
	pending    Batch         // read but not returned: the start of the next batch
	nextStatus time.Time
	err        error // sticky: the stream failed, the Reader is unusable
	closed     bool
}

// Open connects with a copy of conn switched to replication=database,
// creates the slot (logical, pgoutput, persistent) when it is missing and
// starts streaming it from its confirmed position with messages on. It
// returns ErrSlotInvalidated for a slot that was invalidated and
// ErrSlotActive when another connection streams it. The ctx-cancellation
// handler of the copy is set to deadlines, so a Read whose ctx ends leaves
// the connection usable. log may be nil. The caller must Close the Reader.
func Open(ctx context.Context, conn *pgconn.Config, cfg Config, log *slog.Logger) (*Reader, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("open slot %q: %w", cfg.Slot, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rc := conn.Copy()
	if rc.RuntimeParams == nil {
		rc.RuntimeParams = map[string]string{}
	}
	rc.RuntimeParams["replication"] = "database"
	rc.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.DeadlineContextWatcherHandler{Conn: c.Conn()}
	}
	pc, err := pgconn.ConnectConfig(ctx, rc)
	if err != nil {
		return nil, fmt.Errorf("open slot %q: connect: %w", cfg.Slot, err)
	}
	r := &Reader{conn: pc, base: conn.Copy(), cfg: cfg, log: log.With("slot", cfg.Slot)}
	if err := r.start(ctx); err != nil {
		_ = pc.Close(ctx)
		return nil, fmt.Errorf("open slot %q: %w", cfg.Slot, err)
	}
	return r, nil
}

// start runs IDENTIFY_SYSTEM, makes sure the slot exists and is usable and
// runs START_REPLICATION.
func (r *Reader) start(ctx context.Context) error {
	sys, err := pglogrepl.IdentifySystem(ctx, r.conn)
	if err != nil {
		return fmt.Errorf("identify system: %w", err)
	}
	rows, err := execRows(ctx, r.conn, "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = "+quoteSQL(r.cfg.Publication))
	if err != nil {
		return fmt.Errorf("look up publication %q: %w", r.cfg.Publication, err)
	}
	if len(rows) == 0 {
		return fmt.Errorf("publication %q does not exist", r.cfg.Publication)
	}

	st, found, err := querySlot(ctx, r.conn, r.cfg.Slot)
	if err != nil {
		return err
	}
	created := false
	if !found {
		_, err := pglogrepl.CreateReplicationSlot(ctx, r.conn, r.cfg.Slot, "pgoutput",
			pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "NOEXPORT_SNAPSHOT"})
		switch {
		case err == nil:
			created = true
		case pgCode(err) == "42710": // duplicate_object: another listener created it meanwhile
		default:
			return fmt.Errorf("create slot: %w", err)
		}
		if st, found, err = querySlot(ctx, r.conn, r.cfg.Slot); err != nil {
			return err
		} else if !found {
			return errors.New("slot vanished right after its creation")
		}
	}
	switch {
	case st.walStatus == "lost":
		return ErrSlotInvalidated
	case st.slotType != "logical" || st.plugin != "pgoutput":
		return fmt.Errorf("slot is %s with plugin %q, want logical with pgoutput", st.slotType, st.plugin)
	case st.database != sys.DBName:
		return fmt.Errorf("slot belongs to database %q, connected to %q", st.database, sys.DBName)
	}
	err = pglogrepl.StartReplication(ctx, r.conn, r.cfg.Slot, st.confirmed, pglogrepl.StartReplicationOptions{
		Mode: pglogrepl.LogicalReplication,
		PluginArgs: []string{
			"proto_version '1'",
			// A list of identifiers inside a string literal: quoted as an
			// identifier so that case and commas survive, then as a literal.
			"publication_names " + quoteRepl(pgx.Identifier{r.cfg.Publication}.Sanitize()),
			"messages 'true'",
		},
	})
	if err != nil {
		var pgErr *pgconn.PgError
		switch {
		case errors.As(err, &pgErr) && pgErr.Code == "55006": // object_in_use
			return fmt.Errorf("start replication: %w: %w", ErrSlotActive, err)
		case errors.As(err, &pgErr) && pgErr.Code == "55000" && strings.Contains(pgErr.Detail, "invalidated"):
			return fmt.Errorf("start replication: %w: %w", ErrSlotInvalidated, err)
		}
		return fmt.Errorf("start replication: %w", err)
	}
	r.track.safe = st.confirmed
	r.nextStatus = time.Now().Add(r.cfg.StatusInterval)
	r.log.Info("replication started", "created", created, "from", st.confirmed,
		"wal_status", st.walStatus, "server_wal", sys.XLogPos, "timeline", sys.Timeline)
	return nil
}

// Read blocks until at least one rowcast message has been committed after
// what this Reader handed out (or ctx ends) and returns a batch of at most
// limit messages. It never returns an empty batch with a nil error.
//
// Waiting policy: once it holds a message Read adds, without waiting, what
// the connection has already received; inside a transaction it keeps
// reading (the server sends a decoded transaction in one go) until the
// transaction's COMMIT or limit. Batches therefore grow on their own while the
// caller is busy with the previous one, and an isolated event costs no added
// delay. When limit is reached mid-transaction the next message is kept for
// the next Read, so the batch that holds a transaction's last message always
// carries its Through.
//
// While it waits Read answers the server's keepalives and sends a status
// update every StatusInterval. The server drops a connection that stays
// silent for wal_sender_timeout (60s by default): call Read again well
// within that. If ctx ends, Read returns ctx's error and
// keeps what it collected for the next Read: the Reader stays usable (a
// caller may well Read with a short timeout). Any other error is final: it wraps
// ErrSlotInvalidated when the slot was invalidated, and later calls return
// it again; Close the Reader and Open a new one.
func (r *Reader) Read(ctx context.Context, limit int) (Batch, error) {
	if limit < 1 {
		return Batch{}, fmt.Errorf("read slot %q: limit %d is not positive", r.cfg.Slot, limit)
	}
	if r.err != nil {
		return Batch{}, r.err
	}
	b := r.pending
	r.pending = Batch{}
	for {
		if len(b.Messages) > 0 && !r.track.inTx &&
			(len(b.Messages) >= limit || r.conn.Frontend().ReadBufferLen() == 0) {
			return b, nil
		}
		if !time.Now().Before(r.nextStatus) {
			if err := r.sendStatus(ctx); err != nil {
				return Batch{}, r.fail(ctx, err)
			}
		}
		msg, err := r.receive(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			r.pending = b
			return Batch{}, fmt.Errorf("read slot %q: %w", r.cfg.Slot, ctx.Err())
		case err != nil:
			return Batch{}, r.fail(ctx, err)
		case msg == nil: // a status update is due
			continue
		}
		full, err := r.handle(ctx, msg, &b, limit)
		if err != nil {
			return Batch{}, r.fail(ctx, err)
		}
		if full {
			return b, nil
		}
	}
}

// receive waits for the next protocol message until ctx ends or a status
// update is due; in the latter case it returns a nil message and nil error.
func (r *Reader) receive(ctx context.Context) (pgproto3.BackendMessage, error) {
	rctx, cancel := context.WithDeadline(ctx, r.nextStatus)
	defer cancel()
	msg, err := r.conn.ReceiveMessage(rctx)
	if err != nil && ctx.Err() == nil && rctx.Err() != nil &&
		(pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded)) {
		return nil, nil
	}
	return msg, err
}

// handle processes one protocol message. full reports that a message was
// stashed because b already holds limit messages.
func (r *Reader) handle(ctx context.Context, msg pgproto3.BackendMessage, b *Batch, limit int) (full bool, err error) {
	switch msg := msg.(type) {
	case *pgproto3.CopyData:
		if len(msg.Data) == 0 {
			return false, nil
		}
		switch msg.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
			if err != nil {
				return false, fmt.Errorf("parse keepalive: %w", err)
			}
			r.track.serverEnd(ka.ServerWALEnd)
			if ka.ReplyRequested {
				return false, r.sendStatus(ctx)
			}
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
			if err != nil {
				return false, fmt.Errorf("parse xlogdata: %w", err)
			}
			return r.decode(xld.WALData, b, limit)
		}
		return false, nil
	case *pgproto3.ErrorResponse:
		return false, pgconn.ErrorResponseToPgError(msg)
	case *pgproto3.CopyDone:
		return false, errors.New("server ended the replication stream")
	default: // notices, parameter statuses
		return false, nil
	}
}

// decode processes one pgoutput message; only BEGIN, COMMIT and logical
// decoding messages matter.
func (r *Reader) decode(data []byte, b *Batch, limit int) (full bool, err error) {
	if len(data) == 0 {
		return false, nil
	}
	switch pglogrepl.MessageType(data[0]) {
	case pglogrepl.MessageTypeBegin:
		var m pglogrepl.BeginMessage
		if err := m.Decode(data[1:]); err != nil {
			return false, fmt.Errorf("decode begin: %w", err)
		}
		r.track.begin()
		r.commit = m.FinalLSN
	case pglogrepl.MessageTypeCommit:
		var m pglogrepl.CommitMessage
		if err := m.Decode(data[1:]); err != nil {
			return false, fmt.Errorf("decode commit: %w", err)
		}
		r.track.commit(m.TransactionEndLSN)
		b.Through = m.TransactionEndLSN
	case pglogrepl.MessageTypeMessage:
		var m pglogrepl.LogicalDecodingMessage
		if err := m.Decode(data[1:]); err != nil {
			return false, fmt.Errorf("decode message: %w", err)
		}
		if m.Prefix != Prefix {
			return false, nil
		}
		if !m.Transactional || !r.track.inTx {
			// Sent at once, even if its transaction rolls back: not a
			// committed row change, and it has no commit to order it by.
			r.log.Warn("skipped a non-transactional message", "lsn", m.LSN)
			return false, nil
		}
		r.track.message()
		msg := Message{LSN: m.LSN, Commit: r.commit, Content: bytes.Clone(m.Content)}
		if len(b.Messages) >= limit {
			r.pending = Batch{Messages: []Message{msg}}
			return true, nil
		}
		b.Messages = append(b.Messages, msg)
	}
	return false, nil
}

// Confirm records that every message up to lsn (a Batch.Through) is safely
// handled and reports it to the server at once, so the slot releases the
// WAL before it. A position below an earlier one is ignored. An error is
// final, as for Read.
func (r *Reader) Confirm(ctx context.Context, lsn pglogrepl.LSN) error {
	if r.err != nil {
		return r.err
	}
	r.track.confirm(lsn)
	if err := r.sendStatus(ctx); err != nil {
		return r.fail(ctx, err)
	}
	return nil
}

// sendStatus sends a standby status update with the tracker's flushed
// position as written, flushed and applied.
func (r *Reader) sendStatus(ctx context.Context) error {
	pos := r.track.flushed()
	err := r.write(ctx, func() error {
		return pglogrepl.SendStandbyStatusUpdate(ctx, r.conn, pglogrepl.StandbyStatusUpdate{
			WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos,
		})
	})
	if err != nil {
		return fmt.Errorf("send status: %w", err)
	}
	r.nextStatus = time.Now().Add(r.cfg.StatusInterval)
	r.log.Debug("status sent", "flushed", pos)
	return nil
}

// write runs f, a write on the connection that pgconn does not bound by a
// context, with the connection's write deadline tied to ctx. A write cut
// short leaves the protocol stream broken, which the callers treat as final.
func (r *Reader) write(ctx context.Context, f func() error) error {
	nc := r.conn.Conn()
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = nc.SetWriteDeadline(time.Now())
		close(fired)
	})
	err := f()
	if !stop() {
		<-fired
		_ = nc.SetWriteDeadline(time.Time{})
		if err != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
	}
	return err
}

// fail makes err final for the Reader, marked with ErrSlotInvalidated when
// the slot turns out to be lost.
func (r *Reader) fail(ctx context.Context, err error) error {
	if r.slotLost(ctx) {
		err = fmt.Errorf("%w: %w", ErrSlotInvalidated, err)
	}
	r.err = fmt.Errorf("read slot %q: %w", r.cfg.Slot, err)
	return r.err
}

// slotLost asks, over a new ordinary connection, whether the slot is lost:
// the server ends the stream of a slot it invalidates with a plain
// termination (SIGTERM of the walsender), so the stream error alone does not
// tell. The checkpointer marks the slot lost only after the walsender has
// exited; meanwhile the slot shows "unreserved", so that state is asked
// again for a few seconds.
func (r *Reader) slotLost(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lostCheckTimeout)
	defer cancel()
	pc, err := pgconn.ConnectConfig(ctx, r.base)
	if err != nil {
		return false
	}
	defer pc.Close(ctx)
	tick := time.NewTicker(lostCheckInterval)
	defer tick.Stop()
	for {
		st, found, err := querySlot(ctx, pc, r.cfg.Slot)
		if err != nil || !found || st.walStatus != "unreserved" {
			return err == nil && found && st.walStatus == "lost"
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// How long and how often slotLost asks.
const (
	lostCheckTimeout  = 5 * time.Second
	lostCheckInterval = 100 * time.Millisecond
)

// Close reports the position once more, ends the replication stream (the
// server releases the slot before Close returns, so a new Open can take it
// at once) and closes the connection. Close is safe to call twice.
func (r *Reader) Close(ctx context.Context) error {
	if r.closed {
		return nil
	}
	r.closed = true
	var errs []error
	if r.err == nil {
		if err := r.sendStatus(ctx); err != nil {
			errs = append(errs, err)
		} else if err := r.endStream(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if err := r.conn.Close(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close slot %q: %w", r.cfg.Slot, err)
	}
	return nil
}

// endStream sends CopyDone and reads until the server is ready for a new
// command, skipping whatever it still streamed.
func (r *Reader) endStream(ctx context.Context) error {
	err := r.write(ctx, func() error {
		r.conn.Frontend().Send(&pgproto3.CopyDone{})
		return r.conn.Frontend().Flush()
	})
	if err != nil {
		return fmt.Errorf("end stream: %w", err)
	}
	for {
		msg, err := r.conn.ReceiveMessage(ctx)
		if err != nil {
			return fmt.Errorf("end stream: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.ReadyForQuery:
			return nil
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("end stream: %w", pgconn.ErrorResponseToPgError(msg))
		}
	}
}

// slotState is a slot's row in pg_replication_slots.
type slotState struct {
	slotType, plugin, database, walStatus string
	confirmed                             pglogrepl.LSN
}

// querySlot reads the slot's row with the simple query protocol, which is
// all a replication connection speaks.
func querySlot(ctx context.Context, pc *pgconn.PgConn, slot string) (slotState, bool, error) {
	rows, err := execRows(ctx, pc, `SELECT slot_type, coalesce(plugin, ''), coalesce(database::text, ''),
		coalesce(wal_status, ''), coalesce(confirmed_flush_lsn, '0/0')::text
		FROM pg_catalog.pg_replication_slots WHERE slot_name = `+quoteSQL(slot))
	if err != nil {
		return slotState{}, false, fmt.Errorf("look up slot: %w", err)
	}
	if len(rows) == 0 {
		return slotState{}, false, nil
	}
	row := rows[0]
	if len(row) != 5 {
		return slotState{}, false, fmt.Errorf("look up slot: %d columns", len(row))
	}
	st := slotState{slotType: string(row[0]), plugin: string(row[1]), database: string(row[2]), walStatus: string(row[3])}
	if st.confirmed, err = pglogrepl.ParseLSN(string(row[4])); err != nil {
		return slotState{}, false, fmt.Errorf("look up slot: %w", err)
	}
	return st, true, nil
}

// execRows runs one statement with the simple query protocol and returns
// the rows of its result.
func execRows(ctx context.Context, pc *pgconn.PgConn, sql string) ([][][]byte, error) {
	results, err := pc.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(results) != 1 {
		return nil, fmt.Errorf("%d results, want 1", len(results))
	}
	return results[0].Rows, nil
}

// quoteSQL quotes s as an SQL string literal, correct whatever
// standard_conforming_strings says.
func quoteSQL(s string) string {
	q := "'" + strings.ReplaceAll(s, "'", "''") + "'"
	if strings.Contains(s, `\`) {
		q = "E" + strings.ReplaceAll(q, `\`, `\\`)
	}
	return q
}

// quoteRepl quotes s as a string literal of the replication command
// grammar, which knows only doubled quotes (no backslash escapes).
func quoteRepl(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// pgCode is the SQLSTATE of a server error in err's chain, or "".
func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}
