package outbox

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"
)

// notifiedRow is the JSON the capture trigger sends as a NOTIFY payload
// (migration 00004): the row as it was written to the outbox.
type notifiedRow struct {
	ID     int64           `json:"i"`
	Tx     int64           `json:"x"` // the capturing transaction (0 before migration 00006)
	Room   string          `json:"r"`
	Table  string          `json:"t"`
	Op     string          `json:"o"`
	AtUsec int64           `json:"a"` // captured_at, microseconds since the Unix epoch
	Data   json.RawMessage `json:"d"`
}

// ParseNotification returns the outbox row a NOTIFY payload carries. ok is
// false for a plain wake-up (an empty payload: the row was too large to
// travel, or its transaction had already sent 16) or anything else that is
// not a whole row: the caller then reads the outbox.
func ParseNotification(payload string) (row Row, ok bool) {
	n, ok := decodeRow(payload)
	if !ok || n.ID <= 0 {
		return Row{}, false
	}
	return n.row(n.ID), true
}

// decodeRow reads a notification or capture message: in one pass when it
// is as the trigger writes it, else with encoding/json. Its strings may
// share p's memory; its Data is a copy.
func decodeRow(p string) (n notifiedRow, ok bool) {
	if len(p) == 0 || p[0] != '{' {
		return notifiedRow{}, false
	}
	n, fast := scanNotification(p)
	if !fast {
		n = notifiedRow{}
		if err := json.Unmarshal([]byte(p), &n); err != nil {
			return notifiedRow{}, false
		}
	}
	if n.Room == "" || n.Table == "" || n.Op == "" || len(n.Data) == 0 {
		return notifiedRow{}, false
	}
	return n, true
}

func (n notifiedRow) row(id int64) Row {
	return Row{ID: id, Room: n.Room, Table: n.Table, Op: n.Op, Data: n.Data, CapturedAt: time.UnixMicro(n.AtUsec), Tx: n.Tx}
}

// scanNotification reads the payload as the trigger writes it
// (json_build_object: one-letter keys, each once, numbers and strings
// without escapes, the row last) in one pass over the row, which it only
// validates. Anything else, and any doubt, returns ok false, and the caller
// decodes the payload with encoding/json, which scans it twice: this is
// the relay's cost per notified row.
func scanNotification(p string) (n notifiedRow, ok bool) {
	var seen [128]bool
	i := 1
	for {
		i = skipSpace(p, i)
		// A key: one letter in quotes.
		if i+3 > len(p) || p[i] != '"' || p[i+2] != '"' || p[i+1] >= 128 || seen[p[i+1]] {
			return notifiedRow{}, false
		}
		key := p[i+1]
		seen[key] = true
		if i = skipSpace(p, i+3); i >= len(p) || p[i] != ':' {
			return notifiedRow{}, false
		}
		i = skipSpace(p, i+1)
		if key == 'd' {
			// The row is the last member: up to the closing brace.
			end := len(p) - 1
			for end > i && isSpace(p[end]) {
				end--
			}
			if end <= i || p[end] != '}' {
				return notifiedRow{}, false
			}
			k := end
			for k > i && isSpace(p[k-1]) {
				k--
			}
			d := []byte(p[i:k])
			if !json.Valid(d) {
				return notifiedRow{}, false
			}
			n.Data = d
			return n, true
		}
		// Every other member is a number or a string without escapes.
		j := i
		var str string
		var num int64
		if i < len(p) && p[i] == '"' {
			k := strings.IndexByte(p[i+1:], '"')
			if k < 0 {
				return notifiedRow{}, false
			}
			str = p[i+1 : i+1+k]
			if strings.IndexByte(str, '\\') >= 0 || !utf8.ValidString(str) || hasControl(str) {
				return notifiedRow{}, false
			}
			j = i + k + 2
		} else {
			for j < len(p) && p[j] >= '0' && p[j] <= '9' {
				j++
			}
			v, err := strconv.ParseInt(p[i:j], 10, 64)
			if err != nil || (j-i > 1 && p[i] == '0') {
				return notifiedRow{}, false
			}
			num = v
		}
		isStr := p[i] == '"'
		switch {
		case key == 'i' && !isStr:
			n.ID = num
		case key == 'x' && !isStr:
			n.Tx = num
		case key == 'a' && !isStr:
			n.AtUsec = num
		case key == 'r' && isStr:
			n.Room = str
		case key == 't' && isStr:
			n.Table = str
		case key == 'o' && isStr:
			n.Op = str
		default:
			return notifiedRow{}, false
		}
		if i = skipSpace(p, j); i >= len(p) || p[i] != ',' {
			return notifiedRow{}, false
		}
		i++
	}
}

func skipSpace(p string, i int) int {
	for i < len(p) && isSpace(p[i]) {
		i++
	}
	return i
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 {
			return true
		}
	}
	return false
}

// ParseMessage returns the row a WAL-mode capture message carries (the
// notification's JSON without its id; see migration 00005), with id as its
// ID. ok is false when content is not such a row.
func ParseMessage(content []byte, id int64) (row Row, ok bool) {
	// Read in place: a copy of every row was a tenth of a WAL-mode
	// listener's CPU. What the row keeps is copied out.
	n, ok := decodeRow(unsafe.String(unsafe.SliceData(content), len(content)))
	if !ok {
		return Row{}, false
	}
	n.Room, n.Table, n.Op = strings.Clone(n.Room), strings.Clone(n.Table), strings.Clone(n.Op)
	return n.row(id), true
}
