package edge

import (
	"embed"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/labstack/echo/v4"
)

//go:embed static
var static embed.FS

// demoRoutes serves the demo page and, with DATABASE_URL set, the form that
// inserts chat messages (they come back through the trigger like any row).
func (s *Server) demoRoutes(e *echo.Echo) {
	e.FileFS("/", "static/index.html", static)
	e.FileFS("/rowcast.js", "static/rowcast.js", static)
	e.POST("/api/messages", s.handlePostMessage)
}

type postMessage struct {
	Room   string `json:"room"`
	Author string `json:"author"`
	Body   string `json:"body"`
}

// handlePostMessage inserts one chat_message row.
func (s *Server) handlePostMessage(c echo.Context) error {
	if s.db == nil {
		return c.JSON(http.StatusServiceUnavailable, map[string]string{"error": "posting needs DATABASE_URL on the edge"})
	}
	var m postMessage
	if err := c.Bind(&m); err != nil {
		return c.JSON(http.StatusBadRequest, map[string]string{"error": "body must be JSON {room, author, body}"})
	}
	m.Author, m.Body = strings.TrimSpace(m.Author), strings.TrimSpace(m.Body)
	if msg := validatePost(m); msg != "" {
		return c.JSON(http.StatusBadRequest, map[string]string{"error": msg})
	}
	var id int64
	err := s.db.QueryRow(c.Request().Context(),
		`INSERT INTO chat_message (room, author, body) VALUES ($1, $2, $3) RETURNING id`,
		m.Room, m.Author, m.Body).Scan(&id)
	if err != nil {
		s.log.Error("insert chat message", "err", err)
		return c.JSON(http.StatusServiceUnavailable, map[string]string{"error": "database unavailable"})
	}
	return c.JSON(http.StatusCreated, map[string]int64{"id": id})
}

func validatePost(m postMessage) string {
	switch {
	case m.Body == "":
		return "message is empty"
	case utf8.RuneCountInString(m.Body) > 500:
		return "message is longer than 500 characters"
	case m.Author == "":
		return "name is empty"
	case utf8.RuneCountInString(m.Author) > 40:
		return "name is longer than 40 characters"
	}
	if _, err := parseRooms(m.Room, 1); err != nil || m.Room == "" {
		return "room must be 1-128 characters of A-Z a-z 0-9 _ . : -"
	}
	return ""
}
