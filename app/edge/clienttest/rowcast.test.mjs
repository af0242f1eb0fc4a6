// Unit tests of rowcast.js: node --test app/edge/static/
//
// The browser APIs rowcast.js uses (WebSocket, EventSource, timers, Date.now,
// BroadcastChannel, Web Locks, window events) are replaced by the fakes below;
// each test plays the server's side by hand.
import { test, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  connect, isAfter, isPosition, parseSince, parsePosition, sawTx, olderOrSame, olderPosition,
  subscribeFrame, roomPairs, streamURL, fallsBack, pickTransport, wsFailed, backoffDelay, probeDelay,
} from "../static/rowcast.js";

const BASE = "http://edge.test";

// tok builds a position token as rowcast.position() does.
const tok = (xmin, xmax, xip = [], source = "ab12") => `p1.${source}.1700000000000.${xmin}.${xmax}.${xip.join("_")}`;

// ev builds an event of room with offset n (epoch e1 unless given).
const ev = (room, n, tx, epoch = "e1") => ({
  id: `${epoch}-${n}`, tx, room, table: "public.chat_message", op: "INSERT", at: "2026-11-30T10:00:00.000000Z",
  data: { id: n, room, author: "a", body: `${room} ${n}` },
});

// --- fakes ---

const clock = { now: 1_000_000, seq: 0, timers: new Map() };
const real = { setTimeout, clearTimeout, setInterval, clearInterval, now: Date.now, warn: console.warn };

function installClock() {
  clock.timers.clear();
  globalThis.setTimeout = (fn, ms = 0) => {
    const id = ++clock.seq;
    clock.timers.set(id, { id, at: clock.now + Math.max(0, ms), fn });
    return id;
  };
  globalThis.setInterval = (fn, ms) => {
    const id = ++clock.seq;
    clock.timers.set(id, { id, at: clock.now + ms, fn, every: ms });
    return id;
  };
  globalThis.clearTimeout = globalThis.clearInterval = (id) => clock.timers.delete(id);
  Date.now = () => clock.now;
}

// tick advances the fake clock by ms, running the timers due, in order.
function tick(ms) {
  const end = clock.now + ms;
  for (;;) {
    const due = [...clock.timers.values()].filter((t) => t.at <= end).sort((a, b) => a.at - b.at || a.id - b.id);
    if (!due.length) break;
    const t = due[0];
    clock.now = t.at;
    if (t.every) t.at += t.every; else clock.timers.delete(t.id);
    t.fn();
  }
  clock.now = end;
}

class FakeWebSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSED = 3;
  static all = [];
  constructor(url) {
    this.url = new URL(String(url));
    this.readyState = FakeWebSocket.CONNECTING;
    this.sent = [];
    FakeWebSocket.all.push(this);
  }
  send(text) { this.sent.push(JSON.parse(text)); }
  close() { this.end(1006); } // a browser reports a connection it gave up on as 1006
  // The server's side:
  open() { this.readyState = FakeWebSocket.OPEN; this.onopen?.({}); }
  push(msg) { this.onmessage?.({ data: JSON.stringify(msg) }); }
  end(code) {
    if (this.readyState === FakeWebSocket.CLOSED) return;
    this.readyState = FakeWebSocket.CLOSED;
    this.onclose?.({ code });
  }
}

class FakeEventSource {
  static all = [];
  constructor(url) {
    this.url = new URL(String(url));
    this.closed = false;
    this.controls = [];
    FakeEventSource.all.push(this);
  }
  addEventListener(name, fn) { if (name === "control") this.controls.push(fn); }
  close() { this.closed = true; }
  // The server's side:
  open() { this.onopen?.({}); }
  push(msg) { this.onmessage?.({ data: JSON.stringify(msg) }); }
  control(msg) { for (const fn of this.controls) fn({ data: JSON.stringify(msg) }); }
  fail() { this.onerror?.({}); }
}

// BroadcastChannel: delivers to the other channels of the name, when flushed.
const channels = new Set();
let channelQueue = [];
class FakeChannel {
  static posted = [];
  constructor(name) { this.name = name; channels.add(this); }
  postMessage(msg) {
    FakeChannel.posted.push(structuredClone(msg));
    for (const c of channels) {
      if (c !== this && c.name === this.name) channelQueue.push([c, structuredClone(msg)]);
    }
  }
  close() { channels.delete(this); }
}

