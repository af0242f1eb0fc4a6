package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	_ "github.com/jackc/pgx/v5/stdlib" // "pgx" database/sql driver for the readiness check
	"github.com/moby/moby/api/types/container"
	mobynetwork "github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	"github.com/testcontainers/testcontainers-go/modules/postgres"
	"github.com/testcontainers/testcontainers-go/modules/redis"
	"github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"
)

// Image selection: the environment variables win, then the locally built
// image, then the official one.
const (
	PostgresImageEnv      = "ROWCAST_POSTGRES_IMAGE"
	RedisImageEnv         = "ROWCAST_REDIS_IMAGE"
	LocalPostgresImage    = "rowcast/postgres:15"
	LocalRedisImage       = "rowcast/redis:7"
	OfficialPostgresImage = "postgres:15-bookworm"
	OfficialRedisImage    = "redis:7-bookworm"
)

// Credentials of the PostgreSQL superuser and the database it owns.
const (
	PostgresUser     = "rowcast"
	PostgresPassword = "rowcast"
	PostgresDB       = "rowcast"
)

const (
	postgresPort = "5432/tcp"
	redisPort    = "6379/tcp"

	startupTimeout = 60 * time.Second
	stopTimeout    = 10 * time.Second
	// pingTimeout bounds the Docker reachability check.
	pingTimeout = 10 * time.Second
	// portAttempts is how often a container is created again when the host
	// port picked for it was taken in the meantime.
	portAttempts = 3
	buildHint    = "run scripts/build-images.sh to build it from Debian packages"
)

// ryukEnv disables Ryuk, the reaper container testcontainers starts next to
// the first container of a test binary to remove everything if the binary
// dies. Its image (testcontainers/ryuk) has to come from a registry, which CI
// machines here do not have, so every start would fail. Cleanup is done with
// t.Cleanup instead, and scripts/sweep-containers.sh removes what a killed
// binary leaves behind.
//
// testcontainers reads the variable once per process, on first use, so it is
// set when this package is initialised, before any test runs. An explicit
// value (e.g. "false" on a laptop that can pull Ryuk) is kept.
const ryukEnv = "TESTCONTAINERS_RYUK_DISABLED"

func init() {
	if _, set := os.LookupEnv(ryukEnv); !set {
		_ = os.Setenv(ryukEnv, "true") // exactly lowercase "true", see testcontainers' config
	}
}

// Option changes how a container is started.
type Option func(*options)

type options struct {
	image   string
	network *Network
	aliases []string
	args    []string
}

// WithArgs appends arguments to the server's command line. For Redis a later
// argument overrides an earlier one, so persistence can be switched on, e.g.
// WithArgs("--appendonly", "yes", "--appendfsync", "everysec").
func WithArgs(args ...string) Option {
	return func(o *options) { o.args = append(o.args, args...) }
}

// WithImage runs the given image instead of the default one.
func WithImage(image string) Option {
	return func(o *options) { o.image = image }
}

// WithNetwork attaches the container to n, where other containers reach it
// under the given DNS aliases (on the container port: 5432 or 6379).
func WithNetwork(n *Network, aliases ...string) Option {
	return func(o *options) {
		o.network = n
		o.aliases = aliases
	}
}

