package relay

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rowcast/rowcast/listener/outbox"
	"github.com/rowcast/rowcast/realtime"
)

func TestEncodeProducesTheWireEvent(t *testing.T) {
	at := time.Date(2026, 11, 25, 23, 7, 29, 239395000, time.UTC)
	row := outbox.Row{ID: 7, Room: "lobby", Table: `public."odd""name"`, Op: "UPDATE", Data: []byte(`{"id": 1, "body": "hi"}`), CapturedAt: at}
	ev, err := encode(row, 1024)
	if err != nil {
		t.Fatal(err)
	}
	full := append([]byte(`{"id":"e-1"`), ev.Tail...)
	var got struct {
		ID, Room, Table, Op string
		At                  time.Time
		Data                map[string]any
		Truncated           bool
	}
	if err := json.Unmarshal(full, &got); err != nil {
		t.Fatalf("not JSON: %s: %v", full, err)
	}
	if got.Room != "lobby" || got.Table != `public."odd""name"` || got.Op != "UPDATE" || !got.At.Equal(at) || got.Data["body"] != "hi" || got.Truncated {
		t.Fatalf("decoded %+v", got)
	}
	if ev.OutboxID != 7 || ev.Room != "lobby" {
		t.Fatalf("event %+v", ev)
	}
}

func TestEncodeTruncatesOversizedRows(t *testing.T) {
	row := outbox.Row{ID: 1, Room: "r", Table: "t", Op: "INSERT", Data: []byte(`{"b":"` + strings.Repeat("x", 2000) + `"}`)}
	ev, err := encode(row, 1024)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(ev.Tail), `"data":null,"truncated":true}`) {
		t.Fatalf("tail %s", ev.Tail)
	}
}

func TestEncodeRefusesBadRooms(t *testing.T) {
	for _, room := range []string{"", "has space", "{slot}", strings.Repeat("r", 200)} {
		if _, err := encode(outbox.Row{Room: room, Data: []byte("{}")}, 1024); !errors.Is(err, realtime.ErrBadRoom) {
			t.Errorf("room %q: err %v", room, err)
		}
	}
}
