package redisbus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rowcast/rowcast/internal/connect"
	"github.com/rowcast/rowcast/internal/testenv"
	"github.com/rowcast/rowcast/realtime"
)

// startRedis starts a Redis server for a test or benchmark and returns a
// client of it.
func startRedis(tb testing.TB) redis.UniversalClient {
	tb.Helper()
	if testing.Short() {
		tb.Skip("needs Docker (run without -short)")
	}
	s, err := testenv.StartStack(context.Background(), tb, testenv.WithoutPostgres())
	if err != nil {
		tb.Fatal(err)
	}
	return redisClient(tb, s.RedisURL)
}

// redisClient connects to url as rowcast does and closes the client when
// the test ends.
func redisClient(tb testing.TB, url string) redis.UniversalClient {
	tb.Helper()
	c, err := connect.Redis(url)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

func events(room realtime.Room, from, n int) []Event {
	out := make([]Event, n)
	for i := range out {
		out[i] = Event{OutboxID: int64(from + i), Room: room, Tail: fmt.Appendf(nil, `,"room":"%s","n":%d}`, room, from+i)}
	}
	return out
}

func TestPublishIsIdempotentPerOutboxRow(t *testing.T) {
	ctx := context.Background()
	c := startRedis(t)
	p := NewPublisher(c, HistoryLimits{Len: 100, TTL: time.Hour})
	batch := append(events("a", 1, 5), events("b", 6, 3)...)
	res, err := p.Publish(ctx, batch, nil)
	if err != nil || res.New != 8 {
		t.Fatalf("first publish: %d, %v", res.New, err)
	}
	// A relay that crashed before recording the batch publishes it again.
	res, err = p.Publish(ctx, batch, nil)
	if err != nil || res.New != 0 || len(res.Restarted) != 0 {
		t.Fatalf("repeat publish: %d new, %v, new epochs %v; want 0", res.New, err, res.Restarted)
	}
	b := New(c, Options{})
	head, err := head(ctx, c, keysFor("a"))
	if err != nil || head.Offset != 5 {
		t.Fatalf("head = %v, %v", head, err)
	}
	msgs, err := b.History(ctx, "a", realtime.ID{Epoch: head.Epoch})
	if err != nil || len(msgs) != 5 {
		t.Fatalf("history: %d, %v", len(msgs), err)
	}
	for i, m := range msgs {
		if m.ID.Offset != uint64(i+1) {
			t.Fatalf("offset %d at %d", m.ID.Offset, i)
		}
	}
	want := fmt.Sprintf(`{"id":"%s-1","room":"a","n":1}`, head.Epoch)
	if string(msgs[0].Data) != want {
		t.Fatalf("data %s, want %s", msgs[0].Data, want)
	}
}

func TestHistoryReportsLoss(t *testing.T) {
	ctx := context.Background()
	c := startRedis(t)
	p := NewPublisher(c, HistoryLimits{Len: 10, TTL: time.Hour})
	rec := ledger{}
	for i := 0; i < 500; i += 50 {
		if _, err := rec.publish(ctx, p, events("a", i+1, 50)); err != nil {
			t.Fatal(err)
		}
	}
	b := New(c, Options{})
	h, _ := head(ctx, c, keysFor("a"))
	if _, err := b.History(ctx, "a", realtime.ID{Epoch: h.Epoch, Offset: 1}); !errors.Is(err, realtime.ErrHistoryLost) {
		t.Fatalf("trimmed history: err %v", err)
	}
	if _, err := b.History(ctx, "a", realtime.ID{Epoch: "other", Offset: 499}); !errors.Is(err, realtime.ErrHistoryLost) {
		t.Fatalf("other epoch: err %v", err)
	}
	msgs, err := b.History(ctx, "a", realtime.ID{Epoch: h.Epoch, Offset: 495})
	if err != nil || len(msgs) != 5 {
		t.Fatalf("recent history: %d, %v", len(msgs), err)
	}
	if msgs, err := b.History(ctx, "a", h); err != nil || len(msgs) != 0 {
		t.Fatalf("history after head: %d, %v", len(msgs), err)
	}
}

// handler records what the bus delivers.
type handler struct {
	mu          sync.Mutex
	msgs        []realtime.Message
	resubscribe chan realtime.Room
	got         chan struct{}
}

func newHandler() *handler {
	return &handler{resubscribe: make(chan realtime.Room, 16), got: make(chan struct{}, 1024)}
}

func (h *handler) HandleMessage(ctx context.Context, m realtime.Message) {
	h.mu.Lock()
	h.msgs = append(h.msgs, m)
	h.mu.Unlock()
	h.got <- struct{}{}
}

func (h *handler) HandleResubscribed(ctx context.Context, r realtime.Room) { h.resubscribe <- r }

func TestSubscribeDeliversEverythingPublishedAfterIt(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := startRedis(t)
	p := NewPublisher(c, HistoryLimits{Len: 100, TTL: time.Hour})
	rec := ledger{}
	if _, err := rec.publish(ctx, p, events("a", 1, 3)); err != nil {
		t.Fatal(err)
	}
	b := New(c, Options{ProbeInterval: 200 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	h := newHandler()
	go b.Run(ctx, h)
	head, err := b.Subscribe(ctx, "a")
	if err != nil || head.Offset != 3 {
		t.Fatalf("subscribe: head %v, %v", head, err)
	}
	// Published right after Subscribe returned: must arrive.
	if _, err := rec.publish(ctx, p, events("a", 4, 2)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case <-h.got:
		case <-ctx.Done():
			t.Fatal("message not delivered")
		}
	}
	h.mu.Lock()
	if h.msgs[0].ID.Offset != 4 || h.msgs[1].ID.Offset != 5 {
		t.Fatalf("got offsets %d %d", h.msgs[0].ID.Offset, h.msgs[1].ID.Offset)
	}
	h.mu.Unlock()

	// Kill the subscription connection: the bus reconnects and reports the
	// room as resubscribed, so the hub can catch it up.
	if err := c.ClientKillByFilter(ctx, "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-h.resubscribe:
		if r != "a" {
			t.Fatalf("resubscribed %q", r)
		}
	case <-ctx.Done():
		t.Fatal("no resubscription after the connection was killed")
	}
	for !b.Connected() {
		select {
		case <-ctx.Done():
			t.Fatal("bus never reported connected again")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// head returns the room's newest id (zero when Redis holds nothing for it).
func head(ctx context.Context, c redis.Cmdable, k roomKeys) (realtime.ID, error) {
	vals, err := c.MGet(ctx, k.epoch, k.seq).Result()
	if err != nil {
		return realtime.ID{}, fmt.Errorf("read head: %w", err)
	}
	epoch, _ := vals[0].(string)
	seq, _ := vals[1].(string)
	if epoch == "" || seq == "" {
		return realtime.ID{}, nil
	}
	off, err := strconv.ParseUint(seq, 10, 64)
	if err != nil {
		return realtime.ID{}, fmt.Errorf("read head: seq %q: %w", seq, err)
	}
	return realtime.ID{Epoch: epoch, Offset: off}, nil
}