// Web Locks: one holder per name, granted in request order.
class FakeLocks {
  held = new Map();
  queue = [];
  request(name, { signal } = {}, cb) {
    return new Promise((resolve, reject) => {
      const req = { name, cb, resolve };
      signal?.addEventListener("abort", () => {
        const i = this.queue.indexOf(req);
        if (i >= 0) this.queue.splice(i, 1);
        reject(new Error("aborted"));
      });
      this.queue.push(req);
      queueMicrotask(() => this.grant());
    });
  }
  grant() {
    for (const req of [...this.queue]) {
      if (this.held.has(req.name)) continue;
      this.queue.splice(this.queue.indexOf(req), 1);
      this.held.set(req.name, req);
      Promise.resolve(req.cb()).then((v) => {
        this.held.delete(req.name);
        req.resolve(v);
        this.grant();
      });
    }
  }
  async query() {
    return { held: [...this.held.keys()].map((name) => ({ name })), pending: this.queue.map((r) => ({ name: r.name })) };
  }
}

// settle lets microtasks, lock grants and channel messages run to the end.
async function settle() {
  for (let i = 0; i < 20; i++) {
    await new Promise((resolve) => setImmediate(resolve));
    const batch = channelQueue;
    channelQueue = [];
    for (const [c, data] of batch) if (channels.has(c)) c.onmessage?.({ data });
  }
}

let clients = [];
const savedNavigator = Object.getOwnPropertyDescriptor(globalThis, "navigator");

beforeEach(() => {
  installClock();
  FakeWebSocket.all = [];
  FakeEventSource.all = [];
  FakeChannel.posted = [];
  channels.clear();
  channelQueue = [];
  const win = new EventTarget();
  Object.assign(globalThis, {
    WebSocket: FakeWebSocket, EventSource: FakeEventSource, BroadcastChannel: FakeChannel,
    addEventListener: win.addEventListener.bind(win), removeEventListener: win.removeEventListener.bind(win),
    dispatchEvent: win.dispatchEvent.bind(win),
  });
  Object.defineProperty(globalThis, "navigator", { value: { locks: new FakeLocks() }, configurable: true, writable: true });
  console.warn = () => {}; // rowcast.js warns about every refusal the tests provoke
});

afterEach(() => {
  for (const c of clients) c.close();
  clients = [];
  const { now, warn, ...timers } = real;
  Object.assign(globalThis, timers);
  Date.now = now;
  console.warn = warn;
  if (savedNavigator) Object.defineProperty(globalThis, "navigator", savedNavigator);
  else delete globalThis.navigator;
});

// client starts a client; share is off unless asked for.
function client(opts = {}) {
  const c = connect({ url: BASE, share: false, ...opts });
  clients.push(c);
  return c;
}

// recorder returns a handler that records what it is given, and the record.
function recorder() {
  const got = [];
  return [(e) => got.push(e.id), got];
}

const lastWS = () => FakeWebSocket.all.at(-1);
const params = (u) => Object.fromEntries(u.searchParams);

// ---------- pure logic ----------

test("isAfter compares offsets as numbers within an epoch; another epoch is after", () => {
  assert.equal(isAfter("e1-10", "e1-9"), true);
  assert.equal(isAfter("e1-9", "e1-10"), false);
  assert.equal(isAfter("e1-9", "e1-9"), false);
  assert.equal(isAfter("e2-1", "e1-900"), true);
  assert.equal(isAfter("e1-1", ""), true);
});

test("parseSince tells a position from an event id", () => {
  assert.deepEqual(parseSince("e1-42"), { last: "e1-42", position: "" });
  assert.deepEqual(parseSince(""), { last: "", position: "" });
  assert.deepEqual(parseSince(undefined), { last: "", position: "" });
  const p = tok(10, 12, [11]);
  assert.deepEqual(parseSince(p), { last: "", position: p });
  assert.equal(isPosition(p), true);
  assert.equal(isPosition("e1-42"), false);
  // Characters rowcast.position() never returns would change the URL's meaning.
  assert.throws(() => parseSince("p1.ab,other@p1.x"), TypeError);
});

test("parsePosition and sawTx decide as the server does", () => {
  const s = parsePosition(tok(100, 105, [101, 103]));
  assert.equal(s.xmin, 100);
  assert.equal(s.xmax, 105);
  assert.deepEqual([99, 100, 101, 102, 103, 104, 105, 200].map((tx) => sawTx(s, tx)),
    [true, true, false, true, false, true, false, false]);
  assert.equal(sawTx(s, undefined), false, "an event without tx is delivered");
  assert.equal(sawTx(null, 1), false, "no snapshot: delivered");
  for (const bad of ["p1.ab.1.5.4.", "p1.ab.1.1.5.9", "p1.ab.1.x.5.", "p1..1.1.5.", "p2.ab.1.1.5.", "p1.ab.1.1.99999999999999999.", "e1-5"]) {
    assert.equal(parsePosition(bad), null, bad);
  }
});

