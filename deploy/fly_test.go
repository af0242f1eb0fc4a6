package deploy

import (
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/rowcast/rowcast/app/demo"
	"github.com/rowcast/rowcast/app/edge"
	"github.com/rowcast/rowcast/listener/service"
)

const (
	flyPath        = "../fly.toml"
	dockerfilePath = "../Dockerfile"

	// maxKillTimeout is the largest kill_timeout Fly accepts.
	maxKillTimeout = 300 * time.Second
	// shutdownSlack is how long the app may take beyond
	// ROWCAST_DRAIN_TIMEOUT: edge.Server bounds its HTTP shutdown at the
	// drain timeout plus one second.
	shutdownSlack = time.Second
	// minSoftLimit: WebSocket and SSE connections stay open for hours, so a
	// limit in the tens (Fly's default soft limit is 20) would turn browsers
	// away from an idle Machine.
	minSoftLimit = 1000
)

// wantProcesses is each Fly process group and the binary it must run.
var wantProcesses = map[string]string{"app": "/app", "listener": "/listener"}

// secretEnv must come from `fly secrets set`, never from [env], which is
// committed and shown in the dashboard.
var secretEnv = []string{"DATABASE_URL", "LISTEN_DATABASE_URL", "REDIS_URL"}

// flyConfig models the keys of fly.toml this repository uses. Decoding is
// strict, so a misspelt key (which Fly would ignore with a warning) fails
// the test.
type flyConfig struct {
	App           string              `toml:"app"`
	PrimaryRegion string              `toml:"primary_region"`
	KillSignal    string              `toml:"kill_signal"`
	KillTimeout   any                 `toml:"kill_timeout"` // seconds, or a duration string
	Build         flyBuild            `toml:"build"`
	Deploy        flyDeploy           `toml:"deploy"`
	Env           map[string]string   `toml:"env"`
	Processes     map[string]string   `toml:"processes"`
	HTTPService   *flyHTTPService     `toml:"http_service"`
	Services      []map[string]any    `toml:"services"`
	Checks        map[string]flyCheck `toml:"checks"`
	VM            []flyVM             `toml:"vm"`
}

type flyBuild struct {
	Dockerfile string `toml:"dockerfile"`
}

type flyDeploy struct {
	ReleaseCommand string `toml:"release_command"`
	Strategy       string `toml:"strategy"`
}

type flyHTTPService struct {
	Processes          []string       `toml:"processes"`
	InternalPort       int            `toml:"internal_port"`
	ForceHTTPS         bool           `toml:"force_https"`
	AutoStopMachines   any            `toml:"auto_stop_machines"` // "off", "stop", "suspend", or a bool
	AutoStartMachines  *bool          `toml:"auto_start_machines"`
	MinMachinesRunning int            `toml:"min_machines_running"`
	Concurrency        flyConcurrency `toml:"concurrency"`
	Checks             []flyCheck     `toml:"checks"`
}

type flyConcurrency struct {
	Type      string `toml:"type"`
	SoftLimit int    `toml:"soft_limit"`
	HardLimit int    `toml:"hard_limit"`
}

// flyCheck is a top-level [checks.NAME] or an [[http_service.checks]] entry
// (which has no processes, type or port of its own).
type flyCheck struct {
	Processes   []string `toml:"processes"`
	Type        string   `toml:"type"`
	Port        int      `toml:"port"`
	Method      string   `toml:"method"`
	Path        string   `toml:"path"`
	Interval    string   `toml:"interval"`
	Timeout     string   `toml:"timeout"`
	GracePeriod string   `toml:"grace_period"`
}

type flyVM struct {
	Processes []string `toml:"processes"`
	Size      string   `toml:"size"`
	Memory    string   `toml:"memory"`
	CPUKind   string   `toml:"cpu_kind"`
	CPUs      int      `toml:"cpus"`
}

