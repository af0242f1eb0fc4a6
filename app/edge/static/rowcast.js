// rowcast.js: the browser client for rowcast. No dependencies.
//
//   import { connect } from "/rowcast.js";
//   const rc = connect();                            // WebSocket first, SSE fallback
//   const off = rc.subscribe("lobby", (ev) => console.log(ev.op, ev.data));
//   rc.on("state", (s) => console.log(s.state, s.transport, s.role));
//   rc.on("reset", ({ room }) => reloadRoom(room));  // history lost: reload that room
//   off(); rc.close();
//
// A handler sees each event of its room once, in order: the client reconnects
// with exponential backoff and jitter, resumes every room from the last id it
// saw, and drops duplicates by id.
//
// Tabs of one origin share one connection: a Web Lock elects the tab that
// holds it (the leader), which relays events and states to the other tabs over
// a BroadcastChannel and subscribes the rooms they ask for. When the leader tab
// closes, its lock is released, the next tab takes over and resumes from the
// last ids it saw. Without Web Locks or BroadcastChannel every tab connects on
// its own.

const MIN_BACKOFF_MS = 250;
const MAX_BACKOFF_MS = 15000;
const SOON_MS = 250; // after "the server is going away": a short, jittered pause
const STABLE_MS = 10000; // a connection that lived this long was healthy
const WS_FAILURES_BEFORE_SSE = 2;
const WS_PROBE_MS = 30000; // on the SSE fallback, try WebSocket again after this, doubling
const WS_PROBE_MAX_MS = 600000;
const PEER_CHECK_MS = 30000;

/** connect(opts) starts a client; see Rowcast for the options. */
export function connect(opts = {}) {
  return new Rowcast(opts);
}

// isAfter reports whether event id `id` comes after `last` in one room. Ids
// are "<epoch>-<offset>": offsets compare only within an epoch, and another
// epoch is always after (the room's history was lost and started again).
export function isAfter(id, last) {
  if (!last) return true;
  const i = id.lastIndexOf("-"), j = last.lastIndexOf("-");
  if (id.slice(0, i) !== last.slice(0, j)) return true;
  return Number(id.slice(i + 1)) > Number(last.slice(j + 1));
}

function randomId() {
  return globalThis.crypto?.randomUUID?.() ?? Math.random().toString(36).slice(2) + Date.now().toString(36);
}

// Rowcast is the public client. Options:
//   url        server base URL (default: this page's origin)
//   transport  "auto" (WebSocket, falling back to SSE), "websocket" or "sse"
//   share      share one connection among this origin's tabs (default true)
//   name       Web Lock and BroadcastChannel name (default: per url)
//   token      a JWT, or a function returning one (or a promise of one), sent
//              as ?token= on every connect, so a fresh one replaces an expired one
//   pingMs, pongTimeoutMs  WebSocket liveness check (default 15 s, 5 s)
//   connectTimeoutMs       give up on a WebSocket that does not open (10 s)
export class Rowcast {
  constructor(opts = {}) {
    this.opts = {
      url: location.origin, transport: "auto", share: true,
      pingMs: 15000, pongTimeoutMs: 5000, connectTimeoutMs: 10000, ...opts,
    };
    this.opts.url = this.opts.url.replace(/\/$/, "");
    this.name = this.opts.name || `rowcast ${this.opts.url}`;
    this.tab = randomId();
    this.rooms = new Map(); // room -> { handlers: Set, last: "" }: what this tab wants
    this.listeners = new Map(); // event name -> Set of functions
    this.status = { state: "connecting", transport: null, role: "solo" };
    this.link = null; // the connection, when this tab holds it (solo or leader)
    this.peers = new Map(); // leader only: other tab -> { room: last id }
    this.closed = false;

    const canShare = this.opts.share && typeof BroadcastChannel === "function" && navigator.locks?.request;
    if (canShare) this.share();
    // Connect after the caller's first subscribe calls, so the first URL names their rooms.
    else queueMicrotask(() => this.lead());
  }

