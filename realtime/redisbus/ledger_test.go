package redisbus

import (
	"context"

	"github.com/rowcast/rowcast/realtime"
)

// ledger plays Postgres in tests: it records each room's position after a
// publish, as the relay does with the removal of the published rows.
type ledger map[realtime.Room]realtime.Position

func (l ledger) publish(ctx context.Context, p *Publisher, events []Event) (Result, error) {
	res, err := p.Publish(ctx, events, l)
	if err != nil {
		return res, err
	}
	for r, pos := range res.Positions {
		l[r] = pos
	}
	return res, nil
}