test("olderPosition keeps the snapshot that saw less", () => {
  const early = tok(100, 105, [101]), later = tok(104, 110), sameXmaxLater = tok(100, 105);
  assert.equal(olderOrSame(early, later), true);
  assert.equal(olderOrSame(later, early), false);
  assert.equal(olderOrSame(early, sameXmaxLater), true, "101 still running: saw less");
  assert.equal(olderOrSame(sameXmaxLater, early), false);
  assert.equal(olderOrSame(early, tok(104, 110, [], "cd34")), false, "another database");
  assert.equal(olderPosition(later, early), early);
  assert.equal(olderPosition(early, later), early);
  assert.equal(olderPosition("", later), later);
  assert.equal(olderPosition(early, "p1.garbage"), early, "garbage never replaces a good token");
  assert.equal(olderPosition("p1.garbage", later), later);
});

test("subscribeFrame: position first, since and position once an id was seen", () => {
  const p = tok(1, 2);
  assert.deepEqual(subscribeFrame("r", { last: "", position: p }), { type: "subscribe", room: "r", position: p });
  assert.deepEqual(subscribeFrame("r", { last: "e1-3", position: p }), { type: "subscribe", room: "r", since: "e1-3", position: p });
  assert.deepEqual(subscribeFrame("r", { last: "e1-3", position: "" }), { type: "subscribe", room: "r", since: "e1-3" });
  assert.deepEqual(subscribeFrame("r", { last: "", position: "" }), { type: "subscribe", room: "r" });
});

test("streamURL names rooms, the cursor and the positions of the rooms that have one", () => {
  const p = tok(7, 9, [8]);
  const rooms = new Map([["a", { last: "e1-3", position: p }], ["b", { last: "", position: "" }], ["c", { last: "e2-1", position: "" }]]);
  assert.equal(roomPairs(rooms, "position"), `a@${p}`);
  const sse = streamURL(BASE, "/events", rooms, "jwt");
  assert.equal(sse.pathname, "/events");
  assert.deepEqual(params(sse), { rooms: "a,b,c", lastEventId: "a@e1-3,c@e2-1", position: `a@${p}`, token: "jwt" });
  const ws = streamURL("https://edge.test", "/ws", rooms, "");
  assert.equal(ws.protocol, "wss:");
  assert.equal(ws.searchParams.has("token"), false);
  assert.deepEqual(params(streamURL(BASE, "/ws", new Map(), "")), {}, "a probe names nothing");
});

test("transport decisions: fall back after two WebSocket failures, only in auto", () => {
  assert.equal(pickTransport("auto", 0, true), "websocket");
  assert.equal(pickTransport("auto", 1, true), "websocket");
  assert.equal(pickTransport("auto", 2, true), "sse");
  assert.equal(pickTransport("auto", 0, false), "sse");
  assert.equal(pickTransport("websocket", 5, true), "websocket");
  assert.equal(pickTransport("sse", 0, true), "sse");
  assert.equal(fallsBack("websocket", 9), false);
  assert.equal(wsFailed(0, 1000, 5), true, "never opened");
  assert.equal(wsFailed(1000, 1006, 2000), true, "cut at once");
  assert.equal(wsFailed(1000, 1006, 20000), false, "lived long enough");
  assert.equal(wsFailed(1000, 1012, 2000), false, "the server restarts: not the path's fault");
  assert.equal(backoffDelay(0, 0), 125);
  assert.equal(backoffDelay(3, 0.999999) <= 2000, true);
  assert.equal(backoffDelay(30, 0), 7500, "capped at 15 s");
  assert.deepEqual([0, 1, 2, 10].map(probeDelay), [30000, 60000, 120000, 600000]);
});

// ---------- one tab, WebSocket ----------

