package edge_test

import (
	"context"
	"log/slog"
	"net/http"
	"os"

	"github.com/labstack/echo/v4"

	"github.com/rowcast/rowcast/app/edge"
)

// An application adds its own pages beside the streams; Close releases
// the port and the Redis client even if Run never starts.
func ExampleServer_Mount() {
	ctx := context.Background()
	cfg, err := edge.ConfigFromEnv(os.LookupEnv)
	if err != nil {
		panic(err)
	}
	s, err := edge.New(ctx, cfg, slog.Default())
	if err != nil {
		panic(err)
	}
	defer s.Close()
	s.Mount(func(g *echo.Group) {
		g.GET("/hello", func(c echo.Context) error { return c.String(http.StatusOK, "hello\n") })
	})
	_ = s.Run(ctx) // until ctx ends, then drains
}
