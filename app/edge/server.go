// Package edge is rowcast's edge server: an Echo app that serves WebSocket
// (melody) and Server-Sent Events clients from one realtime.Hub fed by Redis,
// plus health endpoints, metrics and the browser client /rowcast.js. It is
// stateless: run any number. Pages of an application (such as the demo) are
// added with Server.Mount.
//
// Inside, admission (draining, rooms, token, limits, origin) is an admitter
// that both transports use; wsEndpoint and sseEndpoint serve /ws and /events;
// a registry makes and tracks their hub clients for the drain.
package edge

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/rowcast/rowcast/app/auth"
	"github.com/rowcast/rowcast/internal/connect"
	"github.com/rowcast/rowcast/realtime"
	"github.com/rowcast/rowcast/realtime/redisbus"
)

//go:embed static
var static embed.FS

// Server is one edge process. Create it with New, add pages with Mount,
// start it with Run; Close releases what New opened. Mount must not be
// called concurrently with Run; Addr and Close may be called any time.
type Server struct {
	cfg     Config
	log     *slog.Logger
	ln      net.Listener
	echo    *echo.Echo
	pages   *echo.Group           // routes with request ids and request logs
	rdb     redis.UniversalClient // nil with a bus given to NewWithBus
	bus     Bus
	hub     *realtime.Hub
	metrics *metrics
	clients *registry
	admit   *admitter
	ws      *wsEndpoint
	close   func() error // Close, once
}

// New builds the server and binds its listen address; it does not connect
// to Redis yet (Run does, and keeps retrying). ctx bounds background work
// such as JWKS refreshes. The caller must call Close.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Server, error) {
	authz, err := auth.New(ctx, cfg.Auth)
	if err != nil {
		return nil, err
	}
	rcfg, err := connect.ParseRedis(cfg.RedisURL)
	if err != nil {
		return nil, err
	}
	rcfg.AddrMap = cfg.RedisAddrMap
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("LISTEN_ADDR %q: %w", cfg.ListenAddr, err)
	}
	s := &Server{cfg: cfg, log: log, ln: ln, rdb: rcfg.Client()}
	s.bus = redisbus.New(s.rdb, redisbus.Options{Logger: log, ProbeInterval: cfg.ProbeEvery, HistoryTTL: cfg.HistoryTTL,
		OnReconnect: func() { s.metrics.reconnects.Inc() }})
	return s.build(authz), nil
}

// Bus is what the edge needs of its bus: realtime's contract, and whether
// its live delivery is up (readiness).
type Bus interface {
	realtime.Bus
	Connected() bool
}

// NewWithBus is New with an in-process bus instead of Redis (cfg.RedisURL
// is not used): the process that publishes to bus is the only one whose
// events its clients get.
func NewWithBus(ctx context.Context, cfg Config, bus Bus, log *slog.Logger) (*Server, error) {
	authz, err := auth.New(ctx, cfg.Auth)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("LISTEN_ADDR %q: %w", cfg.ListenAddr, err)
	}
	s := &Server{cfg: cfg, log: log, ln: ln, bus: bus}
	return s.build(authz), nil
}

// build makes the hub and endpoints on s.bus.
func (s *Server) build(authz *auth.Authorizer) *Server {
	cfg, log := s.cfg, s.log
	s.hub = realtime.NewHub(s.bus, log)
	s.metrics = newMetrics(s.hub)
	s.clients = newRegistry(cfg, s.hub, s.metrics.connections)
	s.admit = newAdmitter(cfg, authz, s.metrics.refused)
	s.ws = newWSEndpoint(cfg, s.admit, s.clients, s.metrics, log)
	s.close = sync.OnceValue(s.release)
	s.routes(newSSEEndpoint(cfg, s.admit, s.clients, s.metrics))
	return s
}

// Addr returns the bound address (useful with LISTEN_ADDR=127.0.0.1:0).
func (s *Server) Addr() string { return s.ln.Addr().String() }

