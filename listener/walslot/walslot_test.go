package walslot_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rowcast/rowcast/internal/testenv"
	"github.com/rowcast/rowcast/listener/walslot"
)

var (
	_ walslot.Querier = (*pgx.Conn)(nil)
	_ walslot.Querier = (*pgxpool.Pool)(nil)
	_ walslot.Querier = (pgx.Tx)(nil)
)

const publication = "rowcast_wal"

// server is a PostgreSQL test server: its URL, a connection config for Open
// and an ordinary connection for SQL.
type server struct {
	url  string
	conf *pgconn.Config
	db   *pgx.Conn
}

func startServer(ctx context.Context, t *testing.T, args ...string) *server {
	t.Helper()
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	var opts []testenv.Option
	if len(args) > 0 {
		opts = append(opts, testenv.WithArgs(args...))
	}
	url := testenv.PostgresURL(ctx, t, opts...)
	conf, err := pgconn.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	return &server{url: url, conf: conf, db: connect(ctx, t, url)}
}

// startLogical starts a server with wal_level=logical and the empty
// publication WAL capture uses.
func startLogical(ctx context.Context, t *testing.T, args ...string) *server {
	t.Helper()
	s := startServer(ctx, t, append([]string{"-c", "wal_level=logical"}, args...)...)
	s.exec(ctx, t, "CREATE PUBLICATION "+publication)
	return s
}

