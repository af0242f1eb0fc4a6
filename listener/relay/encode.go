package relay

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/rowcast/rowcast/listener/outbox"
	"github.com/rowcast/rowcast/realtime"
	"github.com/rowcast/rowcast/realtime/redisbus"
)

// encode turns an outbox row into the event the publisher appends: the wire
// JSON without its id, which the publish script assigns. "tx" comes first:
// the script and the edge read it with a prefix match. A row whose JSON is
// larger than maxData travels with "data":null and "truncated":true, so
// clients learn of the change and can fetch the row themselves.
func encode(row outbox.Row, maxData int) (redisbus.Event, error) {
	room, err := realtime.ParseRoom(row.Room)
	if err != nil {
		return redisbus.Event{}, fmt.Errorf("outbox row %d: %w", row.ID, err)
	}
	table, _ := json.Marshal(row.Table)
	data := row.Data
	truncated := len(data) > maxData
	if truncated {
		data = []byte("null")
	}
	tail := make([]byte, 0, len(data)+len(room)+len(table)+128)
	if row.Tx > 0 {
		// Right after the id, where the edge reads it without decoding
		// the event (see realtime.ParseMessage).
		tail = append(tail, `,"tx":`...)
		tail = strconv.AppendInt(tail, row.Tx, 10)
	}
	tail = append(tail, `,"room":"`...)
	tail = append(tail, room...) // room characters need no escaping
	tail = append(tail, `","table":`...)
	tail = append(tail, table...)
	tail = append(tail, `,"op":"`...)
	tail = append(tail, row.Op...) // INSERT, UPDATE or DELETE (checked by the table)
	tail = append(tail, `","at":"`...)
	tail = row.CapturedAt.UTC().AppendFormat(tail, time.RFC3339Nano)
	tail = append(tail, `","data":`...)
	tail = append(tail, data...)
	if truncated {
		tail = append(tail, `,"truncated":true`...)
	}
	tail = append(tail, '}')
	return redisbus.Event{OutboxID: row.ID, Room: room, Tail: tail}, nil
}
