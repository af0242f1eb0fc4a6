package testenv

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// Aliases under which a Stack started with OnNetwork is reached from other
// containers on the network.
const (
	PostgresAlias = "postgres"
	RedisAlias    = "redis"
)

// Topology is how the Redis of a Stack runs. The zero value is not a
// topology: StartStack treats it as Single.
type Topology int

// Topologies StartStack knows.
const (
	// Single is one Redis server, Stack.Redis. The default.
	Single Topology = iota + 1
	// SentinelGroup is a primary, a replica and three sentinels,
	// Stack.Sentinel (see StartSentinel).
	SentinelGroup
	// ClusterShards is a Redis Cluster of three masters with a replica each,
	// Stack.Cluster (see StartCluster).
	ClusterShards
)

func (tp Topology) String() string {
	switch tp {
	case Single:
		return "single"
	case SentinelGroup:
		return "sentinel"
	case ClusterShards:
		return "cluster"
	default:
		return fmt.Sprintf("Topology(%d)", int(tp))
	}
}

// StackOption changes how StartStack starts its servers.
type StackOption func(*stackOptions)

type stackOptions struct {
	noPostgres bool
	postgres   []Option
	redis      []Option
	network    *Network
	topology   Topology
}

// PostgresOptions passes opts to StartPostgres, e.g.
// PostgresOptions(WithArgs("-c", "max_connections=200")).
func PostgresOptions(opts ...Option) StackOption {
	return func(o *stackOptions) { o.postgres = append(o.postgres, opts...) }
}

// WithoutPostgres starts only the Redis side, for tests of Redis code that
// should run on every topology: Stack.Postgres stays nil.
func WithoutPostgres() StackOption {
	return func(o *stackOptions) { o.noPostgres = true }
}

// RedisOptions passes opts to the Redis server(s) of the stack, e.g. with
// persistence on: RedisOptions(WithArgs("--appendonly", "yes")).
func RedisOptions(opts ...Option) StackOption {
	return func(o *stackOptions) { o.redis = append(o.redis, opts...) }
}

// OnNetwork attaches both servers to n, where other containers reach them as
// PostgresAlias and RedisAlias (see Stack.NetworkPostgresURL and
// Stack.NetworkRedisURL).
func OnNetwork(n *Network) StackOption {
	return func(o *stackOptions) { o.network = n }
}

// WithTopology runs Redis in the given topology instead of Single.
func WithTopology(tp Topology) StackOption {
	return func(o *stackOptions) { o.topology = tp }
}

// Stack is a PostgreSQL server and Redis, started together by StartStack.
// Its fields are set once and only read afterwards; the servers are removed
// by the test's cleanup. Databases are empty: callers run the migrations.
type Stack struct {
	// Postgres is the PostgreSQL server (nil with WithoutPostgres);
	// PostgresURL reaches it from the host (the URL stays valid across
	// Stop/Start).
	Postgres    *Postgres
	PostgresURL string

	// Topology is how Redis runs. RedisURL is what clients on the host
	// connect with, whatever the topology; Redis is the server of a Single
	// topology.
	Topology Topology
	Redis    *Redis
	Sentinel *Sentinel // set for SentinelGroup
	Cluster  *Cluster  // set for ClusterShards
	RedisURL string

	// Network is the one given with OnNetwork, else nil. NetworkPostgresURL
	// and NetworkRedisURL reach the servers from containers on it.
	Network            *Network
	NetworkPostgresURL string
	NetworkRedisURL    string
}

// StartStack starts PostgreSQL and Redis in parallel and registers their
// removal with t.Cleanup. It returns an error naming each server that
// failed rather than failing t: the caller decides how to fail (a benchmark
// main, for one, has no test to fail).
//
//	s, err := testenv.StartStack(ctx, t,
//		testenv.RedisOptions(testenv.WithArgs("--appendonly", "yes")))
//	if err != nil {
//		t.Fatal(err)
//	}
//	db, err := pgx.Connect(ctx, s.PostgresURL) // redis.ParseURL(s.RedisURL) likewise
func StartStack(ctx context.Context, t testing.TB, opts ...StackOption) (*Stack, error) {
	t.Helper()
	var o stackOptions
	for _, opt := range opts {
		opt(&o)
	}
	switch o.topology {
	case 0:
		o.topology = Single
	case Single:
	case SentinelGroup, ClusterShards:
		if o.network != nil {
			return nil, fmt.Errorf("start stack: OnNetwork is for a single redis, not %v", o.topology)
		}
	default:
		return nil, fmt.Errorf("start stack: redis topology %v is not supported", o.topology)
	}
	pgOpts, redisOpts := o.postgres, o.redis
	if o.network != nil {
		pgOpts = append([]Option{WithNetwork(o.network, PostgresAlias)}, pgOpts...)
		redisOpts = append([]Option{WithNetwork(o.network, RedisAlias)}, redisOpts...)
	}
	s := &Stack{Topology: o.topology, Network: o.network}

	var (
		wg           sync.WaitGroup
		pgErr, rdErr error
	)
	if !o.noPostgres {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if s.Postgres, pgErr = StartPostgres(ctx, t, pgOpts...); pgErr == nil {
				s.PostgresURL, pgErr = s.Postgres.URL(ctx)
			}
		}()
	}
	rdErr = s.startRedis(ctx, t, redisOpts)
	wg.Wait()
	if err := errors.Join(pgErr, rdErr); err != nil {
		return nil, fmt.Errorf("start stack: %w", err)
	}
	if o.network != nil {
		if s.Postgres != nil {
			s.NetworkPostgresURL = fmt.Sprintf("postgres://%s:%s@%s:5432/%s?sslmode=disable",
				PostgresUser, PostgresPassword, PostgresAlias, PostgresDB)
		}
		s.NetworkRedisURL = "redis://" + RedisAlias + ":6379/0"
	}
	return s, nil
}

// startRedis starts the Redis side of the stack in its topology and sets
// RedisURL (and Redis for Single). A new topology adds its case here and in
// StartStack's check.
func (s *Stack) startRedis(ctx context.Context, t testing.TB, opts []Option) error {
	switch s.Topology {
	case Single:
		r, err := StartRedis(ctx, t, opts...)
		if err != nil {
			return err
		}
		s.Redis = r
		s.RedisURL, err = r.URL(ctx)
		return err
	case SentinelGroup:
		sn, err := StartSentinel(ctx, t, opts...)
		if err != nil {
			return err
		}
		s.Sentinel, s.RedisURL = sn, sn.URL()
		return nil
	case ClusterShards:
		c, err := StartCluster(ctx, t, opts...)
		if err != nil {
			return err
		}
		s.Cluster, s.RedisURL = c, c.URL()
		return nil
	default:
		panic("unreachable: topology checked by StartStack")
	}
}
