package relay

// idSet remembers the last n ids added: a set with first-in, first-out
// eviction, so its memory is bounded however long a session runs.
type idSet struct {
	ids  map[int64]struct{}
	ring []int64
	next int
}

func newIDSet(n int) *idSet {
	return &idSet{ids: make(map[int64]struct{}, n), ring: make([]int64, 0, n)}
}

func (s *idSet) has(id int64) bool {
	_, ok := s.ids[id]
	return ok
}

func (s *idSet) add(id int64) {
	if s.has(id) {
		return
	}
	if len(s.ring) < cap(s.ring) {
		s.ring = append(s.ring, id)
	} else {
		delete(s.ids, s.ring[s.next])
		s.ring[s.next] = id
		s.next = (s.next + 1) % len(s.ring)
	}
	s.ids[id] = struct{}{}
}
