package realtime

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// ErrBadID is returned when an event id or a cursor cannot be parsed.
var ErrBadID = errors.New("bad event id")

// ID orders an event within its room: Offset counts the room's events from 1
// with no holes, and Epoch changes whenever the Redis history of the room is
// lost, so a client can always tell "I missed nothing" from "history is gone".
// Offset 0 is the position before a room's first event. The zero ID (no
// epoch) means "nothing seen yet".
type ID struct {
	Epoch  string
	Offset uint64
}

// IsZero reports whether id is the zero ID.
func (id ID) IsZero() bool { return id.Epoch == "" && id.Offset == 0 }

// String formats id as "<epoch>-<offset>", the form used on the wire.
func (id ID) String() string {
	if id.IsZero() {
		return ""
	}
	return id.Epoch + "-" + strconv.FormatUint(id.Offset, 10)
}

// AppendTo appends id's wire form to b.
func (id ID) AppendTo(b []byte) []byte {
	if id.IsZero() {
		return b
	}
	b = append(b, id.Epoch...)
	b = append(b, '-')
	return strconv.AppendUint(b, id.Offset, 10)
}

// ParseID parses the wire form "<epoch>-<offset>".
func ParseID(s string) (ID, error) {
	i := strings.LastIndexByte(s, '-')
	if i <= 0 || i > 32 {
		return ID{}, fmt.Errorf("%w: %q", ErrBadID, s)
	}
	epoch := s[:i]
	for j := 0; j < len(epoch); j++ {
		c := epoch[j]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z') {
			return ID{}, fmt.Errorf("%w: %q", ErrBadID, s)
		}
	}
	off, err := strconv.ParseUint(s[i+1:], 10, 64)
	if err != nil {
		return ID{}, fmt.Errorf("%w: %q", ErrBadID, s)
	}
	return ID{Epoch: epoch, Offset: off}, nil
}

// Follows reports how next relates to the last delivered id: whether it is
// new (not a duplicate) and whether history between them was skipped
// (a gap: a later offset than last+1, or another epoch).
func (last ID) Follows(next ID) (isNew, gap bool) {
	if last.IsZero() {
		return true, false
	}
	if next.Epoch != last.Epoch {
		return true, true
	}
	if next.Offset <= last.Offset {
		return false, false
	}
	return true, next.Offset > last.Offset+1
}

// Cursor holds the last ID seen in each room of one connection. Its text form
// "room@epoch-offset,room@epoch-offset" is what an SSE stream sends as "id:",
// so the browser's automatic Last-Event-ID resumes every room at once.
type Cursor map[Room]ID

// String formats c with rooms sorted, so equal cursors have equal text.
func (c Cursor) String() string {
	rooms := make([]string, 0, len(c))
	for r, id := range c {
		if !id.IsZero() {
			rooms = append(rooms, string(r))
		}
	}
	sort.Strings(rooms)
	var b strings.Builder
	for i, r := range rooms {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(r)
		b.WriteByte('@')
		b.WriteString(c[Room(r)].String())
	}
	return b.String()
}

// AppendTo appends the text form of the cursor's entries for rooms, in
// the order given (pass them sorted to match String), skipping rooms it has
// no id for. It allocates nothing when b has room: the SSE hot path.
func (c Cursor) AppendTo(b []byte, rooms []Room) []byte {
	first := true
	for _, r := range rooms {
		id := c[r]
		if id.IsZero() {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, r...)
		b = append(b, '@')
		b = id.AppendTo(b)
	}
	return b
}

// ParseCursor parses the text form of a Cursor. The empty string is an empty
// cursor.
func ParseCursor(s string) (Cursor, error) {
	c := Cursor{}
	if s == "" {
		return c, nil
	}
	for part := range strings.SplitSeq(s, ",") {
		name, id, ok := strings.Cut(part, "@")
		if !ok {
			return nil, fmt.Errorf("%w: cursor part %q lacks '@'", ErrBadID, part)
		}
		room, err := ParseRoom(name)
		if err != nil {
			return nil, fmt.Errorf("cursor: %w", err)
		}
		parsed, err := ParseID(id)
		if err != nil {
			return nil, fmt.Errorf("cursor room %q: %w", name, err)
		}
		c[room] = parsed
	}
	return c, nil
}
