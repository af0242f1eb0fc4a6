package wire

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Subscriber is a client that stays connected like the browser client does:
// it reconnects with backoff after any disconnect and resumes every room
// from the last id it received. It records everything it receives, without
// dropping duplicates, so tests can count them.
type Subscriber struct {
	Base      string
	Transport Transport
	Rooms     []string
	// Others are more edges: after a disconnect the subscriber moves on to
	// the next one, as a browser behind a load balancer would.
	Others []string
	// Token, when set, is sent as the token query parameter.
	Token string

	mu        sync.Mutex
	last      map[string]string // room -> last event id
	received  []Event
	resets    map[string]int
	controls  []Control
	connects  int
	ends      []string // why each connection ended, for failure messages
	sessions  []Session
	subscribe chan struct{} // closed once every room was first confirmed
	changed   chan struct{} // signalled on every event
}

// Session is one connection of a Subscriber as the subscriber saw it: which
// edge it reached and when things happened on it (zero times never happened).
type Session struct {
	Base      string    // the edge it connected to
	Connected time.Time // the dial returned
	Resumed   time.Time // every room was confirmed ("subscribed"): live delivery in place
	Told      time.Time // a "reconnect" control arrived (the server is going away)
	Ended     time.Time // the connection ended
}

// NewSubscriber returns a Subscriber; call Run to connect.
func NewSubscriber(base string, tr Transport, rooms ...string) *Subscriber {
	return &Subscriber{Base: base, Transport: tr, Rooms: rooms, last: map[string]string{}, resets: map[string]int{},
		subscribe: make(chan struct{}), changed: make(chan struct{}, 1)}
}

// Run keeps the subscriber connected until ctx ends.
func (s *Subscriber) Run(ctx context.Context) {
	backoff := 50 * time.Millisecond
	first := true
	bases := append([]string{s.Base}, s.Others...)
	for n := 0; ctx.Err() == nil; n++ {
		base := bases[n%len(bases)]
		conn, err := Dial(ctx, base, s.Transport, Options{Rooms: s.Rooms, LastEventID: s.cursor(), Token: s.Token})
		if err == nil {
			s.mu.Lock()
			s.connects++
			s.sessions = append(s.sessions, Session{Base: base, Connected: time.Now()})
			s.mu.Unlock()
			backoff = 50 * time.Millisecond
			s.read(ctx, conn, first)
			first = false
			conn.Close()
			s.mu.Lock()
			s.ends = append(s.ends, fmt.Sprint(conn.Err()))
			s.sessions[len(s.sessions)-1].Ended = time.Now()
			s.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

func (s *Subscriber) read(ctx context.Context, conn *Conn, first bool) {
	pending := map[string]bool{}
	for _, r := range s.Rooms {
		pending[r] = true
	}
	for {
		select {
		case <-ctx.Done():
			return
		case f, ok := <-conn.C:
			if !ok {
				return
			}
			if f.Control != nil {
				s.control(*f.Control, first, pending)
				if f.Control.Type == "reconnect" {
					return
				}
				continue
			}
			s.mu.Lock()
			s.received = append(s.received, *f.Event)
			s.last[f.Event.Room] = f.Event.ID
			s.mu.Unlock()
			select {
			case s.changed <- struct{}{}:
			default:
			}
		}
	}
}

func (s *Subscriber) control(c Control, first bool, pending map[string]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.controls = append(s.controls, c)
	cur := &s.sessions[len(s.sessions)-1]
	switch c.Type {
	case "reconnect":
		cur.Told = time.Now()
	case "reset":
		s.resets[c.Room]++
		delete(s.last, c.Room)
	case "subscribed":
		if c.Last != "" && s.last[c.Room] == "" {
			s.last[c.Room] = c.Last
		}
		if pending[c.Room] {
			delete(pending, c.Room)
			if len(pending) == 0 {
				cur.Resumed = time.Now()
				if first {
					close(s.subscribe)
				}
			}
		}
	}
}

func (s *Subscriber) cursor() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var parts []string
	for room, id := range s.last {
		parts = append(parts, room+"@"+id)
	}
	return strings.Join(parts, ",")
}

// Subscribed is closed once the first connection confirmed every room.
func (s *Subscriber) Subscribed() <-chan struct{} { return s.subscribe }

// Changed is signalled (coalesced) whenever an event arrives.
func (s *Subscriber) Changed() <-chan struct{} { return s.changed }

// Events returns a copy of everything received, in order.
func (s *Subscriber) Events() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Event(nil), s.received...)
}

// Count returns how many events were received.
func (s *Subscriber) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.received)
}

// Resets returns how many resets each room received.
func (s *Subscriber) Resets() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for k, v := range s.resets {
		out[k] = v
	}
	return out
}

// Controls returns the control messages received.
func (s *Subscriber) Controls() []Control {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Control(nil), s.controls...)
}

// Ends returns why each connection ended (its error, or <nil>).
func (s *Subscriber) Ends() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.ends...)
}

// Connects returns how many connections were made.
func (s *Subscriber) Connects() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connects
}

// Sessions returns every connection made so far, in order; the last one may
// still be open.
func (s *Subscriber) Sessions() []Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Session(nil), s.sessions...)
}

// Body decodes the "body" column of a chat_message event.
func Body(ev Event) string {
	var row struct{ Body string }
	_ = json.Unmarshal(ev.Data, &row)
	return row.Body
}
