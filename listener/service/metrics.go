package service

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/rowcast/rowcast/internal/metrics"
	"github.com/rowcast/rowcast/listener/outbox"
	"github.com/rowcast/rowcast/listener/relay"
	"github.com/rowcast/rowcast/listener/walslot"
)

// newRegistry builds the listener's metrics on a registry of its own.
func newRegistry(rel *relay.Relay, store *outbox.Store, q walslot.Querier) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	batch := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "rowcast_listener_batch_size", Help: "Events per batch published to Redis.",
		Buckets: prometheus.ExponentialBuckets(1, 4, 7),
	})
	newEpochs := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rowcast_listener_redis_regressions_total",
		Help: "Rooms that started a new epoch because Redis was not where Postgres recorded them (lost or went back); their clients were told to reset. Alarm on any increase.",
	})
	latency := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "rowcast_listener_publish_latency_seconds",
		Help:    "From capture in Postgres (inside the writing transaction) to Redis accepting the event.",
		Buckets: metrics.LatencyBuckets,
	})
	rel.OnBatch = func(b relay.BatchReport) {
		batch.Observe(float64(b.Events))
		newEpochs.Add(float64(b.NewEpochs))
		now := time.Now()
		for _, at := range b.Captured {
			latency.Observe(now.Sub(at).Seconds())
		}
	}
	if slot := rel.WALSlot(); slot != "" {
		reg.MustRegister(slotCollector{q: q, slot: slot})
	}
	reg.MustRegister(batch, newEpochs, latency,
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "rowcast_listener_published_total", Help: "Events published to Redis (repeats excluded)."},
			func() float64 { return float64(rel.Published()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "rowcast_listener_leader", Help: "1 while this listener leads."},
			func() float64 {
				if rel.Leader() {
					return 1
				}
				return 0
			}),
		outboxCollector{store: store},
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "rowcast_listener_slot_invalidations_total",
			Help: "Times the WAL-mode replication slot was found invalidated: changes were lost and every room's clients were told to reset. Alarm on any increase."},
			func() float64 { return float64(rel.SlotInvalidations()) }),
		metrics.GoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

var (
	depthDesc  = prometheus.NewDesc("rowcast_outbox_depth", "Rows waiting in rowcast.outbox.", nil, nil)
	oldestDesc = prometheus.NewDesc("rowcast_outbox_oldest_age_seconds", "Age of the oldest row waiting in rowcast.outbox (0 when empty).", nil, nil)
)

// outboxCollector reads the outbox depth with one query per scrape.
type outboxCollector struct{ store *outbox.Store }

func (c outboxCollector) Describe(ch chan<- *prometheus.Desc) { ch <- depthDesc; ch <- oldestDesc }

func (c outboxCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	n, oldest, err := c.store.Depth(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(depthDesc, err)
		return
	}
	age := 0.0
	if !oldest.IsZero() {
		age = time.Since(oldest).Seconds()
	}
	ch <- prometheus.MustNewConstMetric(depthDesc, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(oldestDesc, prometheus.GaugeValue, age)
}

var (
	retainedDesc = prometheus.NewDesc("rowcast_listener_slot_retained_wal_bytes",
		"WAL the replication slot holds back (WAL mode). Alarm when it nears max_slot_wal_keep_size: past it the slot is invalidated.", nil, nil)
	slotLostDesc = prometheus.NewDesc("rowcast_listener_slot_lost",
		"1 when the replication slot's wal_status is lost or unreserved (its changes are or may be gone).", nil, nil)
)

// slotCollector reads the slot's retained WAL with one query per scrape.
type slotCollector struct {
	q    walslot.Querier
	slot string
}

func (c slotCollector) Describe(ch chan<- *prometheus.Desc) { ch <- retainedDesc; ch <- slotLostDesc }

func (c slotCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	n, status, err := walslot.Retained(ctx, c.q, c.slot)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(retainedDesc, err)
		return
	}
	lost := 0.0
	if status == "lost" || status == "unreserved" {
		lost = 1
	}
	ch <- prometheus.MustNewConstMetric(retainedDesc, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(slotLostDesc, prometheus.GaugeValue, lost)
}
