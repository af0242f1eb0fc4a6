package connect

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rowcast/rowcast/internal/env"
)

// Topology is the Redis deployment a REDIS_URL names.
type Topology int

// The zero Topology is invalid.
const (
	_        Topology = iota
	Single            // one server: redis://, rediss://
	Sentinel          // a primary and replicas watched by Sentinel: redis+sentinel://
	Cluster           // Redis Cluster: redis+cluster://
)

func (t Topology) String() string {
	switch t {
	case Single:
		return "single"
	case Sentinel:
		return "sentinel"
	case Cluster:
		return "cluster"
	}
	return fmt.Sprintf("Topology(%d)", int(t))
}

// schemeHelp lists the accepted schemes, for errors.
const schemeHelp = "want one of [redis rediss] (one server), " +
	"[redis+sentinel rediss+sentinel] (Sentinel, with ?master_name=NAME) " +
	"or [redis+cluster rediss+cluster] (Cluster)"

// RedisConfig is a parsed REDIS_URL. Create it with ParseRedis; the fields
// may be changed before Client is called.
type RedisConfig struct {
	Topology Topology
	// AddrMap replaces addresses before they are dialled: a key is an
	// address as Redis announces it (CLUSTER SLOTS, Sentinel's primary), its
	// value the address this process reaches it at (a NAT or a proxy).
	AddrMap map[string]string

	single   *redis.Options
	failover *redis.FailoverOptions
	cluster  *redis.ClusterOptions
}

// ParseRedis parses a REDIS_URL:
//
//	redis[s]://[user:pass@]host:port[/db]                       one server
//	redis[s]+sentinel://[user:pass@]host:port[/db]?master_name=NAME[&addr=host:port...]
//	redis[s]+cluster://[user:pass@]host:port[?addr=host:port...]
//
// For Sentinel, the URL's user and password authenticate to the sentinels
// and, unless the username and password parameters say otherwise, to the
// primary and replicas too. Errors start with "REDIS_URL:" and never repeat
// the password.
func ParseRedis(raw string) (*RedisConfig, error) {
	c, err := parseRedis(raw)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	return c, nil
}

// CheckRedisURL returns why raw is not a usable REDIS_URL, without the
// "REDIS_URL:" prefix (for configuration readers that add it), or nil.
func CheckRedisURL(raw string) error {
	_, err := parseRedis(raw)
	return err
}

func parseRedis(raw string) (*RedisConfig, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("not a URL: %w", redact(err))
	}
	base, topo, _ := strings.Cut(u.Scheme, "+")
	if base != "redis" && base != "rediss" {
		return nil, fmt.Errorf("scheme %q, %s", u.Scheme, schemeHelp)
	}
	if u.Host == "" {
		return nil, errors.New("no host (e.g. redis://host:6379/0)")
	}
	// go-redis parses the plain scheme; the topology is ours.
	u.Scheme = base
	plain := u.String()
	c := &RedisConfig{}
	switch topo {
	case "":
		c.Topology = Single
		if c.single, err = redis.ParseURL(plain); err != nil {
			return nil, redact(err)
		}
	case "sentinel":
		c.Topology = Sentinel
		if c.failover, err = redis.ParseFailoverURL(plain); err != nil {
			return nil, redact(err)
		}
		if c.failover.MasterName == "" {
			return nil, errors.New("a redis+sentinel URL needs the primary's name: add ?master_name=NAME (as in the sentinels' `sentinel monitor NAME ...`)")
		}
		q := u.Query()
		if !q.Has("username") {
			c.failover.Username = c.failover.SentinelUsername
		}
		if !q.Has("password") {
			c.failover.Password = c.failover.SentinelPassword
		}
	case "cluster":
		c.Topology = Cluster
		if u.Path != "" && u.Path != "/" && u.Path != "/0" {
			return nil, fmt.Errorf("path %q: a cluster has only database 0", u.Path)
		}
		u.Path = ""
		if c.cluster, err = redis.ParseClusterURL(u.String()); err != nil {
			return nil, redact(err)
		}
	default:
		return nil, fmt.Errorf("scheme %q, %s", u.Scheme+"+"+topo, schemeHelp)
	}
	return c, nil
}

// ParseAddrMap parses "announced=reachable,..." pairs of host:port
// addresses (see RedisConfig.AddrMap). An empty s gives a nil map.
func ParseAddrMap(s string) (map[string]string, error) {
	var m map[string]string
	for pair := range strings.SplitSeq(s, ",") {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		from, to, ok := strings.Cut(pair, "=")
		if !ok {
			return nil, fmt.Errorf("%q: want announced-host:port=reachable-host:port", pair)
		}
		for _, a := range []string{from, to} {
			if _, _, err := net.SplitHostPort(a); err != nil {
				return nil, fmt.Errorf("%q: %w", pair, err)
			}
		}
		if m == nil {
			m = map[string]string{}
		}
		m[from] = to
	}
	return m, nil
}

// Redis returns a client for url, see ParseRedis.
func Redis(url string) (redis.UniversalClient, error) {
	c, err := ParseRedis(url)
	if err != nil {
		return nil, err
	}
	return c.Client(), nil
}