func collect(opts []Option) options {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// Network is a user-defined Docker network, removed when the test ends.
type Network struct {
	nw *testcontainers.DockerNetwork
}

// NewNetwork creates a Docker network and registers its removal with
// t.Cleanup (after the containers on it, since cleanups run last-in first-out).
func NewNetwork(ctx context.Context, t testing.TB) (*Network, error) {
	t.Helper()
	docker, err := dockerClient(ctx)
	if err != nil {
		return nil, fmt.Errorf("create network: %w", err)
	}
	_ = docker.Close()
	var nw *testcontainers.DockerNetwork
	err = catchPanic(func() error {
		var err error
		nw, err = network.New(ctx)
		return err
	})
	if nw != nil {
		testcontainers.CleanupNetwork(t, nw)
	}
	if err != nil {
		return nil, fmt.Errorf("create network: %w", err)
	}
	return &Network{nw: nw}, nil
}

// Name is the Docker name of the network.
func (n *Network) Name() string { return n.nw.Name }

// Postgres is a running PostgreSQL 15 server.
type Postgres struct {
	server
}

// StartPostgres starts PostgreSQL with the superuser PostgresUser, password
// PostgresPassword and database PostgresDB and wal_level=logical (override
// it with WithArgs("-c", "wal_level=replica")), waits until it answers
// SELECT 1 and registers its removal with t.Cleanup.
func StartPostgres(ctx context.Context, t testing.TB, opts ...Option) (*Postgres, error) {
	t.Helper()
	o := collect(opts)
	s, err := start(ctx, t, "postgres", postgresPort, opts, func(ctx context.Context, image string, extra []testcontainers.ContainerCustomizer) (testcontainers.Container, error) {
		customizers := append([]testcontainers.ContainerCustomizer{
			postgres.WithUsername(PostgresUser),
			postgres.WithPassword(PostgresPassword),
			postgres.WithDatabase(PostgresDB),
			postgres.WithSQLDriver("pgx"),
			// A SQL round trip, which is right on every start, unlike the
			// "ready to accept connections" log line: the log of the previous
			// start is still there after a restart.
			testcontainers.WithWaitStrategy(
				wait.ForSQL(postgresPort, "pgx", func(_ string, port mobynetwork.Port) string {
					return postgresURL(port.Port())
				}).WithStartupTimeout(startupTimeout).WithPollInterval(100 * time.Millisecond),
			),
			// Fast shutdown, like the official image's STOPSIGNAL.
			testcontainers.WithConfigModifier(func(c *container.Config) { c.StopSignal = "SIGINT" }),
		}, extra...)
		// WAL capture needs logical decoding; later -c arguments override.
		args := append([]string{"-c", "wal_level=logical"}, o.args...)
		customizers = append(customizers, testcontainers.WithCmdArgs(args...))
		c, err := postgres.Run(ctx, image, customizers...)
		if c == nil {
			return nil, err // a typed nil must not become a non-nil interface
		}
		return c, err
	})
	if err != nil {
		return nil, err
	}
	return &Postgres{server: *s}, nil
}

// PostgresURL starts PostgreSQL as StartPostgres does and returns its URL,
// failing t when it cannot: for tests that need only a database.
func PostgresURL(ctx context.Context, t testing.TB, opts ...Option) string {
	t.Helper()
	pg, err := StartPostgres(ctx, t, opts...)
	if err != nil {
		t.Fatal(err)
	}
	url, err := pg.URL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return url
}

// URL is the connection URL from the host,
// postgres://rowcast:rowcast@127.0.0.1:PORT/rowcast?sslmode=disable.
// It reads the published port from the engine, so it fails while the
// container is stopped.
func (p *Postgres) URL(ctx context.Context) (string, error) {
	port, err := p.hostPort(ctx)
	if err != nil {
		return "", fmt.Errorf("postgres url: %w", err)
	}
	return postgresURL(port), nil
}

func postgresURL(port string) string {
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable",
		PostgresUser, PostgresPassword, net.JoinHostPort("127.0.0.1", port), PostgresDB)
}

// Redis is a running Redis 7 server without persistence.
type Redis struct {
	server
}

