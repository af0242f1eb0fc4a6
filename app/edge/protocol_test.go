package edge

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/rowcast/rowcast/realtime"
)

func TestParseInbound(t *testing.T) {
	in, err := ParseInbound([]byte(`{"type":"subscribe","room":"chat:1","since":"abc-7"}`))
	if err != nil || in.Type != "subscribe" || in.Room != "chat:1" || in.Since != (realtime.ID{Epoch: "abc", Offset: 7}) {
		t.Fatalf("ParseInbound = %+v, %v", in, err)
	}
	for _, bad := range []string{
		``, `[]`, `{"type":"subscribe"}`, `{"type":"subscribe","room":"a b"}`, `{"type":"dance","room":"a"}`,
		`{"type":"subscribe","room":"a","since":"nope"}`, `{"type":"unsubscribe","room":"a","since":"a-1"}`, `{"type":1}`,
	} {
		if _, err := ParseInbound([]byte(bad)); !errors.Is(err, errBadFrame) {
			t.Errorf("ParseInbound(%q) err = %v", bad, err)
		}
	}
}

func TestParseInboundPositions(t *testing.T) {
	const tok = "p1.ab12.1700000000000.100.110.104"
	in, err := ParseInbound([]byte(`{"type":"subscribe","room":"a","since":"` + tok + `"}`))
	if err != nil || in.At == nil || in.At.Xmax != 110 || !in.Since.IsZero() {
		t.Fatalf("a token as since: %+v, %v", in, err)
	}
	in, err = ParseInbound([]byte(`{"type":"subscribe","room":"a","since":"e1-9","position":"` + tok + `"}`))
	if err != nil || in.At == nil || in.Since != (realtime.ID{Epoch: "e1", Offset: 9}) {
		t.Fatalf("since and position: %+v, %v", in, err)
	}
	in, err = ParseInbound([]byte(`{"type":"subscribe","room":"a","position":"p1.garbage"}`))
	if !errors.Is(err, realtime.ErrBadPosition) || errorCode(err) != "bad_position" || in.Room != "a" {
		t.Fatalf("a bad token: %+v, %v (code %s); want bad_position naming the room", in, err, errorCode(err))
	}
}

func TestParsePositions(t *testing.T) {
	const tok = "p1.ab12.1700000000000.100.110."
	rooms := []realtime.Room{"a", "b", "c"}
	at, bad := parsePositions(tok, rooms)
	if len(at) != 3 || len(bad) != 0 {
		t.Fatalf("one token for every room: %v, %v", at, bad)
	}
	at, bad = parsePositions("a@"+tok+",b@p1.nope,zz@"+tok, rooms)
	if len(at) != 1 || at["a"] == nil || !errors.Is(bad["b"], realtime.ErrBadPosition) || at["c"] != nil {
		t.Fatalf("per room: %v, %v; want a from its token, b refused, c without", at, bad)
	}
	if at, bad := parsePositions("garbage", rooms); len(at) != 0 || !errors.Is(bad["c"], realtime.ErrBadPosition) {
		t.Fatalf("garbage for every room: %v, %v; want every room refused", at, bad)
	}
	if at, bad := parsePositions("", rooms); at != nil || bad != nil {
		t.Fatalf("none: %v, %v", at, bad)
	}
}

func TestParseRooms(t *testing.T) {
	rooms, err := parseRooms("a,b,a", 5)
	if err != nil || len(rooms) != 2 {
		t.Fatalf("parseRooms = %v, %v", rooms, err)
	}
	if _, err := parseRooms("a,b,c", 2); !errors.Is(err, realtime.ErrTooManyRooms) {
		t.Fatalf("too many: %v", err)
	}
	if _, err := parseRooms("a,,b", 5); !errors.Is(err, realtime.ErrBadRoom) {
		t.Fatalf("empty room: %v", err)
	}
}

// FuzzParseInbound: no input panics, and whatever is accepted is valid.
func FuzzParseInbound(f *testing.F) {
	for _, seed := range []string{
		`{"type":"subscribe","room":"a","since":"e-1"}`, `{"type":"unsubscribe","room":"x:y"}`, `{"type":"ping"}`,
		`{"type":"subscribe","room":"` + strings.Repeat("a", 200) + `"}`, `{"type":"subscribe","room":"\u0000"}`, `null`, `{`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		in, err := ParseInbound(b)
		if err != nil {
			if !errors.Is(err, errBadFrame) {
				t.Fatalf("error not wrapped as a bad frame: %v", err)
			}
			return
		}
		switch in.Type {
		case "ping":
		case "subscribe", "unsubscribe":
			if _, err := realtime.ParseRoom(string(in.Room)); err != nil {
				t.Fatalf("accepted invalid room %q", in.Room)
			}
			if !utf8.ValidString(string(in.Room)) {
				t.Fatalf("accepted non-UTF-8 room")
			}
		default:
			t.Fatalf("accepted type %q", in.Type)
		}
	})
}