// Client returns a new client: a *redis.Client for one server and for
// Sentinel (which follows the current primary), a *redis.ClusterClient for
// a Cluster. Every connection gets the package's dialer (TLS for rediss),
// keepalives and 5 s read and write timeouts, and one dial attempt (go-redis
// would try 5 times, up to 25 s against a dead node; rowcast's loops retry
// with backoff themselves). A TCP connect is given 5 s on one server, where
// there is nowhere else to go, and 1 s with Sentinel and Cluster, where a
// node that does not answer is dead and the others must be asked soon. The
// caller closes it.
func (c *RedisConfig) Client() redis.UniversalClient {
	const rw = 5 * time.Second
	switch c.Topology {
	case Sentinel:
		o := *c.failover
		d := c.dialer(time.Second, o.TLSConfig)
		o.TLSConfig = nil // the dialer does the handshake
		o.Dialer, o.DialTimeout, o.ReadTimeout, o.WriteTimeout = d, time.Second, rw, rw
		o.MaxRetries, o.DialerRetries = 1, 1
		o.ContextTimeoutEnabled = true
		return redis.NewFailoverClient(&o)
	case Cluster:
		o := *c.cluster
		d := c.dialer(time.Second, o.TLSConfig)
		o.TLSConfig = nil
		o.Dialer, o.DialTimeout, o.ReadTimeout, o.WriteTimeout = d, time.Second, rw, rw
		o.MaxRetries, o.DialerRetries = 1, 1
		o.ContextTimeoutEnabled = true
		// go-redis re-reads the slot map on MOVED, and otherwise only every
		// 60 s: after a master dies, commands for its slots would keep
		// dialling it for a minute. Re-read it whenever a node fails, and
		// every 5 s while in use.
		o.ClusterStateReloadInterval = 5 * time.Second
		cc := redis.NewClusterClient(&o)
		cc.OnNewNode(func(n *redis.Client) { n.AddHook(reloadOnFailure{cc}) })
		return cc
	default:
		o := *c.single
		d := c.dialer(5*time.Second, o.TLSConfig)
		o.TLSConfig = nil
		o.Dialer, o.DialTimeout, o.ReadTimeout, o.WriteTimeout = d, 5*time.Second, rw, rw
		o.MaxRetries, o.DialerRetries = 1, 1
		// Let a context deadline bound a command: a frozen Redis must not
		// hold a probe or a publish for the full read timeout.
		o.ContextTimeoutEnabled = true
		return redis.NewClient(&o)
	}
}

// dialer returns the dial function: the package's keepalives, the address
// map, and the TLS handshake when tlsConfig is set (go-redis only does TLS
// itself when it dials).
func (c *RedisConfig) dialer(timeout time.Duration, tlsConfig *tls.Config) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := dialer
	d.Timeout = timeout
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		announced := addr
		if to, ok := c.AddrMap[addr]; ok {
			addr = to
		}
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil || tlsConfig == nil {
			return conn, err
		}
		cfg := tlsConfig
		if cfg.ServerName == "" {
			// The name the node is known by, also when dialled through
			// the address map.
			cfg = cfg.Clone()
			cfg.ServerName, _, _ = net.SplitHostPort(announced)
		}
		tc := tls.Client(conn, cfg)
		hctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if err := tc.HandshakeContext(hctx); err != nil {
			conn.Close()
			return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
		}
		return tc, nil
	}
}

// reloadOnFailure asks a ClusterClient to re-read the slot map when one of
// its nodes cannot be dialled or its connection breaks: the node may have
// died and its replica taken over.
type reloadOnFailure struct{ cc *redis.ClusterClient }

func (h reloadOnFailure) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := next(ctx, network, addr)
		if err != nil {
			h.cc.ReloadState(ctx)
		}
		return conn, err
	}
}

func (h reloadOnFailure) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.check(err)
		return err
	}
}

func (h reloadOnFailure) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		h.check(err)
		return err
	}
}

// check reloads after a network error (not after a Redis error reply,
// which go-redis handles itself).
func (h reloadOnFailure) check(err error) {
	var ne net.Error
	if err != nil && (errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		h.cc.ReloadState(context.Background())
	}
}

// redact drops the URL (which may hold a password) from a parse error.
func redact(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// RedisURLFromEnv reads and checks REDIS_URL (required).
func RedisURLFromEnv(r *env.Reader) string {
	v := r.String("REDIS_URL", "")
	if v == "" {
		r.Fail("REDIS_URL", "required (e.g. redis://host:6379/0, redis+sentinel://host:26379?master_name=NAME, redis+cluster://host:6379)")
		return ""
	}
	if err := CheckRedisURL(v); err != nil {
		r.Fail("REDIS_URL", "%v", err)
		return ""
	}
	return v
}

// RedisAddrMapFromEnv reads REDIS_ADDRESS_MAP (optional), pairs
// "announced=reachable,..." for a Cluster or Sentinel whose nodes announce
// addresses this process cannot dial (NAT, Docker Desktop), see
// RedisConfig.AddrMap.
func RedisAddrMapFromEnv(r *env.Reader) map[string]string {
	m, err := ParseAddrMap(r.String("REDIS_ADDRESS_MAP", ""))
	if err != nil {
		r.Fail("REDIS_ADDRESS_MAP", "%v", err)
	}
	return m
}
