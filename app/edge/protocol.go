package edge

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/rowcast/rowcast/realtime"
)

// Inbound is a client-to-server WebSocket message.
type Inbound struct {
	Type  string        // "subscribe", "unsubscribe" or "ping"
	Room  realtime.Room // for subscribe and unsubscribe
	Since realtime.ID   // subscribe: resume after this id (zero: live only)
}

// errBadFrame wraps every reason an inbound frame is refused.
var errBadFrame = errors.New("bad frame")

// errNoRooms refuses an SSE request without rooms: a stream's rooms are
// fixed when it opens, so it could never receive anything.
var errNoRooms = errors.New("rooms: name at least one room (?rooms=a,b)")

// ParseInbound parses and validates one inbound frame.
func ParseInbound(b []byte) (Inbound, error) {
	var raw struct {
		Type  string `json:"type"`
		Room  string `json:"room"`
		Since string `json:"since"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return Inbound{}, fmt.Errorf("%w: not a JSON object: %v", errBadFrame, err)
	}
	in := Inbound{Type: raw.Type}
	switch raw.Type {
	case "ping":
		return in, nil
	case "subscribe", "unsubscribe":
	default:
		return Inbound{}, fmt.Errorf("%w: unknown type %q (want subscribe, unsubscribe or ping)", errBadFrame, raw.Type)
	}
	room, err := realtime.ParseRoom(raw.Room)
	if err != nil {
		return Inbound{}, fmt.Errorf("%w: %w", errBadFrame, err)
	}
	in.Room = room
	if raw.Since != "" {
		if raw.Type != "subscribe" {
			return Inbound{}, fmt.Errorf("%w: since is only for subscribe", errBadFrame)
		}
		if in.Since, err = realtime.ParseID(raw.Since); err != nil {
			return Inbound{}, fmt.Errorf("%w: since: %w", errBadFrame, err)
		}
	}
	return in, nil
}

// parseRooms parses the comma-separated "rooms" query parameter.
func parseRooms(s string, max int) ([]realtime.Room, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) > max {
		return nil, fmt.Errorf("%w (limit %d)", realtime.ErrTooManyRooms, max)
	}
	rooms := make([]realtime.Room, 0, len(parts))
	seen := map[realtime.Room]bool{}
	for _, p := range parts {
		r, err := realtime.ParseRoom(p)
		if err != nil {
			return nil, err
		}
		if !seen[r] {
			seen[r] = true
			rooms = append(rooms, r)
		}
	}
	return rooms, nil
}

// errorCode maps a join error to the control message's code.
func errorCode(err error) string {
	switch {
	case errors.Is(err, realtime.ErrBadRoom), errors.Is(err, errBadFrame), errors.Is(err, realtime.ErrBadID),
		errors.Is(err, errNoRooms):
		return "bad_request"
	case errors.Is(err, realtime.ErrTooManyRooms):
		return "too_many_rooms"
	case errors.Is(err, realtime.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, realtime.ErrClosed):
		return "closed"
	}
	return "internal"
}
