package edge

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/olahol/melody"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/rowcast/rowcast/app/auth"
	"github.com/rowcast/rowcast/realtime"
)

// WebSocket close codes for realtime.CloseReason (4000-4999 is the range
// for applications).
var closeCodes = map[realtime.CloseReason]int{
	realtime.CloseNormal:   1000,
	realtime.CloseDraining: 1012, // service restart
	realtime.CloseSlow:     4008,
	realtime.CloseExpired:  4001,
}

// wsTransport writes to one melody session. At most one frame is in
// melody's queue at a time; frames sent meanwhile wait in pending (bounded by
// limit: Send reports false when it is full) and go out together, as one
// JSON array frame, once melody has written the previous one. A client that
// keeps up gets each event in its own frame; one that falls behind gets
// fewer, larger frames instead of one syscall per event.
type wsTransport struct {
	s         *melody.Session
	limit     int
	delivered prometheus.Counter
	slow      prometheus.Counter

	mu       sync.Mutex
	inflight bool             // a frame is in melody's queue
	pending  []realtime.Frame // waiting behind it; nil while idle
	once     sync.Once
}

func (t *wsTransport) Send(f realtime.Frame) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.inflight {
		t.writeLocked(f.Data, f.Control)
		return true
	}
	if len(t.pending) >= t.limit {
		return false
	}
	t.pending = append(t.pending, f)
	return true
}

// writeLocked hands one frame to melody (a non-blocking queue insert).
func (t *wsTransport) writeLocked(data []byte, control bool) {
	if err := t.s.Write(data); err != nil {
		return // the session is closing: nothing more will be written
	}
	t.inflight = true
	if !control {
		t.delivered.Inc()
	}
}

// sent is called by melody after each text frame is written: the next
// frame is everything pending.
func (t *wsTransport) sent() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.inflight = false
	switch len(t.pending) {
	case 0:
		return
	case 1:
		t.writeLocked(t.pending[0].Data, t.pending[0].Control)
	default:
		t.writeLocked(realtime.JSONArray(len(t.pending), func(i int) []byte { return t.pending[i].Data }), false)
	}
	clear(t.pending)
	if cap(t.pending) > 64 {
		t.pending = nil // a burst is over: do not keep its buffer on an idle connection
	} else {
		t.pending = t.pending[:0]
	}
}

// Close sends what is queued, then a close frame with the reason, and cuts
// the connection if it has not closed a few seconds later (a slow client may
// never read that far).
func (t *wsTransport) Close(reason realtime.CloseReason) {
	t.once.Do(func() {
		if reason == realtime.CloseSlow {
			t.slow.Inc()
		}
		code, ok := closeCodes[reason]
		if !ok {
			code = 1011
		}
		// What waits behind the in-flight frame goes out before the close
		// frame (a drain's "reconnect" in particular); melody's queue has
		// room for both. A slow client's backlog is dropped: it resumes.
		t.mu.Lock()
		if len(t.pending) > 0 && reason != realtime.CloseSlow {
			_ = t.s.Write(realtime.JSONArray(len(t.pending), func(i int) []byte { return t.pending[i].Data }))
		}
		t.pending = nil
		t.mu.Unlock()
		if err := t.s.CloseWithMsg(melody.FormatCloseMessage(code, reason.String())); err != nil {
			_ = t.s.Close()
			return
		}
		time.AfterFunc(5*time.Second, func() { _ = t.s.Close() })
	})
}

// Session keys.
const (
	admissionKey = "rowcast.admission"
	connKey      = "rowcast.conn"
)

// wsConn is what the edge keeps per WebSocket session.
type wsConn struct {
	client  *realtime.Client
	t       *wsTransport
	grant   auth.Grant
	limiter *rate.Limiter
	expiry  *time.Timer // nil: the grant does not expire
}

// wsEndpoint serves GET /ws: it admits the request, upgrades it with melody
// and runs each session's client. Its handlers are safe for concurrent use.
type wsEndpoint struct {
	melody    *melody.Melody
	admit     *admitter
	clients   *registry
	log       *slog.Logger
	queueSize int
	msgRate   float64 // inbound messages per second per connection
	refused   *prometheus.CounterVec
	delivered prometheus.Counter
	slow      prometheus.Counter
	closeOnce sync.Once
}

