// Package realtime is rowcast's shared core: the event identity (ID, Cursor),
// room names (Room), the local fan-out (Hub and Client) and the contract with
// the distributed engine that joins edge processes (Bus).
//
// The flow inside one edge process: a Bus implementation receives each
// published event once per process and hands it to the Hub, which keeps a
// room index and gives the same encoded bytes to every local Client of that
// room. A Client owns one browser connection: it tracks the last ID it
// delivered per room, so replayed history and live messages meet without a
// gap or a duplicate, and it writes through a small Transport interface that
// the app package implements for WebSocket and Server-Sent Events. realtime
// imports neither Echo nor melody nor Redis.
package realtime
