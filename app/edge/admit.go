package edge

import (
	"errors"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rowcast/rowcast/app/auth"
	"github.com/rowcast/rowcast/realtime"
)

// admission is what a connection request was granted.
type admission struct {
	rooms  []realtime.Room
	cursor realtime.Cursor
	// at and badAt are the rooms' snapshot positions from the URL, and the
	// rooms whose token is unusable (refused alone, with an error frame).
	at    map[realtime.Room]*realtime.Snapshot
	badAt map[realtime.Room]error
	grant auth.Grant
	ip    string
}

// refusal is an HTTP answer to a request that cannot connect.
type refusal struct {
	status int
	code   string
	msg    string
}

func (r *refusal) Error() string { return r.msg }

// refuse writes r as the JSON error body both transports answer with.
func refuse(c echo.Context, r *refusal) error {
	return c.JSON(r.status, realtime.Control{Type: realtime.TypeError, Code: r.code, Message: r.msg})
}

// admitter decides which connection requests may connect, for both
// transports: draining, rooms, cursor, token, connections per IP and origin.
// It is safe for concurrent use.
type admitter struct {
	auth           *auth.Authorizer
	maxRooms       int
	maxConnsPerIP  int
	clientIPHeader string
	allowedOrigins []string
	refused        *prometheus.CounterVec // by reason

	draining atomic.Bool // set once by the drain: refuse everyone
	conns    ipLimiter
}

func newAdmitter(cfg Config, authz *auth.Authorizer, refused *prometheus.CounterVec) *admitter {
	return &admitter{auth: authz, maxRooms: cfg.MaxRooms, maxConnsPerIP: cfg.MaxConnsPerIP,
		clientIPHeader: cfg.ClientIPHeader, allowedOrigins: cfg.AllowedOrigins, refused: refused}
}

// admit checks a WebSocket or SSE request before it is upgraded or streamed:
// draining, rooms (at least one with needRooms), cursor, token and the
// per-IP connection limit. On success the caller must call a.release(ip)
// when the connection ends.
func (a *admitter) admit(c echo.Context, needRooms bool) (admission, *refusal) {
	req := c.Request()
	if a.draining.Load() {
		return admission{}, &refusal{http.StatusServiceUnavailable, "draining", "server is draining: reconnect elsewhere"}
	}
	rooms, err := parseRooms(c.QueryParam("rooms"), a.maxRooms)
	if err == nil && needRooms && len(rooms) == 0 {
		err = errNoRooms
	}
	if err != nil {
		return admission{}, a.refuse(http.StatusBadRequest, errorCode(err), err.Error())
	}
	// An SSE client passes a position token as lastEventId; the browser's
	// Last-Event-ID header on a reconnect is the cursor, and the URL keeps
	// the token, so both apply.
	position, last := c.QueryParam("position"), req.Header.Get("Last-Event-ID")
	if q := c.QueryParam("lastEventId"); realtime.IsPosition(q) {
		if position == "" {
			position = q
		}
	} else if last == "" {
		last = q
	}
	cursor, err := realtime.ParseCursor(last)
	if err != nil {
		return admission{}, a.refuse(http.StatusBadRequest, "bad_request", err.Error())
	}
	grant, err := a.auth.Check(auth.FromRequest(c.QueryParam("token"), req.Header.Get("Authorization")))
	if err != nil {
		code := "unauthorized"
		if errors.Is(err, auth.ErrExpired) {
			code = "token_expired"
		}
		return admission{}, a.refuse(http.StatusUnauthorized, code, err.Error())
	}
	for _, r := range rooms {
		if !grant.Allows(r) {
			return admission{}, a.refuse(http.StatusForbidden, "forbidden", "room "+string(r)+" is not allowed")
		}
	}
	ip := a.clientIP(req)
	if !a.conns.acquire(ip, a.maxConnsPerIP) {
		return admission{}, a.refuse(http.StatusTooManyRequests, "too_many_connections", "too many connections from this address")
	}
	at, badAt := parsePositions(position, rooms)
	return admission{rooms: rooms, cursor: cursor, at: at, badAt: badAt, grant: grant, ip: ip}, nil
}

// refuse counts a refusal by its code and returns it.
func (a *admitter) refuse(status int, code, msg string) *refusal {
	a.refused.WithLabelValues(code).Inc()
	return &refusal{status, code, msg}
}

// release ends a connection that admit let in.
func (a *admitter) release(ip string) { a.conns.release(ip) }

// clientIP is the peer address, or the configured proxy header's value.
func (a *admitter) clientIP(r *http.Request) string {
	if a.clientIPHeader != "" {
		if v := strings.TrimSpace(r.Header.Get(a.clientIPHeader)); v != "" {
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
func (a *admitter) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if slices.Contains(a.allowedOrigins, "*") || slices.Contains(a.allowedOrigins, origin) {
		return true
	}
	u, err := url.Parse(origin)
	return err == nil && len(a.allowedOrigins) == 0 && strings.EqualFold(u.Host, r.Host)
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
