package relay

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rowcast/rowcast/internal/connect"
	"github.com/rowcast/rowcast/internal/testenv"
	"github.com/rowcast/rowcast/listener/outbox"
	"github.com/rowcast/rowcast/migrations"
	"github.com/rowcast/rowcast/realtime"
	"github.com/rowcast/rowcast/realtime/redisbus"
)

// BenchmarkNotifiedRow is the leader's work for a row that arrives in its
// notification at a rate low enough that each row is a wake-up of its own
// (S1: 200 rows/s of 1 KiB over 10 rooms): drain publishes the row to
// Redis and records it in Postgres (with the read of the outbox that
// follows). Each row is inserted into the outbox, untimed, before the call.
// Besides the wall time, mostly Postgres's and Redis's, it reports
// cpu-µs/row: this process's CPU (user and system) inside the call, which
// is the listener's cost per row but for receiving and parsing the
// notification (see outbox.BenchmarkParseNotification).
func BenchmarkNotifiedRow(b *testing.B) {
	if testing.Short() {
		b.Skip("needs Docker (run without -short)")
	}
	ctx := context.Background()
	s, err := testenv.StartStack(ctx, b)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := migrations.Up(ctx, s.PostgresURL); err != nil {
		b.Fatal(err)
	}
	pool, err := connect.PostgresPool(ctx, "DATABASE_URL", s.PostgresURL)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	rdb, err := connect.Redis(s.RedisURL)
	if err != nil {
		b.Fatal(err)
	}
	defer rdb.Close()
	r := New(Config{BatchSize: 500, PollInterval: time.Minute, MaxEventBytes: 1 << 20, MaxBackoff: time.Second},
		nil, outbox.NewStore(pool), redisbus.NewPublisher(rdb, redisbus.HistoryLimits{Len: 1000, TTL: time.Hour}),
		slog.New(slog.DiscardHandler))
	// As session sets them up for a new leader that has drained.
	r.stuck, r.known, r.recent = map[realtime.Room]stuckRoom{}, map[realtime.Room]realtime.Position{}, newIDSet(recentIDs)
	const session = "bench"
	data := `{"id": 1, "body": "` + strings.Repeat("x", 920) + `", "author": "bench", "created_at": "2026-11-25T23:07:29.239395+00:00"}`
	var cpu time.Duration
	i := 0
	for b.Loop() {
		b.StopTimer()
		row := outbox.Row{Room: fmt.Sprintf("bench-%d", i%10), Table: "public.chat_message", Op: "INSERT", Data: []byte(data)}
		i++
		err := pool.QueryRow(ctx, `INSERT INTO rowcast.outbox (room, table_name, op, row_data, tx)
			VALUES ($1, $2, $3, $4::jsonb, pg_current_xact_id()) RETURNING id, captured_at, tx::text::bigint`,
			row.Room, row.Table, row.Op, data).Scan(&row.ID, &row.CapturedAt, &row.Tx)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		before := processCPU()
		if err := r.drain(ctx, session, []outbox.Row{row}); err != nil {
			b.Fatal(err)
		}
		cpu += processCPU() - before
	}
	b.StopTimer()
	var left int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM rowcast.outbox`).Scan(&left); err != nil || left != 0 {
		b.Fatalf("%d rows left in the outbox (%v)", left, err)
	}
	if got := r.Published(); got != int64(b.N) {
		b.Fatalf("published %d events of %d rows", got, b.N)
	}
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/row")
}

// processCPU returns the CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
