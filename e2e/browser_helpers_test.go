package e2e

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

// waitTimeout bounds one wait for a condition in a page.
const waitTimeout = 30 * time.Second

// chromiumPath finds the browser, or fails the test saying how to get one.
func chromiumPath(t *testing.T) string {
	t.Helper()
	names := []string{"/usr/bin/chromium", "chromium", "chromium-browser"}
	if p := os.Getenv("ROWCAST_CHROMIUM"); p != "" {
		names = []string{p}
	}
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatalf("browser e2e: chromium is not installed (looked for %s). Install it (Debian: apt-get install -y chromium; "+
		".ci/run does) or set ROWCAST_CHROMIUM to a Chromium or Chrome binary.", strings.Join(names, ", "))
	return ""
}

// startBrowser starts headless Chromium with a fresh profile, removed when
// the test ends, and returns the context of its first tab: a NewContext of
// it opens another tab (window) in the same profile, so tabs share Web Locks
// and BroadcastChannel per origin like a user's tabs do.
func startBrowser(ctx context.Context, t *testing.T, chromium string) context.Context {
	t.Helper()
	profile, err := os.MkdirTemp("", "rowcast-e2e-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeProfile(t, profile) }) // runs last: after the browser exited
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.UserDataDir(profile),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(cancelAlloc) // also waits for the browser process to exit
	browserCtx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(cancelBrowser)
	if err := chromedp.Do(browserCtx); err != nil {
		t.Fatalf("start %s: %v", chromium, err)
	}
	return browserCtx
}

// removeProfile deletes the profile directory. Chromium's helper processes
// can outlive the browser process by a moment and still write into it.
func removeProfile(t *testing.T, dir string) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := os.RemoveAll(dir)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("remove browser profile: %v", err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tab is one browser tab and what its console printed.
type tab struct {
	name string
	ctx  context.Context
	stop context.CancelFunc

	mu      sync.Mutex
	console []chromedp.ConsoleMessage
	changed chan struct{} // closed and replaced on each console message
}

// openTab opens url in a new tab of the browser, after running the actions
// in before. The tab is closed when the test ends, or earlier by close.
func openTab(t *testing.T, browser context.Context, name, url string, before ...chromedp.Action[chromedp.Void]) *tab {
	t.Helper()
	tabCtx, stop := chromedp.NewContext(browser)
	tb := &tab{name: name, ctx: tabCtx, stop: stop, changed: make(chan struct{})}
	t.Cleanup(func() {
		tb.close()
		if t.Failed() {
			t.Logf("--- console of tab %s ---\n%s", name, tb.consoleText())
		}
	})
	// Subscribe before loading the page so no message is missed.
	messages := chromedp.Console(tabCtx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			tb.mu.Lock()
			tb.console = append(tb.console, m)
			close(tb.changed)
			tb.changed = make(chan struct{})
			tb.mu.Unlock()
		}
	}()
	tb.do(t, "open "+url, append(before, chromedp.Navigate(url))...)
	return tb
}

// withoutTabSharing is an openTab step that makes the page's browser lack
// Web Locks and BroadcastChannel, as some browsers and insecure origins do.
func withoutTabSharing() chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{
			Source: `delete Navigator.prototype.locks; delete window.BroadcastChannel;`,
		})
		return err
	})
}

// close closes the tab.
func (tb *tab) close() { tb.stop() }

// Actions run in a context derived from the tab's (chromedp finds the tab
// through the context), bounded by waitTimeout; the tab's own context ends
// with the test's.

// do runs actions in the tab.
func (tb *tab) do(t *testing.T, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, waitTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("tab %s: %s: %v\npage: %s", tb.name, what, err, tb.snapshot())
	}
}

// eval evaluates a JavaScript expression in the tab into a T.
func eval[T any](t *testing.T, tb *tab, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, waitTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("tab %s: evaluate %s: %v", tb.name, expr, err)
	}
	return v
}

// waitFor polls a JavaScript condition in the page until it is true.
func (tb *tab) waitFor(t *testing.T, what, cond string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, waitTimeout+5*time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](cond,
		chromedp.WithPollingInterval(10*time.Millisecond), chromedp.WithPollingTimeout(waitTimeout)))
	if err != nil {
		t.Fatalf("tab %s: waiting for %s (%s): %v\npage: %s", tb.name, what, cond, err, tb.snapshot())
	}
}

// snapshot describes the page for a failure message.
func (tb *tab) snapshot() string {
	ctx, cancel := context.WithTimeout(tb.ctx, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](
		`JSON.stringify({transport: {...document.getElementById("transport").dataset}, `+
			`list: {...document.getElementById("messages").dataset}, error: document.getElementById("error").textContent, `+
			`messages: [...document.querySelectorAll("#messages li")].map((li) => li.textContent)})`))
	if err != nil {
		return "(unavailable: " + err.Error() + ")"
	}
	return s
}

// waitConsole waits until the console holds n messages that start with
// prefix, and returns their text after the prefix.
func (tb *tab) waitConsole(t *testing.T, prefix string, n int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, waitTimeout)
	defer cancel()
	for {
		tb.mu.Lock()
		var got []string
		for _, m := range tb.console {
			if rest, ok := strings.CutPrefix(m.Text, prefix); ok {
				got = append(got, rest)
			}
		}
		changed := tb.changed
		tb.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatalf("tab %s: console has %d messages starting %q, want %d: %v", tb.name, len(got), prefix, n, ctx.Err())
		}
	}
}

// exceptions returns the uncaught exceptions the page reported.
func (tb *tab) exceptions() []string {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	var out []string
	for _, m := range tb.console {
		if m.IsException() {
			out = append(out, m.Text)
		}
	}
	return out
}

func (tb *tab) consoleText() string {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	var b strings.Builder
	for _, m := range tb.console {
		fmt.Fprintf(&b, "%s\n", m.String())
	}
	return b.String()
}

// proxy is a reverse proxy in front of the app: the browser's origin. It
// can refuse WebSocket upgrades, like a proxy that does not support them,
// counts the streams it passes, and can switch to another app.
type proxy struct {
	url       string
	target    atomic.Pointer[url.URL]
	wsRefused atomic.Int64 // upgrade requests to /ws answered 502
	ws        atomic.Int64 // WebSocket connections passed to the app
	sse       atomic.Int64 // SSE streams passed to the app
}

func startProxy(t *testing.T, target string, blockWebSocket bool) *proxy {
	t.Helper()
	p := &proxy{}
	p.retarget(t, target)
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(p.target.Load())
			r.Out.Host = r.In.Host // like a site's own proxy: the app's origin check sees the browser's host
			r.SetXForwarded()
		},
		FlushInterval: -1, // SSE: pass each write at once
		ErrorLog:      log.New(io.Discard, "", 0),
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ws":
			if blockWebSocket {
				p.wsRefused.Add(1)
				http.Error(w, "this proxy does not pass WebSocket", http.StatusBadGateway)
				return
			}
			p.ws.Add(1)
		case "/events":
			p.sse.Add(1)
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	p.url = srv.URL
	return p
}

// retarget sends the requests that follow to the app at target.
func (p *proxy) retarget(t *testing.T, target string) {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p.target.Store(u)
}

// screenshot saves a PNG of the tab's viewport as .cache/screenshots/<name>.png
// at the repository's top (ignored by git) and returns its path.
func (tb *tab) screenshot(t *testing.T, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, waitTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("tab %s: screenshot: %v", tb.name, err)
	}
	dir := filepath.Join("..", ".cache", "screenshots")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
