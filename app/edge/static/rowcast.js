// rowcast.js: the browser client for rowcast. No dependencies.
//
//   import { connect } from "/rowcast.js";
//   const rc = connect({ url: location.origin });
//   rc.subscribe("lobby", (event) => console.log(event));
//   rc.on("state", (s) => console.log(s.state, s.transport));
//
// WebSocket first; Server-Sent Events when WebSocket cannot connect. Reconnects
// with exponential backoff and jitter, resumes every room from the last event
// id it saw, and drops duplicates, so a handler sees each event once, in order.

const MAX_BACKOFF_MS = 10000;

export function connect(opts = {}) {
  return new Rowcast(opts);
}

export class Rowcast {
  constructor({ url = location.origin, transport = "auto", heartbeatMs = 45000 } = {}) {
    this.base = url.replace(/\/$/, "");
    this.preferred = transport; // "auto" | "websocket" | "sse"
    this.heartbeatMs = heartbeatMs;
    this.rooms = new Map(); // room -> { handlers: Set, last: "" }
    this.listeners = new Map(); // event name -> Set
    this.state = "closed";
    this.transport = null;
    this.attempt = 0;
    this.wsFailures = 0;
    this.closed = false;
    this.conn = null;
    this.timer = null;
    this.onOnline = () => this.reconnectNow();
    addEventListener("online", this.onOnline);
    this.open();
  }

  // subscribe(room, handler): handler(event) for each event of room. Returns
  // a function that unsubscribes.
  subscribe(room, handler) {
    let r = this.rooms.get(room);
    if (!r) {
      r = { handlers: new Set(), last: "" };
      this.rooms.set(room, r);
      this.sendSubscribe(room);
    }
    r.handlers.add(handler);
    return () => this.unsubscribe(room, handler);
  }

  unsubscribe(room, handler) {
    const r = this.rooms.get(room);
    if (!r) return;
    if (handler) r.handlers.delete(handler);
    if (handler && r.handlers.size > 0) return;
    this.rooms.delete(room);
    if (this.transport === "websocket" && this.conn?.readyState === 1) {
      this.conn.send(JSON.stringify({ type: "unsubscribe", room }));
    } else if (this.transport === "sse") {
      this.restart(); // an SSE stream's rooms are fixed: open a new one
    }
  }

