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
	// At is the snapshot position to subscribe from: events it saw are
	// not delivered ("position", or a token given as "since").
	At *realtime.Snapshot
}

// errBadFrame wraps every reason an inbound frame is refused.
var errBadFrame = errors.New("bad frame")

// errNoRooms refuses an SSE request without rooms: a stream's rooms are
// fixed when it opens, so it could never receive anything.
var errNoRooms = errors.New("rooms: name at least one room (?rooms=a,b)")

// ParseInbound parses and validates one inbound frame. On an error the
// returned Inbound holds the room when it was valid, for the reply.
func ParseInbound(b []byte) (Inbound, error) {
	var raw struct {
		Type     string `json:"type"`
		Room     string `json:"room"`
		Since    string `json:"since"`
		Position string `json:"position"`
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
	if raw.Since == "" && raw.Position == "" {
		return in, nil
	}
	if raw.Type != "subscribe" {
		return Inbound{Room: room}, fmt.Errorf("%w: since and position are only for subscribe", errBadFrame)
	}
	if realtime.IsPosition(raw.Since) && raw.Position == "" {
		raw.Since, raw.Position = "", raw.Since
	}
	if raw.Since != "" {
		if in.Since, err = realtime.ParseID(raw.Since); err != nil {
			return Inbound{Room: room}, fmt.Errorf("%w: since: %w", errBadFrame, err)
		}
	}
	if raw.Position != "" {
		if in.At, err = realtime.ParseSnapshot(raw.Position); err != nil {
			return Inbound{Room: room}, fmt.Errorf("%w: position: %w", errBadFrame, err)
		}
	}
	return in, nil
}

// parsePositions reads the "position" query parameter for rooms: one token
// for every room, or room@token pairs separated by commas. A room whose
// token cannot be parsed is in bad, to be refused alone.
func parsePositions(s string, rooms []realtime.Room) (at map[realtime.Room]*realtime.Snapshot, bad map[realtime.Room]error) {
	if s == "" {
		return nil, nil
	}
	at, bad = map[realtime.Room]*realtime.Snapshot{}, map[realtime.Room]error{}
	set := func(r realtime.Room, token string) {
		if snap, err := realtime.ParseSnapshot(token); err != nil {
			bad[r] = err
		} else {
			at[r] = snap
		}
	}
	if !strings.Contains(s, "@") { // one token for every room
		for _, r := range rooms {
			set(r, s)
		}
		return at, bad
	}
	named := map[realtime.Room]string{}
	for part := range strings.SplitSeq(s, ",") {
		name, token, _ := strings.Cut(part, "@")
		named[realtime.Room(name)] = token // "" (no '@') is refused as a bad token
	}
	for _, r := range rooms {
		if token, ok := named[r]; ok {
			set(r, token)
		}
	}
	return at, bad
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
	case errors.Is(err, realtime.ErrBadPosition):
		return "bad_position"
	case errors.Is(err, realtime.ErrForeignPosition):
		return "foreign_position"
	case errors.Is(err, realtime.ErrPositionTooOld):
		return "position_too_old"
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
