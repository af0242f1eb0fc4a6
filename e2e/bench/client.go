package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/rowcast/rowcast/realtime"
)

// The benchmark's own client of the wire protocol. e2e/wire decodes every
// event fully with encoding/json (three Unmarshal calls per event), buffers
// 4096 frames per connection and cannot pick a source address; on two
// shared cores that client would compete with the app for the CPU it
// measures. This one reads only the id prefix, "at" and the body's sequence
// number, reuses its read buffer, and dials from a chosen loopback address.

// transport is ws or sse.
type transport string

const (
	ws  transport = "ws"
	sse transport = "sse"
)

// dialers holds one WebSocket dialer and one HTTP client per source address.
type dialers struct {
	ws  []*websocket.Dialer
	sse []*http.Client
}

// newDialers spreads connections over n loopback source addresses
// (127.0.0.1 ... 127.0.0.n): each address has its own ephemeral ports.
func newDialers(n int) *dialers {
	d := &dialers{}
	for i := range max(n, 1) {
		nd := &net.Dialer{Timeout: 10 * time.Second}
		if n > 1 {
			nd.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i))}
		}
		d.ws = append(d.ws, &websocket.Dialer{
			NetDialContext:   nd.DialContext,
			HandshakeTimeout: 10 * time.Second,
			ReadBufferSize:   4096,
			WriteBufferSize:  512,
		})
		d.sse = append(d.sse, &http.Client{Transport: &http.Transport{
			DialContext:           nd.DialContext,
			DisableCompression:    true,
			ResponseHeaderTimeout: 10 * time.Second,
			MaxIdleConnsPerHost:   -1,
			ReadBufferSize:        4096,
			WriteBufferSize:       512,
		}})
	}
	return d
}

// client is one connection joined to one room. Its reader goroutine records
// every event; the bench reads the figures between phases.
type client struct {
	idx   int
	room  int // index into the run's rooms
	nroom int // how many rooms the run has (seq % nroom == room)

	subscribed chan struct{}
	subOnce    sync.Once
	done       chan struct{}
	closing    atomic.Bool
	stop       func()
	counters   *counters

	mu       sync.Mutex
	seen     []uint64 // bit seq/nroom: event seq received
	lastOff  uint64   // offset of the last event (ids of one room rise by one within an epoch)
	epoch    string
	events   int64 // events received in this phase, duplicates included
	dups     int64
	reorder  int64   // events whose offset did not follow the previous one's in the same epoch
	foreign  int64   // events without a bench sequence number, or of another room
	lat      []int64 // ns, receipt - "at"
	latSend  []int64 // ns, receipt - send timestamp in the row
	endErr   error
	closedBy string // control code or close reason seen before the end
}

// counters are shared by every client of a run, for progress without locks.
type counters struct {
	distinct atomic.Int64 // first receipts of an event by a client
	events   atomic.Int64
	ended    atomic.Int64 // connections that ended without the bench closing them
}

// connect dials one client and waits until its room is confirmed.
func connect(ctx context.Context, d *dialers, tr transport, base string, idx int, room string, roomIdx, nroom int, cnt *counters) (*client, error) {
	c := &client{idx: idx, room: roomIdx, nroom: nroom, subscribed: make(chan struct{}), done: make(chan struct{}), counters: cnt}
	q := url.Values{"rooms": {room}}.Encode()
	switch tr {
	case ws:
		u := "ws" + base[len("http"):] + "/ws?" + q
		conn, resp, err := d.ws[idx%len(d.ws)].DialContext(ctx, u, nil)
		if err != nil {
			if resp != nil {
				return nil, fmt.Errorf("dial websocket: %w (status %d)", err, resp.StatusCode)
			}
			return nil, fmt.Errorf("dial websocket: %w", err)
		}
		c.stop = func() { _ = conn.Close() }
		go c.readWS(conn)
	case sse:
		rctx, cancel := context.WithCancel(context.Background())
		req, err := http.NewRequestWithContext(rctx, http.MethodGet, base+"/events?"+q, nil)
		if err != nil {
			cancel()
			return nil, err
		}
		req.Header.Set("Accept", "text/event-stream")
		resp, err := d.sse[idx%len(d.sse)].Do(req)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("open event stream: %w", err)
		}
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			cancel()
			return nil, fmt.Errorf("open event stream: %s: %s", resp.Status, b)
		}
		c.stop = cancel
		go c.readSSE(resp.Body)
	default:
		return nil, fmt.Errorf("unknown transport %q", tr)
	}
	select {
	case <-c.subscribed:
		return c, nil
	case <-c.done:
		return nil, fmt.Errorf("connection ended before subscribed: %v (%s)", c.endErr, c.closedBy)
	case <-ctx.Done():
		c.close()
		return nil, fmt.Errorf("waiting for subscribed: %w", ctx.Err())
	}
}

// close ends the connection and waits for the reader.
func (c *client) close() {
	c.closing.Store(true)
	c.stop()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
	}
}