  // on(name, fn): "state" ({state, transport}), "control" (server control
  // messages), "reset" ({room}: history was lost, reload that room's state).
  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(fn);
    return () => this.listeners.get(name).delete(fn);
  }

  close() {
    this.closed = true;
    removeEventListener("online", this.onOnline);
    clearTimeout(this.timer);
    this.teardown();
    this.setState("closed");
  }

  // --- internals ---

  emit(name, value) {
    for (const fn of this.listeners.get(name) || []) {
      try { fn(value); } catch (e) { console.error("rowcast listener", e); }
    }
  }

  setState(state) {
    this.state = state;
    this.emit("state", { state, transport: this.transport });
  }

  cursor() {
    return [...this.rooms].filter(([, r]) => r.last).map(([room, r]) => `${room}@${r.last}`).join(",");
  }

  roomsParam() {
    return [...this.rooms.keys()].join(",");
  }

  useSSE() {
    if (this.preferred === "sse") return true;
    if (this.preferred === "websocket") return false;
    return typeof WebSocket === "undefined" || this.wsFailures >= 2;
  }

  open() {
    if (this.closed) return;
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting");
    if (this.useSSE()) this.openSSE(); else this.openWS();
  }

  openWS() {
    this.transport = "websocket";
    const u = new URL(this.base + "/ws");
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    u.searchParams.set("rooms", this.roomsParam());
    const cur = this.cursor();
    if (cur) u.searchParams.set("lastEventId", cur);
    let opened = false;
    const ws = new WebSocket(u);
    this.conn = ws;
    ws.onopen = () => {
      opened = true;
      this.wsFailures = 0;
      this.attempt = 0;
      this.setState("open");
      this.beat();
    };
    ws.onmessage = (e) => { this.beat(); this.handle(e.data); };
    ws.onclose = (e) => {
      if (this.conn !== ws) return;
      if (!opened) this.wsFailures++;
      if (this.wsFailures === 2 && this.preferred === "auto") this.emit("state", { state: "fallback", transport: "sse" });
      this.scheduleReconnect(e.code === 1012 || e.code === 4008);
    };
  }

  openSSE() {
    this.transport = "sse";
    const u = new URL(this.base + "/events");
    u.searchParams.set("rooms", this.roomsParam());
    const cur = this.cursor();
    if (cur) u.searchParams.set("lastEventId", cur);
    const es = new EventSource(u);
    this.conn = es;
    es.onopen = () => { this.attempt = 0; this.setState("open"); this.beat(); };
    es.onmessage = (e) => { this.beat(); this.handle(e.data); };
    es.addEventListener("control", (e) => { this.beat(); this.handle(e.data); });
    es.onerror = () => {
      if (this.conn !== es) return;
      // We manage reconnects ourselves, with a fresh cursor and backoff.
      this.scheduleReconnect(false);
    };
  }

  sendSubscribe(room) {
    if (this.transport === "websocket" && this.conn?.readyState === 1) {
      const r = this.rooms.get(room);
      this.conn.send(JSON.stringify({ type: "subscribe", room, since: r?.last || undefined }));
    } else if (this.transport === "sse" && this.conn) {
      this.restart();
    } else if (!this.conn && !this.closed) {
      this.open();
    }
  }

  handle(text) {
    let msg;
    try { msg = JSON.parse(text); } catch { console.warn("rowcast: bad frame", text); return; }
    const events = Array.isArray(msg) ? msg : [msg];
    for (const m of events) {
      if (m.type) this.control(m); else this.event(m);
    }
  }

  control(m) {
    this.emit("control", m);
    const r = m.room && this.rooms.get(m.room);
    switch (m.type) {
      case "subscribed":
        if (r && m.last && !r.last) r.last = m.last;
        break;
      case "reset":
        if (r) r.last = "";
        this.emit("reset", { room: m.room });
        break;
      case "reconnect":
        this.scheduleReconnect(true);
        break;
      case "error":
        console.warn("rowcast:", m.code, m.message);
        break;
    }
  }

  event(ev) {
    const r = this.rooms.get(ev.room);
    if (!r) return;
    if (r.last && !isAfter(ev.id, r.last)) return; // duplicate
    r.last = ev.id;
    for (const h of r.handlers) {
      try { h(ev); } catch (e) { console.error("rowcast handler", e); }
    }
  }

  // beat notes traffic; silence longer than the heartbeat means a dead link.
  beat() {
    clearTimeout(this.deadTimer);
    this.deadTimer = setTimeout(() => this.reconnectNow(), this.heartbeatMs);
  }

  teardown() {
    clearTimeout(this.deadTimer);
    const c = this.conn;
    this.conn = null;
    if (c) c.close();
  }

  restart() {
    this.teardown();
    this.open();
  }

  reconnectNow() {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.attempt = 0;
    this.restart();
  }

  scheduleReconnect(soon) {
    this.teardown();
    if (this.closed) return;
    this.setState("reconnecting");
    const base = soon ? 100 : Math.min(MAX_BACKOFF_MS, 250 * 2 ** this.attempt);
    this.attempt++;
    const delay = base / 2 + Math.random() * base / 2; // jitter
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), delay);
  }
}

// isAfter compares ids "<epoch>-<offset>" of one room: a new epoch is always
// after (history was reset); otherwise the offset decides.
export function isAfter(id, last) {
  const i = id.lastIndexOf("-"), j = last.lastIndexOf("-");
  if (id.slice(0, i) !== last.slice(0, j)) return true;
  return Number(id.slice(i + 1)) > Number(last.slice(j + 1));
}
