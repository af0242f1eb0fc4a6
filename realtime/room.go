package realtime

import (
	"errors"
	"fmt"
)

// MaxRoomLen is the longest room name accepted.
const MaxRoomLen = 128

// ErrBadRoom is returned for a room name that is empty, too long or holds a
// character outside [A-Za-z0-9_.:-].
var ErrBadRoom = errors.New("bad room name")

// Room names one stream of events. Names are restricted so they can be
// embedded in Redis keys (no hash-tag braces), SSE ids and cursors (no ',' or
// '@') without escaping.
type Room string

// ParseRoom validates s as a room name.
func ParseRoom(s string) (Room, error) {
	if len(s) == 0 || len(s) > MaxRoomLen {
		return "", fmt.Errorf("%w: length %d, want 1..%d", ErrBadRoom, len(s), MaxRoomLen)
	}
	for i := 0; i < len(s); i++ {
		if !roomByte(s[i]) {
			return "", fmt.Errorf("%w: character %q at %d, want [A-Za-z0-9_.:-]", ErrBadRoom, s[i], i)
		}
	}
	return Room(s), nil
}

func roomByte(b byte) bool {
	switch {
	case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9':
		return true
	case b == '_' || b == '.' || b == ':' || b == '-':
		return true
	}
	return false
}
