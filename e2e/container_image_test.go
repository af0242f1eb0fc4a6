package e2e

import (
	"archive/tar"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/build"
	"github.com/moby/moby/api/types/container"
	mobynetwork "github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/rowcast/rowcast/deploy"
	"github.com/rowcast/rowcast/internal/testenv"
)

// caBundle is where Debian (and the golang image the Dockerfile builds in)
// keeps the CA roots.
const caBundle = "/etc/ssl/certs/ca-certificates.crt"

// cleanupTimeout bounds each removal at the end of a test; the test's own
// context is cancelled by then.
const cleanupTimeout = 30 * time.Second

// buildRuntimeImage builds the production image without a registry: the
// binaries are compiled static here, as the Dockerfile's build stage does,
// and its final stage (FROM scratch) is built by the legacy builder from a
// context holding them. The image is removed when the test ends.
func buildRuntimeImage(ctx context.Context, t *testing.T, docker client.APIClient) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", dir+string(filepath.Separator), "../app", "../listener")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build static binaries: %v\n%s", err, out)
	}
	ca, err := os.ReadFile(caBundle)
	if err != nil {
		// Only TLS needs it, and the test connects without TLS.
		t.Logf("no %s here (%v): the image gets an empty bundle", caBundle, err)
	}
	app, err := os.ReadFile(filepath.Join(dir, "app"))
	if err != nil {
		t.Fatal(err)
	}
	listener, err := os.ReadFile(filepath.Join(dir, "listener"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]contextFile{
		"app":                 {data: app, mode: 0o755},
		"listener":            {data: listener, mode: 0o755},
		"ca-certificates.crt": {data: ca, mode: 0o644},
	}
	repoDockerfile, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	dockerfile, err := runtimeDockerfile(string(repoDockerfile), files)
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	files["Dockerfile"] = contextFile{data: []byte(dockerfile), mode: 0o644}
	buildCtx, err := tarContext(files)
	if err != nil {
		t.Fatal(err)
	}

	tag := fmt.Sprintf("rowcast/runtime:e2e-%d", time.Now().UnixNano())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if _, err := docker.ImageRemove(ctx, tag, client.ImageRemoveOptions{Force: true, PruneChildren: true}); err != nil {
			t.Logf("remove image %s: %v", tag, err)
		}
	})
	resp, err := docker.ImageBuild(ctx, buildCtx, client.ImageBuildOptions{
		Tags:        []string{tag},
		Dockerfile:  "Dockerfile",
		Remove:      true,
		ForceRemove: true,
		Labels:      map[string]string{"org.testcontainers": "true", "rowcast.e2e": "runtime"},
		Version:     build.BuilderV1, // no BuildKit here
	})
	if err != nil {
		t.Fatalf("build image: %v", err)
	}
	defer resp.Body.Close()
	if err := readBuildOutput(resp.Body); err != nil {
		t.Fatalf("build image from\n%s\n%v", dockerfile, err)
	}
	return tag
}

type contextFile struct {
	data []byte
	mode int64
}

// runtimeDockerfile is the final stage of the repository's Dockerfile with
// each COPY --from=<stage> taking the file of the same base name from the
// build context instead.
func runtimeDockerfile(repo string, files map[string]contextFile) (string, error) {
	lines := deploy.DockerfileInstructions(repo)
	last := -1
	for i, l := range lines {
		if strings.EqualFold(strings.Fields(l)[0], "FROM") {
			last = i
		}
	}
	if last < 0 {
		return "", errors.New("no FROM")
	}
	final := lines[last:]
	if f := strings.Fields(final[0]); len(f) < 2 || f[1] != "scratch" {
		return "", fmt.Errorf("final stage is %q: only FROM scratch builds without a registry", final[0])
	}
	var out strings.Builder
	for _, l := range final {
		f := strings.Fields(l)
		if !strings.EqualFold(f[0], "COPY") || !slices.ContainsFunc(f, func(a string) bool { return strings.HasPrefix(a, "--from=") }) {
			out.WriteString(l + "\n")
			continue
		}
		rewritten := []string{"COPY"}
		var operands []string
		for _, a := range f[1:] {
			switch {
			case strings.HasPrefix(a, "--from="):
			case strings.HasPrefix(a, "--"):
				rewritten = append(rewritten, a)
			default:
				operands = append(operands, a)
			}
		}
		if len(operands) < 2 {
			return "", fmt.Errorf("cannot read %q", l)
		}
		srcs, dest := operands[:len(operands)-1], operands[len(operands)-1]
		for _, s := range srcs {
			base := path.Base(s)
			if _, ok := files[base]; !ok {
				return "", fmt.Errorf("the final stage copies %s from the build stage; this test provides only %v", s, slices.Sorted(maps.Keys(files)))
			}
			rewritten = append(rewritten, base)
		}
		out.WriteString(strings.Join(append(rewritten, dest), " ") + "\n")
	}
	return out.String(), nil
}

