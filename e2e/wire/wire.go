// Package wire is a small Go client for rowcast's browser protocol, over
// WebSocket or Server-Sent Events. The e2e tests and the load benchmark use
// it to receive events exactly as a browser would.
package wire

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// Transport selects how a Conn connects.
type Transport string

// Transports.
const (
	WebSocket Transport = "websocket"
	SSE       Transport = "sse"
)

// Event is one row change as received.
type Event struct {
	ID    string          `json:"id"`
	Tx    uint64          `json:"tx"` // the capturing transaction's id (0 when the server sends none)
	Room  string          `json:"room"`
	Table string          `json:"table"`
	Op    string          `json:"op"`
	At    time.Time       `json:"at"`
	Data  json.RawMessage `json:"data"`
	// Received is when the frame holding the event was read.
	Received time.Time `json:"-"`
}

// Control is a server control message.
type Control struct {
	Type    string `json:"type"`
	Room    string `json:"room"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Last    string `json:"last"`
}

// Frame is what a Conn delivers: an event or a control message.
type Frame struct {
	Event   *Event
	Control *Control
}

// Conn is one client connection. Frames arrive on C in stream order; C is
// closed when the connection ends, and Err then says why.
type Conn struct {
	C         <-chan Frame
	Transport Transport
	// LastEventID is the SSE stream's latest id: line (its cursor).
	LastEventID string

	mu     sync.Mutex
	err    error
	ws     *websocket.Conn
	cancel context.CancelFunc
	done   chan struct{}
}

// Options for Dial.
type Options struct {
	Rooms       []string
	LastEventID string // cursor to resume from
	// ReadDelay, when set, sleeps before each read: a slow client.
	ReadDelay time.Duration
	// Buffer is C's capacity (default 4096).
	Buffer int
	// Token is sent as the token query parameter.
	Token string
	// Position is sent as the position query parameter: a snapshot
	// position (rowcast.position()) for every room, or room@token pairs.
	Position string
	// Header is sent with the request (e.g. Last-Event-ID, as a browser's
	// EventSource does on reconnect).
	Header http.Header
}

// Dial connects to the edge at base (http://host:port).
func Dial(ctx context.Context, base string, tr Transport, o Options) (*Conn, error) {
	if o.Buffer == 0 {
		o.Buffer = 4096
	}
	ch := make(chan Frame, o.Buffer)
	cctx, cancel := context.WithCancel(context.Background())
	c := &Conn{C: ch, Transport: tr, cancel: cancel, done: make(chan struct{})}
	q := url.Values{}
	q.Set("rooms", strings.Join(o.Rooms, ","))
	if o.LastEventID != "" {
		q.Set("lastEventId", o.LastEventID)
	}
	if o.Token != "" {
		q.Set("token", o.Token)
	}
	if o.Position != "" {
		q.Set("position", o.Position)
	}
	switch tr {
	case WebSocket:
		u := strings.Replace(base, "http", "ws", 1) + "/ws?" + q.Encode()
		ws, resp, err := websocket.DefaultDialer.DialContext(ctx, u, o.Header)
		if err != nil {
			cancel()
			if resp != nil {
				return nil, fmt.Errorf("dial websocket: %w (status %d)", err, resp.StatusCode)
			}
			return nil, fmt.Errorf("dial websocket: %w", err)
		}
		c.ws = ws
		go c.readWS(cctx, ch, o.ReadDelay)
	case SSE:
		req, err := http.NewRequestWithContext(cctx, http.MethodGet, base+"/events?"+q.Encode(), nil)
		if err != nil {
			cancel()
			return nil, err
		}
		for k, v := range o.Header {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("open event stream: %w", err)
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			cancel()
			return nil, fmt.Errorf("open event stream: status %d", resp.StatusCode)
		}
		go c.readSSE(resp, ch, o.ReadDelay)
	default:
		cancel()
		return nil, fmt.Errorf("unknown transport %q", tr)
	}
	return c, nil
}

// Send writes a JSON message (WebSocket only).
func (c *Conn) Send(v any) error {
	if c.ws == nil {
		return errors.New("send: not a websocket")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ws.WriteJSON(v)
}

// Close ends the connection and waits for the reader to stop.
func (c *Conn) Close() {
	c.cancel()
	if c.ws != nil {
		_ = c.ws.Close()
	}
	<-c.done
}

// Err returns why the connection ended (nil while it is open).
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *Conn) finish(ch chan Frame, err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
	close(ch)
	close(c.done)
}

func (c *Conn) readWS(ctx context.Context, ch chan Frame, delay time.Duration) {
	for {
		if delay > 0 {
			time.Sleep(delay)
		}
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			c.finish(ch, err)
			return
		}
		if err := emit(ch, data, time.Now()); err != nil {
			c.finish(ch, err)
			return
		}
	}
}

func (c *Conn) readSSE(resp *http.Response, ch chan Frame, delay time.Duration) {
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var data []byte
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case len(line) == 0:
			if data != nil {
				if delay > 0 {
					time.Sleep(delay)
				}
				if err := emit(ch, data, time.Now()); err != nil {
					c.finish(ch, err)
					return
				}
				data = nil
			}
		case bytes.HasPrefix(line, []byte("data: ")):
			data = append([]byte(nil), line[len("data: "):]...)
		case bytes.HasPrefix(line, []byte("id: ")):
			c.mu.Lock()
			c.LastEventID = string(line[len("id: "):])
			c.mu.Unlock()
		}
	}
	c.finish(ch, sc.Err())
}

// Cursor returns the SSE stream's last id: line.
func (c *Conn) Cursor() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.LastEventID
}

// emit decodes one frame (an object, or an array of events) onto ch.
func emit(ch chan Frame, data []byte, at time.Time) error {
	var items []json.RawMessage
	if len(data) > 0 && data[0] == '[' {
		if err := json.Unmarshal(data, &items); err != nil {
			return fmt.Errorf("decode batch: %w", err)
		}
	} else {
		items = []json.RawMessage{data}
	}
	for _, it := range items {
		var probe struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(it, &probe); err != nil {
			return fmt.Errorf("decode frame %.80s: %w", it, err)
		}
		if probe.Type != "" {
			var ctl Control
			_ = json.Unmarshal(it, &ctl)
			ch <- Frame{Control: &ctl}
			continue
		}
		var ev Event
		if err := json.Unmarshal(it, &ev); err != nil {
			return fmt.Errorf("decode event: %w", err)
		}
		ev.Received = at
		ch <- Frame{Event: &ev}
	}
	return nil
}

// WaitSubscribed reads frames until every room is confirmed, returning
// anything else read meanwhile.
func (c *Conn) WaitSubscribed(ctx context.Context, rooms ...string) ([]Frame, error) {
	want := map[string]bool{}
	for _, r := range rooms {
		want[r] = true
	}
	var other []Frame
	for len(want) > 0 {
		select {
		case f, ok := <-c.C:
			if !ok {
				return other, fmt.Errorf("connection ended before subscribed: %v", c.Err())
			}
			if f.Control != nil && f.Control.Type == "subscribed" {
				delete(want, f.Control.Room)
				continue
			}
			if f.Control != nil && f.Control.Type == "error" {
				return other, fmt.Errorf("server refused: %s: %s", f.Control.Code, f.Control.Message)
			}
			other = append(other, f)
		case <-ctx.Done():
			return other, fmt.Errorf("waiting for subscribed %v: %w", rooms, ctx.Err())
		}
	}
	return other, nil
}
