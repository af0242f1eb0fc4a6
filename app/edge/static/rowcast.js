// rowcast.js: the browser client for rowcast. No dependencies.
//
//   import { connect } from "/rowcast.js";
//   const rc = connect();                            // WebSocket first, SSE fallback
//   const { position, messages } = await (await fetch("/api/history?room=lobby")).json();
//   render(messages);                                // rows read with SELECT rowcast.position(), ...
//   const off = rc.subscribe("lobby", (ev) => console.log(ev.op, ev.data), { since: position });
//   rc.on("state", (s) => console.log(s.state, s.transport, s.role));
//   rc.on("reset", ({ room }) => reloadRoom(room));  // history lost or position too old: reload that room
//   rc.on("error", ({ room, code }) => console.warn(code, room));
//   off(); rc.close();
//
// A handler sees each event of its room once, in order: the client reconnects
// with exponential backoff and jitter, resumes every room from the last id it
// saw, and drops duplicates by id. Subscribed from a snapshot position (the
// token rowcast.position() returned with the page's rows), it sees exactly
// the changes that snapshot did not see: the token is sent with every
// (re)subscribe, along with the last id once there is one.
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
const TAB_PROTOCOL = 2; // the messages tabs exchange; 2: positions and replay markers
const POSITION_PREFIX = "p1.";
const POSITION_CHARS = /^[A-Za-z0-9._]+$/; // what rowcast.position() returns: safe in URLs unescaped

/** connect(opts) starts a client; see Rowcast for the options. */
export function connect(opts = {}) {
  return new Rowcast(opts);
}

// --- pure logic, exported for the unit tests (internal: see rowcast.d.ts) ---

// isAfter reports whether event id `id` comes after `last` in one room. Ids
// are "<epoch>-<offset>": offsets compare only within an epoch, and another
// epoch is always after (the room's history was lost and started again).
export function isAfter(id, last) {
  if (!last) return true;
  const i = id.lastIndexOf("-"), j = last.lastIndexOf("-");
  if (id.slice(0, i) !== last.slice(0, j)) return true;
  return Number(id.slice(i + 1)) > Number(last.slice(j + 1));
}

// isPosition tells a snapshot position from an event id: ids hold no ".".
export function isPosition(s) {
  return typeof s === "string" && s.startsWith(POSITION_PREFIX);
}

// parseSince splits subscribe's `since` into the event id to resume after
// (last) and the snapshot position to subscribe from. It throws on a token
// with characters rowcast.position() never returns: in a URL they could name
// another room's position.
export function parseSince(since) {
  const s = since == null ? "" : String(since);
  if (!isPosition(s)) return { last: s, position: "" };
  if (!POSITION_CHARS.test(s)) throw new TypeError(`rowcast: position ${JSON.stringify(s)} is not a rowcast.position() token`);
  return { last: "", position: s };
}

// parsePosition reads the snapshot out of a token,
// p1.<database>.<unix ms>.<xmin>.<xmax>.<running ids joined by _>, or
// returns null when it cannot (the server still filters; see sawTx).
export function parsePosition(token) {
  const p = typeof token === "string" ? token.split(".") : [];
  if (p.length !== 6 || p[0] !== "p1" || !p[1]) return null;
  const num = (s) => (/^\d+$/.test(s) ? Number(s) : NaN);
  const xmin = num(p[3]), xmax = num(p[4]);
  if (!Number.isSafeInteger(xmin) || !Number.isSafeInteger(xmax) || xmax < xmin) return null;
  const xip = p[5] ? p[5].split("_").map(num) : [];
  if (!xip.every((x) => Number.isSafeInteger(x) && x >= xmin && x < xmax)) return null;
  return { source: p[1], takenMs: num(p[2]), xmin, xmax, xip: new Set(xip) };
}

// sawTx reports whether snapshot snap (from parsePosition) saw the committed
// transaction tx, as the server decides: then the page shows that change
// already. Unknown either way: false (deliver it).
export function sawTx(snap, tx) {
  if (!snap || typeof tx !== "number") return false;
  if (tx < snap.xmin) return true;
  return tx < snap.xmax && !snap.xip.has(tx);
}

// olderOrSame reports whether token a's snapshot saw nothing that b's did not:
// snapshots of one database only ever see more as time goes on.
export function olderOrSame(a, b) {
  if (a === b) return true;
  const pa = parsePosition(a), pb = parsePosition(b);
  if (!pa || !pb || pa.source !== pb.source) return false;
  return pa.xmax < pb.xmax || (pa.xmax === pb.xmax && [...pb.xip].every((x) => pa.xip.has(x)));
}

