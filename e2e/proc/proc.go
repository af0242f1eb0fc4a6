// Package proc runs rowcast's binaries as child processes for the e2e tests
// and the load benchmark: it keeps their output, waits for a log line or a
// readiness endpoint (the signals a process boundary allows), and stops them
// by signal within a bound.
package proc

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is a started child process. Its methods may be called from any
// goroutine.
type Process struct {
	Name string
	cmd  *exec.Cmd
	out  *tail
	done chan struct{}
	err  error // set before done is closed
}

// Start runs bin with the current environment plus env. The child is killed
// if this process dies, even by SIGKILL.
func Start(name, bin string, env []string, args ...string) (*Process, error) {
	p := &Process{Name: name, out: &tail{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	return p, nil
}

// PID returns the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Output returns what the process wrote (the last 256 KiB).
func (p *Process) Output() string { return p.out.String() }

// Done is closed when the process has exited; Err then says how.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err returns the exit error once Done is closed (nil for exit code 0).
func (p *Process) Err() error {
	<-p.done
	return p.err
}

// Stop sends sig and waits for the exit (SIGKILL after 15 s). It returns the
// exit error; stopping an exited process returns how it exited.
func (p *Process) Stop(sig syscall.Signal) error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	return p.err
}

// WaitLog waits until a line of output contains s and returns that line.
func (p *Process) WaitLog(ctx context.Context, s string) (string, error) {
	for {
		out := p.Output()
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, s) {
				return line, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%s never logged %q: %w\n%s", p.Name, s, ctx.Err(), out)
		case <-p.done:
			return "", fmt.Errorf("%s exited (%v) before logging %q\n%s", p.Name, p.err, s, p.Output())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// WaitHTTP polls url until it answers 200.
func (p *Process) WaitHTTP(ctx context.Context, url string) error {
	for {
		resp, err := http.Get(url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready at %s: %w\n%s", p.Name, url, ctx.Err(), p.Output())
		case <-p.done:
			return fmt.Errorf("%s exited (%v)\n%s", p.Name, p.err, p.Output())
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// RunOnce runs bin to completion (at most two minutes) and returns its
// combined output.
func RunOnce(ctx context.Context, bin string, env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// FreeAddr returns a loopback address nobody listens on right now.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// tail keeps the last 256 KiB written to it.
type tail struct {
	mu sync.Mutex
	b  []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - 256<<10; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
