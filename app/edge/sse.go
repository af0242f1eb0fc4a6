package edge

import (
	"bytes"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rowcast/rowcast/realtime"
)

// sseTransport queues frames for one SSE stream; the request's goroutine
// writes them. The queue is a slice that grows only while frames wait (an
// idle stream holds no buffer), bounded by limit: Send reports false when it
// is full. The writer takes everything queued at once, so a burst becomes one
// write and one flush.
type sseTransport struct {
	limit int
	wake  chan struct{} // capacity 1: "frames are queued"
	done  chan struct{}

	mu      sync.Mutex
	pending []realtime.Frame
	once    sync.Once
	reason  realtime.CloseReason
}

func newSSETransport(limit int) *sseTransport {
	return &sseTransport{limit: limit, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

func (t *sseTransport) Send(f realtime.Frame) bool {
	t.mu.Lock()
	if len(t.pending) >= t.limit {
		t.mu.Unlock()
		return false
	}
	t.pending = append(t.pending, f)
	t.mu.Unlock()
	select {
	case t.wake <- struct{}{}:
	default:
	}
	return true
}

// take returns the queued frames and empties the queue; buf is reused for
// the next batch.
func (t *sseTransport) take(buf []realtime.Frame) []realtime.Frame {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := t.pending
	t.pending = buf[:0]
	return out
}

func (t *sseTransport) Close(reason realtime.CloseReason) {
	t.once.Do(func() {
		t.reason = reason
		close(t.done)
	})
}

// writeTimeout bounds one write to a stream: a client that does not read for
// this long is cut off instead of holding the goroutine.
const writeTimeout = 10 * time.Second

// sseEndpoint serves GET /events: it admits the request and streams its
// rooms' events from the request's goroutine. It is safe for concurrent use.
type sseEndpoint struct {
	admit     *admitter
	clients   *registry
	queueSize int
	heartbeat time.Duration
	delivered prometheus.Counter
	slow      prometheus.Counter
}

func newSSEEndpoint(cfg Config, admit *admitter, clients *registry, m *metrics) *sseEndpoint {
	return &sseEndpoint{admit: admit, clients: clients, queueSize: cfg.QueueSize, heartbeat: cfg.Heartbeat,
		delivered: m.delivered.WithLabelValues("sse"), slow: m.slow.WithLabelValues("sse")}
}

// handle serves GET /events?rooms=a,b (at least one room: a stream's rooms
// are fixed when it opens). The stream resumes from the Last-Event-ID header
// (the browser sends it on reconnect) or the lastEventId query parameter.
func (e *sseEndpoint) handle(c echo.Context) error {
	req := c.Request()
	a, ref := e.admit.admit(c, true)
	if ref != nil {
		return refuse(c, ref)
	}
	defer e.admit.release(a.ip)

	w := c.Response()
	h := w.Header()
	if origin := req.Header.Get("Origin"); origin != "" && e.admit.originAllowed(req) {
		h.Set("Access-Control-Allow-Origin", origin)
		h.Add("Vary", "Origin")
	}
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	// Fly's proxy (and others) compress responses that lack an encoding,
	// buffering the stream; "none" is Fly's documented opt-out.
	h.Set("Content-Encoding", "none")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)

	t := newSSETransport(e.queueSize)
	client, expiry := e.clients.start(t, "sse", a.grant)
	defer e.clients.end(client, expiry)
	rooms, cursor := a.rooms, a.cursor
	// The id: line covers this stream's rooms, in a fixed (sorted) order.
	idRooms := slices.Sorted(slices.Values(rooms))

	var buf bytes.Buffer
	buf.WriteString("retry: 1000\n\n")
	write := func() error {
		if err := rc.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
			return err
		}
		if _, err := w.Write(buf.Bytes()); err != nil {
			return err
		}
		buf.Reset()
		return rc.Flush()
	}
	if err := write(); err != nil {
		return nil
	}
	// Joining runs beside the write loop, so replayed history streams out
	// while later rooms are still joining.
	go e.clients.joinAll(req.Context(), client, a)

	var spare []realtime.Frame
	heartbeat := time.NewTicker(e.heartbeat)
	defer heartbeat.Stop()
	for {
		select {
		case <-t.wake:
			frames := t.take(spare)
			for i, f := range frames {
				if !f.Control {
					e.delivered.Inc()
				}
				appendSSE(&buf, cursor, idRooms, f)
				frames[i] = realtime.Frame{} // drop references to event bytes
			}
			spare = frames
			if err := write(); err != nil {
				return nil
			}
		case <-heartbeat.C:
			buf.WriteString(": heartbeat\n\n")
			if err := write(); err != nil {
				return nil
			}
		case <-t.done:
			if t.reason == realtime.CloseSlow {
				e.slow.Inc()
			}
			ctl := realtime.Control{Type: realtime.TypeClosing, Code: t.reason.String()}
			if t.reason == realtime.CloseDraining {
				ctl.Type = realtime.TypeReconnect
			}
			appendSSE(&buf, cursor, idRooms, realtime.Frame{Data: ctl.Encode(), Control: true})
			_ = write()
			return nil
		case <-req.Context().Done():
			return nil
		}
	}
}

// appendSSE formats one frame. Events carry "id:" with the cursor over all
// the stream's rooms; control messages are the "control" event type.
func appendSSE(buf *bytes.Buffer, cursor realtime.Cursor, rooms []realtime.Room, f realtime.Frame) {
	if f.Control {
		buf.WriteString("event: control\n")
	}
	if !f.ID.IsZero() {
		cursor[f.Room] = f.ID
		buf.WriteString("id: ")
		buf.Write(cursor.AppendTo(buf.AvailableBuffer(), rooms))
		buf.WriteByte('\n')
	}
	buf.WriteString("data: ")
	buf.Write(f.Data)
	buf.WriteString("\n\n")
}
