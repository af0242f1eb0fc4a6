package e2e

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/rowcast/rowcast/e2e/wire"
)

// SIGTERM on an edge: it tells its clients to reconnect, closes them within
// the drain bound and exits; they resume on a second edge without loss.
func TestDrainToSecondEdge(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := startStack(ctx, t)
	startListener(ctx, t, s)
	a, baseA := startApp(ctx, t, s, "ROWCAST_DRAIN_TIMEOUT=2s")
	_, baseB := startApp(ctx, t, s)

	var subs []*wire.Subscriber
	for _, tr := range []wire.Transport{wire.WebSocket, wire.SSE} {
		for range 3 {
			sub := wire.NewSubscriber(baseA, tr, faultRooms...)
			sub.Others = []string{baseB}
			subs = append(subs, sub)
			go sub.Run(ctx)
			<-sub.Subscribed()
		}
	}
	r := &rig{s: s, subs: subs}
	in := startInserter(ctx, s.pgURL, faultRooms...)
	r.waitProgress(ctx, t, 20, "before the drain")
	start := time.Now()
	if err := a.Stop(syscall.SIGTERM); err != nil {
		t.Fatalf("edge A after SIGTERM: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("drain took %s, bound is 2s (+1s shutdown grace)", took)
	}
	r.waitProgress(ctx, t, 20, "after the drain")
	in.finish()
	want := committed(ctx, t, s.pgURL)
	r.waitAll(ctx, want)
	for _, sub := range subs {
		tl := count(sub, want)
		if tl.lost > 0 || tl.dups > 0 || tl.outOfOrder > 0 {
			t.Errorf("%s subscriber: lost %d dups %d out of order %d of %d", sub.Transport, tl.lost, tl.dups, tl.outOfOrder, tl.expected)
		}
		told := false
		for _, c := range sub.Controls() {
			told = told || c.Type == "reconnect"
		}
		if !told {
			t.Errorf("%s subscriber was never told to reconnect", sub.Transport)
		}
		if sub.Connects() < 2 {
			t.Errorf("%s subscriber did not move to edge B", sub.Transport)
		}
	}
	report(t, "drain: edge A exited %s after SIGTERM; %d subscribers resumed on edge B", time.Since(start).Round(time.Millisecond), len(subs))
}