  get state() { return this.status.state; }
  get transport() { return this.status.transport; }
  get role() { return this.status.role; }

  // subscribe(room, handler, {since}) calls handler(event) for each event of
  // room, starting live, or after event id `since`. It returns a function that
  // unsubscribes this handler.
  subscribe(room, handler, { since = "" } = {}) {
    let r = this.rooms.get(room);
    if (!r) {
      r = { handlers: new Set(), last: since };
      this.rooms.set(room, r);
      this.roomsChanged(room);
    }
    r.handlers.add(handler);
    return () => this.unsubscribe(room, handler);
  }

  // unsubscribe(room, handler) removes one handler, or every handler of room
  // when handler is omitted; the room is left when none remains.
  unsubscribe(room, handler) {
    const r = this.rooms.get(room);
    if (!r) return;
    if (handler) {
      r.handlers.delete(handler);
      if (r.handlers.size > 0) return;
    }
    this.rooms.delete(room);
    this.roomsChanged();
  }

  // on(name, fn) listens to "state" ({state, transport, role}; state is
  // connecting, open, fallback, reconnecting or closed; fn is called at once
  // with the current state), "reset" ({room}: history was lost, reload that
  // room's state) and "control" (every server control message). It returns a
  // function that stops listening.
  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(fn);
    if (name === "state") fn({ ...this.status });
    return () => this.listeners.get(name)?.delete(fn);
  }

  // close ends this tab's part: a leader closes the connection and hands the
  // lock to another tab.
  close() {
    if (this.closed) return;
    if (this.status.role === "follower") this.post({ t: "bye", tab: this.tab });
    this.closed = true;
    clearInterval(this.peerTimer);
    this.link?.close();
    this.release?.();
    this.releaseTab?.();
    this.abort?.abort();
    this.channel?.close();
    removeEventListener("pagehide", this.onPageHide);
    removeEventListener("pageshow", this.onPageShow);
    this.setStatus({ state: "closed" });
  }

  // --- roles ---

  // share joins the tabs of this origin: wait for the leader lock, and until
  // then ask the leader, over the channel, for this tab's rooms.
  share() {
    this.status.role = "follower";
    this.channel = new BroadcastChannel(this.name);
    this.channel.onmessage = (e) => this.onPeerMessage(e.data);
    this.abort = new AbortController();
    const { signal } = this.abort;
    navigator.locks.request(this.name, { signal }, () => {
      if (this.closed) return undefined;
      this.lead();
      // Keep the lock while this tab lives: the promise settles on close().
      return new Promise((resolve) => { this.release = resolve; });
    }).catch(() => {}); // aborted by close()
    // A lock per tab lets the leader tell a crashed tab from a live one.
    navigator.locks.request(this.tabLock(this.tab), { signal }, () => new Promise((resolve) => { this.releaseTab = resolve; }))
      .catch(() => {});
    this.onPageHide = () => { if (this.status.role === "follower") this.post({ t: "bye", tab: this.tab }); };
    this.onPageShow = (e) => { if (e.persisted) this.roomsChanged(); };
    addEventListener("pagehide", this.onPageHide);
    addEventListener("pageshow", this.onPageShow);
    this.roomsChanged(); // tells a leader, if there is one, about this tab
  }

  // lead opens the connection for this tab and, when sharing, for the others.
  lead() {
    if (this.closed || this.link) return;
    this.status.role = this.channel ? "leader" : "solo";
    const rooms = new Map([...this.rooms].map(([room, r]) => [room, r.last]));
    this.link = new Link(this.opts, rooms, {
      events: (list) => {
        this.deliver(list);
        if (this.peers.size) this.post({ t: "events", events: list });
      },
      control: (m) => {
        this.control(m);
        if (m.type !== "pong") this.post({ t: "control", msg: m });
      },
      state: (s) => { this.setStatus(s); this.post({ t: "state", ...s }); },
    });
    if (!this.channel) return;
    this.post({ t: "leader", tab: this.tab }); // every follower answers with its rooms
    this.peerTimer = setInterval(() => this.checkPeers(), PEER_CHECK_MS);
  }

  tabLock(tab) { return `${this.name} tab ${tab}`; }

  post(msg) {
    if (this.channel && !this.closed) this.channel.postMessage(msg);
  }

  onPeerMessage(m) {
    const leader = !!this.link, forMe = !m.to || m.to === this.tab;
    switch (m.t) {
      case "leader": // a new leader asks for every tab's rooms
        if (!leader) this.roomsChanged();
        break;
      case "rooms":
        if (leader) {
          this.peerRooms(m.tab, m.rooms);
          this.post({ t: "state", to: m.tab, ...this.link.status() });
        }
        break;
      case "bye":
        if (leader && this.peers.delete(m.tab)) this.prune();
        break;
      case "events":
        if (!leader) this.deliver(m.events);
        break;
      case "control":
        if (!leader && forMe) this.control(m.msg);
        break;
      case "state":
        if (!leader && forMe) this.setStatus({ state: m.state, transport: m.transport });
        break;
    }
  }

  // roomsChanged keeps the connection's rooms in step with this tab's.
  roomsChanged(added) {
    if (!this.link) {
      // A follower always sends its whole set, so a lost message or a new
      // leader heals with the next one.
      if (this.channel) this.post({ t: "rooms", tab: this.tab, rooms: this.roomLasts() });
      return;
    }
    if (added) this.need(added, this.rooms.get(added).last, null);
    this.prune();
  }

  // peerRooms records a follower's rooms and subscribes the new ones.
  peerRooms(tab, rooms) {
    const before = this.peers.get(tab) || {};
    this.peers.set(tab, rooms);
    for (const [room, since] of Object.entries(rooms)) {
      if (!(room in before)) this.need(room, since, tab);
    }
    this.prune();
  }

  // need adds a room to the connection. When it is live already nobody else
  // will confirm it, so the asking tab gets its "subscribed" here.
  need(room, since, tab) {
    if (!this.link.add(room, since)) return;
    const msg = { type: "subscribed", room, last: this.link.last(room) };
    if (tab) this.post({ t: "control", to: tab, msg });
    else this.control(msg);
  }

  // prune leaves the rooms that no tab wants any more.
  prune() {
    for (const room of this.link.roomNames()) {
      if (this.rooms.has(room)) continue;
      if ([...this.peers.values()].some((rooms) => room in rooms)) continue;
      this.link.remove(room);
    }
  }

  // checkPeers forgets tabs that ended without saying bye (crash, kill).
  async checkPeers() {
    const { held = [], pending = [] } = await navigator.locks.query();
    const alive = new Set([...held, ...pending].map((l) => l.name));
    for (const tab of [...this.peers.keys()]) {
      if (!alive.has(this.tabLock(tab))) this.peers.delete(tab);
    }
    if (this.link) this.prune();
  }

  roomLasts() {
    return Object.fromEntries([...this.rooms].map(([room, r]) => [room, r.last]));
  }

  // --- delivery in this tab ---

  deliver(events) {
    for (const ev of events) {
      const r = this.rooms.get(ev.room);
      // Another tab's room, or seen already (a new leader may replay a little).
      if (!r || !isAfter(ev.id, r.last)) continue;
      r.last = ev.id;
      for (const h of [...r.handlers]) {
        try { h(ev); } catch (e) { console.error("rowcast handler", e); }
      }
    }
  }

  control(m) {
    const r = m.room ? this.rooms.get(m.room) : null;
    if (m.room && !r) return; // about another tab's room
    if (m.type === "subscribed" && r && !r.last && m.last) r.last = m.last; // resume from here after a takeover
    if (m.type === "reset" && r) {
      r.last = "";
      this.emit("reset", { room: m.room });
    }
    this.emit("control", m);
  }

  setStatus(s) {
    const next = { ...this.status, ...s };
    if (next.state === this.status.state && next.transport === this.status.transport && next.role === this.status.role) return;
    this.status = next;
    this.emit("state", { ...next });
  }

  emit(name, value) {
    for (const fn of [...(this.listeners.get(name) || [])]) {
      try { fn(value); } catch (e) { console.error("rowcast listener", e); }
    }
  }
}

