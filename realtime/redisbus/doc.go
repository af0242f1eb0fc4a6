// Package redisbus is the Redis implementation of realtime.Bus (edge side)
// and the Publisher the listener uses to append events.
//
// Per room it keeps, under one hash tag so a Redis Cluster holds them in one
// slot: an epoch (random, recreated when Redis loses the room), an offset
// counter, a bounded stream of recent events (the history that clients resume
// from), and a sorted set of recently published outbox ids that makes a
// repeated publish of the same outbox row a no-op. Live delivery is a pub/sub
// channel per room carrying the same bytes as the stream.
package redisbus
