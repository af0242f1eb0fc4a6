package edge

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/rowcast/rowcast/realtime"
)

// newTestServer builds a server on a free port whose Redis is unreachable:
// enough for everything that does not join a room. Close runs at cleanup.
func newTestServer(t *testing.T) *Server {
	t.Helper()
	env := map[string]string{
		"REDIS_URL":             "redis://127.0.0.1:1/0",
		"LISTEN_ADDR":           "127.0.0.1:0",
		"ROWCAST_DRAIN_TIMEOUT": "0s",
		"ROWCAST_JOIN_TIMEOUT":  "100ms",
	}
	cfg, err := ConfigFromEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(t.Context(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// get serves one request with the server's router.
func get(s *Server, target string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	s.echo.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	return rec
}

func TestEventsWithoutRooms(t *testing.T) {
	s := newTestServer(t)
	for _, target := range []string{"/events", "/events?rooms=", "/events?rooms=&lastEventId="} {
		rec := get(s, target)
		var body realtime.Control
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("%s: body %q: %v", target, rec.Body, err)
		}
		if rec.Code != http.StatusBadRequest || body.Type != realtime.TypeError || body.Code != "bad_request" || body.Message == "" {
			t.Errorf("%s: %d %+v, want 400 error bad_request", target, rec.Code, body)
		}
	}
	if m := get(s, "/metrics").Body.String(); !strings.Contains(m, `rowcast_refused_total{reason="bad_request"} 3`) {
		t.Errorf("refusals not counted:\n%s", m)
	}
	// A bad room keeps its own message, with the same code.
	if rec := get(s, "/events?rooms=a,,b"); rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "bad room name") {
		t.Errorf("bad room: %d %s", rec.Code, rec.Body)
	}
}

func TestStreamsOverHTTP(t *testing.T) {
	s := newTestServer(t)
	srv := httptest.NewServer(s.echo)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	// WebSocket without rooms is allowed: the client subscribes by message.
	ws, resp, err := websocket.DefaultDialer.DialContext(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
	if err != nil {
		t.Fatalf("dial /ws without rooms: %v (%v)", err, resp)
	}
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, b, err := ws.ReadMessage(); err != nil || !strings.Contains(string(b), `"type":"pong"`) {
		t.Fatalf("ping: %s, %v", b, err)
	}
	if m := get(s, "/metrics").Body.String(); !strings.Contains(m, `rowcast_connections{transport="websocket"} 1`) {
		t.Errorf("connection not counted:\n%s", m)
	}
	ws.Close()

	// SSE with a room streams; the join fails (no Redis) with an error
	// message on the stream.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/events?rooms=lobby", nil)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("SSE: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	r := bufio.NewReader(resp.Body)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("SSE: %v", err)
		}
		if strings.HasPrefix(line, "data: ") && strings.Contains(line, `"code":"unavailable"`) {
			break
		}
	}
}

func TestCloseWithoutRun(t *testing.T) {
	s := newTestServer(t)
	addr := s.Addr()
	for i := range 2 {
		if err := s.Close(); err != nil {
			t.Fatalf("Close #%d: %v", i+1, err)
		}
	}
	portFree(t, addr)
}

func TestRunCloses(t *testing.T) {
	s := newTestServer(t)
	addr := s.Addr()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close after Run: %v", err)
	}
	portFree(t, addr)
}

// portFree fails unless addr can be listened on again.
func portFree(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("port still taken after Close: %v", err)
	}
	ln.Close()
}

// The browser client and its TypeScript declarations are served.
func TestServesClient(t *testing.T) {
	s := newTestServer(t)
	for _, c := range []struct{ path, contentType, want string }{
		{"/rowcast.js", "javascript", "export function connect"},
		{"/rowcast.d.ts", "application/typescript; charset=utf-8", "export function connect(opts?: RowcastOptions): Rowcast;"},
	} {
		rec := get(s, c.path)
		if rec.Code != http.StatusOK || !strings.Contains(rec.Header().Get("Content-Type"), c.contentType) || !strings.Contains(rec.Body.String(), c.want) {
			t.Errorf("GET %s: %d %q, body has %q: %v", c.path, rec.Code, rec.Header().Get("Content-Type"), c.want, strings.Contains(rec.Body.String(), c.want))
		}
	}
}
