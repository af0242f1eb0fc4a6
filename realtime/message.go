package realtime

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// Message is one event as it travels from the Bus to clients: Data holds the
// exact wire bytes (a JSON object whose first member is "id"), encoded once by
// the publisher and shared read-only by every client that receives it.
type Message struct {
	Room Room
	ID   ID
	// Tx is the id of the transaction that made the change, which a
	// snapshot position is checked against (0: unknown, an event published
	// before transaction ids were captured).
	Tx   uint64
	Data []byte
}

var (
	idPrefix = []byte(`{"id":"`)
	txPrefix = []byte(`,"tx":`)
)

// ParseMessage reads the room, id and transaction of an encoded event
// without decoding the row: the publisher always writes "id" first and
// "tx" right after it, so a prefix scan suffices.
func ParseMessage(room Room, data []byte) (Message, error) {
	if !bytes.HasPrefix(data, idPrefix) {
		return Message{}, fmt.Errorf("%w: event does not start with an id", ErrBadID)
	}
	rest := data[len(idPrefix):]
	end := bytes.IndexByte(rest, '"')
	if end < 0 {
		return Message{}, fmt.Errorf("%w: unterminated id", ErrBadID)
	}
	id, err := ParseID(string(rest[:end]))
	if err != nil {
		return Message{}, err
	}
	m := Message{Room: room, ID: id, Data: data}
	if rest = rest[end+1:]; bytes.HasPrefix(rest, txPrefix) {
		for _, c := range rest[len(txPrefix):] {
			if c < '0' || c > '9' {
				break
			}
			m.Tx = m.Tx*10 + uint64(c-'0')
		}
	}
	return m, nil
}

var atKey = []byte(`,"at":"`)

// CapturedAt reads an encoded event's "at" (when the change was captured)
// without decoding the row: the publisher writes it before "data", so the
// first match is the event's own.
func CapturedAt(data []byte) (time.Time, bool) {
	i := bytes.Index(data, atKey)
	if i < 0 {
		return time.Time{}, false
	}
	rest := data[i+len(atKey):]
	end := bytes.IndexByte(rest, '"')
	if end < 0 {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, string(rest[:end]))
	return t, err == nil
}

// JSONArray joins n encoded messages into one JSON array frame, in order.
// An item that is itself an array (a batch) is flattened into it.
func JSONArray(n int, item func(i int) []byte) []byte {
	size := 2
	for i := range n {
		size += len(item(i)) + 1
	}
	out := make([]byte, 0, size)
	out = append(out, '[')
	for i := range n {
		if i > 0 {
			out = append(out, ',')
		}
		data := item(i)
		if len(data) >= 2 && data[0] == '[' {
			data = data[1 : len(data)-1]
		}
		out = append(out, data...)
	}
	return append(out, ']')
}

// Control message types, sent by the server in the same stream as events.
// Events never carry a "type" member; control messages always do.
const (
	TypeSubscribed   = "subscribed"   // live delivery for the room is in place
	TypeUnsubscribed = "unsubscribed" // the room was left
	TypeReset        = "reset"        // history was lost: reload the room's state
	TypeError        = "error"        // a request was refused; the connection stays
	TypeReconnect    = "reconnect"    // the server is going away: reconnect and resume
	TypeClosing      = "closing"      // the server closes this connection (reason says why)
	TypePong         = "pong"         // answer to a client ping
)

// Control is a server-to-client control message.
type Control struct {
	Type    string `json:"type"`
	Room    Room   `json:"room,omitempty"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
	// Last is the id the client is now positioned at (subscribed after a
	// resume), so a client can verify where live delivery continues.
	Last string `json:"last,omitempty"`
}

// Encode returns the control message's wire bytes.
func (c Control) Encode() []byte {
	b, err := json.Marshal(c)
	if err != nil { // only strings inside: cannot fail
		panic(fmt.Sprintf("encode control: %v", err))
	}
	return b
}