// olderPosition picks the token that saw less: a stream filtered by it holds
// every event that either token's page needs. A token that cannot be read
// loses, so one tab's garbage does not stop another tab's room.
export function olderPosition(a, b) {
  if (!a || !parsePosition(a)) return b;
  if (!b || !parsePosition(b)) return a;
  return olderOrSame(b, a) ? b : a;
}

// subscribeFrame is the WebSocket subscribe message for a room: its last id
// once it has one, and its position for as long as it is subscribed.
export function subscribeFrame(room, { last, position }) {
  const msg = { type: "subscribe", room };
  if (last) msg.since = last;
  if (position) msg.position = position;
  return msg;
}

// roomPairs joins "room@value" for the rooms whose state has `key` set.
export function roomPairs(rooms, key) {
  return [...rooms].filter(([, r]) => r[key]).map(([room, r]) => `${room}@${r[key]}`).join(",");
}

// streamURL is the URL of a WebSocket (/ws) or SSE (/events) connection for
// rooms (room -> { last, position }): it names every room, the cursor
// "room@id,..." to resume from, the positions "room@token,..." and the JWT.
export function streamURL(base, path, rooms, token) {
  const u = new URL(base + path);
  if (rooms.size) u.searchParams.set("rooms", [...rooms.keys()].join(","));
  const cursor = roomPairs(rooms, "last");
  if (cursor) u.searchParams.set("lastEventId", cursor);
  const positions = roomPairs(rooms, "position");
  if (positions) u.searchParams.set("position", positions);
  if (token) u.searchParams.set("token", token);
  if (path === "/ws") u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return u;
}

// fallsBack reports whether WebSocket failed often enough to use SSE instead.
export function fallsBack(wanted, wsFailures) {
  return wanted === "auto" && wsFailures >= WS_FAILURES_BEFORE_SSE;
}

// pickTransport decides how the next connection goes.
export function pickTransport(wanted, wsFailures, hasWebSocket) {
  if (wanted === "sse" || (wanted === "auto" && !hasWebSocket)) return "sse";
  return fallsBack(wanted, wsFailures) ? "sse" : "websocket";
}

// wsFailed reports whether a WebSocket that closed with code counts as a
// failure of the path: it never opened, or was cut at once (1006), as behind
// a proxy that blocks or breaks WebSocket.
export function wsFailed(openedAt, code, now) {
  return !openedAt || (code === 1006 && now - openedAt < STABLE_MS);
}

// backoffDelay doubles with each attempt up to a cap; the random half (rand
// in [0, 1)) spreads the clients that a restart disconnected all at once.
export function backoffDelay(attempt, rand) {
  const cap = Math.min(MAX_BACKOFF_MS, MIN_BACKOFF_MS * 2 ** attempt);
  return cap / 2 + rand * (cap / 2);
}

// probeDelay is how long the SSE fallback waits before its next WebSocket
// probe (before jitter): less and less often, as the failure may last.
export function probeDelay(probes) {
  return Math.min(WS_PROBE_MAX_MS, WS_PROBE_MS * 2 ** probes);
}

function randomId() {
  return globalThis.crypto?.randomUUID?.() ?? Math.random().toString(36).slice(2) + Date.now().toString(36);
}

// tabRoom is what a tab keeps per room. hold: subscribed from a position,
// it takes no event until the connection's stream for the room starts from a
// snapshot at least as old (another tab's events may pass meanwhile).
function tabRoom({ last, position }) {
  return { handlers: new Set(), last, position, snap: parsePosition(position), hold: !!position };
}

// Rowcast is the public client. Options:
//   url        server base URL (default: this page's origin)
//   transport  "auto" (WebSocket, falling back to SSE), "websocket" or "sse"
//   share      share one connection among this origin's tabs (default true)
//   name       Web Lock and BroadcastChannel name (default: per url; the
//              version of the tabs' protocol is added to it)
//   token      a JWT, or a function returning one (or a promise of one), sent
//              as ?token= on every connect, so a fresh one replaces an expired one
//   pingMs, pongTimeoutMs  WebSocket liveness check (default 15 s, 5 s)
//   connectTimeoutMs       give up on a WebSocket that does not open (10 s)
export class Rowcast {
  constructor(opts = {}) {
    this.opts = {
      url: globalThis.location?.origin, transport: "auto", share: true,
      pingMs: 15000, pongTimeoutMs: 5000, connectTimeoutMs: 10000, ...opts,
    };
    this.opts.url = String(this.opts.url).replace(/\/$/, "");
    // Tabs running another version of this file speak another tab protocol:
    // the version in the name makes them share among themselves only.
    this.name = `${this.opts.name || `rowcast ${this.opts.url}`} tabs/${TAB_PROTOCOL}`;
    this.tab = randomId();
    this.rooms = new Map(); // room -> tabRoom: what this tab wants
    this.listeners = new Map(); // event name -> Set of functions
    this.status = { state: "connecting", transport: null, role: "solo" };
    this.link = null; // the connection, when this tab holds it (solo or leader)
    this.peers = new Map(); // leader only: other tab -> { room: last id }
    this.closed = false;

    const canShare = this.opts.share && typeof BroadcastChannel === "function" && globalThis.navigator?.locks?.request;
    if (canShare) this.share();
    // Connect after the caller's first subscribe calls, so the first URL names their rooms.
    else queueMicrotask(() => this.lead());
  }

