// Package redisbus is the Redis implementation of realtime.Bus (edge side)
// and the Publisher the listener uses to append events.
//
// Per room it keeps, under one hash tag so a Redis Cluster holds them in one
// slot: an epoch (random, recreated when Redis loses the room), an offset
// counter, a bounded stream of recent events (the history that clients resume
// from), and a sorted set of recently published outbox ids that makes a
// repeated publish of the same outbox row a no-op. Live delivery is a sharded
// pub/sub channel per room, rowcast:{room}:live (SPUBLISH / SSUBSCRIBE,
// Redis 7), carrying the same bytes as the stream.
//
// The Bus works on one server, behind Sentinel (the failover client follows
// the promoted primary) and on a Redis Cluster, where a room's channel lives
// on the master of the room's slot: the Bus holds one subscription per
// master, places each room on its master's subscription, and proves each
// subscription with a probe published to a channel of that master. When a
// master dies, a subscription stops answering, a slot moves (Redis ends
// the subscriptions of a slot it gives away) or an SSUBSCRIBE is answered
// MOVED, the Bus re-reads the slot map, subscribes the rooms where they now
// live, and reports each as resubscribed so that the Hub catches it up from
// the stream.
package redisbus
