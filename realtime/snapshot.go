package realtime

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Errors for a snapshot position a client cannot resume from. The
// connection stays; the room is not joined.
var (
	ErrBadPosition     = errors.New("bad position")
	ErrForeignPosition = errors.New("position of another database")
	ErrPositionTooOld  = errors.New("position too old")
)

// maxPositionLen bounds a position token: one in-progress transaction id per
// connection of a busy server fits many times over.
const maxPositionLen = 16 << 10

// Snapshot is a Postgres snapshot named by a position token, the text
// rowcast.position() returns in the statement that read a page's rows
// (migration 00006). A room joined from it delivers exactly the events whose
// transactions the snapshot did not see.
type Snapshot struct {
	Source string    // the database's id (rowcast.source)
	Taken  time.Time // when the snapshot's transaction started
	Xmin   uint64    // every transaction below it had ended
	Xmax   uint64    // no transaction at or above it had ended
	Xip    []uint64  // transactions between them still running, sorted
	token  string
}

// ParseSnapshot parses a position token:
// p1.<source>.<unix ms>.<xmin>.<xmax>.<running ids joined by _>.
func ParseSnapshot(token string) (*Snapshot, error) {
	bad := func(why string) error { return fmt.Errorf("%w: %s", ErrBadPosition, why) }
	if len(token) > maxPositionLen {
		return nil, bad(fmt.Sprintf("%d bytes, longer than %d", len(token), maxPositionLen))
	}
	parts := strings.Split(token, ".")
	if len(parts) != 6 || parts[0] != "p1" {
		return nil, bad("not a rowcast.position() token (want p1.<source>.<ms>.<xmin>.<xmax>.<xip>)")
	}
	s := &Snapshot{Source: parts[1], token: token}
	if len(s.Source) == 0 || len(s.Source) > 64 || strings.Trim(s.Source, "0123456789abcdef") != "" {
		return nil, bad("source is not hex")
	}
	ms, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		return nil, bad("time is not a number")
	}
	s.Taken = time.UnixMilli(ms)
	if s.Xmin, err = strconv.ParseUint(parts[3], 10, 64); err != nil {
		return nil, bad("xmin is not a number")
	}
	if s.Xmax, err = strconv.ParseUint(parts[4], 10, 64); err != nil || s.Xmax < s.Xmin {
		return nil, bad("xmax is not a number at or above xmin")
	}
	if parts[5] != "" {
		for x := range strings.SplitSeq(parts[5], "_") {
			id, err := strconv.ParseUint(x, 10, 64)
			if err != nil || id < s.Xmin || id >= s.Xmax {
				return nil, bad("a running transaction id is not between xmin and xmax")
			}
			s.Xip = append(s.Xip, id)
		}
		slices.Sort(s.Xip)
	}
	return s, nil
}

// IsPosition reports whether s is meant as a position token rather than an
// event id or a cursor: tokens start with "p<version>." and event ids hold
// no '.'.
func IsPosition(s string) bool {
	return len(s) > 2 && s[0] == 'p' && strings.IndexByte(s, '.') > 1 && strings.IndexByte(s, '@') < 0
}

// String returns the token the snapshot was parsed from.
func (s *Snapshot) String() string { return s.token }

// Saw reports whether the snapshot saw the committed transaction tx: it had
// ended before the snapshot was taken. Events exist only for committed
// transactions, so this is Postgres's pg_visible_in_snapshot for them.
func (s *Snapshot) Saw(tx uint64) bool {
	if tx < s.Xmin {
		return true
	}
	if tx >= s.Xmax {
		return false
	}
	_, running := slices.BinarySearch(s.Xip, tx)
	return !running
}

// Covers reports whether every event captured by a transaction at or below
// floor was seen by the snapshot: then a history whose older events all lie
// below floor reaches back far enough.
func (s *Snapshot) Covers(floor uint64) bool { return floor < s.Xmin }
