package redisbus

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// pubsubKind is the flavour of pub/sub the listener publishes with and the
// edges subscribe with. On a Cluster it is sharded pub/sub (SPUBLISH and
// SSUBSCRIBE, Redis 7): an event travels only through the shard that owns
// its room. On one server or Sentinel it is classic PUBLISH and SUBSCRIBE,
// which every Redis has, managed services that stop at the 6.2 protocol
// included; with one primary, sharding buys nothing there.
type pubsubKind struct{ sharded bool }

// kindFor picks the flavour for client: sharded on a Cluster.
func kindFor(client redis.UniversalClient) pubsubKind {
	_, cluster := client.(*redis.ClusterClient)
	return pubsubKind{sharded: cluster}
}

// publishCommand is the command the publish script calls.
func (k pubsubKind) publishCommand() string {
	if k.sharded {
		return "SPUBLISH"
	}
	return "PUBLISH"
}

// open returns a subscription connection with no channel yet.
func (k pubsubKind) open(ctx context.Context, c redis.UniversalClient) *redis.PubSub {
	if k.sharded {
		return c.SSubscribe(ctx)
	}
	return c.Subscribe(ctx)
}

func (k pubsubKind) subscribe(ctx context.Context, ps *redis.PubSub, channels ...string) error {
	if k.sharded {
		return ps.SSubscribe(ctx, channels...)
	}
	return ps.Subscribe(ctx, channels...)
}

func (k pubsubKind) unsubscribe(ctx context.Context, ps *redis.PubSub, channels ...string) error {
	if k.sharded {
		return ps.SUnsubscribe(ctx, channels...)
	}
	return ps.Unsubscribe(ctx, channels...)
}

func (k pubsubKind) publish(ctx context.Context, c redis.UniversalClient, channel string, msg any) error {
	if k.sharded {
		return c.SPublish(ctx, channel, msg).Err()
	}
	return c.Publish(ctx, channel, msg).Err()
}

// subscribed and unsubscribed are the kinds of Redis' confirmations.
func (k pubsubKind) subscribed() string {
	if k.sharded {
		return "ssubscribe"
	}
	return "subscribe"
}

func (k pubsubKind) unsubscribed() string {
	if k.sharded {
		return "sunsubscribe"
	}
	return "unsubscribe"
}
