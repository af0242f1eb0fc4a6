// Package testenv starts the real servers that integration and e2e tests run
// against: PostgreSQL 15 and Redis 7, each in its own container started with
// testcontainers-go. StartStack is the one entry tests use: it starts both in
// parallel, with Redis as one server, a Sentinel group or a Cluster.
//
//	s, err := testenv.StartStack(ctx, t, testenv.RedisOptions(testenv.WithArgs("--appendonly", "yes")))
//	if err != nil {
//		t.Fatal(err)
//	}
//	db, err := pgx.Connect(ctx, s.PostgresURL) // and redis.ParseURL(s.RedisURL)
//
// # Images
//
// The image is the one given with WithImage, else ROWCAST_POSTGRES_IMAGE /
// ROWCAST_REDIS_IMAGE when set.
// Otherwise the locally built rowcast/postgres:15 / rowcast/redis:7 is used
// when the Docker engine has it, else the official postgres:15-bookworm /
// redis:7-bookworm, pulled once if missing. On machines without a registry,
// run scripts/build-images.sh first: it builds both images from Debian
// packages with the same contract as the official ones.
//
// # Fixed host ports
//
// Every container publishes its port on 127.0.0.1 at a port picked when it is
// created, not at a port Docker picks on each start. The URL therefore stays
// the same across Stop/Start, and a client that keeps the old URL reconnects
// to the restarted server: this is what fault tests need. (A remote Docker
// engine, reached through a tcp:// DOCKER_HOST, is not supported for this
// reason.)
//
// # Faults
//
// Postgres and Redis have Stop/Start (the server goes away and comes back;
// Redis keeps only what its persistence settings kept, none by default;
// PostgreSQL data is kept), Kill (SIGKILL, nothing flushed) and Pause/Unpause
// (the processes freeze: connections hang instead of failing). WithArgs
// passes server flags, e.g. to switch Redis persistence on.
// NewNetwork plus WithNetwork attach containers to a user-defined network
// under DNS aliases, for tests that run more containers next to them.
//
// # Cleanup
//
// Containers and networks are removed by t.Cleanup. Ryuk, the reaper sidecar
// of testcontainers, is disabled by default (see the package init): its image
// cannot be pulled without a registry. A test binary that is killed therefore
// leaves containers behind; scripts/sweep-containers.sh removes them.
package testenv