func tarContext(files map[string]contextFile) (io.Reader, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range slices.Sorted(maps.Keys(files)) {
		f := files[name]
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: f.mode, Size: int64(len(f.data)), ModTime: time.Unix(0, 0)}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return &buf, nil
}

// readBuildOutput reads the daemon's JSON progress stream to its end and
// returns the build error it reports, if any, with the output so far.
func readBuildOutput(r io.Reader) error {
	dec := json.NewDecoder(r)
	var log strings.Builder
	for {
		var msg struct {
			Stream      string `json:"stream"`
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&msg); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read build output: %w\n%s", err, log.String())
		}
		log.WriteString(msg.Stream)
		if msg.Error != "" || msg.ErrorDetail.Message != "" {
			return fmt.Errorf("%s%s", log.String(), cmp.Or(msg.ErrorDetail.Message, msg.Error))
		}
	}
}

// runtimeSpec is one container of the runtime image.
type runtimeSpec struct {
	name    string // for messages
	image   string
	network *testenv.Network
	alias   string
	env     map[string]string
	cmd     []string
	// publish, when set (e.g. "8080/tcp"), is bound to 127.0.0.1 on a port
	// the engine picks.
	publish string
	wait    wait.Strategy
}

// runtimeContainer is a started container of the runtime image, removed
// when the test ends; its output is logged if the test failed.
type runtimeContainer struct {
	name string
	ctr  testcontainers.Container
}

func startRuntime(ctx context.Context, t *testing.T, s runtimeSpec) *runtimeContainer {
	t.Helper()
	req := testcontainers.ContainerRequest{
		Image:          s.image,
		Cmd:            s.cmd,
		Env:            s.env,
		Networks:       []string{s.network.Name()},
		NetworkAliases: map[string][]string{s.network.Name(): {s.alias}},
		WaitingFor:     s.wait,
	}
	if s.publish != "" {
		port := mobynetwork.MustParsePort(s.publish)
		req.ExposedPorts = []string{s.publish}
		// Loopback only, like testenv: the test reaches it on 127.0.0.1.
		req.HostConfigModifier = func(hc *container.HostConfig) {
			hc.PortBindings = mobynetwork.PortMap{port: {{HostIP: netip.MustParseAddr("127.0.0.1")}}}
		}
	}
	ctr, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
		ContainerRequest: req,
		Started:          true,
		Logger:           tclog.TestLogger(t),
	})
	c := &runtimeContainer{name: s.name, ctr: ctr}
	if ctr != nil {
		testcontainers.CleanupContainer(t, ctr)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("--- %s container output ---\n%s", s.name, c.logs())
			}
		})
	}
	if err != nil {
		t.Fatalf("start %s container: %v", s.name, err)
	}
	return c
}

// logs returns everything the container wrote so far.
func (c *runtimeContainer) logs() string {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	rc, err := c.ctr.Logs(ctx)
	if err != nil {
		return fmt.Sprintf("(logs: %v)", err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Sprintf("%s\n(logs: %v)", b, err)
	}
	return string(b)
}

// exitCode returns the exit code of a container that has stopped.
func (c *runtimeContainer) exitCode(ctx context.Context) (int, error) {
	st, err := c.ctr.State(ctx)
	if err != nil {
		return 0, fmt.Errorf("%s state: %w", c.name, err)
	}
	if st.Running {
		return 0, fmt.Errorf("%s is still running", c.name)
	}
	return st.ExitCode, nil
}

// waitLog waits until the container's output contains s.
func (c *runtimeContainer) waitLog(ctx context.Context, s string) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		out := c.logs()
		if strings.Contains(out, s) {
			return nil
		}
		if st, err := c.ctr.State(ctx); err == nil && !st.Running {
			return fmt.Errorf("%s exited (code %d) before logging %q\n%s", c.name, st.ExitCode, s, out)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s never logged %q: %w\n%s", c.name, s, ctx.Err(), out)
		case <-tick.C:
		}
	}
}

// baseURL is http://127.0.0.1:PORT of the published container port.
func (c *runtimeContainer) baseURL(ctx context.Context, port string) (string, error) {
	p, err := c.ctr.MappedPort(ctx, port)
	if err != nil {
		return "", fmt.Errorf("%s published port of %s: %w", c.name, port, err)
	}
	return "http://127.0.0.1:" + p.Port(), nil
}

// waitOK polls url until it answers 200; the container exposes no other
// readiness signal across the process boundary.
func (c *runtimeContainer) waitOK(ctx context.Context, url string) error {
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last string
	for {
		resp, err := client.Get(url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if st, err := c.ctr.State(ctx); err == nil && !st.Running {
			return fmt.Errorf("%s exited (code %d) before %s answered 200", c.name, st.ExitCode, url)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %s not ready (last: %s): %w", c.name, url, last, ctx.Err())
		case <-tick.C:
		}
	}
}