// Link is one connection (WebSocket or SSE) for a set of rooms. It keeps the
// last id of each room to resume and to drop duplicates, and reports fresh
// events, control messages and state changes to its sink.
class Link {
  constructor(opts, rooms, sink) {
    this.opts = opts;
    this.sink = sink;
    this.rooms = new Map(); // room -> { last, live }
    for (const [room, last] of rooms) this.rooms.set(room, { last, live: false });
    this.transport = null;
    this.state = "";
    this.attempt = 0; // reconnects since the last healthy connection: drives the backoff
    this.wsFailures = 0; // WebSocket connections in a row that failed to open or died at once
    this.probes = 0; // WebSocket probes that failed while on the SSE fallback
    this.conn = null;
    this.waiting = false; // SSE without rooms: no stream until a room is added
    this.gen = 0; // counts connects and teardowns
    this.token = "";
    this.openedAt = 0;
    this.lastRx = 0;
    this.closed = false;
    // The network is back: the old connection is likely dead, and WebSocket may work again.
    this.onOnline = () => { this.wsFailures = 0; this.reconnect(0); };
    addEventListener("online", this.onOnline);
    this.connect();
  }

  status() { return { state: this.state, transport: this.transport }; }
  roomNames() { return [...this.rooms.keys()]; }
  last(room) { return this.rooms.get(room)?.last || ""; }

