// Package logging builds the process logger: text for people by default,
// JSON (LOG_FORMAT=json) for production log pipelines.
package logging

import (
	"log/slog"
	"os"
)

// New returns a logger writing to stderr in format "json" or text.
func New(format string) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil))
}