func connect(ctx context.Context, t *testing.T, url string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func (s *server) exec(ctx context.Context, t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := s.db.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func (s *server) lsn(ctx context.Context, t *testing.T, sql string, args ...any) pglogrepl.LSN {
	t.Helper()
	var text string
	if err := s.db.QueryRow(ctx, sql, args...).Scan(&text); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	lsn, err := pglogrepl.ParseLSN(text)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

func (s *server) currentLSN(ctx context.Context, t *testing.T) pglogrepl.LSN {
	t.Helper()
	return s.lsn(ctx, t, "SELECT pg_current_wal_lsn()::text")
}

func (s *server) open(ctx context.Context, t *testing.T, slot string, interval time.Duration) *walslot.Reader {
	t.Helper()
	r, err := walslot.Open(ctx, s.conf, walslot.Config{Slot: slot, Publication: publication, StatusInterval: interval}, testLogger(t))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	return r
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

// emit emits each content as a rowcast message in q's transaction and
// returns the LSNs pg_logical_emit_message returned.
func emit(ctx context.Context, t *testing.T, q walslot.Querier, contents ...string) []pglogrepl.LSN {
	t.Helper()
	var lsns []pglogrepl.LSN
	for _, c := range contents {
		var text string
		if err := q.QueryRow(ctx, "SELECT pg_logical_emit_message(true, $1, $2::text)::text", walslot.Prefix, c).Scan(&text); err != nil {
			t.Fatalf("emit %q: %v", c, err)
		}
		lsn, err := pglogrepl.ParseLSN(text)
		if err != nil {
			t.Fatal(err)
		}
		lsns = append(lsns, lsn)
	}
	return lsns
}

// emitTx commits one transaction that emits each content as a rowcast message.
func emitTx(ctx context.Context, t *testing.T, db *pgx.Conn, contents ...string) {
	t.Helper()
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		emit(ctx, t, tx, contents...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// readN reads batches until it has n messages in all.
func readN(ctx context.Context, t *testing.T, r *walslot.Reader, n, limit int) []walslot.Batch {
	t.Helper()
	var batches []walslot.Batch
	for got := 0; got < n; {
		b, err := r.Read(ctx, limit)
		if err != nil {
			t.Fatalf("read after %d of %d messages: %v", got, n, err)
		}
		if len(b.Messages) == 0 || len(b.Messages) > limit {
			t.Fatalf("batch of %d messages, limit %d", len(b.Messages), limit)
		}
		batches = append(batches, b)
		got += len(b.Messages)
	}
	return batches
}

func messages(batches []walslot.Batch) []walslot.Message {
	var ms []walslot.Message
	for _, b := range batches {
		ms = append(ms, b.Messages...)
	}
	return ms
}

func contents(ms []walslot.Message) []string {
	var cs []string
	for _, m := range ms {
		cs = append(cs, string(m.Content))
	}
	return cs
}

// TestReader runs the Reader against one server with wal_level=logical and
// an empty publication; each subtest has its own slot, created when it
// starts, so it sees only its own messages.
func TestReader(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	s := startLogical(ctx, t)

	t.Run("CheckWALLevel", func(t *testing.T) {
		if err := walslot.CheckWALLevel(ctx, s.db); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("CommitOrder", func(t *testing.T) {
		r := s.open(ctx, t, "order", 0)
		a, b, c := connect(ctx, t, s.url), connect(ctx, t, s.url), connect(ctx, t, s.url)
		before := s.currentLSN(ctx, t)

		txA, err := a.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		txB, err := b.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		txC, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		emitted := map[string]pglogrepl.LSN{}
		for _, e := range []struct {
			tx      pgx.Tx
			content string
		}{{txA, "a1"}, {txB, "b1"}, {txC, "c1"}, {txA, "a2"}, {txB, "b2"}} {
			emitted[e.content] = emit(ctx, t, e.tx, e.content)[0]
			if e.content == "b1" {
				if _, err := txB.Exec(ctx, "SELECT pg_logical_emit_message(true, 'other', 'x')"); err != nil {
					t.Fatal(err)
				}
			}
		}
		for _, tx := range []pgx.Tx{txB, txA} {
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := txC.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		// Not transactional: sent even if its transaction rolled back, so skipped.
		s.exec(ctx, t, "SELECT pg_logical_emit_message(false, 'rowcast', 'nt')")
		emitTx(ctx, t, s.db, "end")
		after := s.currentLSN(ctx, t)

		batches := readN(ctx, t, r, 5, 100)
		ms := messages(batches)
		if got, want := contents(ms), []string{"b1", "b2", "a1", "a2", "end"}; !slices.Equal(got, want) {
			t.Fatalf("contents = %q, want %q", got, want)
		}
		b1, b2, a1, a2, end := ms[0], ms[1], ms[2], ms[3], ms[4]
		if b1.Commit != b2.Commit || a1.Commit != a2.Commit {
			t.Errorf("commits differ within a transaction: %+v", ms)
		}
		if !(b1.Commit < a1.Commit && a1.Commit < end.Commit) {
			t.Errorf("commit LSNs out of order: b %v, a %v, end %v", b1.Commit, a1.Commit, end.Commit)
		}
		if !(a1.LSN < b1.LSN && b1.LSN < a2.LSN && a2.LSN < b2.LSN) {
			t.Errorf("message LSNs are not in emit order: a1 %v b1 %v a2 %v b2 %v", a1.LSN, b1.LSN, a2.LSN, b2.LSN)
		}
		for _, m := range ms[:4] {
			if m.LSN != emitted[string(m.Content)] {
				t.Errorf("message %q: LSN %v, pg_logical_emit_message returned %v", m.Content, m.LSN, emitted[string(m.Content)])
			}
		}
		for _, m := range ms {
			// The LSN is the end of the message record: the last message
			// of a transaction ends where its commit record starts.
			if m.LSN <= before || m.LSN > m.Commit || m.Commit > after {
				t.Errorf("message %q: LSN %v, commit %v outside (%v, %v]", m.Content, m.LSN, m.Commit, before, after)
			}
		}
		last := batches[len(batches)-1]
		if last.Through <= end.Commit || last.Through > after {
			t.Errorf("last Through = %v, want in (%v, %v]", last.Through, end.Commit, after)
		}
		t.Logf("%d batches; last Through %v", len(batches), last.Through)
	})

	t.Run("LargeTransaction", func(t *testing.T) {
		const n, limit = 20000, 500
		r := s.open(ctx, t, "large_tx", 0)
		s.exec(ctx, t, "SELECT pg_logical_emit_message(true, 'rowcast', i::text) FROM generate_series(1, $1::int) i", n)
		start := time.Now()
		batches := readN(ctx, t, r, n, limit)
		t.Logf("read %d messages in %d batches in %v", n, len(batches), time.Since(start))
		if len(batches) != n/limit {
			t.Fatalf("%d batches, want %d", len(batches), n/limit)
		}
		for i, b := range batches {
			if len(b.Messages) != limit {
				t.Errorf("batch %d: %d messages", i, len(b.Messages))
			}
			if last := i == len(batches)-1; last != (b.Through != 0) {
				t.Errorf("batch %d of %d: Through = %v", i, len(batches), b.Through)
			}
		}
		ms := messages(batches)
		for i, m := range ms {
			if string(m.Content) != strconv.Itoa(i+1) || m.Commit != ms[0].Commit || (i > 0 && m.LSN <= ms[i-1].LSN) {
				t.Fatalf("message %d = %q at %v, commit %v (first commit %v)", i, m.Content, m.LSN, m.Commit, ms[0].Commit)
			}
		}
		if through := batches[len(batches)-1].Through; through <= ms[0].Commit {
			t.Errorf("Through %v not after commit %v", through, ms[0].Commit)
		}
	})

	t.Run("Redelivery", func(t *testing.T) {
		const slot = "redeliver"
		r := s.open(ctx, t, slot, 0)
		emitTx(ctx, t, s.db, "r1", "r2")
		emitTx(ctx, t, s.db, "r3")
		// limit 2: the first transaction exactly fills the first batch.
		first := readN(ctx, t, r, 3, 2)
		if len(first) != 2 || first[0].Through == 0 || first[1].Through <= first[0].Through {
			t.Fatalf("batches = %+v", first)
		}
		if err := r.Close(ctx); err != nil { // no Confirm
			t.Fatal(err)
		}

		r = s.open(ctx, t, slot, 0)
		again := readN(ctx, t, r, 3, 2)
		if !slices.EqualFunc(messages(first), messages(again), func(a, b walslot.Message) bool {
			return a.LSN == b.LSN && a.Commit == b.Commit && bytes.Equal(a.Content, b.Content)
		}) {
			t.Fatalf("redelivered %+v, first delivered %+v", messages(again), messages(first))
		}
		if err := r.Confirm(ctx, again[0].Through); err != nil {
			t.Fatal(err)
		}
		if err := r.Close(ctx); err != nil {
			t.Fatal(err)
		}

		r = s.open(ctx, t, slot, 0)
		ms := messages(readN(ctx, t, r, 1, 2))
		if ms[0].LSN != first[1].Messages[0].LSN {
			t.Fatalf("after confirming the first transaction got %q at %v, want r3 at %v", ms[0].Content, ms[0].LSN, first[1].Messages[0].LSN)
		}
		// Nothing else is pending: the next message is the next one read.
		emitTx(ctx, t, s.db, "r4")
		if ms := messages(readN(ctx, t, r, 1, 2)); string(ms[0].Content) != "r4" {
			t.Fatalf("got %q, want r4", ms[0].Content)
		}
	})

	t.Run("Active", func(t *testing.T) {
		const slot = "taken"
		r := s.open(ctx, t, slot, 0)
		_, err := walslot.Open(ctx, s.conf, walslot.Config{Slot: slot, Publication: publication}, testLogger(t))
		if !errors.Is(err, walslot.ErrSlotActive) {
			t.Fatalf("second open: %v, want ErrSlotActive", err)
		}
		if err := walslot.DropSlot(ctx, s.db, slot); !errors.Is(err, walslot.ErrSlotActive) {
			t.Fatalf("drop while streamed: %v, want ErrSlotActive", err)
		}
		// Close releases the slot before it returns.
		if err := r.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if err := walslot.DropSlot(ctx, s.db, slot); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("Config", func(t *testing.T) {
		for _, cfg := range []walslot.Config{
			{Slot: "Bad-Name", Publication: publication},
			{Slot: "ok"},
			{Slot: "ok", Publication: "missing"},
		} {
			if _, err := walslot.Open(ctx, s.conf, cfg, nil); err == nil {
				t.Errorf("open %+v succeeded", cfg)
			} else {
				t.Logf("open %+v: %v", cfg, err)
			}
		}
		if err := walslot.DropSlot(ctx, s.db, "ok"); !errors.Is(err, walslot.ErrNoSlot) {
			t.Errorf("a failed open left a slot behind: drop = %v", err)
		}
	})

	t.Run("IdleAdvance", func(t *testing.T) {
		const slot = "idle"
		r := s.open(ctx, t, slot, 50*time.Millisecond)
		emitTx(ctx, t, s.db, "i1")
		b := readN(ctx, t, r, 1, 10)[0]
		if err := r.Confirm(ctx, b.Through); err != nil {
			t.Fatal(err)
		}
		// Unrelated WAL: 8 MB of rows in a table that is in no publication.
		s.exec(ctx, t, "CREATE TABLE filler (x text)")
		s.exec(ctx, t, "INSERT INTO filler SELECT repeat(md5(i::text), 32) FROM generate_series(1, 8000) i")
		s.exec(ctx, t, "CHECKPOINT") // logs the running transactions the slot's restart_lsn moves on
		target := s.currentLSN(ctx, t)
		held, _, err := walslot.Retained(ctx, s.db, slot)
		if err != nil {
			t.Fatal(err)
		}
		if held < 8<<20 {
			t.Fatalf("slot holds %d bytes before advancing, want the 8 MB filler", held)
		}

		// The Reader only talks to the server inside its calls: keep one
		// Read waiting while the slot is watched.
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := r.Read(rctx, 10)
			done <- err
		}()
		start := time.Now()
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		defer wcancel()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		var confirmed pglogrepl.LSN
		for {
			confirmed = s.lsn(ctx, t, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slot)
			if held, _, err = walslot.Retained(ctx, s.db, slot); err != nil {
				t.Fatal(err)
			}
			if confirmed >= target && held < 1<<20 {
				break
			}
			select {
			case <-wctx.Done():
				t.Fatalf("slot did not advance: confirmed_flush_lsn %v (want >= %v), retained %d bytes", confirmed, target, held)
			case <-tick.C:
			}
		}
		t.Logf("idle slot advanced to %v (retaining %d bytes) in %v", confirmed, held, time.Since(start))
		stop()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("read = %v, want context.Canceled", err)
		}
		// The Reader is still usable after its ctx ended.
		emitTx(ctx, t, s.db, "i2")
		if ms := messages(readN(ctx, t, r, 1, 10)); string(ms[0].Content) != "i2" {
			t.Fatalf("got %q, want i2", ms[0].Content)
		}
	})

	t.Run("LargeMessage", func(t *testing.T) {
		r := s.open(ctx, t, "large_msg", 0)
		var sb strings.Builder
		for i := 0; sb.Len() < 5<<20; i++ {
			fmt.Fprintf(&sb, "%08d,", i)
		}
		big := sb.String()
		emit(ctx, t, s.db, big)
		start := time.Now()
		ms := messages(readN(ctx, t, r, 1, 10))
		t.Logf("read a %d-byte message in %v", len(ms[0].Content), time.Since(start))
		if string(ms[0].Content) != big {
			t.Fatalf("got %d bytes, want %d", len(ms[0].Content), len(big))
		}
	})
}

// TestCheckWALLevelReplica checks the operator's error on a server with the
// default wal_level.
func TestCheckWALLevelReplica(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := startServer(ctx, t, "-c", "wal_level=replica")
	err := walslot.CheckWALLevel(ctx, s.db)
	want := `wal_level is "replica": WAL capture (ROWCAST_CAPTURE=wal) needs wal_level=logical (set it and restart Postgres)`
	if err == nil || err.Error() != want {
		t.Fatalf("CheckWALLevel = %v, want %s", err, want)
	}
	s.exec(ctx, t, "CREATE PUBLICATION "+publication) // allowed, with a warning
	_, err = walslot.Open(ctx, s.conf, walslot.Config{Slot: "rowcast", Publication: publication}, testLogger(t))
	if err == nil || !strings.Contains(err.Error(), "wal_level") {
		t.Fatalf("open on wal_level=replica: %v, want an error about wal_level", err)
	}
	t.Logf("open: %v", err)
}

// TestInvalidation lets max_slot_wal_keep_size invalidate two slots, one
// idle and one streamed by an open Reader that does not read, and checks
// that Open and Read report ErrSlotInvalidated and that DropSlot repairs it.
func TestInvalidation(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := startLogical(ctx, t, "-c", "max_slot_wal_keep_size=1MB", "-c", "min_wal_size=32MB", "-c", "max_wal_size=64MB")
	const idle, active = "doomed", "doomed_active"

	r := s.open(ctx, t, idle, 0)
	if err := r.Close(ctx); err != nil {
		t.Fatal(err)
	}
	streaming := s.open(ctx, t, active, 0)
	s.exec(ctx, t, "CREATE TABLE filler (x text)")

	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	lost := func(slot string) bool {
		_, status, err := walslot.Retained(ctx, s.db, slot)
		if err != nil {
			t.Fatal(err)
		}
		return status == "lost"
	}
	rounds := 0
	for ; !lost(idle) || !lost(active); rounds++ {
		if wctx.Err() != nil {
			t.Fatalf("slots not lost after %d rounds of WAL", rounds)
		}
		s.exec(ctx, t, "INSERT INTO filler SELECT repeat(md5(i::text), 32) FROM generate_series(1, 1000) i")
		s.exec(ctx, t, "SELECT pg_switch_wal()")
		s.exec(ctx, t, "CHECKPOINT")
	}
	t.Logf("slots lost after %d rounds of 1 MB, WAL switch and checkpoint", rounds)

	if _, err := walslot.Open(ctx, s.conf, walslot.Config{Slot: idle, Publication: publication}, testLogger(t)); !errors.Is(err, walslot.ErrSlotInvalidated) {
		t.Fatalf("open invalidated slot: %v, want ErrSlotInvalidated", err)
	}
	_, err := streaming.Read(ctx, 10)
	if !errors.Is(err, walslot.ErrSlotInvalidated) {
		t.Fatalf("read invalidated slot: %v, want ErrSlotInvalidated", err)
	}
	t.Logf("read: %v", err)
	if _, err := streaming.Read(ctx, 10); !errors.Is(err, walslot.ErrSlotInvalidated) {
		t.Fatalf("read again: %v, want the same error", err)
	}
	_ = streaming.Close(ctx)

	for _, slot := range []string{idle, active} {
		if err := walslot.DropSlot(ctx, s.db, slot); err != nil {
			t.Fatal(err)
		}
	}
	if err := walslot.DropSlot(ctx, s.db, idle); !errors.Is(err, walslot.ErrNoSlot) {
		t.Fatalf("drop a missing slot: %v, want ErrNoSlot", err)
	}
	if _, _, err := walslot.Retained(ctx, s.db, idle); !errors.Is(err, walslot.ErrNoSlot) {
		t.Fatalf("retained by a missing slot: %v, want ErrNoSlot", err)
	}

	r = s.open(ctx, t, idle, 0)
	emitTx(ctx, t, s.db, "fresh")
	if ms := messages(readN(ctx, t, r, 1, 10)); string(ms[0].Content) != "fresh" {
		t.Fatalf("got %q, want fresh", ms[0].Content)
	}
}
