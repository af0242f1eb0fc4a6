package edge

import (
	"errors"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/rowcast/rowcast/app/auth"
	"github.com/rowcast/rowcast/realtime"
)

// admission is what a connection request was granted.
type admission struct {
	rooms  []realtime.Room
	cursor realtime.Cursor
	grant  auth.Grant
	ip     string
}

// refusal is an HTTP answer to a request that cannot connect.
type refusal struct {
	status int
	code   string
	msg    string
}

func (r *refusal) Error() string { return r.msg }

// admit checks a WebSocket or SSE request before it is upgraded or streamed:
// draining, per-IP connection limit, token, rooms and cursor. On success the
// caller must call s.release(a.ip) when the connection ends.
func (s *Server) admit(c echo.Context) (admission, *refusal) {
	req := c.Request()
	if s.draining.Load() {
		return admission{}, &refusal{http.StatusServiceUnavailable, "draining", "server is draining: reconnect elsewhere"}
	}
	rooms, err := parseRooms(c.QueryParam("rooms"), s.cfg.MaxRooms)
	if err != nil {
		s.metrics.refused.WithLabelValues(errorCode(err)).Inc()
		return admission{}, &refusal{http.StatusBadRequest, errorCode(err), err.Error()}
	}
	last := req.Header.Get("Last-Event-ID")
	if last == "" {
		last = c.QueryParam("lastEventId")
	}
	cursor, err := realtime.ParseCursor(last)
	if err != nil {
		s.metrics.refused.WithLabelValues("bad_request").Inc()
		return admission{}, &refusal{http.StatusBadRequest, "bad_request", err.Error()}
	}
	grant, err := s.auth.Check(auth.FromRequest(c.QueryParam("token"), req.Header.Get("Authorization")))
	if err != nil {
		code := "unauthorized"
		if errors.Is(err, auth.ErrExpired) {
			code = "token_expired"
		}
		s.metrics.refused.WithLabelValues(code).Inc()
		return admission{}, &refusal{http.StatusUnauthorized, code, err.Error()}
	}
	for _, r := range rooms {
		if !grant.Allows(r) {
			s.metrics.refused.WithLabelValues("forbidden").Inc()
			return admission{}, &refusal{http.StatusForbidden, "forbidden", "room " + string(r) + " is not allowed"}
		}
	}
	ip := s.clientIP(req)
	if !s.conns.acquire(ip, s.cfg.MaxConnsPerIP) {
		s.metrics.refused.WithLabelValues("too_many_connections").Inc()
		return admission{}, &refusal{http.StatusTooManyRequests, "too_many_connections", "too many connections from this address"}
	}
	return admission{rooms: rooms, cursor: cursor, grant: grant, ip: ip}, nil
}

func (s *Server) refuse(c echo.Context, r *refusal) error {
	return c.JSON(r.status, realtime.Control{Type: realtime.TypeError, Code: r.code, Message: r.msg})
}

// clientIP is the peer address, or the configured proxy header's value.
func (s *Server) clientIP(r *http.Request) string {
	if s.cfg.ClientIPHeader != "" {
		if v := strings.TrimSpace(r.Header.Get(s.cfg.ClientIPHeader)); v != "" {
			return v
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// originAllowed implements the WebSocket Origin check (cross-site WebSocket
// hijacking) and decides which origins get CORS headers on SSE. Requests
// without an Origin (non-browser clients) pass; the token still applies.
func (s *Server) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if slices.Contains(s.cfg.AllowedOrigins, "*") || slices.Contains(s.cfg.AllowedOrigins, origin) {
		return true
	}
	u, err := url.Parse(origin)
	return err == nil && len(s.cfg.AllowedOrigins) == 0 && strings.EqualFold(u.Host, r.Host)
}

// watchExpiry closes c when its token expires; the returned stop cancels.
func watchExpiry(g auth.Grant, c *realtime.Client) (stop func()) {
	if g.Expires.IsZero() {
		return func() {}
	}
	t := time.AfterFunc(time.Until(g.Expires), func() { c.Close(realtime.CloseExpired) })
	return func() { t.Stop() }
}

// ipLimiter counts open connections per client IP.
type ipLimiter struct {
	mu sync.Mutex
	n  map[string]int
}

func (l *ipLimiter) acquire(ip string, max int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[ip] >= max {
		return false
	}
	if l.n == nil {
		l.n = map[string]int{}
	}
	l.n[ip]++
	return true
}

func (l *ipLimiter) release(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[ip]--; l.n[ip] <= 0 {
		delete(l.n, ip)
	}
}