  // add subscribes room, resuming after `since`; it reports whether the room
  // was live already.
  add(room, since = "") {
    const r = this.rooms.get(room);
    if (r) return r.live;
    this.rooms.set(room, { last: since, live: false });
    if (this.wsOpen()) this.send({ type: "subscribe", room, since: since || undefined });
    else if (this.transport === "sse" && (this.conn || this.waiting)) this.restartSoon();
    return false; // otherwise the next connection names it
  }

  remove(room) {
    if (!this.rooms.delete(room)) return;
    if (this.wsOpen()) this.send({ type: "unsubscribe", room });
    else if (this.transport === "sse" && this.conn) this.restartSoon();
  }

  close() {
    this.closed = true;
    removeEventListener("online", this.onOnline);
    clearTimeout(this.restartTimer);
    this.teardown();
    this.setState("closed");
  }

  // --- connecting ---

  async connect() {
    if (this.closed) return;
    const sse = this.opts.transport === "sse" || (this.opts.transport === "auto" &&
      (typeof WebSocket !== "function" || this.wsFailures >= WS_FAILURES_BEFORE_SSE));
    this.transport = sse ? "sse" : "websocket";
    if (!this.state) this.setState("connecting");
    // The server refuses a stream without rooms (its rooms are fixed when it
    // opens): wait for the first room, which add() connects with.
    this.waiting = sse && this.rooms.size === 0;
    if (this.waiting) return;
    const gen = ++this.gen; // a teardown or another connect while awaiting the token wins
    if (this.opts.token) {
      try {
        this.token = await (typeof this.opts.token === "function" ? this.opts.token() : this.opts.token);
      } catch (e) {
        console.warn("rowcast: token:", e);
        if (gen === this.gen) this.dropped(false);
        return;
      }
      if (gen !== this.gen || this.closed) return;
    }
    if (sse) this.openSSE(); else this.openWS();
  }

  // url names every room and, as lastEventId, the cursor "room@id,room@id"
  // to resume from.
  url(path) {
    const u = new URL(this.opts.url + path);
    const rooms = this.roomNames();
    if (rooms.length) u.searchParams.set("rooms", rooms.join(","));
    const cursor = [...this.rooms].filter(([, r]) => r.last).map(([room, r]) => `${room}@${r.last}`).join(",");
    if (cursor) u.searchParams.set("lastEventId", cursor);
    if (this.token) u.searchParams.set("token", this.token);
    return u;
  }