test("a position goes in the first URL and in the subscribe frame of a room added later", async () => {
  const pa = tok(100, 101), pb = tok(200, 202, [201]);
  const rc = client();
  rc.subscribe("lobby", () => {}, { since: pa });
  await settle();
  const ws = lastWS();
  assert.deepEqual(params(ws.url), { rooms: "lobby", position: `lobby@${pa}` });
  ws.open();
  rc.subscribe("ops", () => {}, { since: pb });
  rc.subscribe("random", () => {});
  rc.subscribe("old", () => {}, { since: "e1-5" });
  assert.deepEqual(ws.sent, [
    { type: "subscribe", room: "ops", position: pb },
    { type: "subscribe", room: "random" },
    { type: "subscribe", room: "old", since: "e1-5" },
  ]);
});

test("a reconnect resumes from the last id and sends the position again", async () => {
  const p = tok(100, 101);
  const rc = client();
  const [h, got] = recorder();
  rc.subscribe("lobby", h, { since: p });
  await settle();
  let ws = lastWS();
  ws.open();
  ws.push({ type: "subscribed", room: "lobby", last: "e1-3" });
  ws.push([ev("lobby", 4, 101), ev("lobby", 5, 102)]);
  ws.end(1012); // the server restarts
  tick(1000);
  ws = lastWS();
  assert.equal(FakeWebSocket.all.length, 2);
  assert.deepEqual(params(ws.url), { rooms: "lobby", lastEventId: "lobby@e1-5", position: `lobby@${p}` });
  // The server replays a little: nothing is shown twice.
  ws.open();
  ws.push([ev("lobby", 5, 102), ev("lobby", 6, 103)]);
  assert.deepEqual(got, ["e1-4", "e1-5", "e1-6"]);

  // Subscribed again (e.g. after a takeover) with a position and an id: a frame with both.
  ws.end(1012);
  tick(1000);
  lastWS().open();
  rc.subscribe("later", () => {}, { since: p });
  assert.deepEqual(lastWS().sent.at(-1), { type: "subscribe", room: "later", position: p });
});

test("duplicates and older ids are dropped; another epoch is delivered", async () => {
  const rc = client();
  const [h, got] = recorder();
  rc.subscribe("r", h);
  await settle();
  const ws = lastWS();
  ws.open();
  ws.push({ type: "subscribed", room: "r", last: "e1-9" });
  ws.push(ev("r", 9, 1)); // at the head already
  ws.push([ev("r", 10, 2), ev("r", 10, 2), ev("r", 11, 3)]);
  ws.push(ev("r", 2, 4)); // older
  ws.push(ev("elsewhere", 12, 5)); // a room nobody subscribed
  ws.push({ type: "reset", room: "r", code: "history_lost" });
  ws.push(ev("r", 1, 6, "e2"));
  assert.deepEqual(got, ["e1-10", "e1-11", "e2-1"]);
});

test("error codes reach the app; position_too_old is a reset and the room goes on live", async () => {
  const p = tok(100, 101);
  const rc = client();
  const errors = [], resets = [];
  rc.on("error", (e) => errors.push(`${e.room} ${e.code}`));
  rc.on("reset", (r) => resets.push(`${r.room} ${r.code}`));
  for (const room of ["bad", "foreign", "old", "gone"]) rc.subscribe(room, () => {}, { since: p });
  await settle();
  const ws = lastWS();
  ws.open();
  ws.push({ type: "error", room: "bad", code: "bad_position", message: "bad position: not a token" });
  ws.push({ type: "error", room: "foreign", code: "foreign_position", message: "position of another database" });
  ws.push({ type: "error", room: "old", code: "position_too_old", message: "taken 25h ago" });
  ws.push({ type: "reset", room: "gone", code: "position_too_old" });
  assert.deepEqual(errors, ["bad bad_position", "foreign foreign_position", "old position_too_old"]);
  assert.deepEqual(resets, ["old position_too_old", "gone position_too_old"]);
  // The too-old room is joined again without the position; the others wait for the app.
  assert.deepEqual(ws.sent, [{ type: "subscribe", room: "old" }]);
  // After the reset, "gone" resumes by position only (its ids start over).
  ws.end(1012);
  tick(1000);
  assert.deepEqual(params(lastWS().url), {
    rooms: "bad,foreign,old,gone", position: `bad@${p},foreign@${p},gone@${p}`,
  });
});

test("the snapshot's own changes are dropped in the tab, by tx", async () => {
  const p = tok(100, 103, [101]); // saw 100 and 102, not 101 or 103
  const rc = client();
  const [h, got] = recorder();
  rc.subscribe("r", h, { since: p });
  await settle();
  const ws = lastWS();
  ws.open();
  ws.push([ev("r", 1, 100), ev("r", 2, 101), ev("r", 3, 102), ev("r", 4, 103), ev("r", 5)]);
  assert.deepEqual(got, ["e1-2", "e1-4", "e1-5"]);
});

