package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	process "github.com/rowcast/rowcast/e2e/proc"
)

// With -native, Postgres 15 and Redis 7 run as processes of this machine on
// loopback, from the Debian packages' binaries, in a temporary directory:
// no container, so no docker-proxy hop in the round trips. Each server is
// started in its own process group, killed if the bench dies, and stopped
// by its PID when the bench ends.
const (
	pgBinDir  = "/usr/lib/postgresql/15/bin"
	redisBin  = "/usr/bin/redis-server"
	pgPackage = "postgresql-15"
	rdPackage = "redis-server"

	// nativeMaxConns is Postgres's max_connections: the bench's pool, the
	// listener's and the migration, with room to spare.
	nativeMaxConns = 200
	nativeStart    = time.Minute // bound on each server's start-up
)

// startNative starts the native servers and sets the stack's URLs and CPU
// readers. The servers are stopped, and the directory removed, by the
// stack's cleanup.
func (s *stack) startNative(ctx context.Context) error {
	for _, b := range []struct{ path, pkg string }{
		{filepath.Join(pgBinDir, "initdb"), pgPackage},
		{filepath.Join(pgBinDir, "postgres"), pgPackage},
		{redisBin, rdPackage},
	} {
		if _, err := os.Stat(b.path); err != nil {
			return fmt.Errorf("-native: %s is missing: install the Debian package %s (apt-get install -y %s, or task bench:native)", b.path, b.pkg, b.pkg)
		}
	}
	dir, err := os.MkdirTemp("", "rowcast-bench-native")
	if err != nil {
		return err
	}
	// Registered first, so it runs after the servers have stopped.
	s.tb.Cleanup(func() { os.RemoveAll(dir) })
	cred, err := postgresCredential(dir)
	if err != nil {
		return err
	}
	progress("starting native Postgres 15 and Redis 7 in %s", dir)
	var extra []string
	if s.cfg.statStatements {
		extra = append(extra, "-c", "shared_preload_libraries=pg_stat_statements")
	}
	pg, pgURL, err := startNativePostgres(ctx, dir, cred, extra...)
	if err != nil {
		return err
	}
	s.tb.Cleanup(func() { pg.stop(syscall.SIGINT) }) // fast shutdown
	rd, redisURL, err := startNativeRedis(ctx, dir)
	if err != nil {
		return err
	}
	s.tb.Cleanup(func() { rd.stop(syscall.SIGTERM) })
	s.pgURL, s.redisURL = pgURL, redisURL
	s.pgCPU = func() (time.Duration, bool) { return treeCPU(pg.pid()) }
	s.redisCPU = func() (time.Duration, bool) { return treeCPU(rd.pid()) }
	progress("Postgres (PID %d) at %s, Redis (PID %d) at %s", pg.pid(), strings.TrimPrefix(pgURL, "postgres://"), rd.pid(), strings.TrimPrefix(redisURL, "redis://"))
	return nil
}

// postgresCredential is who runs initdb and postgres: this user, or, when
// it is root (which initdb refuses), the postgres system user that the
// postgresql-15 package creates, made owner of dir.
func postgresCredential(dir string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("-native as root runs Postgres as the postgres user: %w (install %s)", err, pgPackage)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("postgres user: %w", err)
	}
	if err := os.Chown(dir, int(uid), int(gid)); err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// nativeServer is a server process started by the bench.
type nativeServer struct {
	name string
	cmd  *exec.Cmd
	log  string // its output
	done chan struct{}
	err  error // set before done is closed
}

// startServer starts bin in its own process group (so a Ctrl-C reaches the
// bench, which stops the server in order) with its output in logFile. The
// kernel sends deathSig to the server if the bench dies.
func startServer(name, dir, logFile string, cred *syscall.Credential, deathSig syscall.Signal, bin string, args ...string) (*nativeServer, error) {
	out, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer out.Close() // the child has its own copy
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: deathSig, Credential: cred}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	sv := &nativeServer{name: name, cmd: cmd, log: logFile, done: make(chan struct{})}
	go func() { sv.err = cmd.Wait(); close(sv.done) }()
	return sv, nil
}

func (sv *nativeServer) pid() int { return sv.cmd.Process.Pid }

// output is the end of the server's log, for error messages.
func (sv *nativeServer) output() string {
	b, _ := os.ReadFile(sv.log)
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}

// exited reports whether the server has ended, and how.
func (sv *nativeServer) exited() (bool, error) {
	select {
	case <-sv.done:
		return true, fmt.Errorf("%s exited (%v):\n%s", sv.name, sv.err, sv.output())
	default:
		return false, nil
	}
}