  openWS() {
    const u = this.url("/ws");
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    const named = new Set(this.roomNames());
    const ws = new WebSocket(u);
    this.conn = ws;
    // A proxy can hold an upgrade forever: give up and count it as a failure.
    const giveUp = setTimeout(() => ws.close(), this.opts.connectTimeoutMs);
    ws.onopen = () => {
      clearTimeout(giveUp);
      this.opened();
      // Rooms added or removed while connecting were not in the URL.
      for (const room of this.roomNames()) {
        if (!named.has(room)) this.send({ type: "subscribe", room, since: this.last(room) || undefined });
      }
      for (const room of named) {
        if (!this.rooms.has(room)) this.send({ type: "unsubscribe", room });
      }
      this.startPing(ws);
    };
    ws.onmessage = (e) => this.frame(e.data);
    ws.onclose = (e) => {
      clearTimeout(giveUp);
      if (this.conn !== ws) return; // we closed it on purpose
      // Never opened, or cut at once: a proxy that blocks or breaks WebSocket.
      if (!this.openedAt || (e.code === 1006 && Date.now() - this.openedAt < STABLE_MS)) this.wsFailures++;
      // 1012: the server restarts; 4008: we were too slow. Both: come back soon.
      this.dropped(e.code === 1012 || e.code === 4008);
    };
  }

  openSSE() {
    const es = new EventSource(this.url("/events"));
    this.conn = es;
    es.onopen = () => this.opened();
    es.onmessage = (e) => this.frame(e.data);
    es.addEventListener("control", (e) => this.frame(e.data));
    es.onerror = () => {
      if (this.conn !== es) return;
      // EventSource would retry by itself with its fixed delay and the last
      // id it got; we retry with backoff and our own cursor instead.
      this.dropped(false);
    };
  }

  opened() {
    this.openedAt = this.lastRx = Date.now();
    this.setState("open");
    if (this.transport === "sse" && this.wsFailures >= WS_FAILURES_BEFORE_SSE) this.probeLater();
  }

  // On the SSE fallback, try WebSocket now and then, less and less often:
  // the failures may have been a passing outage, or the network changed.
  probeLater() {
    const delay = Math.min(WS_PROBE_MAX_MS, WS_PROBE_MS * 2 ** this.probes++);
    clearTimeout(this.probeTimer);
    this.probeTimer = setTimeout(() => this.probe(), delay * (0.5 + Math.random() / 2));
  }

  probe() {
    const u = new URL(this.opts.url + "/ws");
    if (this.token) u.searchParams.set("token", this.token);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(u); // no rooms: it only tests the path
    const giveUp = setTimeout(() => ws.close(), this.opts.connectTimeoutMs);
    let ok = false;
    ws.onopen = () => {
      ok = true;
      ws.close();
      if (this.closed || this.transport !== "sse" || !this.conn) return;
      this.wsFailures = 0;
      this.probes = 0;
      this.reconnect(0); // over WebSocket, resuming from the cursor
    };
    ws.onclose = () => {
      clearTimeout(giveUp);
      if (!ok && !this.closed && this.transport === "sse" && this.conn) this.probeLater();
    };
  }

