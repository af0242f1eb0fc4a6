package redisbus

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rowcast/rowcast/internal/testenv"
	"github.com/rowcast/rowcast/realtime"
)

// Postgres is the record and Redis a cache of it: whatever Redis forgets or
// undoes, the next publish of the room either continues exactly where
// Postgres recorded it or starts a new epoch, never reusing an id.
func TestPublishNoticesRedisGoingBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := startRedis(t)
	p := NewPublisher(c, HistoryLimits{Len: 100, TTL: time.Hour})

	// publishTwice records five events of room r, then returns the
	// recorded position and the ledger.
	setup := func(t *testing.T, r realtime.Room) ledger {
		t.Helper()
		rec := ledger{}
		if _, err := rec.publish(ctx, p, events(r, 1, 5)); err != nil {
			t.Fatal(err)
		}
		return rec
	}
	// expectNewEpoch publishes the next events and checks that r started a
	// new epoch (ids from 1 again) with the given reason.
	expectNewEpoch := func(t *testing.T, rec ledger, r realtime.Room, from int, why string) {
		t.Helper()
		before := rec[r]
		res, err := rec.publish(ctx, p, events(r, from, 2))
		if err != nil {
			t.Fatal(err)
		}
		got := res.Positions[r]
		if res.Restarted[r] != why || got.Last.Epoch == before.Last.Epoch || got.Last.Offset != 2 {
			t.Fatalf("after %q: position %v (was %v), why %q; want a new epoch at offset 2", why, got.Last, before.Last, res.Restarted[r])
		}
	}
	keys := func(r realtime.Room) roomKeys { return keysFor(r) }

	t.Run("flushall", func(t *testing.T) {
		rec := setup(t, "flush")
		if err := c.FlushAll(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		expectNewEpoch(t, rec, "flush", 6, "epoch missing")
	})
	t.Run("counter went back", func(t *testing.T) {
		rec := setup(t, "back")
		// What a restore from an older snapshot leaves: the same epoch, an
		// older counter and older history.
		if err := c.Set(ctx, keys("back").seq, 3, 0).Err(); err != nil {
			t.Fatal(err)
		}
		if err := c.ZRemRangeByScore(ctx, keys("back").published, "4", "+inf").Err(); err != nil {
			t.Fatal(err)
		}
		if err := c.XTrimMinID(ctx, keys("back").history, "99").Err(); err != nil {
			t.Fatal(err)
		}
		expectNewEpoch(t, rec, "back", 6, "offset went back")
	})
	t.Run("counter evicted", func(t *testing.T) {
		rec := setup(t, "evict")
		if err := c.Del(ctx, keys("evict").seq).Err(); err != nil {
			t.Fatal(err)
		}
		expectNewEpoch(t, rec, "evict", 6, "offset went back")
	})
	t.Run("epoch evicted", func(t *testing.T) {
		rec := setup(t, "evict2")
		if err := c.Del(ctx, keys("evict2").epoch).Err(); err != nil {
			t.Fatal(err)
		}
		expectNewEpoch(t, rec, "evict2", 6, "epoch missing")
	})
	t.Run("unrecorded publish is adopted", func(t *testing.T) {
		rec := setup(t, "adopt")
		// A leader published 6..8 and died before recording them; the next
		// one claims rows 6..10 (the rows are still in the outbox).
		if _, err := p.Publish(ctx, events("adopt", 6, 3), rec); err != nil {
			t.Fatal(err)
		}
		was := rec["adopt"]
		was.Unsure = true
		rec["adopt"] = was
		res, err := rec.publish(ctx, p, events("adopt", 6, 5))
		if err != nil {
			t.Fatal(err)
		}
		if pos := res.Positions["adopt"]; len(res.Restarted) != 0 || res.New != 2 || pos.Last.Epoch != was.Last.Epoch || pos.Last.Offset != 10 {
			t.Fatalf("adopt: %d new at %v, new epochs %v; want 2 new at %s-10", res.New, pos.Last, res.Restarted, was.Last.Epoch)
		}
	})
	t.Run("ahead but not by these rows", func(t *testing.T) {
		rec := setup(t, "other")
		if _, err := p.Publish(ctx, events("other", 100, 3), rec); err != nil {
			t.Fatal(err)
		}
		expectNewEpoch(t, rec, "other", 6, "ahead, not explained")
	})
	t.Run("unsure after a restart", func(t *testing.T) {
		rec := setup(t, "unsure")
		// The recorded run differs from Redis's: it restarted since a
		// publish that Postgres may not have recorded.
		was := rec["unsure"]
		was.Unsure, was.Run = true, "0123"
		rec["unsure"] = was
		expectNewEpoch(t, rec, "unsure", 6, "unrecorded publish, then a restart")
	})
	t.Run("run_id read about once a second", func(t *testing.T) {
		infoCalls := func() int {
			t.Helper()
			stats, err := c.Info(ctx, "commandstats").Result()
			if err != nil {
				t.Fatal(err)
			}
			_, rest, _ := strings.Cut(stats, "cmdstat_info:calls=")
			n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			return n
		}
		rec := ledger{}
		pub := NewPublisher(c, HistoryLimits{Len: 100, TTL: time.Hour})
		before := infoCalls()
		for i := range 20 {
			if _, err := rec.publish(ctx, pub, events("often", 1+i, 1)); err != nil {
				t.Fatal(err)
			}
		}
		// One read by the scripts (fast enough to stay within a second),
		// one by infoCalls itself.
		if n := infoCalls() - before; n > 2 || rec["often"].Run == "" {
			t.Fatalf("20 publishes read INFO %d times (want 1 and the check's own), recorded run %q", n-1, rec["often"].Run)
		}
	})
	t.Run("epoch an edge created before the first event is kept", func(t *testing.T) {
		b := New(c, Options{})
		joined, err := b.position(ctx, keysFor("early"))
		if err != nil {
			t.Fatal(err)
		}
		rec := ledger{}
		res, err := rec.publish(ctx, p, events("early", 1, 1))
		if err != nil {
			t.Fatal(err)
		}
		if got := res.Positions["early"].Last; got != (realtime.ID{Epoch: joined.Epoch, Offset: 1}) || len(res.Restarted) != 0 {
			t.Fatalf("first event %v (joined at %v), new epochs %v", got, joined, res.Restarted)
		}
	})
}

