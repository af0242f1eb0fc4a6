package demo

import (
	"errors"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"github.com/rowcast/rowcast/realtime"
)

type postMessage struct {
	Room   string `json:"room"`
	Author string `json:"author"`
	Body   string `json:"body"`
}

// maxPostBytes bounds a posted message's JSON: 500 characters of up to 4
// bytes each, escaped, fit with room to spare.
const maxPostBytes = 16 << 10

// handlePostMessage inserts one chat_message row (POST /api/messages).
func (a *App) handlePostMessage(c echo.Context) error {
	if a.db == nil {
		return c.JSON(http.StatusNotFound, map[string]string{"error": "the demo form is off (ROWCAST_DEMO=true and DATABASE_URL enable it)"})
	}
	req := c.Request()
	req.Body = http.MaxBytesReader(c.Response(), req.Body, maxPostBytes)
	var m postMessage
	if err := c.Bind(&m); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return c.JSON(http.StatusRequestEntityTooLarge, map[string]string{"error": "request body is larger than 16 KiB"})
		}
		return c.JSON(http.StatusBadRequest, map[string]string{"error": "body must be JSON {room, author, body}"})
	}
	m.Author, m.Body = strings.TrimSpace(m.Author), strings.TrimSpace(m.Body)
	if msg := validatePost(m); msg != "" {
		return c.JSON(http.StatusBadRequest, map[string]string{"error": msg})
	}
	var id int64
	err := a.db.QueryRow(req.Context(),
		`INSERT INTO chat_message (room, author, body) VALUES ($1, $2, $3) RETURNING id`,
		m.Room, m.Author, m.Body).Scan(&id)
	if err != nil {
		a.log.Error("insert chat message", "err", err)
		return c.JSON(http.StatusServiceUnavailable, map[string]string{"error": "database unavailable"})
	}
	return c.JSON(http.StatusCreated, map[string]int64{"id": id})
}

// validatePost returns what is wrong with m for the user, or "".
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
	if _, err := realtime.ParseRoom(m.Room); err != nil {
		return "room must be 1-128 characters of A-Z a-z 0-9 _ . : -"
	}
	return ""
}