// ---------- one tab, SSE ----------

test("SSE: positions and the cursor travel in the URL; rooms without a token are left out", async () => {
  const pa = tok(10, 11);
  const rc = client({ transport: "sse" });
  const [h, got] = recorder();
  const errors = [];
  rc.on("error", (e) => errors.push(e.code));
  rc.subscribe("a", h, { since: pa });
  rc.subscribe("b", () => {});
  await settle();
  assert.equal(FakeWebSocket.all.length, 0);
  let es = FakeEventSource.all.at(-1);
  assert.equal(es.url.pathname, "/events");
  assert.deepEqual(params(es.url), { rooms: "a,b", position: `a@${pa}` });
  es.open();
  es.push(ev("a", 1, 11));
  es.push(ev("a", 2, 12));
  es.control({ type: "error", room: "b", code: "foreign_position", message: "x" });
  assert.deepEqual(errors, ["foreign_position"]);
  es.fail();
  tick(1000);
  assert.equal(es.closed, true);
  es = FakeEventSource.all.at(-1);
  assert.deepEqual(params(es.url), { rooms: "a,b", lastEventId: "a@e1-2", position: `a@${pa}` });
  es.open();
  es.push(ev("a", 2, 12));
  es.push(ev("a", 3, 13));
  assert.deepEqual(got, ["e1-1", "e1-2", "e1-3"]);
  // A room added later reopens the stream with its position.
  const pc = tok(20, 21);
  rc.subscribe("c", () => {}, { since: pc });
  tick(20);
  assert.deepEqual(params(FakeEventSource.all.at(-1).url),
    { rooms: "a,b,c", lastEventId: "a@e1-3", position: `a@${pa},c@${pc}` });
});

test("SSE: a too-old position reopens the stream without it", async () => {
  const p = tok(10, 11);
  const rc = client({ transport: "sse" });
  const resets = [];
  rc.on("reset", (r) => resets.push(r.code));
  rc.subscribe("a", () => {}, { since: p });
  await settle();
  FakeEventSource.all.at(-1).open();
  FakeEventSource.all.at(-1).control({ type: "error", room: "a", code: "position_too_old", message: "old" });
  tick(20);
  assert.deepEqual(resets, ["position_too_old"]);
  assert.deepEqual(params(FakeEventSource.all.at(-1).url), { rooms: "a" });
});

// ---------- fallback ----------

test("two WebSocket failures fall back to SSE; a probe brings WebSocket back", async () => {
  const rc = client({ connectTimeoutMs: 1000 });
  const states = [];
  rc.on("state", (s) => states.push(`${s.state}/${s.transport}`));
  const [h, got] = recorder();
  rc.subscribe("r", h);
  await settle();
  assert.equal(FakeWebSocket.all.length, 1);
  tick(1000); // never opens: given up, failure 1
  tick(250); // the first backoff is 125-250 ms
  assert.equal(FakeWebSocket.all.length, 2);
  lastWS().open();
  lastWS().end(1006); // cut at once: failure 2
  tick(0);
  assert.equal(states.includes("fallback/sse"), true, states.join(" "));
  assert.equal(FakeEventSource.all.length, 1);
  const es = FakeEventSource.all[0];
  assert.deepEqual(params(es.url), { rooms: "r" });
  es.open();
  es.push(ev("r", 1, 1));
  assert.equal(FakeWebSocket.all.length, 2, "no probe yet");
  tick(30000); // the first probe comes within 15-30 s
  const probe = lastWS();
  assert.equal(FakeWebSocket.all.length, 3);
  assert.deepEqual(params(probe.url), {}, "the probe names no room");
  probe.open();
  tick(0);
  assert.equal(es.closed, true);
  const back = lastWS();
  assert.equal(FakeWebSocket.all.length, 4);
  assert.deepEqual(params(back.url), { rooms: "r", lastEventId: "r@e1-1" });
  back.open();
  assert.equal(states.at(-1), "open/websocket");
  back.push(ev("r", 2, 2));
  assert.deepEqual(got, ["e1-1", "e1-2"]);
});

