package relay

import "testing"

func TestIDSetForgetsOldestFirst(t *testing.T) {
	s := newIDSet(3)
	for _, id := range []int64{1, 2, 3, 2} { // adding 2 again changes nothing
		s.add(id)
	}
	s.add(4) // evicts 1
	for id, want := range map[int64]bool{1: false, 2: true, 3: true, 4: true, 5: false} {
		if s.has(id) != want {
			t.Errorf("has(%d) = %v, want %v", id, !want, want)
		}
	}
	s.add(5) // evicts 2
	s.add(6) // evicts 3
	if s.has(2) || s.has(3) || !s.has(4) || !s.has(5) || !s.has(6) || len(s.ids) != 3 {
		t.Errorf("after wrapping: %v", s.ids)
	}
}