// StartRedis starts Redis with persistence off (data does not survive Stop),
// waits until it answers PING and registers its removal with t.Cleanup.
func StartRedis(ctx context.Context, t testing.TB, opts ...Option) (*Redis, error) {
	t.Helper()
	o := collect(opts)
	s, err := start(ctx, t, "redis", redisPort, opts, func(ctx context.Context, image string, extra []testcontainers.ContainerCustomizer) (testcontainers.Container, error) {
		customizers := append([]testcontainers.ContainerCustomizer{
			// Same behaviour on the official image and on ours: reachable
			// without a password and no snapshot or AOF files.
			testcontainers.WithCmdArgs("--protected-mode", "no", "--save", "", "--appendonly", "no"),
			// PING answered through the published port, right on every
			// start (the module waits for a log line that an earlier start
			// of the same container has already printed).
			testcontainers.WithWaitStrategy(redisPing{timeout: startupTimeout}),
		}, extra...)
		if len(o.args) > 0 {
			customizers = append(customizers, testcontainers.WithCmdArgs(o.args...))
		}
		c, err := redis.Run(ctx, image, customizers...)
		if c == nil {
			return nil, err
		}
		return c, err
	})
	if err != nil {
		return nil, err
	}
	return &Redis{server: *s}, nil
}

// redisPing waits until Redis answers PING on 127.0.0.1 at the published
// port, the address URL gives to clients.
type redisPing struct {
	timeout time.Duration
}

var _ wait.StrategyTimeout = redisPing{}

func (w redisPing) Timeout() *time.Duration { return &w.timeout }

func (w redisPing) String() string { return "redis PING on the published port" }