func (c *client) finish(err error) {
	c.mu.Lock()
	c.endErr = err
	c.mu.Unlock()
	if !c.closing.Load() {
		c.counters.ended.Add(1)
	}
	close(c.done)
}

func (c *client) readWS(conn *websocket.Conn) {
	var buf bytes.Buffer
	for {
		_, r, err := conn.NextReader()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				c.mu.Lock()
				c.closedBy = fmt.Sprintf("close %d %s", ce.Code, ce.Text)
				c.mu.Unlock()
			}
			c.finish(err)
			return
		}
		buf.Reset()
		if _, err := buf.ReadFrom(r); err != nil {
			c.finish(err)
			return
		}
		c.frame(buf.Bytes(), time.Now())
	}
}

func (c *client) readSSE(body io.ReadCloser) {
	defer body.Close()
	br := bufio.NewReaderSize(body, 4096)
	var data, long []byte
	has, control := false, false
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long, line...)
			continue
		}
		if err != nil {
			c.finish(err)
			return
		}
		if len(long) > 0 {
			line = append(long, line...)
			long = long[:0]
		}
		line = bytes.TrimRight(line, "\r\n")
		switch {
		case len(line) == 0:
			if has {
				if control {
					c.control(data)
				} else {
					c.frame(data, time.Now())
				}
				has, control = false, false
			}
		case bytes.HasPrefix(line, []byte("data: ")):
			data = append(data[:0], line[len("data: "):]...)
			has = true
		case bytes.Equal(line, []byte("event: control")):
			control = true
		}
	}
}

var (
	eventPrefix = []byte(`{"id":"`)
	bodyKey     = []byte(`"body":`)
)

// frame handles one frame: an event, a JSON array of events, or a control
// message.
func (c *client) frame(data []byte, now time.Time) {
	switch {
	case bytes.HasPrefix(data, eventPrefix):
		c.event(data, now)
	case len(data) > 0 && data[0] == '[':
		var items []json.RawMessage
		if err := json.Unmarshal(data, &items); err != nil {
			c.countForeign()
			return
		}
		for _, it := range items {
			c.frame(it, now)
		}
	default:
		c.control(data)
	}
}

func (c *client) control(data []byte) {
	var ctl struct{ Type, Room, Code, Message string }
	if err := json.Unmarshal(data, &ctl); err != nil {
		c.countForeign()
		return
	}
	switch ctl.Type {
	case "subscribed":
		c.subOnce.Do(func() { close(c.subscribed) })
	case "closing", "reconnect", "error", "reset":
		c.mu.Lock()
		c.closedBy = ctl.Type + " " + ctl.Code + " " + ctl.Message
		c.mu.Unlock()
	}
}

func (c *client) countForeign() {
	c.mu.Lock()
	c.foreign++
	c.mu.Unlock()
}

// event records one event: its sequence number (from the row's body
// "b<seq>.<send unix ns>."), and its latency from capture ("at") and from
// the send timestamp.
func (c *client) event(data []byte, now time.Time) {
	seq, sent, ok := bodySeq(data)
	at, atOK := realtime.CapturedAt(data)
	epoch, off, idOK := eventID(data)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events++
	c.counters.events.Add(1)
	if idOK {
		switch {
		case string(epoch) != c.epoch:
			c.epoch, c.lastOff = string(epoch), off
		case off <= c.lastOff:
			c.reorder++ // an id not above the last: a duplicate, or out of order
		default:
			c.lastOff = off
		}
	}
	if !ok || seq%int64(c.nroom) != int64(c.room) {
		c.foreign++
		return
	}
	i := seq / int64(c.nroom)
	w, b := int(i/64), uint64(1)<<(i%64)
	if w >= len(c.seen) {
		c.seen = append(c.seen, make([]uint64, w+1-len(c.seen)+len(c.seen)/2)...)
	}
	if c.seen[w]&b != 0 {
		c.dups++
		return
	}
	c.seen[w] |= b
	c.counters.distinct.Add(1)
	if atOK {
		c.lat = append(c.lat, int64(now.Sub(at)))
	}
	c.latSend = append(c.latSend, now.UnixNano()-sent)
}

// eventID reads the epoch and offset of {"id":"<epoch>-<offset>".
func eventID(data []byte) (epoch []byte, off uint64, ok bool) {
	rest := data[len(eventPrefix):]
	end := bytes.IndexByte(rest, '"')
	if end < 0 {
		return nil, 0, false
	}
	id := rest[:end]
	dash := bytes.LastIndexByte(id, '-')
	if dash < 0 {
		return nil, 0, false
	}
	off, err := strconv.ParseUint(string(id[dash+1:]), 10, 64)
	return id[:dash], off, err == nil
}