  get state() { return this.status.state; }
  get transport() { return this.status.transport; }
  get role() { return this.status.role; }

  // subscribe(room, handler, {since}) calls handler(event) for each event of
  // room: live, after event id `since`, or, when since is a position token
  // ("p1..."), each event that position's snapshot did not see. The options
  // count when the room is first subscribed in this tab. It returns a
  // function that unsubscribes this handler.
  subscribe(room, handler, { since = "" } = {}) {
    let r = this.rooms.get(room);
    if (!r) {
      r = tabRoom(parseSince(since));
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
  // with the current state), "reset" ({room, code}: history_lost or
  // position_too_old; reload that room's state), "error" ({room, code,
  // message}: a request was refused, e.g. bad_position, foreign_position,
  // forbidden) and "control" (every server control message). It returns a
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
    globalThis.removeEventListener?.("pagehide", this.onPageHide);
    globalThis.removeEventListener?.("pageshow", this.onPageShow);
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
    globalThis.addEventListener?.("pagehide", this.onPageHide);
    globalThis.addEventListener?.("pageshow", this.onPageShow);
    this.roomsChanged(); // tells a leader, if there is one, about this tab
  }

  // lead opens the connection for this tab and, when sharing, for the others.
  lead() {
    if (this.closed || this.link) return;
    this.status.role = this.channel ? "leader" : "solo";
    const rooms = new Map([...this.rooms].map(([room, r]) => [room, { last: r.last, position: r.position }]));
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
      replay: (room, position) => {
        this.replayStarts(room, position);
        this.post({ t: "replay", room, position });
      },
    });
    // A new connection: no event of these rooms came before it.
    for (const [room, r] of this.rooms) this.replayStarts(room, r.position);
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
          this.peerRooms(m.tab, m.rooms, m.positions || {});
          this.post({ t: "state", to: m.tab, ...this.link.status() });
        }
        break;
      case "bye":
        if (leader && this.peers.delete(m.tab)) this.prune();
        break;
      case "events":
        if (!leader) this.deliver(m.events);
        break;
      case "replay":
        if (!leader && forMe) this.replayStarts(m.room, m.position);
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
      // leader heals with the next one. Positions travel beside the ids, so
      // a leader that does not know them still reads the ids.
      if (this.channel) this.post({ t: "rooms", tab: this.tab, rooms: this.roomLasts(), positions: this.roomPositions() });
      return;
    }
    if (added) {
      const r = this.rooms.get(added);
      this.need(added, { last: r.last, position: r.position }, null);
    }
    this.prune();
  }

  // peerRooms records a follower's rooms and subscribes the new ones.
  peerRooms(tab, rooms, positions) {
    const before = this.peers.get(tab) || {};
    this.peers.set(tab, rooms);
    for (const [room, last] of Object.entries(rooms)) {
      if (!(room in before)) this.need(room, { last, position: positions[room] || "" }, tab);
    }
    this.prune();
  }

  // need adds a room to the connection for this tab (tab null) or another.
  need(room, sub, tab) {
    const link = this.link;
    if (!link.has(room)) {
      link.add(room, sub);
      this.replayTo(tab, room, sub.position); // no event of it came before
    } else if (sub.position && !sub.last) {
      // Another tab has the room: events this snapshot did not see may have
      // passed already. Join again from the older snapshot, so the stream
      // holds what both need; each tab drops what its own snapshot saw.
      link.rejoin(room, olderPosition(link.position(room), sub.position));
    } else if (link.isLive(room)) {
      // Nobody else will confirm it, so the asking tab gets its "subscribed" here.
      const msg = { type: "subscribed", room, last: link.last(room) };
      if (tab) this.post({ t: "control", to: tab, msg });
      else this.control(msg);
    }
  }

  replayTo(tab, room, position) {
    if (tab) this.post({ t: "replay", to: tab, room, position });
    else this.replayStarts(room, position);
  }

  // replayStarts: from here on, the connection's stream of room starts from
  // position. A room waiting for its own position, or an older one, takes it.
  replayStarts(room, position) {
    const r = this.rooms.get(room);
    if (r?.hold && olderOrSame(position, r.position)) r.hold = false;
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

  roomPositions() {
    return Object.fromEntries([...this.rooms].filter(([, r]) => r.position).map(([room, r]) => [room, r.position]));
  }

  // --- delivery in this tab ---

  deliver(events) {
    for (const ev of events) {
      const r = this.rooms.get(ev.room);
      // Another tab's room, waiting for its stream, or seen already (a new
      // leader may replay a little).
      if (!r || r.hold || !isAfter(ev.id, r.last)) continue;
      r.last = ev.id;
      if (sawTx(r.snap, ev.tx)) continue; // the page shows it already: another tab's stream
      for (const h of [...r.handlers]) {
        try { h(ev); } catch (e) { console.error("rowcast handler", e); }
      }
    }
  }

  control(m) {
    const r = m.room ? this.rooms.get(m.room) : null;
    if (m.room && !r) return; // about another tab's room
    if (r) this.roomControl(m.room, r, m);
    if (m.type === "error") this.emit("error", { room: m.room || "", code: m.code || "", message: m.message || "" });
    this.emit("control", m);
  }

  roomControl(room, r, m) {
    switch (m.type) {
      case "subscribed": // resume from here after a takeover
        if (!r.last && !r.hold && m.last) r.last = m.last;
        break;
      case "reset":
        this.reset(room, r, m.code || "history_lost");
        break;
      case "error":
        // The position is past use; the connection joined the room live
        // instead, so the page reloads as after a reset.
        if (m.code === "position_too_old") {
          Object.assign(r, { position: "", snap: null });
          this.reset(room, r, m.code);
        }
        break;
    }
  }

  reset(room, r, code) {
    Object.assign(r, { last: "", hold: false });
    this.emit("reset", { room, code });
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

// linkRoom is what a connection keeps per room. rejoining: subscribed again;
// its events are dropped until the old subscription has ended, which is its
// "unsubscribed" frame (unsubs counts those awaited) or a new connection.
function linkRoom({ last = "", position = "" }) {
  return { last, position, live: false, rejoining: false, unsubs: 0 };
}

// Link is one connection (WebSocket or SSE) for a set of rooms. It keeps the
// last id and the position of each room to resume and to drop duplicates,
// and reports fresh events, control messages, state changes and where a
// room's stream starts again to its sink.
class Link {
  constructor(opts, rooms, sink) {
    this.opts = opts;
    this.sink = sink;
    this.rooms = new Map(); // room -> linkRoom
    for (const [room, sub] of rooms) this.rooms.set(room, linkRoom(sub));
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
    globalThis.addEventListener?.("online", this.onOnline);
    this.connect();
  }

  status() { return { state: this.state, transport: this.transport }; }
  roomNames() { return [...this.rooms.keys()]; }
  has(room) { return this.rooms.has(room); }
  isLive(room) { return !!this.rooms.get(room)?.live; }
  last(room) { return this.rooms.get(room)?.last || ""; }
  position(room) { return this.rooms.get(room)?.position || ""; }

  // add subscribes a new room ({last, position}: resume after, filter by).
  add(room, sub) {
    const r = linkRoom(sub);
    this.rooms.set(room, r);
    if (this.wsOpen()) this.send(subscribeFrame(room, r));
    else if (this.transport === "sse" && (this.conn || this.waiting)) this.restartSoon();
    // otherwise the next connection names it
  }

  // rejoin subscribes room again from position, from the start of its
  // history: the stream then replays what that snapshot did not see.
  rejoin(room, position) {
    const r = this.rooms.get(room);
    Object.assign(r, { position, last: "", live: false, rejoining: true });
    if (this.wsOpen()) this.resubscribe(room, r);
    else if (this.transport === "sse" && this.conn) this.restartSoon();
  }

  resubscribe(room, r) {
    r.rejoining = true;
    r.unsubs++;
    this.send({ type: "unsubscribe", room });
    this.send(subscribeFrame(room, r));
  }

  remove(room) {
    if (!this.rooms.delete(room)) return;
    if (this.wsOpen()) this.send({ type: "unsubscribe", room });
    else if (this.transport === "sse" && this.conn) this.restartSoon();
  }

  close() {
    this.closed = true;
    globalThis.removeEventListener?.("online", this.onOnline);
    clearTimeout(this.restartTimer);
    this.teardown();
    this.setState("closed");
  }

  // --- connecting ---

  async connect() {
    if (this.closed) return;
    const sse = pickTransport(this.opts.transport, this.wsFailures, typeof WebSocket === "function") === "sse";
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

  // streamStarts is called as a connection is made: its URL names the rooms
  // as they are now, so rejoined rooms start over with it. It returns the
  // rooms named.
  streamStarts() {
    const named = new Map(this.rooms);
    for (const [room, r] of named) {
      if (!r.rejoining) continue;
      r.rejoining = false;
      this.sink.replay(room, r.position);
    }
    return named;
  }

  openWS() {
    const named = this.streamStarts();
    const ws = new WebSocket(streamURL(this.opts.url, "/ws", this.rooms, this.token));
    this.conn = ws;
    // A proxy can hold an upgrade forever: give up and count it as a failure.
    const giveUp = setTimeout(() => ws.close(), this.opts.connectTimeoutMs);
    ws.onopen = () => {
      clearTimeout(giveUp);
      this.opened();
      // Rooms added, removed or joined again while connecting: the URL did not say so.
      for (const [room, r] of this.rooms) {
        if (!named.has(room)) this.send(subscribeFrame(room, r));
        else if (named.get(room) !== r || r.rejoining) this.resubscribe(room, r);
      }
      for (const room of named.keys()) {
        if (!this.rooms.has(room)) this.send({ type: "unsubscribe", room });
      }
      this.startPing(ws);
    };
    ws.onmessage = (e) => { if (this.conn === ws) this.frame(e.data); };
    ws.onclose = (e) => {
      clearTimeout(giveUp);
      if (this.conn !== ws) return; // we closed it on purpose
      if (wsFailed(this.openedAt, e.code, Date.now())) this.wsFailures++;
      // 1012: the server restarts; 4008: we were too slow. Both: come back soon.
      this.dropped(e.code === 1012 || e.code === 4008);
    };
  }

  openSSE() {
    this.streamStarts();
    const es = new EventSource(streamURL(this.opts.url, "/events", this.rooms, this.token));
    this.conn = es;
    es.onopen = () => this.opened();
    es.onmessage = (e) => { if (this.conn === es) this.frame(e.data); };
    es.addEventListener("control", (e) => { if (this.conn === es) this.frame(e.data); });
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
    const delay = probeDelay(this.probes++);
    clearTimeout(this.probeTimer);
    this.probeTimer = setTimeout(() => this.probe(), delay * (0.5 + Math.random() / 2));
  }

  probe() {
    const ws = new WebSocket(streamURL(this.opts.url, "/ws", new Map(), this.token)); // no rooms: it only tests the path
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
    if (this.transport === "websocket" && fallsBack(this.opts.transport, this.wsFailures)) {
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

  backoff() {
    return backoffDelay(this.attempt++, Math.random());
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
    for (const r of this.rooms.values()) Object.assign(r, { live: false, unsubs: 0 });
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

  // accept advances the room's last id; false for a duplicate, an event of
  // a room we left, or one of a subscription being replaced.
  accept(ev) {
    const r = this.rooms.get(ev.room);
    if (!r || r.rejoining || !isAfter(ev.id, r.last)) return false;
    r.last = ev.id;
    return true;
  }

  control(m) {
    const r = m.room ? this.rooms.get(m.room) : null;
    switch (m.type) {
      case "subscribed": // live delivery is in place; a fresh join starts at the room's head
        if (r?.rejoining) return; // the old subscription's: stale
        if (r) {
          r.live = true;
          if (!r.last && m.last) r.last = m.last;
        }
        break;
      case "unsubscribed": // the old subscription of a rejoined room ended: the new one's events follow
        if (r?.unsubs > 0) {
          if (--r.unsubs === 0 && r.rejoining) {
            r.rejoining = false;
            this.sink.replay(m.room, r.position);
          }
          return; // ours, not the app's
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
        if (r && m.code === "position_too_old") this.joinLive(m.room, r);
        break;
    }
    this.sink.control(m);
  }

  // joinLive joins a room whose position the server refused as too old
  // without it: live from now on, while the app reloads (it gets a reset).
  joinLive(room, r) {
    Object.assign(r, { position: "", last: "" });
    if (this.wsOpen()) this.send(subscribeFrame(room, r));
    else if (this.transport === "sse" && this.conn) this.restartSoon();
  }

  setState(state) {
    if (state === this.state && this.transport === this.reported) return;
    this.state = state;
    this.reported = this.transport;
    this.sink.state({ state, transport: this.transport });
  }
}