test("a failed probe waits twice as long for the next", async () => {
  const rc = client({ connectTimeoutMs: 1000 });
  rc.subscribe("r", () => {});
  await settle();
  tick(1000);
  tick(20000);
  tick(1000); // the second WebSocket never opens either: fallback
  tick(0);
  FakeEventSource.all.at(-1).open();
  const before = FakeWebSocket.all.length;
  // The first probe comes 15-30 s after the fallback opened. It fails at
  // once: in one long tick its own connect timeout would fail it first,
  // and the next probe's wait would start from there.
  for (let waited = 0; FakeWebSocket.all.length === before && waited < 30000; waited += 100) tick(100);
  assert.equal(FakeWebSocket.all.length, before + 1);
  lastWS().end(1006); // the probe fails
  tick(29999);
  assert.equal(FakeWebSocket.all.length, before + 1, "the next probe waits 30-60 s");
  tick(30001);
  assert.equal(FakeWebSocket.all.length, before + 2);
});

// ---------- tabs sharing one connection ----------

test("a follower's position travels to the leader, which subscribes with it; the new leader resumes with both", async () => {
  const p = tok(300, 301);
  const a = client({ share: true, name: "tabs" });
  a.subscribe("a-room", () => {});
  await settle();
  assert.equal(a.role, "leader");
  const ws = lastWS();
  ws.open();

  const b = client({ share: true, name: "tabs" });
  const [h, got] = recorder();
  b.subscribe("b-room", h, { since: p });
  await settle();
  assert.equal(b.role, "follower");
  const asked = FakeChannel.posted.filter((m) => m.t === "rooms" && m.rooms["b-room"] !== undefined);
  assert.deepEqual(asked.at(-1).positions, { "b-room": p });
  assert.deepEqual(ws.sent.at(-1), { type: "subscribe", room: "b-room", position: p });
  ws.push({ type: "subscribed", room: "b-room", last: "e1-7" });
  ws.push([ev("b-room", 8, 301), ev("b-room", 9, 302)]);
  await settle();
  assert.deepEqual(got, ["e1-8", "e1-9"]);

  a.close(); // b takes over and resumes after the last id, from the same position
  await settle();
  assert.equal(b.role, "leader");
  const next = lastWS();
  assert.deepEqual(params(next.url), { rooms: "b-room", lastEventId: "b-room@e1-9", position: `b-room@${p}` });
  next.open();
  next.push([ev("b-room", 9, 302), ev("b-room", 10, 303)]);
  await settle();
  assert.deepEqual(got, ["e1-8", "e1-9", "e1-10"]);
});

test("a tab joining a room another tab has live gets what its snapshot missed, once", async () => {
  const pa = tok(100, 101); // tab A's page saw everything below 101
  const pb = tok(102, 103); // tab B's page, loaded later, saw 101 and 102, not 103
  const a = client({ share: true, name: "same" });
  const [ha, gotA] = recorder();
  a.subscribe("lobby", ha, { since: pa });
  await settle();
  const ws = lastWS();
  assert.deepEqual(params(ws.url), { rooms: "lobby", position: `lobby@${pa}` });
  ws.open();
  ws.push({ type: "subscribed", room: "lobby", last: "e1-3" });
  ws.push(ev("lobby", 4, 101)); // B's page shows it
  ws.push(ev("lobby", 5, 103)); // B's page does not: it passes before tab B subscribes
  const c = client({ share: true, name: "same" }); // with a follower, the leader relays every event
  c.subscribe("elsewhere", () => {});
  await settle();

  const b = client({ share: true, name: "same" });
  const [hb, gotB] = recorder();
  b.subscribe("lobby", hb, { since: pb });
  ws.push(ev("lobby", 6, 104)); // relayed before the leader hears of tab B
  await settle();
  // The leader subscribes again from the older snapshot, from the start of history.
  assert.deepEqual(ws.sent.slice(-2), [{ type: "unsubscribe", room: "lobby" }, { type: "subscribe", room: "lobby", position: pa }]);
  ws.push(ev("lobby", 7, 105)); // still the old subscription's: dropped, it comes again
  ws.push({ type: "unsubscribed", room: "lobby" });
  ws.push([ev("lobby", 4, 101), ev("lobby", 5, 103), ev("lobby", 6, 104), ev("lobby", 7, 105)]);
  ws.push({ type: "subscribed", room: "lobby", last: "e1-7" });
  ws.push(ev("lobby", 8, 106));
  await settle();
  assert.deepEqual(gotA, ["e1-4", "e1-5", "e1-6", "e1-7", "e1-8"]);
  assert.deepEqual(gotB, ["e1-5", "e1-6", "e1-7", "e1-8"], "B's page shows 101 already");
  assert.equal(b.role, "follower");
});
