package edge

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rowcast/rowcast/app/auth"
	"github.com/rowcast/rowcast/realtime"
)

// registry makes the hub clients of both transports' connections and keeps
// the open ones for the drain and the connection gauge. It is safe for
// concurrent use.
type registry struct {
	hub         *realtime.Hub
	maxRooms    int
	joinTimeout time.Duration
	gauge       *prometheus.GaugeVec // by transport

	mu   sync.Mutex
	open map[*realtime.Client]string // value: transport name
}

func newRegistry(cfg Config, hub *realtime.Hub, gauge *prometheus.GaugeVec) *registry {
	return &registry{hub: hub, maxRooms: cfg.MaxRooms, joinTimeout: cfg.JoinTimeout, gauge: gauge,
		open: map[*realtime.Client]string{}}
}

// start makes the hub client of a new connection writing to t, registers it
// and closes it when g expires. The caller must pass what start returns to
// end when the connection ends.
func (r *registry) start(t realtime.Transport, transport string, g auth.Grant) (*realtime.Client, *time.Timer) {
	c := r.hub.NewClient(t, r.maxRooms)
	r.mu.Lock()
	r.open[c] = transport
	r.gauge.WithLabelValues(transport).Inc()
	r.mu.Unlock()
	var expiry *time.Timer
	if !g.Expires.IsZero() {
		expiry = time.AfterFunc(time.Until(g.Expires), func() { c.Close(realtime.CloseExpired) })
	}
	return c, expiry
}

// end forgets a connection's client and closes it (leaving its rooms).
func (r *registry) end(c *realtime.Client, expiry *time.Timer) {
	if expiry != nil {
		expiry.Stop()
	}
	r.mu.Lock()
	if transport, ok := r.open[c]; ok {
		delete(r.open, c)
		r.gauge.WithLabelValues(transport).Dec()
	}
	r.mu.Unlock()
	c.Close(realtime.CloseNormal)
}

// all returns the open clients.
func (r *registry) all() []*realtime.Client {
	r.mu.Lock()
	defer r.mu.Unlock()
	clients := make([]*realtime.Client, 0, len(r.open))
	for c := range r.open {
		clients = append(clients, c)
	}
	return clients
}

// joinAll joins the rooms named at connect time, resuming from the cursor
// and their snapshot positions; a room that cannot be joined gets an error
// message, the others go on.
func (r *registry) joinAll(ctx context.Context, c *realtime.Client, a admission) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.joinTimeout)
	defer cancel()
	for _, room := range a.rooms {
		err := a.badAt[room]
		if err == nil {
			err = c.Join(ctx, room, a.cursor[room], a.at[room])
		}
		if err != nil {
			c.Send(realtime.Control{Type: realtime.TypeError, Room: room, Code: errorCode(err), Message: err.Error()})
		}
	}
}