// A real restart from an older snapshot: the run changes, the counter goes
// back, and the room starts a new epoch; history readers are told too.
func TestPublishAfterRestoreFromOlderSnapshot(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Docker (run without -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := testenv.StartRedis(ctx, t)
	if err != nil {
		t.Fatal(err)
	}
	connectTo := func() redis.UniversalClient {
		url, err := srv.URL(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return redisClient(t, url)
	}
	c := connectTo()
	p := NewPublisher(c, HistoryLimits{Len: 100, TTL: time.Hour})
	rec := ledger{}
	if _, err := rec.publish(ctx, p, events("snap", 1, 5)); err != nil {
		t.Fatal(err)
	}
	if err := c.Save(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := rec.publish(ctx, p, events("snap", 6, 5)); err != nil {
		t.Fatal(err)
	}
	seen := rec["snap"]
	// Shut down without saving: the next start loads the older snapshot.
	// Its reply is the connection closing (go-redis then retries and fails
	// to dial): the container's state below is what tells it worked.
	_ = c.ShutdownNoSave(ctx).Err()
	for { // the container ends with the server
		st, err := srv.Container().State(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Running {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("redis container still running after SHUTDOWN")
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	c = connectTo()
	p = NewPublisher(c, HistoryLimits{Len: 100, TTL: time.Hour})
	// Before the next publish, a reader at the newest id it saw is told
	// nothing is newer (its ids stay valid; the next event decides).
	bus := New(c, Options{})
	if msgs, err := bus.History(ctx, "snap", seen.Last); err != nil || len(msgs) != 0 {
		t.Fatalf("history after %v from the older snapshot: %d events, %v; want none", seen.Last, len(msgs), err)
	}
	res, err := rec.publish(ctx, p, events("snap", 11, 1))
	if err != nil {
		t.Fatal(err)
	}
	got := res.Positions["snap"]
	if got.Last.Epoch == seen.Last.Epoch || got.Last.Offset != 1 || res.Restarted["snap"] != "offset went back" || got.Run == seen.Run {
		t.Fatalf("after the restore: %+v, why %q; want a new epoch at offset 1 on a new run (was %+v)", got, res.Restarted["snap"], seen)
	}
	if _, err := bus.History(ctx, "snap", seen.Last); !errors.Is(err, realtime.ErrHistoryLost) {
		t.Fatalf("history after %v in the old epoch: %v, want ErrHistoryLost", seen.Last, err)
	}
}
