package outbox_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/rowcast/rowcast/internal/connect"
	"github.com/rowcast/rowcast/listener/outbox"
	"github.com/rowcast/rowcast/realtime"
)

// BenchmarkRecord records one published row, as the relay does after each
// row it publishes from its notification at low rates: delete the row and
// store its room's position, with or without reading the outbox in the
// same round trip (which finds it empty). Besides the wall time, which is
// mostly Postgres's, it reports cpu-µs/op: this process's CPU (user and
// system) spent inside the call, the listener's cost per row.
func BenchmarkRecord(b *testing.B) {
	ctx := context.Background()
	url := migratedPostgres(ctx, b)
	pool, err := connect.PostgresPool(ctx, "DATABASE_URL", url)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	store := outbox.NewStore(pool)
	insert := func() int64 {
		var id int64
		err := pool.QueryRow(ctx, `INSERT INTO rowcast.outbox (room, table_name, op, row_data)
			VALUES ('bench', 'public.t', 'INSERT', '{"id": 1}') RETURNING id`).Scan(&id)
		if err != nil {
			b.Fatal(err)
		}
		return id
	}
	for _, c := range []struct {
		name string
		call func(outbox.Published) error
	}{
		{"record", func(p outbox.Published) error { return store.Record(ctx, p) }},
		{"record-then-oldest", func(p outbox.Published) error {
			rows, err := store.RecordThenOldest(ctx, p, 500)
			if err == nil && len(rows) != 0 {
				b.Fatalf("read %d rows, want none", len(rows))
			}
			return err
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			var cpu time.Duration
			offset := uint64(0)
			for b.Loop() {
				id := insert()
				offset++
				p := outbox.Published{IDs: []int64{id}, Positions: map[realtime.Room]realtime.Position{
					"bench": {Last: realtime.ID{Epoch: "e", Offset: offset}, Run: "run", MaxTx: 1},
				}}
				before := processCPU()
				if err := c.call(p); err != nil {
					b.Fatal(err)
				}
				cpu += processCPU() - before
			}
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

// processCPU returns the CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