func (w redisPing) WaitUntilReady(ctx context.Context, target wait.StrategyTarget) error {
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		state, err := target.State(ctx)
		if err == nil && !state.Running {
			return fmt.Errorf("redis container is %s (exit code %d)", state.Status, state.ExitCode)
		}
		if err == nil {
			var port mobynetwork.Port
			if port, err = target.MappedPort(ctx, redisPort); err == nil {
				err = pingRedis(ctx, net.JoinHostPort("127.0.0.1", port.Port()))
			}
		}
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("redis not answering PING: %w (last error: %w)", ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// pingRedis sends one inline PING and expects +PONG.
func pingRedis(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	if _, err := io.WriteString(conn, "PING\r\n"); err != nil {
		return err
	}
	reply := make([]byte, 7)
	if _, err := io.ReadFull(conn, reply); err != nil {
		return err
	}
	if string(reply) != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", reply)
	}
	return nil
}

// URL is the connection URL from the host, redis://127.0.0.1:PORT/0.
// It reads the published port from the engine, so it fails while the
// container is stopped.
func (r *Redis) URL(ctx context.Context) (string, error) {
	port, err := r.hostPort(ctx)
	if err != nil {
		return "", fmt.Errorf("redis url: %w", err)
	}
	return "redis://" + net.JoinHostPort("127.0.0.1", port) + "/0", nil
}

// server holds what Postgres and Redis share.
type server struct {
	name   string // "postgres" or "redis", for error messages
	port   string // container port, e.g. "5432/tcp"
	ctr    testcontainers.Container
	docker client.APIClient
}

// Container is the underlying testcontainers container.
func (s *server) Container() testcontainers.Container { return s.ctr }

// Stop stops the container (the server shuts down; clients get connection
// errors). Its host port is kept for Start.
func (s *server) Stop(ctx context.Context) error {
	timeout := stopTimeout
	if err := s.ctr.Stop(ctx, &timeout); err != nil {
		return fmt.Errorf("stop %s: %w", s.name, err)
	}
	return nil
}

// Start starts the stopped container again on the same host port and waits
// until the server is ready.
func (s *server) Start(ctx context.Context) error {
	if err := s.ctr.Start(ctx); err != nil {
		return fmt.Errorf("start %s: %w", s.name, err)
	}
	return nil
}

// Kill sends SIGKILL to the server: no shutdown, nothing flushed. It returns
// once the container has stopped; Start brings it back with what it had
// persisted.
func (s *server) Kill(ctx context.Context) error {
	id := s.ctr.GetContainerID()
	if _, err := s.docker.ContainerKill(ctx, id, client.ContainerKillOptions{Signal: "SIGKILL"}); err != nil {
		return fmt.Errorf("kill %s: %w", s.name, err)
	}
	// The engine may report the container running for a moment after the
	// signal; a Start in that moment would do nothing.
	wait := s.docker.ContainerWait(ctx, id, client.ContainerWaitOptions{Condition: container.WaitConditionNotRunning})
	select {
	case <-wait.Result:
		return nil
	case err := <-wait.Error:
		return fmt.Errorf("kill %s: wait for the container to stop: %w", s.name, err)
	}
}

// Pause freezes every process of the container: connections stay open but
// nothing answers until Unpause.
func (s *server) Pause(ctx context.Context) error {
	if _, err := s.docker.ContainerPause(ctx, s.ctr.GetContainerID(), client.ContainerPauseOptions{}); err != nil {
		return fmt.Errorf("pause %s: %w", s.name, err)
	}
	return nil
}

// Unpause resumes a paused container.
func (s *server) Unpause(ctx context.Context) error {
	if _, err := s.docker.ContainerUnpause(ctx, s.ctr.GetContainerID(), client.ContainerUnpauseOptions{}); err != nil {
		return fmt.Errorf("unpause %s: %w", s.name, err)
	}
	return nil
}

// unpauseIfPaused resumes the container if a test left it paused.
func (s *server) unpauseIfPaused() {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	if state, err := s.ctr.State(ctx); err == nil && state.Paused {
		_ = s.Unpause(ctx)
	}
}

// hostPort reads the published host port of the server port from the engine.
func (s *server) hostPort(ctx context.Context) (string, error) {
	p, err := s.ctr.MappedPort(ctx, s.port)
	if err != nil {
		return "", fmt.Errorf("published port of %s: %w", s.port, err)
	}
	return p.Port(), nil
}

// runFunc runs the container of one server with its module.
type runFunc func(ctx context.Context, image string, extra []testcontainers.ContainerCustomizer) (testcontainers.Container, error)

// start does what StartPostgres and StartRedis share: Docker check, image
// choice, fixed host port, network, cleanup.
func start(ctx context.Context, t testing.TB, name, port string, opts []Option, run runFunc) (*server, error) {
	t.Helper()
	o := collect(opts)
	docker, err := dockerClient(ctx)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	t.Cleanup(func() { _ = docker.Close() }) // runs after the container's removal
	image, err := chooseImage(ctx, docker, name, o.image)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}

	var lastErr error
	for range portAttempts {
		hostPort, err := freePort()
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		extra := []testcontainers.ContainerCustomizer{
			testcontainers.WithLogger(tclog.TestLogger(t)),
			testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
				hc.PortBindings = mobynetwork.PortMap{
					mobynetwork.MustParsePort(port): {{
						HostIP:   netip.MustParseAddr("127.0.0.1"),
						HostPort: strconv.Itoa(hostPort),
					}},
				}
			}),
		}
		if o.network != nil {
			extra = append(extra, network.WithNetwork(o.aliases, o.network.nw))
		}

		var ctr testcontainers.Container
		err = catchPanic(func() error {
			var err error
			ctr, err = run(ctx, image, extra)
			return err
		})
		if err == nil {
			s := &server{name: name, port: port, ctr: ctr, docker: docker}
			testcontainers.CleanupContainer(t, ctr)
			// Cleanups run last-in first-out: this one runs before the
			// removal, which would wait the whole stop timeout on a
			// paused container.
			t.Cleanup(s.unpauseIfPaused)
			return s, nil
		}
		if ctr != nil {
			// Remove it now rather than at the end of the test: it is not
			// handed out, and a retry creates another one.
			if termErr := testcontainers.TerminateContainer(ctr); termErr != nil {
				t.Logf("testenv: remove failed %s container %s: %v", name, ctr.GetContainerID(), termErr)
			}
		}
		lastErr = err
		if !isPortTaken(err) {
			break
		}
		t.Logf("testenv: host port %d was taken, picking another one", hostPort)
	}
	return nil, fmt.Errorf("start %s from image %s: %w", name, image, lastErr)
}

