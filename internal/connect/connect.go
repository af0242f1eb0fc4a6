// Package connect opens rowcast's connections to Redis and PostgreSQL with
// the settings every process needs: short dial timeouts and TCP keepalives
// that notice a half-open connection within seconds, not after the OS gives
// up.
package connect

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// dialer probes an idle connection after 5 s, every 2 s, and gives up after
// 3 unanswered probes: a dead peer is noticed in about 11 s.
var dialer = net.Dialer{
	Timeout: 5 * time.Second,
	KeepAliveConfig: net.KeepAliveConfig{
		Enable: true, Idle: 5 * time.Second, Interval: 2 * time.Second, Count: 3,
	},
}

// PostgresConfig parses url (postgres://) for a single, direct connection
// (not through PgBouncer, which refuses the keepalive parameters). setting
// names the variable it came from, for errors.
func PostgresConfig(setting, url string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", setting, err)
	}
	cfg.ConnectTimeout = 5 * time.Second
	cfg.DialFunc = dialer.DialContext
	// The server side probes too: if this client vanishes (network cut), its
	// session, and the advisory lock it holds, end within seconds, so a
	// standby can take over.
	cfg.RuntimeParams["tcp_keepalives_idle"] = "5"
	cfg.RuntimeParams["tcp_keepalives_interval"] = "2"
	cfg.RuntimeParams["tcp_keepalives_count"] = "3"
	return cfg, nil
}

// pingIdle is how long a pooled connection may sit idle before it is
// checked with a ping when acquired.
const pingIdle = 30 * time.Second

// PostgresPool returns a pool for url. It does not connect yet.
func PostgresPool(ctx context.Context, setting, url string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", setting, err)
	}
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	cfg.ConnConfig.DialFunc = dialer.DialContext
	cfg.MaxConns = 4
	// pgxpool pings a connection idle for over a second before handing it
	// out: a round trip added to the first event after every pause. The
	// keepalives above notice a dead peer anyway, and a query on a
	// connection the server closed fails at once (the caller retries); ping
	// only connections idle long enough for a server-side timeout to apply.
	cfg.ShouldPing = func(_ context.Context, p pgxpool.ShouldPingParams) bool {
		return p.IdleDuration > pingIdle
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", setting, err)
	}
	return pool, nil
}
