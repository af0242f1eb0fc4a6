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