func (s *Server) routes(sse *sseEndpoint) {
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.GET("/healthz", func(c echo.Context) error { return c.String(http.StatusOK, "ok\n") })
	e.GET("/readyz", s.handleReady)
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{})))
	// Streams run for hours in their handler's goroutine: no middleware, so
	// its stack stays shallow (memory per idle connection).
	e.GET("/ws", s.ws.handle)
	e.GET("/events", sse.handle)
	s.pages = e.Group("", middleware.RequestID(), s.requestLog())
	s.pages.FileFS("/rowcast.js", "static/rowcast.js", static)
	types := echo.StaticFileHandler("static/rowcast.d.ts", static)
	s.pages.GET("/rowcast.d.ts", func(c echo.Context) error { // by its extension alone, .ts is video/mp2t
		c.Response().Header().Set(echo.HeaderContentType, "application/typescript; charset=utf-8")
		return types(c)
	})
	s.echo = e
}

// Mount calls routes with the group that serves /rowcast.js, so an
// application's pages and APIs get the same request ids and request logs.
// Call it before Run.
func (s *Server) Mount(routes func(*echo.Group)) { routes(s.pages) }

func (s *Server) handleReady(c echo.Context) error {
	switch {
	case s.admit.draining.Load():
		return c.String(http.StatusServiceUnavailable, "draining\n")
	case !s.bus.Connected():
		return c.String(http.StatusServiceUnavailable, "redis subscription down\n")
	}
	return c.String(http.StatusOK, "ok\n")
}

// requestLog logs each request with its id once it ends; streams log when
// they close.
func (s *Server) requestLog() echo.MiddlewareFunc {
	return middleware.RequestLoggerWithConfig(middleware.RequestLoggerConfig{
		LogURIPath: true, LogStatus: true, LogLatency: true, LogRequestID: true, LogMethod: true, LogError: true,
		LogValuesFunc: func(c echo.Context, v middleware.RequestLoggerValues) error {
			s.log.Debug("request", "id", v.RequestID, "method", v.Method, "path", v.URIPath,
				"status", v.Status, "duration", v.Latency, "err", v.Error)
			return nil
		},
	})
}

// Run serves until ctx ends, then drains: it fails /readyz, stops
// accepting, tells every client to reconnect elsewhere, closes them spread
// over the drain window, and returns. It calls Close before it returns.
func (s *Server) Run(ctx context.Context) (err error) {
	defer func() { err = errors.Join(err, s.Close()) }()
	busCtx, stopBus := context.WithCancel(context.WithoutCancel(ctx))
	busDone := make(chan struct{})
	go func() {
		defer close(busDone)
		_ = s.bus.Run(busCtx, observed{Hub: s.hub, m: s.metrics})
	}()
	defer func() { stopBus(); <-busDone }()

	srv := &http.Server{Handler: s.echo, ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(s.ln) }()
	s.log.Info("edge server listening", "addr", s.Addr())

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	s.drain(srv)
	return nil
}

// drain implements the graceful part of Run.
func (s *Server) drain(srv *http.Server) {
	s.admit.draining.Store(true)
	s.log.Info("draining", "timeout", s.cfg.DrainTimeout)
	shutdownDone := make(chan struct{})
	go func() {
		defer close(shutdownDone)
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout+time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			s.log.Warn("shutdown", "err", err)
		}
	}()

	clients := s.clients.all()
	// Spread the closes over the window so clients do not all reconnect to
	// the other edges in the same instant.
	step := time.Duration(0)
	if len(clients) > 0 {
		step = s.cfg.DrainTimeout / 2 / time.Duration(len(clients))
	}
	for _, c := range clients {
		c.Send(realtime.Control{Type: realtime.TypeReconnect, Code: "draining"})
		c.Close(realtime.CloseDraining)
		if step > 0 {
			time.Sleep(step)
		}
	}
	<-shutdownDone
	s.ws.close()
	s.log.Info("drained", "clients", len(clients))
}

// Close releases what New opened: the listening socket, the Redis client
// and melody (closing any WebSocket session left). Run calls it; calling it
// again, or without Run, is safe and returns the first call's result.
// Closing while Run serves (rather than ending Run's ctx) skips the drain.
func (s *Server) Close() error { return s.close() }

func (s *Server) release() error {
	s.ws.close()
	err := s.ln.Close()
	if errors.Is(err, net.ErrClosed) { // Run's http.Server closed it
		err = nil
	}
	if s.rdb != nil {
		err = errors.Join(err, s.rdb.Close())
	}
	return err
}
