// Package retry holds rowcast's one reconnect policy: exponential backoff
// between attempts, and each outage logged once when it starts and once when
// it ends, never once per attempt.
package retry

import (
	"context"
	"log/slog"
	"time"
)

// Policy says how to retry and how to report it.
type Policy struct {
	Min, Max time.Duration // first wait, and its cap as it doubles
	Log      *slog.Logger
	What     string      // what fails, for the log: "redis subscription"
	OnRetry  func(error) // optional: called after each failure (e.g. a metric)
}

// outage tracks one run of failures.
type outage struct {
	p       Policy
	since   time.Time
	backoff time.Duration
}

func (o *outage) failed(err error) {
	if o.since.IsZero() {
		o.since = time.Now()
		o.p.Log.Error(o.p.What+" failed; retrying", "err", err)
	}
	if o.p.OnRetry != nil {
		o.p.OnRetry(err)
	}
}

func (o *outage) recovered() {
	if !o.since.IsZero() {
		o.p.Log.Info(o.p.What+" restored", "after", time.Since(o.since).Round(time.Millisecond))
		o.since = time.Time{}
	}
	o.backoff = o.p.Min
}

// wait sleeps the current backoff and doubles it; false when ctx ended.
func (o *outage) wait(ctx context.Context) bool {
	t := time.NewTimer(o.backoff)
	defer t.Stop()
	o.backoff = min(2*o.backoff, o.p.Max)
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Loop runs session again and again until ctx ends. A session calls up once
// it is healthy (which ends the outage and resets the backoff) and returns
// when it fails.
func Loop(ctx context.Context, p Policy, session func(ctx context.Context, up func()) error) {
	o := &outage{p: p, backoff: p.Min}
	for {
		err := session(ctx, o.recovered)
		if ctx.Err() != nil {
			return
		}
		o.failed(err)
		if !o.wait(ctx) {
			return
		}
	}
}

// Do calls fn until it succeeds or ctx ends (then it returns ctx's error).
func Do(ctx context.Context, p Policy, fn func(ctx context.Context) error) error {
	o := &outage{p: p, backoff: p.Min}
	for {
		err := fn(ctx)
		if err == nil {
			o.recovered()
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		o.failed(err)
		if !o.wait(ctx) {
			return ctx.Err()
		}
	}
}