func loadFly(t *testing.T) flyConfig {
	t.Helper()
	f, err := os.Open(flyPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var c flyConfig
	err = toml.NewDecoder(f).DisallowUnknownFields().Decode(&c)
	if strict, ok := errors.AsType[*toml.StrictMissingError](err); ok {
		t.Fatalf("fly.toml has keys this test does not model (misspelt? else add them to flyConfig):\n%s", strict.String())
	}
	if err != nil {
		t.Fatalf("fly.toml: %v", err)
	}
	return c
}

// image is what the final stage of the Dockerfile puts in the image.
type image struct {
	files      map[string]bool // absolute paths copied in
	expose     []int
	user       string
	entrypoint bool
}

func loadImage(t *testing.T) image {
	t.Helper()
	b, err := os.ReadFile(dockerfilePath)
	if err != nil {
		t.Fatal(err)
	}
	img, err := parseFinalStage(string(b))
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	return img
}

// parseFinalStage reads the instructions of a Dockerfile's last stage that
// matter here. It knows the shell form of COPY/ADD only.
func parseFinalStage(text string) (image, error) {
	var (
		img    image
		stages int
	)
	lines := DockerfileInstructions(text)
	for _, line := range lines {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		args := fields[1:]
		switch strings.ToUpper(fields[0]) {
		case "FROM":
			stages++
			img = image{files: map[string]bool{}}
		case "COPY", "ADD":
			var operands []string
			for _, a := range args {
				if !strings.HasPrefix(a, "--") {
					operands = append(operands, a)
				}
			}
			if len(operands) < 2 {
				return image{}, fmt.Errorf("cannot read %q", line)
			}
			dest, srcs := operands[len(operands)-1], operands[:len(operands)-1]
			if len(srcs) > 1 || strings.HasSuffix(dest, "/") {
				for _, s := range srcs {
					img.files[path.Join(dest, path.Base(s))] = true
				}
			} else {
				img.files[path.Clean(dest)] = true
			}
		case "EXPOSE":
			for _, a := range args {
				p, err := strconv.Atoi(strings.TrimSuffix(a, "/tcp"))
				if err != nil {
					return image{}, fmt.Errorf("EXPOSE %q: %v", a, err)
				}
				img.expose = append(img.expose, p)
			}
		case "USER":
			img.user = strings.Join(args, " ")
		case "ENTRYPOINT":
			img.entrypoint = true
		}
	}
	if stages == 0 {
		return image{}, errors.New("no FROM")
	}
	return img, nil
}

// lookup serves env, then extra, like os.LookupEnv on a Fly Machine that has
// the [env] of fly.toml and the secrets.
func lookup(env, extra map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		if v, ok := extra[k]; ok {
			return v, true
		}
		v, ok := env[k]
		return v, ok
	}
}

// Placeholder secrets: valid URLs that nothing connects to here.
var (
	appSecrets      = map[string]string{"REDIS_URL": "redis://redis.internal:6379/0"}
	listenerSecrets = map[string]string{
		"REDIS_URL":    "redis://redis.internal:6379/0",
		"DATABASE_URL": "postgres://rowcast@db.internal:5432/rowcast",
	}
)

// appConfig is the app's configuration on a Fly Machine of this fly.toml
// (the demo's settings are checked too: the app reads both).
func appConfig(t *testing.T, c flyConfig) edge.Config {
	t.Helper()
	cfg, err := edge.ConfigFromEnv(lookup(c.Env, appSecrets))
	_, demoErr := demo.ConfigFromEnv(lookup(c.Env, appSecrets))
	if err := errors.Join(err, demoErr); err != nil {
		t.Fatalf("fly.toml [env] is refused by the app: %v", err)
	}
	return cfg
}

// listenerConfig is the listener's configuration on a Fly Machine.
func listenerConfig(t *testing.T, c flyConfig) service.Config {
	t.Helper()
	cfg, err := service.ConfigFromEnv(lookup(c.Env, listenerSecrets))
	if err != nil {
		t.Fatalf("fly.toml [env] is refused by the listener: %v", err)
	}
	return cfg
}

func port(t *testing.T, setting, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s %q: %v", setting, addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%s %q: port: %v", setting, addr, err)
	}
	return n
}

func TestProcessesRunImageBinaries(t *testing.T) {
	c, img := loadFly(t), loadImage(t)

	var names []string
	for name := range c.Processes {
		names = append(names, name)
	}
	sort.Strings(names)
	if want := []string{"app", "listener"}; !slices.Equal(names, want) {
		t.Errorf("[processes] groups = %v, want exactly %v", names, want)
	}
	for name, bin := range wantProcesses {
		cmd, ok := c.Processes[name]
		if !ok {
			continue
		}
		fields := strings.Fields(cmd)
		if len(fields) == 0 || fields[0] != bin {
			t.Errorf("processes.%s = %q, want it to run %s", name, cmd, bin)
			continue
		}
		if !img.files[bin] {
			t.Errorf("processes.%s runs %s, which the Dockerfile's final stage does not copy (it copies %v)", name, bin, sortedKeys(img.files))
		}
	}

	if want := "/listener migrate"; strings.Join(strings.Fields(c.Deploy.ReleaseCommand), " ") != want {
		t.Errorf("deploy.release_command = %q, want %q", c.Deploy.ReleaseCommand, want)
	}
	if img.entrypoint {
		t.Errorf("Dockerfile sets ENTRYPOINT: Fly would pass the processes commands to it as arguments")
	}
	if c.Build.Dockerfile != "" && path.Clean(c.Build.Dockerfile) != path.Base(dockerfilePath) {
		t.Errorf("build.dockerfile = %q, want %q (the file this test reads)", c.Build.Dockerfile, path.Base(dockerfilePath))
	}

	uid, _, _ := strings.Cut(img.user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("Dockerfile USER = %q, want a numeric non-root uid (the image has no /etc/passwd)", img.user)
	}
}

