package retry

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestLoopLogsEachOutageOnceAndBacksOff(t *testing.T) {
	var logs bytes.Buffer
	retries := 0
	p := Policy{Min: time.Millisecond, Max: 4 * time.Millisecond, Log: slog.New(slog.NewTextHandler(&logs, nil)), What: "thing",
		OnRetry: func(error) { retries++ }}
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	Loop(ctx, p, func(ctx context.Context, up func()) error {
		calls++
		switch {
		case calls == 4: // healthy once, then fails again
			up()
		case calls == 7:
			up()
			cancel()
			return nil
		}
		return errors.New("boom")
	})
	if calls != 7 || retries != 6 {
		t.Fatalf("calls %d retries %d", calls, retries)
	}
	if n := strings.Count(logs.String(), "thing failed"); n != 2 {
		t.Errorf("%d failure lines, want one per outage (2):\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "thing restored"); n != 2 {
		t.Errorf("%d restored lines, want 2:\n%s", n, logs.String())
	}
}

func TestDoReturnsOnSuccessOrCancel(t *testing.T) {
	p := Policy{Min: time.Millisecond, Max: time.Millisecond, Log: slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)), What: "x"}
	n := 0
	if err := Do(context.Background(), p, func(context.Context) error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	}); err != nil || n != 3 {
		t.Fatalf("Do = %v after %d calls", err, n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Do(ctx, p, func(context.Context) error { return errors.New("never") }); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Do = %v", err)
	}
}