  // WebSocket liveness: ping now and then and expect traffic (the pong) soon
  // after. SSE relies on EventSource's own error (the server sends a
  // heartbeat comment every 15 s, which EventSource does not surface).
  startPing(ws) {
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => {
      if (this.conn !== ws) return;
      const sent = Date.now();
      this.send({ type: "ping" });
      setTimeout(() => {
        if (this.conn === ws && this.lastRx < sent) this.reconnect(0); // dead link
      }, this.opts.pongTimeoutMs);
    }, this.opts.pingMs);
  }

  // dropped handles a connection that ended: fall back to SSE or retry.
  dropped(soon) {
    const opened = this.openedAt > 0;
    if (opened && Date.now() - this.openedAt >= STABLE_MS) {
      this.attempt = 0; // it was healthy: start the backoff over
      if (this.transport === "websocket") this.wsFailures = 0;
    }
    this.teardown();
    if (this.closed) return;
    // SSE cannot connect either: the server is down, WebSocket is not
    // blocked. Try WebSocket first again, or a deploy would leave every
    // client on SSE.
    if (this.transport === "sse" && !opened) this.wsFailures = 0;
    if (this.transport === "websocket" && this.opts.transport === "auto" && this.wsFailures >= WS_FAILURES_BEFORE_SSE) {
      this.transport = "sse";
      this.setState("fallback");
      this.schedule(0); // no reason to wait: SSE is another path
      return;
    }
    this.schedule(soon ? SOON_MS * (0.5 + Math.random()) : this.backoff());
  }

  reconnect(delay) {
    if (this.closed) return;
    this.teardown();
    this.schedule(delay);
  }

  schedule(delay) {
    if (this.state !== "fallback") this.setState("reconnecting");
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  // backoff doubles up to a cap; the random half spreads the clients that a
  // server restart disconnected all at once.
  backoff() {
    const cap = Math.min(MAX_BACKOFF_MS, MIN_BACKOFF_MS * 2 ** this.attempt++);
    return cap / 2 + Math.random() * (cap / 2);
  }

  // restartSoon reopens an SSE stream (its rooms are fixed at connect), or
  // opens the one that waited for a room, once for a burst of room changes.
  // Without rooms left, the stream closes and waits.
  restartSoon() {
    clearTimeout(this.restartTimer);
    this.restartTimer = setTimeout(() => {
      if (this.closed || !(this.conn || this.waiting)) return;
      this.teardown();
      this.connect();
    }, 20);
  }

  teardown() {
    clearInterval(this.pingTimer);
    clearTimeout(this.retryTimer);
    clearTimeout(this.probeTimer);
    this.gen++;
    this.waiting = false;
    const c = this.conn;
    this.conn = null;
    this.openedAt = 0;
    for (const r of this.rooms.values()) r.live = false;
    if (c) c.close();
  }

  wsOpen() {
    return this.transport === "websocket" && this.conn?.readyState === WebSocket.OPEN;
  }

  send(msg) {
    if (this.wsOpen()) this.conn.send(JSON.stringify(msg));
  }

  // --- receiving ---

  // frame handles one WebSocket frame or SSE message: an event, a control
  // message, or an array of events (history replayed in batches).
  frame(text) {
    this.lastRx = Date.now();
    let msg;
    try { msg = JSON.parse(text); } catch { console.warn("rowcast: bad frame", text); return; }
    const fresh = [];
    for (const m of Array.isArray(msg) ? msg : [msg]) {
      if (!m || typeof m !== "object") continue;
      if (m.type) {
        if (fresh.length) this.sink.events(fresh.splice(0)); // keep the order
        this.control(m);
      } else if (this.accept(m)) {
        fresh.push(m);
      }
    }
    if (fresh.length) this.sink.events(fresh);
  }

  // accept advances the room's last id; false for a duplicate or an event of
  // a room we left.
  accept(ev) {
    const r = this.rooms.get(ev.room);
    if (!r || !isAfter(ev.id, r.last)) return false;
    r.last = ev.id;
    return true;
  }

  control(m) {
    const r = m.room ? this.rooms.get(m.room) : null;
    switch (m.type) {
      case "subscribed": // live delivery is in place; a fresh join starts at the room's head
        if (r) {
          r.live = true;
          if (!r.last && m.last) r.last = m.last;
        }
        break;
      case "reset": // history is gone: the app reloads, we continue live
        if (r) r.last = "";
        break;
      case "reconnect": // the server is going away
        this.reconnect(SOON_MS * (0.5 + Math.random()));
        break;
      case "closing": // the server ends this stream, e.g. slow_consumer: resume elsewhere
        this.reconnect(m.code === "slow_consumer" ? SOON_MS * (0.5 + Math.random()) : this.backoff());
        break;
      case "error":
        console.warn("rowcast:", m.code, m.room || "", m.message || "");
        break;
    }
    this.sink.control(m);
  }

  setState(state) {
    if (state === this.state && this.transport === this.reported) return;
    this.state = state;
    this.reported = this.transport;
    this.sink.state({ state, transport: this.transport });
  }
}
