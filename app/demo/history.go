package demo

import (
	"encoding/json"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/rowcast/rowcast/realtime"
)

// historyQuery reads a room's 50 newest messages, oldest first, and
// rowcast.position() in ONE statement: both see the same snapshot, so a page
// that renders the rows and subscribes from the position misses no row
// committed after the query and shows none twice.
const historyQuery = `SELECT rowcast.position(),
       coalesce(json_agg(m ORDER BY m.id), '[]')
FROM (SELECT id, room, author, body, created_at FROM chat_message
      WHERE room = $1 ORDER BY id DESC LIMIT 50) AS m`

// history is the answer of GET /api/history.
type history struct {
	Position string          `json:"position"` // subscribe with { since: position }
	Messages json.RawMessage `json:"messages"` // the rows, oldest first
}

// handleHistory answers GET /api/history?room=r with the room's newest
// messages and the position to subscribe from.
func (a *App) handleHistory(c echo.Context) error {
	if a.db == nil {
		return c.JSON(http.StatusNotFound, map[string]string{"error": "the demo database is off (ROWCAST_DEMO=true and DATABASE_URL enable it)"})
	}
	room := c.QueryParam("room")
	if _, err := realtime.ParseRoom(room); err != nil {
		return c.JSON(http.StatusBadRequest, map[string]string{"error": "room must be 1-128 characters of A-Z a-z 0-9 _ . : -"})
	}
	var h history
	if err := a.db.QueryRow(c.Request().Context(), historyQuery, room).Scan(&h.Position, &h.Messages); err != nil {
		a.log.Error("read chat history", "room", room, "err", err)
		return c.JSON(http.StatusServiceUnavailable, map[string]string{"error": "database unavailable"})
	}
	// A cached answer would be an old snapshot: correct, but stale.
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.JSON(http.StatusOK, h)
}
