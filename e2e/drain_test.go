package e2e

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/rowcast/rowcast/e2e/proc"
	"github.com/rowcast/rowcast/e2e/wire"
)

// SIGTERM on an edge: it tells its clients to reconnect, closes them within
// the drain bound and exits; they resume on a second edge without loss.
func TestDrainToSecondEdge(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := startStack(ctx, t)
	startListener(ctx, t, s)
	a, baseA := startApp(ctx, t, s, "ROWCAST_DRAIN_TIMEOUT=2s")
	_, baseB := startApp(ctx, t, s)

	subs := subscribeWithFallback(ctx, t, baseA, baseB, 3)
	r := &rig{s: s, subs: subs}
	in := startInserter(ctx, s.pgURL, faultRooms...)
	r.waitProgress(ctx, t, 20, "before the drain")
	start := time.Now()
	if err := a.Stop(syscall.SIGTERM); err != nil {
		t.Fatalf("edge A after SIGTERM: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("drain took %s, bound is 2s (+1s shutdown grace)", took)
	}
	r.waitProgress(ctx, t, 20, "after the drain")
	in.finish()
	want := committed(ctx, t, s.pgURL)
	r.waitAll(ctx, want)
	for _, sub := range subs {
		tl := count(sub, want)
		if tl.lost > 0 || tl.dups > 0 || tl.outOfOrder > 0 {
			t.Errorf("%s subscriber: lost %d dups %d out of order %d of %d", sub.Transport, tl.lost, tl.dups, tl.outOfOrder, tl.expected)
		}
		told := false
		for _, c := range sub.Controls() {
			told = told || c.Type == "reconnect"
		}
		if !told {
			t.Errorf("%s subscriber was never told to reconnect", sub.Transport)
		}
		if sub.Connects() < 2 {
			t.Errorf("%s subscriber did not move to edge B", sub.Transport)
		}
	}
	report(t, "drain: edge A exited %s after SIGTERM; %d subscribers resumed on edge B", time.Since(start).Round(time.Millisecond), len(subs))
}

// flyStop is how fly.toml has Fly stop an app Machine: the proxy's
// autostop (and every deploy) sends kill_signal, then SIGKILL kill_timeout
// later.
type flyStop struct {
	autostop string         // http_service.auto_stop_machines, as written
	signal   syscall.Signal // kill_signal (Fly's default: SIGINT)
	name     string         // its name, for messages
	timeout  time.Duration  // kill_timeout (Fly's default: 5 s)
	env      []string       // [env], as every app Machine has it
}

// flySignals are the kill_signal values Fly accepts.
var flySignals = map[string]syscall.Signal{
	"SIGINT": syscall.SIGINT, "SIGTERM": syscall.SIGTERM, "SIGQUIT": syscall.SIGQUIT,
	"SIGUSR1": syscall.SIGUSR1, "SIGUSR2": syscall.SIGUSR2, "SIGKILL": syscall.SIGKILL, "SIGSTOP": syscall.SIGSTOP,
}

// loadFlyStop reads ../fly.toml (deploy/fly_test.go checks the rest of it).
func loadFlyStop(t *testing.T) flyStop {
	t.Helper()
	b, err := os.ReadFile("../fly.toml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		KillSignal  string            `toml:"kill_signal"`
		KillTimeout any               `toml:"kill_timeout"`
		Env         map[string]string `toml:"env"`
		HTTPService struct {
			AutoStopMachines any `toml:"auto_stop_machines"`
		} `toml:"http_service"`
	}
	if err := toml.Unmarshal(b, &c); err != nil {
		t.Fatalf("fly.toml: %v", err)
	}
	fs := flyStop{autostop: fmt.Sprint(c.HTTPService.AutoStopMachines), name: cmp.Or(c.KillSignal, "SIGINT"), timeout: 5 * time.Second}
	sig, ok := flySignals[fs.name]
	if !ok {
		t.Fatalf("fly.toml: kill_signal %q is not a signal Fly sends", fs.name)
	}
	fs.signal = sig
	switch v := c.KillTimeout.(type) {
	case nil:
	case int64:
		fs.timeout = time.Duration(v) * time.Second
	case string:
		if fs.timeout, err = time.ParseDuration(v); err != nil {
			t.Fatalf("fly.toml: kill_timeout %q: %v", v, err)
		}
	default:
		t.Fatalf("fly.toml: kill_timeout = %v (%T)", v, v)
	}
	for _, k := range slices.Sorted(maps.Keys(c.Env)) {
		fs.env = append(fs.env, k+"="+c.Env[k])
	}
	return fs
}

// startEdge starts an edge configured like a Fly Machine of fly.toml (its
// [env], no demo form) and returns how long it took from exec to the first
// 200 from /readyz: its cold start, without the Machine's own boot.
func startEdge(ctx context.Context, t *testing.T, s *stack, env []string) (*proc.Process, string, time.Duration) {
	t.Helper()
	addr := freeAddr(t)
	base := "http://" + addr
	client := &http.Client{Timeout: time.Second}
	start := time.Now()
	p := startProc(t, "app "+addr, bins.app, s.env(append(slices.Clone(env), "LISTEN_ADDR="+addr)...))
	for {
		resp, err := client.Get(base + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, base, time.Since(start)
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s not ready: %v", p.Name, ctx.Err())
		case <-p.Done():
			t.Fatalf("%s exited (%v) before it was ready", p.Name, p.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// Fly's autostop on an edge with connected clients, played with fly.toml's
// own settings: the proxy sends kill_signal to edge A and SIGKILLs it
// kill_timeout later. A drains within that, its WebSocket and SSE clients
// resume on edge B with nothing lost, duplicated or reordered; then an edge
// C starts cold (the proxy's autostart) and serves. Reports C's cold start
// to /readyz and, per transport, how long after the signal each client was
// live again on B.
func TestAutostopEdge(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e")
	}
	fly := loadFlyStop(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute+fly.timeout)
	defer cancel()
	s := startStack(ctx, t)
	startListener(ctx, t, s)
	a, baseA, coldA := startEdge(ctx, t, s, fly.env)
	_, baseB, coldB := startEdge(ctx, t, s, fly.env)

	subs := subscribeWithFallback(ctx, t, baseA, baseB, 4)
	r := &rig{s: s, subs: subs}
	in := startInserter(ctx, s.pgURL, faultRooms...)
	r.waitProgress(ctx, t, 20, "before the stop")

	// Autostop: kill_signal, then SIGKILL after kill_timeout.
	signalled := time.Now()
	if err := syscall.Kill(a.PID(), fly.signal); err != nil {
		t.Fatalf("send %s to edge A: %v", fly.name, err)
	}
	select {
	case <-a.Done():
	case <-time.After(fly.timeout):
		t.Errorf("edge A still runs %s after %s: Fly would SIGKILL it mid-drain", fly.timeout, fly.name)
		_ = a.Stop(syscall.SIGKILL)
	}
	stopped := time.Since(signalled)
	if err := a.Err(); err != nil {
		t.Errorf("edge A after %s: %v", fly.name, err)
	}
	r.waitProgress(ctx, t, 20, "after the stop")

	// Autostart: a cold edge under load, and a client on it.
	_, baseC, coldC := startEdge(ctx, t, s, fly.env)
	late := wire.NewSubscriber(baseC, wire.WebSocket, faultRooms...)
	go late.Run(ctx)
	(&rig{s: s, subs: []*wire.Subscriber{late}}).waitProgress(ctx, t, 20, "on the autostarted edge C")

	in.finish()
	want := committed(ctx, t, s.pgURL)
	r.waitAll(ctx, want)
	sinceSignal := map[wire.Transport][]time.Duration{}
	sinceTold := map[wire.Transport][]time.Duration{}
	for _, sub := range subs {
		tl := count(sub, want)
		if tl.lost > 0 || tl.dups > 0 || tl.outOfOrder > 0 {
			t.Errorf("%s subscriber: lost %d dups %d out of order %d of %d", sub.Transport, tl.lost, tl.dups, tl.outOfOrder, tl.expected)
		}
		var told time.Time
		var resumed *wire.Session
		for _, ss := range sub.Sessions() {
			if ss.Base == baseA && !ss.Told.IsZero() {
				told = ss.Told
			}
			if ss.Base == baseB && ss.Connected.After(signalled) && !ss.Resumed.IsZero() && resumed == nil {
				resumed = &ss
			}
		}
		switch {
		case told.IsZero():
			t.Errorf("%s subscriber was never told to reconnect by edge A: %q", sub.Transport, sub.Ends())
		case resumed == nil:
			t.Errorf("%s subscriber never resumed on edge B: %q", sub.Transport, sub.Ends())
		default:
			sinceSignal[sub.Transport] = append(sinceSignal[sub.Transport], resumed.Resumed.Sub(signalled))
			sinceTold[sub.Transport] = append(sinceTold[sub.Transport], resumed.Resumed.Sub(told))
		}
	}
	report(t, "autostop (auto_stop_machines=%s): %s to edge A, which exited after %s (ROWCAST_DRAIN_TIMEOUT from fly.toml, kill_timeout %s); cold start to /readyz: %s idle (A), %s idle (B), %s under load (C, autostart)",
		fly.autostop, fly.name, stopped.Round(time.Millisecond), fly.timeout, ms(coldA), ms(coldB), ms(coldC))
	for _, tr := range []wire.Transport{wire.WebSocket, wire.SSE} {
		report(t, "autostop: %s clients live again on edge B, after the signal: %s; after their reconnect message: %s",
			tr, spread(sinceSignal[tr]), spread(sinceTold[tr]))
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

// spread formats n, p50 and max of ds in milliseconds.
func spread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "no samples"
	}
	s := slices.Sorted(slices.Values(ds))
	return fmt.Sprintf("n=%d p50=%s max=%s", len(s), ms(s[(len(s)-1)/2]), ms(s[len(s)-1]))
}

// subscribeWithFallback starts n subscribers per transport on edge base,
// each with other as the edge to resume on, and waits until all are
// subscribed.
func subscribeWithFallback(ctx context.Context, t *testing.T, base, other string, n int) []*wire.Subscriber {
	t.Helper()
	var subs []*wire.Subscriber
	for _, tr := range []wire.Transport{wire.WebSocket, wire.SSE} {
		for range n {
			sub := wire.NewSubscriber(base, tr, faultRooms...)
			sub.Others = []string{other}
			subs = append(subs, sub)
			go sub.Run(ctx)
			select {
			case <-sub.Subscribed():
			case <-ctx.Done():
				t.Fatalf("%s subscriber never subscribed on %s", tr, base)
			}
		}
	}
	return subs
}
