package realtime

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// How long the hub trusts what it read of the bus's origin, and how soon it
// reads it again when a token names another database (the listener may
// have moved to a new one since).
const (
	originFresh   = 10 * time.Second
	originRecheck = time.Second
)

// originCache holds the bus's Origin, read at most once per originFresh.
type originCache struct {
	mu   sync.Mutex
	o    Origin
	read time.Time
}

// origin returns the bus's origin, read again if older than maxAge.
func (h *Hub) origin(ctx context.Context, maxAge time.Duration) (Origin, error) {
	oc := &h.originCache
	oc.mu.Lock()
	defer oc.mu.Unlock()
	if !oc.read.IsZero() && time.Since(oc.read) < maxAge {
		return oc.o, nil
	}
	o, err := h.bus.Origin(ctx)
	if err != nil {
		return Origin{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	oc.o, oc.read = o, time.Now()
	return o, nil
}

// checkSnapshot refuses a snapshot position of another database, or one so
// old that events after it may have expired with their room's history.
func (h *Hub) checkSnapshot(ctx context.Context, s *Snapshot) error {
	o, err := h.origin(ctx, originFresh)
	if err != nil {
		return err
	}
	if o.Source != "" && o.Source != s.Source {
		if o, err = h.origin(ctx, originRecheck); err != nil {
			return err
		}
	}
	if o.Source != "" && o.Source != s.Source {
		return fmt.Errorf("%w: the token names database %s, events come from %s", ErrForeignPosition, s.Source, o.Source)
	}
	if age := time.Since(s.Taken); o.HistoryTTL > 0 && age > o.HistoryTTL {
		return fmt.Errorf("%w: taken %s ago, rooms keep history for %s: reload the rows and take a new position",
			ErrPositionTooOld, age.Round(time.Second), o.HistoryTTL)
	}
	return nil
}
