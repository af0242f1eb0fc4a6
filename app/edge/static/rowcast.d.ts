// Type declarations for /rowcast.js, the browser client of rowcast.
//
//   import { connect } from "/rowcast.js";
//   const rc = connect();
//   const { position, messages } = await (await fetch("/api/history?room=lobby")).json();
//   render(messages);
//   const off = rc.subscribe("lobby", (ev) => show(ev), { since: position });

/** A row change, as every transport delivers it. */
export interface RowcastEvent<Row = Record<string, unknown>> {
  /** "<epoch>-<offset>": offsets count the room's events from 1; the epoch changes when history was lost. */
  id: string;
  /** The id of the transaction that made the change (positions are checked against it). */
  tx: number;
  room: string;
  /** The table, schema-qualified: "public.chat_message". */
  table: string;
  op: "INSERT" | "UPDATE" | "DELETE";
  /** When the change was captured, inside the transaction (RFC 3339, microseconds). */
  at: string;
  /** The new row, or the old one for DELETE; null when the row was too large to send. */
  data: Row | null;
  /** Present and true when data was left out because the row was too large. */
  truncated?: boolean;
}

/** Codes of "error" control messages. The connection stays after each. */
export type ErrorCode =
  | "bad_request"
  | "too_many_rooms"
  | "unavailable"
  | "forbidden"
  | "rate_limited"
  /** The position is not a token rowcast.position() made: the room was not joined. */
  | "bad_position"
  /** The position comes from another database: the room was not joined. */
  | "foreign_position"
  /** The position is older than the history's TTL: the room was not joined; reload it. */
  | "position_too_old"
  | (string & {});

/** Codes of "reset" control messages: reload the room's state. */
export type ResetCode = "history_lost" | "position_too_old" | (string & {});

/** A control message from the server; events never have a type. */
export type Control =
  | { type: "subscribed"; room: string; last: string }
  | { type: "unsubscribed"; room: string }
  | { type: "error"; room?: string; code: ErrorCode; message?: string }
  | { type: "reset"; room: string; code?: ResetCode }
  | { type: "reconnect" }
  | { type: "closing"; code: string; message?: string }
  | { type: "pong" };

export type ConnectionState = "connecting" | "open" | "fallback" | "reconnecting" | "closed";
export type Transport = "websocket" | "sse";
/** leader: this tab holds the shared connection; follower: another tab does; solo: not shared. */
export type Role = "leader" | "follower" | "solo";

export interface StateChange {
  state: ConnectionState;
  transport: Transport | null;
  role: Role;
}

export interface ResetNotice {
  room: string;
  /** Why: "history_lost", or "position_too_old" (history no longer reaches back to the position). */
  code: ResetCode;
}

export interface ErrorNotice {
  /** The room the error is about, or "" for the connection. */
  room: string;
  code: ErrorCode;
  message: string;
}

export interface RowcastEvents {
  /** Called at once with the current state, then on every change. */
  state: StateChange;
  /** The room's history was lost or no longer reaches its position: reload its state. */
  reset: ResetNotice;
  /** The server refused something, e.g. a room's position. */
  error: ErrorNotice;
  /** Every control message from the server (pong aside in other tabs). */
  control: Control;
}

export interface RowcastOptions {
  /** The server's base URL; default: this page's origin. */
  url?: string;
  /** "auto" (WebSocket, falling back to SSE; default), "websocket" or "sse". */
  transport?: "auto" | Transport;
  /** Share one connection among this origin's tabs (Web Locks + BroadcastChannel); default true. */
  share?: boolean;
  /** Web Lock and BroadcastChannel name; default: per url. */
  name?: string;
  /** A JWT, or a function returning one or a promise of one, called on every connect. */
  token?: string | (() => string | Promise<string>);
  /** WebSocket ping interval in ms; default 15000. */
  pingMs?: number;
  /** How long a ping may go unanswered before the connection counts as dead, in ms; default 5000. */
  pongTimeoutMs?: number;
  /** Give up on a WebSocket that does not open within this, in ms; default 10000. */
  connectTimeoutMs?: number;
}