// bodySeq reads "b<seq>.<sent>." at the start of the row's body.
func bodySeq(data []byte) (seq, sent int64, ok bool) {
	i := bytes.Index(data, bodyKey)
	if i < 0 {
		return 0, 0, false
	}
	rest := bytes.TrimLeft(data[i+len(bodyKey):], " ")
	if !bytes.HasPrefix(rest, []byte(`"b`)) {
		return 0, 0, false
	}
	rest = rest[2:]
	dot := bytes.IndexByte(rest, '.')
	if dot < 0 {
		return 0, 0, false
	}
	seq, err := strconv.ParseInt(string(rest[:dot]), 10, 64)
	if err != nil {
		return 0, 0, false
	}
	rest = rest[dot+1:]
	dot = bytes.IndexByte(rest, '.')
	if dot < 0 {
		return 0, 0, false
	}
	sent, err = strconv.ParseInt(string(rest[:dot]), 10, 64)
	return seq, sent, err == nil
}

// phaseFigures is what one client saw of one phase.
type phaseFigures struct {
	events, dups, reorder, foreign int64
	missing, unexpected            int64
	distinct                       int64
	lat, latSend                   []int64
	ended                          bool
	closedBy                       string
}

// take returns the client's figures for the rows [lo, hi) and resets the
// per-phase counters. ok reports which rows were committed.
func (c *client) take(lo, hi int64, ok func(int64) bool) phaseFigures {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := phaseFigures{events: c.events, dups: c.dups, reorder: c.reorder, foreign: c.foreign, lat: c.lat, latSend: c.latSend}
	c.events, c.dups, c.reorder, c.foreign, c.lat, c.latSend = 0, 0, 0, 0, nil, nil
	first := lo + (int64(c.room)-lo%int64(c.nroom)+int64(c.nroom))%int64(c.nroom)
	for seq := first; seq < hi; seq += int64(c.nroom) {
		i := seq / int64(c.nroom)
		w := int(i / 64)
		got := w < len(c.seen) && c.seen[w]&(1<<(i%64)) != 0
		switch committed := ok(seq); {
		case committed && got:
			f.distinct++
		case committed:
			f.missing++
		case got:
			f.unexpected++
		}
	}
	select {
	case <-c.done:
		f.ended = !c.closing.Load()
		f.closedBy = c.closedBy
		if f.closedBy == "" && c.endErr != nil {
			f.closedBy = c.endErr.Error()
		}
	default:
	}
	return f
}

// received counts the distinct events of rows [lo, hi) the client holds.
func (c *client) received(lo, hi int64) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	first := lo + (int64(c.room)-lo%int64(c.nroom)+int64(c.nroom))%int64(c.nroom)
	for seq := first; seq < hi; seq += int64(c.nroom) {
		i := seq / int64(c.nroom)
		if w := int(i / 64); w < len(c.seen) && c.seen[w]&(1<<(i%64)) != 0 {
			n++
		}
	}
	return n
}

// fleet is the connected clients of one run.
type fleet struct {
	clients  []*client
	failed   int
	firstErr error
	took     time.Duration
	counters *counters
}

// connectFleet connects n clients, client i to rooms[i%len(rooms)], at most
// rate per second and 64 at a time. Every dial is bounded by 20 s and the
// whole by n/rate + 60 s.
func connectFleet(ctx context.Context, d *dialers, tr transport, base string, n int, rooms []string, rate int) *fleet {
	f := &fleet{clients: make([]*client, n), counters: &counters{}}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(n/max(rate, 1))*time.Second+60*time.Second)
	defer cancel()
	start := time.Now()
	sem := make(chan struct{}, 64)
	var (
		wg sync.WaitGroup
		mu sync.Mutex
	)
	for i := range n {
		if wait := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(max(rate, 1)))); wait > 0 {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			mu.Lock()
			f.failed += n - i
			if f.firstErr == nil {
				f.firstErr = ctx.Err()
			}
			mu.Unlock()
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
			defer dcancel()
			c, err := connect(dctx, d, tr, base, i, rooms[i%len(rooms)], i%len(rooms), len(rooms), f.counters)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				f.failed++
				if f.firstErr == nil {
					f.firstErr = err
				}
				return
			}
			f.clients[i] = c
		}()
		if (i+1)%1000 == 0 {
			progress("  %d/%d connected", i+1, n)
		}
	}
	wg.Wait()
	f.took = time.Since(start)
	live := f.clients[:0]
	for _, c := range f.clients {
		if c != nil {
			live = append(live, c)
		}
	}
	f.clients = live
	return f
}

// close ends every connection, 256 at a time.
func (f *fleet) close() {
	sem := make(chan struct{}, 256)
	var wg sync.WaitGroup
	for _, c := range f.clients {
		sem <- struct{}{}
		wg.Add(1)
		go func() { defer wg.Done(); defer func() { <-sem }(); c.close() }()
	}
	wg.Wait()
}

// ended counts the connections that ended without the bench closing them.
func (f *fleet) ended() int {
	n := 0
	for _, c := range f.clients {
		select {
		case <-c.done:
			if !c.closing.Load() {
				n++
			}
		default:
		}
	}
	return n
}