func TestHTTPServiceMatchesApp(t *testing.T) {
	c := loadFly(t)
	svc := c.HTTPService
	if svc == nil {
		t.Fatal("fly.toml has no [http_service]")
	}
	if len(c.Services) > 0 {
		t.Errorf("fly.toml has [[services]] too: keep the app's one service in [http_service]")
	}
	if !slices.Equal(svc.Processes, []string{"app"}) {
		t.Errorf("http_service.processes = %v, want [app]: the listener serves no traffic", svc.Processes)
	}

	cfg := appConfig(t, c)
	if want := port(t, "LISTEN_ADDR", cfg.ListenAddr); svc.InternalPort != want {
		t.Errorf("http_service.internal_port = %d, want %d (the app's LISTEN_ADDR %q)", svc.InternalPort, want, cfg.ListenAddr)
	}
	if img := loadImage(t); !slices.Contains(img.expose, svc.InternalPort) {
		t.Errorf("http_service.internal_port = %d is not in the Dockerfile's EXPOSE %v", svc.InternalPort, img.expose)
	}
	if !svc.ForceHTTPS {
		t.Errorf("http_service.force_https = false, want true")
	}

	switch autostopMode(t, svc.AutoStopMachines) {
	case "off":
		if svc.AutoStartMachines == nil || *svc.AutoStartMachines {
			t.Errorf("http_service.auto_start_machines is unset or true, want false with auto_stop_machines = \"off\": capacity is what you scale to")
		}
	case "stop":
		if svc.AutoStartMachines == nil || !*svc.AutoStartMachines {
			t.Errorf("http_service.auto_start_machines is unset or false, want true with auto_stop_machines = \"stop\": stopped edges must come back when connections pass soft_limit")
		}
		// kill_signal against the app's drain: TestKillSignalDrains.
	}
	if svc.MinMachinesRunning < 1 {
		t.Errorf("http_service.min_machines_running = %d, want at least 1: the clients of a stopped edge need one to resume on", svc.MinMachinesRunning)
	}

	cc := svc.Concurrency
	if cc.Type != "connections" {
		t.Errorf("http_service.concurrency.type = %q, want \"connections\": a WebSocket or SSE stream is one long request", cc.Type)
	}
	if cc.SoftLimit < minSoftLimit {
		t.Errorf("http_service.concurrency.soft_limit = %d, want at least %d for long-lived connections", cc.SoftLimit, minSoftLimit)
	}
	if cc.HardLimit < cc.SoftLimit {
		t.Errorf("http_service.concurrency.hard_limit = %d, want at least soft_limit %d", cc.HardLimit, cc.SoftLimit)
	}

	if len(svc.Checks) == 0 {
		t.Errorf("http_service.checks: none, want an http check on /healthz")
	}
	for i, chk := range svc.Checks {
		if chk.Path != "/healthz" {
			t.Errorf("http_service.checks[%d].path = %q, want /healthz", i, chk.Path)
			continue
		}
		if status := getApp(t, chk.Path); status != http.StatusOK {
			t.Errorf("http_service.checks[%d].path %s: the app answers %d, want 200", i, chk.Path, status)
		}
	}
}

