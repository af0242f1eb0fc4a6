// Package metrics holds what the app's and the listener's Prometheus
// registries share: latency buckets fine enough to tell a millisecond from
// two, and the Go runtime figures that explain waiting (scheduler latency,
// GC pauses).
package metrics

import (
	"regexp"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// LatencyBuckets are the bounds, in seconds, of rowcast's latency
// histograms: quarter-millisecond steps where real-time delivery lives,
// coarser above 10 ms.
var LatencyBuckets = []float64{
	.00025, .0005, .00075, .001, .0015, .002, .003, .004, .005, .0075,
	.01, .015, .02, .03, .05, .075, .1, .15, .2, .3, .5, .75, 1, 2.5, 5, 10,
}

// GoCollector exports the default Go metrics plus the scheduler's latency
// histogram (go_sched_latencies_seconds: how long runnable goroutines waited
// for a thread) and the GC pause histogram, the two places where an event
// can wait without any code of ours running.
func GoCollector() prometheus.Collector {
	return collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
		collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/sched/latencies:seconds$`)},
		collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/sched/pauses/total/gc:seconds$`)},
	))
}
