package edge

import (
	"time"

	"github.com/rowcast/rowcast/internal/env"
)

// Config is the edge server's configuration.
type Config struct {
	ListenAddr   string
	RedisURL     string
	DatabaseURL  string // with Demo: where the demo form inserts chat messages
	Demo         bool   // enable POST /api/messages (the demo page's form)
	MaxRooms     int    // rooms per connection
	QueueSize    int    // frames queued per connection before it is cut off as slow
	MaxFrame     int    // largest inbound WebSocket frame, bytes
	Heartbeat    time.Duration
	DrainTimeout time.Duration // bound on the graceful drain at SIGTERM
	JoinTimeout  time.Duration // bound on one subscribe (Redis confirmation + replay)
	ProbeEvery   time.Duration // how often the Redis subscription is proven end to end
}

// ConfigFromEnv reads the configuration; the error names every bad setting.
func ConfigFromEnv(lookup func(string) (string, bool)) (Config, error) {
	r := env.New(lookup)
	c := Config{
		ListenAddr:   r.String("LISTEN_ADDR", ":8080"),
		RedisURL:     r.URL("REDIS_URL", "", "redis", "rediss"),
		Demo:         r.Bool("ROWCAST_DEMO", false),
		MaxRooms:     r.Int("ROWCAST_MAX_ROOMS", 100, 1, 10000),
		QueueSize:    r.Int("ROWCAST_QUEUE_SIZE", 256, 8, 65536),
		MaxFrame:     r.Int("ROWCAST_MAX_FRAME_BYTES", 4096, 256, 1<<20),
		Heartbeat:    r.Duration("ROWCAST_HEARTBEAT", 15*time.Second, 100*time.Millisecond, 5*time.Minute),
		DrainTimeout: r.Duration("ROWCAST_DRAIN_TIMEOUT", 10*time.Second, 0, 5*time.Minute),
		JoinTimeout:  r.Duration("ROWCAST_JOIN_TIMEOUT", 5*time.Second, 100*time.Millisecond, time.Minute),
		ProbeEvery:   r.Duration("ROWCAST_REDIS_PROBE_INTERVAL", 5*time.Second, 50*time.Millisecond, time.Minute),
	}
	if c.Demo {
		c.DatabaseURL = r.URL("DATABASE_URL", "", "postgres", "postgresql")
	}
	return c, r.Err()
}