func newWSEndpoint(cfg Config, admit *admitter, clients *registry, m *metrics, log *slog.Logger) *wsEndpoint {
	e := &wsEndpoint{admit: admit, clients: clients, log: log, queueSize: cfg.QueueSize, msgRate: cfg.MsgRate,
		refused: m.refused, delivered: m.delivered.WithLabelValues("websocket"), slow: m.slow.WithLabelValues("websocket")}
	e.melody = melody.New()
	e.melody.Config.MaxMessageSize = int64(cfg.MaxFrame)
	// The transport keeps at most one frame in melody's queue (the rest wait
	// in its own), plus a control or close frame: a small channel suffices.
	e.melody.Config.MessageBufferSize = 4
	// Write buffers are pooled: an idle connection holds none. Reads reuse
	// the HTTP server's buffered reader, which lives as long as the
	// connection anyway (melody reads inside the HTTP handler).
	e.melody.Upgrader.WriteBufferPool = &sync.Pool{}
	e.melody.Upgrader.ReadBufferSize = 0
	// The admission already checked the origin; melody's upgrader must not
	// apply its own rule on top.
	e.melody.Upgrader.CheckOrigin = func(*http.Request) bool { return true }
	e.melody.HandleConnect(e.connected)
	e.melody.HandleDisconnect(func(ms *melody.Session) {
		if conn := sessionConn(ms); conn != nil {
			e.clients.end(conn.client, conn.expiry)
		}
	})
	e.melody.HandleSentMessage(func(ms *melody.Session, _ []byte) {
		if conn := sessionConn(ms); conn != nil {
			conn.t.sent()
		}
	})
	e.melody.HandleMessage(func(ms *melody.Session, b []byte) {
		if conn := sessionConn(ms); conn != nil {
			e.inbound(conn, b)
		}
	})
	e.melody.HandleError(func(ms *melody.Session, err error) {
		// Read errors end the session and reach HandleDisconnect; nothing
		// else to do. (Closing here would re-enter this handler.)
	})
	return e
}

// handle upgrades GET /ws?rooms=a,b&lastEventId=<cursor>&position=<token>&token=<jwt>; rooms
// may be empty (the client subscribes by message). Requests that cannot
// connect are refused before the upgrade with an HTTP status and a JSON
// error.
func (e *wsEndpoint) handle(c echo.Context) error {
	a, ref := e.admit.admit(c, false)
	if ref != nil {
		return refuse(c, ref)
	}
	defer e.admit.release(a.ip)
	if !e.admit.originAllowed(c.Request()) {
		return refuse(c, e.admit.refuse(http.StatusForbidden, "origin", "origin not allowed"))
	}
	keys := map[string]any{admissionKey: a}
	// HandleRequestWithKeys returns when the connection ends.
	if err := e.melody.HandleRequestWithKeys(c.Response(), c.Request(), keys); err != nil {
		e.log.Debug("websocket upgrade", "err", err)
	}
	return nil
}

// connected starts a session's client and joins the rooms it was admitted to.
func (e *wsEndpoint) connected(ms *melody.Session) {
	v, _ := ms.Get(admissionKey)
	a := v.(admission)
	t := &wsTransport{s: ms, limit: e.queueSize, delivered: e.delivered, slow: e.slow}
	c, expiry := e.clients.start(t, "websocket", a.grant)
	ms.Set(connKey, &wsConn{client: c, t: t, grant: a.grant,
		limiter: rate.NewLimiter(rate.Limit(e.msgRate), int(2*e.msgRate)), expiry: expiry})
	e.clients.joinAll(ms.Request.Context(), c, a)
}

func sessionConn(ms *melody.Session) *wsConn {
	v, ok := ms.Get(connKey)
	if !ok {
		return nil
	}
	return v.(*wsConn)
}

// inbound acts on one client frame. It runs in the session's read loop, so
// one client's slow subscribe delays only that client.
func (e *wsEndpoint) inbound(conn *wsConn, b []byte) {
	c := conn.client
	if !conn.limiter.Allow() {
		e.refused.WithLabelValues("rate_limited").Inc()
		c.Send(realtime.Control{Type: realtime.TypeError, Code: "rate_limited", Message: "too many messages: slow down"})
		return
	}
	in, err := ParseInbound(b)
	if err != nil {
		e.refused.WithLabelValues("bad_request").Inc()
		c.Send(realtime.Control{Type: realtime.TypeError, Room: in.Room, Code: errorCode(err), Message: err.Error()})
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.clients.joinTimeout)
	defer cancel()
	switch in.Type {
	case "ping":
		c.Send(realtime.Control{Type: realtime.TypePong})
	case "subscribe":
		if !conn.grant.Allows(in.Room) {
			e.refused.WithLabelValues("forbidden").Inc()
			c.Send(realtime.Control{Type: realtime.TypeError, Room: in.Room, Code: "forbidden", Message: "room not allowed by token"})
			return
		}
		if err := c.Join(ctx, in.Room, in.Since, in.At); err != nil {
			c.Send(realtime.Control{Type: realtime.TypeError, Room: in.Room, Code: errorCode(err), Message: err.Error()})
		}
	case "unsubscribe":
		c.Leave(ctx, in.Room)
		c.Send(realtime.Control{Type: realtime.TypeUnsubscribed, Room: in.Room})
	}
}

// close closes every session and stops melody; later calls do nothing
// (melody's own Close must run once).
func (e *wsEndpoint) close() {
	e.closeOnce.Do(func() { _ = e.melody.Close() })
}
