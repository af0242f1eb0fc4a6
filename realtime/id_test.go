package realtime

import (
	"errors"
	"testing"
)

func TestIDRoundTrip(t *testing.T) {
	id := ID{Epoch: "3f9a1c02de", Offset: 42}
	got, err := ParseID(id.String())
	if err != nil || got != id {
		t.Fatalf("ParseID(%q) = %v, %v", id.String(), got, err)
	}
	for _, bad := range []string{"", "42", "-1", "abc-", "ABC-1", "a b-1", "abc-x", "abc-18446744073709551616", "averyveryveryveryverylongepochvalue-1"} {
		if _, err := ParseID(bad); !errors.Is(err, ErrBadID) {
			t.Errorf("ParseID(%q) err = %v, want ErrBadID", bad, err)
		}
	}
}

func TestFollows(t *testing.T) {
	a := func(off uint64) ID { return ID{Epoch: "e1", Offset: off} }
	cases := []struct {
		last, next ID
		isNew, gap bool
	}{
		{ID{}, a(7), true, false},
		{a(3), a(4), true, false},
		{a(3), a(3), false, false},
		{a(3), a(2), false, false},
		{a(3), a(5), true, true},
		{a(3), ID{Epoch: "e2", Offset: 1}, true, true},
	}
	for _, c := range cases {
		isNew, gap := c.last.Follows(c.next)
		if isNew != c.isNew || gap != c.gap {
			t.Errorf("%v.Follows(%v) = %v,%v want %v,%v", c.last, c.next, isNew, gap, c.isNew, c.gap)
		}
	}
}

func TestCursorRoundTrip(t *testing.T) {
	c := Cursor{"b": {Epoch: "e", Offset: 2}, "a:x": {Epoch: "f", Offset: 9}, "empty": {}}
	s := c.String()
	if s != "a:x@f-9,b@e-2" {
		t.Fatalf("String = %q", s)
	}
	if got := string(c.AppendTo(nil, []Room{"a:x", "b", "empty", "missing"})); got != s {
		t.Fatalf("AppendTo = %q, want %q", got, s)
	}
	back, err := ParseCursor(s)
	if err != nil || len(back) != 2 || back["b"] != c["b"] || back["a:x"] != c["a:x"] {
		t.Fatalf("ParseCursor = %v, %v", back, err)
	}
	for _, bad := range []string{"a", "a@", "@e-1", "a@e-1,", "bad room@e-1", "a@e-x"} {
		if _, err := ParseCursor(bad); err == nil {
			t.Errorf("ParseCursor(%q) accepted", bad)
		}
	}
}

func TestParseRoom(t *testing.T) {
	for _, ok := range []string{"a", "chat:lobby", "A-Z_0.9"} {
		if _, err := ParseRoom(ok); err != nil {
			t.Errorf("ParseRoom(%q): %v", ok, err)
		}
	}
	long := make([]byte, MaxRoomLen+1)
	for i := range long {
		long[i] = 'a'
	}
	for _, bad := range []string{"", "a b", "a,b", "a@b", "{a}", "é", "a\nb", string(long)} {
		if _, err := ParseRoom(bad); !errors.Is(err, ErrBadRoom) {
			t.Errorf("ParseRoom(%q) err = %v", bad, err)
		}
	}
}

func TestParseMessage(t *testing.T) {
	m, err := ParseMessage("r", []byte(`{"id":"e1-5","room":"r","data":{}}`))
	if err != nil || m.ID != (ID{Epoch: "e1", Offset: 5}) || m.Room != "r" {
		t.Fatalf("ParseMessage = %+v, %v", m, err)
	}
	for _, bad := range []string{``, `{}`, `{"id":"e1-5`, `{"id":"nope","x":1}`, `{"room":"r","id":"e-1"}`} {
		if _, err := ParseMessage("r", []byte(bad)); err == nil {
			t.Errorf("ParseMessage(%q) accepted", bad)
		}
	}
}