// stop sends sig to the server's PID and waits for it to exit; after 20 s
// it kills the server's process group (the server and any child it left).
func (sv *nativeServer) stop(sig syscall.Signal) {
	select {
	case <-sv.done:
		return
	default:
	}
	_ = syscall.Kill(sv.pid(), sig)
	select {
	case <-sv.done:
	case <-time.After(20 * time.Second):
		progress("%s (PID %d) did not stop in 20 s: killing its process group", sv.name, sv.pid())
		_ = syscall.Kill(-sv.pid(), syscall.SIGKILL)
		<-sv.done
	}
}

// waitReady calls ready until it succeeds, the server exits, or the
// start-up bound passes.
func (sv *nativeServer) waitReady(ctx context.Context, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, nativeStart)
	defer cancel()
	for {
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		err := ready(actx)
		acancel()
		if err == nil {
			return nil
		}
		if ended, why := sv.exited(); ended {
			return why
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last: %v)\n%s", sv.name, ctx.Err(), err, sv.output())
		case <-sv.done:
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// addrInUse reports whether a server failed because its port was taken
// between process.FreeAddr and its bind.
func addrInUse(sv *nativeServer) bool {
	out := sv.output()
	return strings.Contains(out, "in use") || strings.Contains(out, "could not bind")
}

// startNativePostgres creates a cluster in dir/pg (superuser rowcast, trust
// authentication on loopback, database rowcast, as the containers have) and
// runs it on a free loopback port with its socket in dir. Settings:
// synchronous_commit=off, fsync on, max_connections nativeMaxConns,
// wal_level=logical (WAL capture reads a logical replication slot; NOTIFY
// mode does not mind), then extra, the rest Postgres's defaults.
func startNativePostgres(ctx context.Context, dir string, cred *syscall.Credential, extra ...string) (*nativeServer, string, error) {
	data := filepath.Join(dir, "pg")
	// --no-sync spares only initdb's own final flush; the server runs with
	// fsync on.
	initdb := exec.CommandContext(ctx, filepath.Join(pgBinDir, "initdb"), "-D", data, "-U", "rowcast",
		"--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
	initdb.Dir = dir
	initdb.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	initdb.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("initdb: %w\n%s", err, out)
	}
	for attempt := 1; ; attempt++ {
		addr, err := process.FreeAddr()
		if err != nil {
			return nil, "", err
		}
		_, port, _ := net.SplitHostPort(addr)
		// SIGQUIT if the bench dies: an immediate shutdown that also ends
		// the backends.
		args := append([]string{"-D", data, "-p", port, "-k", dir,
			"-c", "listen_addresses=127.0.0.1", "-c", "synchronous_commit=off", "-c", "fsync=on",
			"-c", "max_connections=" + strconv.Itoa(nativeMaxConns), "-c", "wal_level=logical"}, extra...)
		pg, err := startServer("postgres", dir, filepath.Join(dir, "postgres.log"), cred, syscall.SIGQUIT,
			filepath.Join(pgBinDir, "postgres"), args...)
		if err != nil {
			return nil, "", err
		}
		base := "postgres://rowcast@" + addr
		err = pg.waitReady(ctx, func(ctx context.Context) error {
			c, err := pgx.Connect(ctx, base+"/postgres?sslmode=disable")
			if err != nil {
				return err
			}
			return c.Close(ctx)
		})
		if err != nil {
			pg.stop(syscall.SIGINT)
			if attempt < 3 && addrInUse(pg) {
				continue
			}
			return nil, "", err
		}
		if err := createDatabase(ctx, base+"/postgres?sslmode=disable", "rowcast"); err != nil {
			pg.stop(syscall.SIGINT)
			return nil, "", err
		}
		return pg, base + "/rowcast?sslmode=disable", nil
	}
}

func createDatabase(ctx context.Context, url, name string) error {
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	if _, err := c.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// startNativeRedis runs redis-server on a free loopback port without
// persistence, its working directory in dir.
func startNativeRedis(ctx context.Context, dir string) (*nativeServer, string, error) {
	for attempt := 1; ; attempt++ {
		addr, err := process.FreeAddr()
		if err != nil {
			return nil, "", err
		}
		_, port, _ := net.SplitHostPort(addr)
		rd, err := startServer("redis-server", dir, filepath.Join(dir, "redis.log"), nil, syscall.SIGTERM,
			redisBin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
		if err != nil {
			return nil, "", err
		}
		client := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
		err = rd.waitReady(ctx, func(ctx context.Context) error { return client.Ping(ctx).Err() })
		client.Close()
		if err != nil {
			rd.stop(syscall.SIGTERM)
			if attempt < 3 && addrInUse(rd) {
				continue
			}
			return nil, "", err
		}
		return rd, "redis://" + addr + "/0", nil
	}
}
