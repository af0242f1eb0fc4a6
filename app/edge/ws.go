package edge

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/olahol/melody"
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

// wsTransport writes to one melody session. melody's own buffered channel
// is the bounded queue; inflight counts what sits in it, so Send can refuse
// before melody would drop a frame silently, keeping room for a close frame.
type wsTransport struct {
	s        *melody.Session
	m        *metrics
	limit    int64
	inflight atomic.Int64
	once     sync.Once
}

func (t *wsTransport) Send(f realtime.Frame) bool {
	if t.inflight.Add(1) > t.limit {
		t.inflight.Add(-1)
		return false
	}
	if !f.Control {
		t.m.delivered.WithLabelValues("websocket").Inc()
	}
	if err := t.s.Write(f.Data); err != nil {
		t.inflight.Add(-1)
		return !errors.Is(err, melody.ErrMessageBufferFull)
	}
	return true
}

// sent is called by melody after each text frame is written.
func (t *wsTransport) sent() { t.inflight.Add(-1) }

// Close sends a close frame with the reason behind what is queued, and cuts
// the connection if it has not closed a few seconds later (a slow client may
// never read that far).
func (t *wsTransport) Close(reason realtime.CloseReason) {
	t.once.Do(func() {
		if reason == realtime.CloseSlow {
			t.m.slow.WithLabelValues("websocket").Inc()
		}
		code, ok := closeCodes[reason]
		if !ok {
			code = 1011
		}
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
	client     *realtime.Client
	t          *wsTransport
	grant      auth.Grant
	limiter    *rate.Limiter
	stopExpiry func()
}

// setupWebSocket configures melody's handlers.
func (s *Server) setupWebSocket() {
	m := melody.New()
	m.Config.MaxMessageSize = int64(s.cfg.MaxFrame)
	// Two frames of headroom over the queue limit: a close frame always fits.
	m.Config.MessageBufferSize = s.cfg.QueueSize + 2
	// The admission already checked the origin; melody's upgrader must not
	// apply its own rule on top.
	m.Upgrader.CheckOrigin = func(*http.Request) bool { return true }
	s.melody = m

	m.HandleConnect(func(ms *melody.Session) {
		v, _ := ms.Get(admissionKey)
		a := v.(admission)
		t := &wsTransport{s: ms, limit: int64(s.cfg.QueueSize), m: s.metrics}
		c := s.hub.NewClient(t, s.cfg.MaxRooms)
		conn := &wsConn{client: c, t: t, grant: a.grant,
			limiter: rate.NewLimiter(rate.Limit(s.cfg.MsgRate), int(2*s.cfg.MsgRate)), stopExpiry: watchExpiry(a.grant, c)}
		ms.Set(connKey, conn)
		s.track(c, "websocket", true)
		s.joinAll(ms.Request.Context(), c, a.rooms, a.cursor)
	})
	m.HandleDisconnect(func(ms *melody.Session) {
		if conn := sessionConn(ms); conn != nil {
			conn.stopExpiry()
			s.track(conn.client, "websocket", false)
			conn.client.Close(realtime.CloseNormal)
		}
	})
	m.HandleSentMessage(func(ms *melody.Session, _ []byte) {
		if conn := sessionConn(ms); conn != nil {
			conn.t.sent()
		}
	})
	m.HandleMessage(func(ms *melody.Session, b []byte) {
		if conn := sessionConn(ms); conn != nil {
			s.handleInbound(conn, b)
		}
	})
	m.HandleError(func(ms *melody.Session, err error) {
		// Read errors end the session and reach HandleDisconnect; nothing
		// else to do. (Closing here would re-enter this handler.)
	})
}

func sessionConn(ms *melody.Session) *wsConn {
	v, ok := ms.Get(connKey)
	if !ok {
		return nil
	}
	return v.(*wsConn)
}

// handleInbound acts on one client frame. It runs in the session's read
// loop, so one client's slow subscribe delays only that client.
func (s *Server) handleInbound(conn *wsConn, b []byte) {
	c := conn.client
	if !conn.limiter.Allow() {
		s.metrics.refused.WithLabelValues("rate_limited").Inc()
		c.Send(realtime.Control{Type: realtime.TypeError, Code: "rate_limited", Message: "too many messages: slow down"})
		return
	}
	in, err := ParseInbound(b)
	if err != nil {
		s.metrics.refused.WithLabelValues("bad_request").Inc()
		c.Send(realtime.Control{Type: realtime.TypeError, Code: errorCode(err), Message: err.Error()})
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.JoinTimeout)
	defer cancel()
	switch in.Type {
	case "ping":
		c.Send(realtime.Control{Type: realtime.TypePong})
	case "subscribe":
		if !conn.grant.Allows(in.Room) {
			s.metrics.refused.WithLabelValues("forbidden").Inc()
			c.Send(realtime.Control{Type: realtime.TypeError, Room: in.Room, Code: "forbidden", Message: "room not allowed by token"})
			return
		}
		if err := c.Join(ctx, in.Room, in.Since); err != nil {
			c.Send(realtime.Control{Type: realtime.TypeError, Room: in.Room, Code: errorCode(err), Message: err.Error()})
		}
	case "unsubscribe":
		c.Leave(ctx, in.Room)
		c.Send(realtime.Control{Type: realtime.TypeUnsubscribed, Room: in.Room})
	}
}

// joinAll joins the rooms named at connect time, resuming from cursor.
func (s *Server) joinAll(ctx context.Context, c *realtime.Client, rooms []realtime.Room, cursor realtime.Cursor) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.JoinTimeout)
	defer cancel()
	for _, r := range rooms {
		if err := c.Join(ctx, r, cursor[r]); err != nil {
			c.Send(realtime.Control{Type: realtime.TypeError, Room: r, Code: errorCode(err), Message: err.Error()})
		}
	}
}
