package outbox

import (
	"encoding/json"
	"time"
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
	if len(payload) == 0 || payload[0] != '{' {
		return Row{}, false
	}
	var n notifiedRow
	if err := json.Unmarshal([]byte(payload), &n); err != nil {
		return Row{}, false
	}
	if n.ID <= 0 || n.Room == "" || n.Table == "" || n.Op == "" || len(n.Data) == 0 {
		return Row{}, false
	}
	return Row{ID: n.ID, Room: n.Room, Table: n.Table, Op: n.Op, Data: n.Data, CapturedAt: time.UnixMicro(n.AtUsec), Tx: n.Tx}, true
}

// ParseMessage returns the row a WAL-mode capture message carries (the
// notification's JSON without its id; see migration 00005), with id as its
// ID. ok is false when content is not such a row.
func ParseMessage(content []byte, id int64) (row Row, ok bool) {
	var n notifiedRow
	if err := json.Unmarshal(content, &n); err != nil {
		return Row{}, false
	}
	if n.Room == "" || n.Table == "" || n.Op == "" || len(n.Data) == 0 {
		return Row{}, false
	}
	return Row{ID: id, Room: n.Room, Table: n.Table, Op: n.Op, Data: n.Data, CapturedAt: time.UnixMicro(n.AtUsec), Tx: n.Tx}, true
}