func TestListenerCheckMatchesListener(t *testing.T) {
	c := loadFly(t)
	cfg := listenerConfig(t, c)
	healthPort := port(t, "HEALTH_ADDR", cfg.HealthAddr)

	var found int
	for name, chk := range c.Checks {
		if !slices.Contains(chk.Processes, "listener") {
			continue
		}
		found++
		key := "checks." + name
		if !slices.Equal(chk.Processes, []string{"listener"}) {
			t.Errorf("%s.processes = %v, want [listener]", key, chk.Processes)
		}
		if chk.Type != "http" {
			t.Errorf("%s.type = %q, want \"http\"", key, chk.Type)
		}
		if chk.Port != healthPort {
			t.Errorf("%s.port = %d, want %d (the listener's HEALTH_ADDR %q)", key, chk.Port, healthPort, cfg.HealthAddr)
		}
		if chk.Path != "/healthz" {
			t.Errorf("%s.path = %q, want /healthz", key, chk.Path)
			continue
		}
		if status := getListener(t, chk.Path); status != http.StatusOK {
			t.Errorf("%s.path %s: the listener answers %d, want 200", key, chk.Path, status)
		}
	}
	if found == 0 {
		t.Errorf("fly.toml has no [checks.NAME] with processes = [\"listener\"]")
	}
	for name, chk := range c.Checks {
		if len(chk.Processes) == 0 {
			t.Errorf("checks.%s.processes is empty: a top-level check without processes runs on every group", name)
		}
	}
}

func TestKillTimeoutCoversDrain(t *testing.T) {
	c := loadFly(t)
	if c.KillSignal != "SIGTERM" {
		t.Errorf("kill_signal = %q, want \"SIGTERM\" (the app drains on SIGTERM; Fly's default is SIGINT)", c.KillSignal)
	}
	var kill time.Duration
	switch v := c.KillTimeout.(type) {
	case int64:
		kill = time.Duration(v) * time.Second
	case string:
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("kill_timeout = %q: %v", v, err)
		}
		kill = d
	default:
		t.Fatalf("kill_timeout = %v (%T), want seconds or a duration such as \"30s\" (Fly's default is 5s)", v, v)
	}
	if _, set := c.Env["ROWCAST_DRAIN_TIMEOUT"]; !set {
		t.Errorf("env.ROWCAST_DRAIN_TIMEOUT is unset: set it next to kill_timeout so the two are read together")
	}
	drain := appConfig(t, c).DrainTimeout
	if kill <= drain+shutdownSlack {
		t.Errorf("kill_timeout = %s, want more than env.ROWCAST_DRAIN_TIMEOUT %s + %s: Fly would SIGKILL the app mid-drain", kill, drain, shutdownSlack)
	}
	if kill > maxKillTimeout {
		t.Errorf("kill_timeout = %s, above Fly's maximum %s", kill, maxKillTimeout)
	}
}

// autostopMode returns http_service.auto_stop_machines if this repository
// accepts it ("off" or "stop"), else reports why not and returns "".
//
// "stop" is safe because the proxy stops a Machine the way a deploy does:
// kill_signal, then kill_timeout before SIGKILL, so the app drains and its
// clients resume elsewhere from their last id (e2e TestAutostopEdge).
// "suspend" is refused: Fly snapshots the VM without any signal, so no drain
// runs; the clients' sockets freeze until their heartbeat times out, and the
// suspended Machine resumes later with stale connections. A bool is refused
// too: Fly reads true as "stop" and false as "off", but the string says
// which mode is meant, and a review can tell "stop" from "suspend".
func autostopMode(t *testing.T, v any) string {
	t.Helper()
	const key = "http_service.auto_stop_machines"
	switch v := v.(type) {
	case string:
		switch v {
		case "off", "stop":
			return v
		case "suspend":
			t.Errorf("%s = \"suspend\", want \"stop\" or \"off\": a suspend sends no signal, so the app cannot drain and its clients hang until their heartbeat times out", key)
		default:
			t.Errorf("%s = %q, want \"stop\" or \"off\"", key, v)
		}
	case bool:
		t.Errorf("%s = %v, want the string \"stop\" or \"off\": spell out the mode (Fly reads true as \"stop\")", key, v)
	case nil:
		t.Errorf("%s is unset, want \"stop\" or \"off\" (unset means Fly's default)", key)
	default:
		t.Errorf("%s = %v (%T), want \"stop\" or \"off\"", key, v, v)
	}
	return ""
}