// freePort asks the kernel for a free TCP port on 127.0.0.1. It is free when
// the listener closes; the container binds it a moment later, and start tries
// again in the rare case that another process took it in between.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free host port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("pick a free host port: %w", err)
	}
	return port, nil
}

func isPortTaken(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "port is already allocated") || strings.Contains(msg, "address already in use")
}

// dockerClient checks that a Docker engine answers and returns a client for
// it. A DOCKER_HOST that is set must answer itself: testcontainers would
// otherwise fall back silently to the default socket.
func dockerClient(ctx context.Context) (client.APIClient, error) {
	ctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()

	if host := os.Getenv("DOCKER_HOST"); host != "" {
		cli, err := client.New(client.FromEnv)
		if err != nil {
			return nil, noDocker(fmt.Errorf("DOCKER_HOST=%s: %w", host, err))
		}
		_, err = cli.Ping(ctx, client.PingOptions{})
		_ = cli.Close()
		if err != nil {
			return nil, noDocker(fmt.Errorf("DOCKER_HOST=%s: %w", host, err))
		}
	}

	var provider *testcontainers.DockerProvider
	err := catchPanic(func() error {
		var err error
		provider, err = testcontainers.NewDockerProvider()
		if err != nil {
			return err
		}
		return provider.Health(ctx)
	})
	if err != nil {
		return nil, noDocker(err)
	}
	return provider.Client(), nil
}

// ErrNoDocker matches (with errors.Is) the error returned when no Docker
// engine answers.
var ErrNoDocker = errors.New("no Docker engine reachable")

// noDockerError is one sentence naming the problem and the fix.
type noDockerError struct{ cause string }

func (e *noDockerError) Error() string {
	return "no Docker engine reachable: " + e.cause + "; start Docker or set DOCKER_HOST"
}

func (e *noDockerError) Is(target error) bool { return target == ErrNoDocker }

func noDocker(cause error) error {
	// testcontainers joins the errors of every endpoint it tried with
	// newlines: keep it on one line.
	return &noDockerError{cause: strings.Join(strings.Fields(cause.Error()), " ")}
}

// catchPanic runs f and turns a panic into an error: testcontainers panics in
// a few places when the engine cannot be reached.
func catchPanic(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("testcontainers panicked: %v", r)
		}
	}()
	return f()
}

// chooseImage picks the image of one server, see the package documentation.
// An image missing from the engine is pulled once here, without the endless
// retries testcontainers does, so that a machine without a registry fails
// fast with a hint.
func chooseImage(ctx context.Context, docker client.APIClient, name, explicit string) (string, error) {
	envVar, local, official := PostgresImageEnv, LocalPostgresImage, OfficialPostgresImage
	if name == "redis" {
		envVar, local, official = RedisImageEnv, LocalRedisImage, OfficialRedisImage
	}
	image := explicit
	if image == "" {
		image = os.Getenv(envVar)
	}
	if image == "" {
		found, err := hasImage(ctx, docker, local)
		if err != nil {
			return "", err
		}
		if found {
			return local, nil
		}
		image = official
	}
	found, err := hasImage(ctx, docker, image)
	if err != nil {
		return "", err
	}
	if found {
		return image, nil
	}
	resp, err := docker.ImagePull(ctx, image, client.ImagePullOptions{})
	if err == nil {
		err = resp.Wait(ctx)
		_ = resp.Close()
	}
	if err != nil {
		return "", fmt.Errorf("image %s is not in the Docker engine and cannot be pulled (%v); %s", image, err, buildHint)
	}
	return image, nil
}

func hasImage(ctx context.Context, docker client.APIClient, image string) (bool, error) {
	_, err := docker.ImageInspect(ctx, image)
	switch {
	case err == nil:
		return true, nil
	case cerrdefs.IsNotFound(err):
		return false, nil
	default:
		return false, fmt.Errorf("inspect image %s: %w", image, err)
	}
}
