package edge

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	rcmetrics "github.com/rowcast/rowcast/internal/metrics"
	"github.com/rowcast/rowcast/realtime"
)

// metrics are the edge's Prometheus collectors, on a registry of the
// server's own (no global state: tests run several servers in a process).
type metrics struct {
	reg         *prometheus.Registry
	connections *prometheus.GaugeVec
	received    prometheus.Counter
	delivered   *prometheus.CounterVec
	slow        *prometheus.CounterVec
	refused     *prometheus.CounterVec
	reconnects  prometheus.Counter
	latency     prometheus.Histogram
}

func newMetrics(hub *realtime.Hub) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rowcast_connections", Help: "Open client connections.",
		}, []string{"transport"}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rowcast_events_received_total", Help: "Events received from Redis for rooms with local clients.",
		}),
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rowcast_events_delivered_total", Help: "Event frames queued to client connections.",
		}, []string{"transport"}),
		slow: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rowcast_slow_client_disconnects_total", Help: "Clients closed because their queue overflowed.",
		}, []string{"transport"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rowcast_refused_total", Help: "Requests and messages refused, by reason.",
		}, []string{"reason"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rowcast_redis_reconnects_total", Help: "Redis subscription sessions replaced after a failure.",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "rowcast_event_latency_seconds",
			Help:    "From capture in Postgres (the event's at) to the hand-off to local client sockets.",
			Buckets: rcmetrics.LatencyBuckets,
		}),
	}
	m.reg.MustRegister(m.connections, m.received, m.delivered, m.slow, m.refused, m.reconnects, m.latency,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "rowcast_rooms", Help: "Rooms with local clients."},
			func() float64 { return float64(hub.Rooms()) }),
		rcmetrics.GoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observed wraps the hub as the bus's handler, counting and timing events
// once per event (not per client).
type observed struct {
	*realtime.Hub
	m *metrics
}

func (o observed) HandleMessage(ctx context.Context, msg realtime.Message) {
	o.m.received.Inc()
	if at, ok := realtime.CapturedAt(msg.Data); ok {
		defer func() { o.m.latency.Observe(time.Since(at).Seconds()) }()
	}
	o.Hub.HandleMessage(ctx, msg)
}

// HandleBatch counts and times like HandleMessage, for an in-process bus's
// bursts.
func (o observed) HandleBatch(ctx context.Context, msgs []realtime.Message) {
	o.m.received.Add(float64(len(msgs)))
	defer func() {
		for _, msg := range msgs {
			if at, ok := realtime.CapturedAt(msg.Data); ok {
				o.m.latency.Observe(time.Since(at).Seconds())
			}
		}
	}()
	o.Hub.HandleBatch(ctx, msgs)
}