export interface SubscribeOptions {
  /**
   * Where to start: an event id to resume after, or a position from
   * `SELECT rowcast.position()` (it starts with "p1."): every event that
   * position's snapshot did not see, in order, then live. Absent: live.
   * Counts only for the room's first handler in this tab.
   */
  since?: string;
}

export type Handler<Row = Record<string, unknown>> = (event: RowcastEvent<Row>) => void;

/** The client: one connection (shared among tabs) for any number of rooms. */
export class Rowcast {
  constructor(opts?: RowcastOptions);
  readonly state: ConnectionState;
  readonly transport: Transport | null;
  readonly role: Role;
  /** Calls handler once per event of room, in order; returns a function that unsubscribes it. */
  subscribe<Row = Record<string, unknown>>(room: string, handler: Handler<Row>, opts?: SubscribeOptions): () => void;
  /** Removes one handler, or every handler of room; the room is left when none remains. */
  unsubscribe(room: string, handler?: Handler<any>): void;
  /** Listens to an event; returns a function that stops listening. */
  on<K extends keyof RowcastEvents>(name: K, fn: (value: RowcastEvents[K]) => void): () => void;
  /** Ends this tab's part: a leader closes the connection and hands it to another tab. */
  close(): void;
}

/** Starts a client. */
export function connect(opts?: RowcastOptions): Rowcast;

// --- internal: exported for rowcast.test.mjs, not part of the API; may change ---

/** A room's resume state. @internal */
export interface RoomState {
  last: string;
  position: string;
}

/** A parsed position token. @internal */
export interface PositionSnapshot {
  source: string;
  takenMs: number;
  xmin: number;
  xmax: number;
  xip: Set<number>;
}

/** @internal Whether event id `id` comes after `last` in one room. */
export function isAfter(id: string, last: string): boolean;
/** @internal Whether s is a position token ("p1.…") rather than an event id. */
export function isPosition(s: unknown): boolean;
/** @internal Splits subscribe's `since` into an event id or a position; throws on a malformed token. */
export function parseSince(since?: string | null): RoomState;
/** @internal The snapshot a token names, or null when it cannot be read. */
export function parsePosition(token: unknown): PositionSnapshot | null;
/** @internal Whether the snapshot saw transaction tx (false when unknown). */
export function sawTx(snap: PositionSnapshot | null, tx: unknown): boolean;
/** @internal Whether token a's snapshot saw nothing that b's did not. */
export function olderOrSame(a: string, b: string): boolean;
/** @internal The token that saw less (a readable one wins over garbage). */
export function olderPosition(a: string, b: string): string;
/** @internal The WebSocket subscribe message for a room. */
export function subscribeFrame(room: string, state: Partial<RoomState>): { type: "subscribe"; room: string; since?: string; position?: string };
/** @internal "room@value,…" for the rooms whose key is set. */
export function roomPairs(rooms: Map<string, Partial<RoomState>>, key: keyof RoomState): string;
/** @internal A connection URL: rooms, lastEventId cursor, position, token (ws: for /ws). */
export function streamURL(base: string, path: "/ws" | "/events", rooms: Map<string, Partial<RoomState>>, token?: string): URL;
/** @internal Whether WebSocket failed often enough to use SSE. */
export function fallsBack(wanted: "auto" | Transport, wsFailures: number): boolean;
/** @internal The next connection's transport. */
export function pickTransport(wanted: "auto" | Transport, wsFailures: number, hasWebSocket: boolean): Transport;
/** @internal Whether a closed WebSocket counts as a WebSocket failure. */
export function wsFailed(openedAt: number, code: number, now: number): boolean;
/** @internal The reconnect pause after `attempt` failures, in ms; rand in [0, 1). */
export function backoffDelay(attempt: number, rand: number): number;
/** @internal The pause before the next WebSocket probe from SSE, in ms, before jitter. */
export function probeDelay(probes: number): number;