// flyKillSignals are the kill_signal values Fly accepts; unset means SIGINT.
var flyKillSignals = []string{"SIGINT", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGSTOP"}

// The signal Fly sends to stop a Machine (at a deploy, and when the proxy
// autostops an app Machine) must be one that each binary drains on. The
// signals are read from the binaries' sources, so the test fails when
// either side changes alone.
func TestKillSignalDrains(t *testing.T) {
	c := loadFly(t)
	sig := c.KillSignal
	if sig == "" {
		sig = "SIGINT" // Fly's default
	}
	if !slices.Contains(flyKillSignals, sig) {
		t.Fatalf("kill_signal = %q, want one of %v", c.KillSignal, flyKillSignals)
	}
	for _, dir := range []string{"../app", "../listener"} {
		drains, where := notifySignals(t, dir)
		if !slices.Contains(drains, sig) && !slices.Contains(drains, anySignal) {
			t.Errorf("kill_signal = %s, but %s drains on %v only (signal.Notify calls in %v): Fly would stop it without a drain", sig, dir, drains, where)
		}
	}
}

// anySignal stands for signal.Notify(ch) with no signals: every signal.
const anySignal = "*"

// notifySignals returns the signals that the non-test Go files under dir
// pass to signal.Notify or signal.NotifyContext, by name (os.Interrupt is
// SIGINT), and the files that call them. It fails the test when there is no
// such call or a signal is not written as a package-qualified constant.
func notifySignals(t *testing.T, dir string) (sigs, files []string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return err
		}
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		imports := map[string]string{} // local name -> import path
		for _, im := range f.Imports {
			ip, _ := strconv.Unquote(im.Path.Value)
			name := path.Base(ip)
			if im.Name != nil {
				name = im.Name.Name
			}
			imports[name] = ip
		}
		pkgOf := func(e ast.Expr) (string, string, bool) {
			sel, ok := e.(*ast.SelectorExpr)
			if !ok {
				return "", "", false
			}
			id, ok := sel.X.(*ast.Ident)
			if !ok {
				return "", "", false
			}
			return imports[id.Name], sel.Sel.Name, true
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			if pkg, fn, ok := pkgOf(call.Fun); !ok || pkg != "os/signal" || (fn != "Notify" && fn != "NotifyContext") {
				return true
			}
			files = append(files, p)
			if len(call.Args) == 1 {
				sigs = append(sigs, anySignal)
			}
			for _, arg := range call.Args[1:] {
				pkg, name, _ := pkgOf(arg)
				switch {
				case pkg == "os" && name == "Interrupt":
					sigs = append(sigs, "SIGINT")
				case pkg == "os" && name == "Kill":
					sigs = append(sigs, "SIGKILL")
				case (pkg == "syscall" || pkg == "golang.org/x/sys/unix") && strings.HasPrefix(name, "SIG"):
					sigs = append(sigs, name)
				default:
					t.Errorf("%s: cannot tell which signal %s is: write it as os.Interrupt or syscall.SIGxxx, or teach this test", fset.Position(arg.Pos()), types.ExprString(arg))
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	if len(files) == 0 {
		t.Fatalf("no signal.NotifyContext or signal.Notify call under %s: the test cannot tell which signal drains it", dir)
	}
	slices.Sort(sigs)
	files = slices.Compact(files) // in walk order: sorted already
	return slices.Compact(sigs), files
}

func TestEnv(t *testing.T) {
	c := loadFly(t)
	if got := c.Env["LOG_FORMAT"]; got != "json" {
		t.Errorf("env.LOG_FORMAT = %q, want \"json\"", got)
	}
	for _, k := range secretEnv {
		if _, set := c.Env[k]; set {
			t.Errorf("env.%s is set in fly.toml: it is a secret, set it with `fly secrets set`", k)
		}
	}
	// Both binaries accept the [env] as it is.
	appConfig(t, c)
	listenerConfig(t, c)
}

// getApp starts the real edge server (Redis unreachable: /healthz does not
// need it) and returns the status of GET path.
func getApp(t *testing.T, path string) int {
	t.Helper()
	cfg, err := edge.ConfigFromEnv(lookup(nil, map[string]string{
		"REDIS_URL":             "redis://127.0.0.1:1/0",
		"LISTEN_ADDR":           "127.0.0.1:0",
		"ROWCAST_DRAIN_TIMEOUT": "0s",
	}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := edge.New(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	return get(t, "http://"+s.Addr()+path)
}

// getListener starts the real listener (Postgres and Redis unreachable:
// /healthz needs neither) and returns the status of GET path on its health
// server.
func getListener(t *testing.T, path string) int {
	t.Helper()
	cfg, err := service.ConfigFromEnv(lookup(nil, map[string]string{
		"DATABASE_URL": "postgres://rowcast@127.0.0.1:1/rowcast?connect_timeout=1",
		"REDIS_URL":    "redis://127.0.0.1:1/0",
		"HEALTH_ADDR":  "127.0.0.1:0",
	}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m, err := service.New(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	return get(t, "http://"+m.HealthAddr()+path)
}

func get(t *testing.T, url string) int {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
