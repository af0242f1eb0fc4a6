package edge

import (
	"strings"
	"time"

	"github.com/rowcast/rowcast/app/auth"
	"github.com/rowcast/rowcast/internal/connect"
	"github.com/rowcast/rowcast/internal/env"
)

// Config is the edge server's configuration.
type Config struct {
	ListenAddr   string
	RedisURL     string
	RedisAddrMap map[string]string // REDIS_ADDRESS_MAP: Redis-announced address -> address to dial
	MaxRooms     int               // rooms per connection
	QueueSize    int               // frames queued per connection before it is cut off as slow
	MaxFrame     int               // largest inbound WebSocket frame, bytes
	Heartbeat    time.Duration
	DrainTimeout time.Duration // bound on the graceful drain at SIGTERM
	JoinTimeout  time.Duration // bound on one subscribe (Redis confirmation + replay)
	ProbeEvery   time.Duration // how often the Redis subscription is proven end to end
	HistoryTTL   time.Duration // lifetime of a room epoch created when a client joins an unused room

	Auth           auth.Config
	AllowedOrigins []string // browser origins allowed to connect; "*" allows any; empty: same host only
	ClientIPHeader string   // header holding the client's IP behind a proxy (Fly-Client-IP on Fly.io)
	MaxConnsPerIP  int
	MsgRate        float64 // inbound WebSocket messages per second per connection (burst: twice that)
}

// ConfigFromEnv reads the configuration; the error names every bad setting.
func ConfigFromEnv(lookup func(string) (string, bool)) (Config, error) {
	r := env.New(lookup)
	c := Config{
		ListenAddr:   r.String("LISTEN_ADDR", ":8080"),
		RedisURL:     optionalRedisURL(r),
		MaxRooms:     r.Int("ROWCAST_MAX_ROOMS", 100, 1, 10000),
		QueueSize:    r.Int("ROWCAST_QUEUE_SIZE", 256, 8, 65536),
		MaxFrame:     r.Int("ROWCAST_MAX_FRAME_BYTES", 4096, 256, 1<<20),
		Heartbeat:    r.Duration("ROWCAST_HEARTBEAT", 15*time.Second, 100*time.Millisecond, 5*time.Minute),
		DrainTimeout: r.Duration("ROWCAST_DRAIN_TIMEOUT", 10*time.Second, 0, 5*time.Minute),
		JoinTimeout:  r.Duration("ROWCAST_JOIN_TIMEOUT", 5*time.Second, 100*time.Millisecond, time.Minute),
		ProbeEvery:   r.Duration("ROWCAST_REDIS_PROBE_INTERVAL", 5*time.Second, 50*time.Millisecond, time.Minute),
		HistoryTTL:   r.Duration("ROWCAST_HISTORY_TTL", 24*time.Hour, time.Second, 90*24*time.Hour),
	}
	c.RedisAddrMap = connect.RedisAddrMapFromEnv(r)
	c.Auth = auth.Config{
		Secret:      r.String("ROWCAST_AUTH_SECRET", ""),
		JWKSURL:     r.OptionalURL("ROWCAST_JWKS_URL", "https", "http"),
		JWKSRefresh: r.Duration("ROWCAST_JWKS_REFRESH", time.Hour, time.Second, 24*time.Hour),
		Audience:    r.String("ROWCAST_JWT_AUDIENCE", ""),
		Issuer:      r.String("ROWCAST_JWT_ISSUER", ""),
		PublicRooms: list(r.String("ROWCAST_PUBLIC_ROOMS", "")),
	}
	if c.Auth.Secret != "" && len(c.Auth.Secret) < 16 {
		r.Fail("ROWCAST_AUTH_SECRET", "too short (%d bytes): use at least 16 random bytes", len(c.Auth.Secret))
	}
	c.AllowedOrigins = list(r.String("ROWCAST_ALLOWED_ORIGINS", ""))
	c.ClientIPHeader = r.String("ROWCAST_CLIENT_IP_HEADER", "")
	c.MaxConnsPerIP = r.Int("ROWCAST_MAX_CONNS_PER_IP", 256, 1, 1_000_000)
	c.MsgRate = float64(r.Int("ROWCAST_MAX_MESSAGES_PER_SECOND", 20, 1, 100_000))
	return c, r.Err()
}

// optionalRedisURL reads REDIS_URL, which may be empty: the app then runs
// the pipeline in-process (see app/main.go).
func optionalRedisURL(r *env.Reader) string {
	v := r.String("REDIS_URL", "")
	if v == "" {
		return ""
	}
	if err := connect.CheckRedisURL(v); err != nil {
		r.Fail("REDIS_URL", "%v", err)
		return ""
	}
	return v
}

// list splits a comma-separated setting, dropping empty items.
func list(s string) []string {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}
