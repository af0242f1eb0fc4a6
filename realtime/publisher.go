package realtime

import "context"

// Event is one captured change ready to publish. Tail is the encoded event
// without its id: the members after "id", starting with ',' and ending with
// the closing '}'. The publisher prepends the id it assigns.
type Event struct {
	OutboxID int64 // the change's idempotency key: publishing it again is a no-op
	Room     Room
	Tail     []byte
}

// PublishResult is what one Publish did.
type PublishResult struct {
	// Positions holds every room of the batch at its new position, to be
	// recorded in Postgres with the removal of the published rows.
	Positions map[Room]Position
	// New counts the events appended (repeats of an outbox id are not).
	New int
	// Restarted names, per room that got a new epoch although Postgres had
	// recorded one, why the bus was not where Postgres said: its clients
	// are told to reset.
	Restarted map[Room]string
	// Failed holds the rooms whose publish failed or whose outcome is
	// unknown (their shard was unreachable), with the error. They are not
	// in Positions, and must be published again with the same events in the
	// same order before anything newer of the room: the bus may hold them.
	Failed map[Room]error
}

// Publisher is the listener's side of a bus: it gives each event its id,
// appends it to its room's history and hands it to every subscribed edge.
// Implementations: redisbus.Publisher (edges anywhere) and membus.Bus (the
// edge in the same process).
type Publisher interface {
	// Publish appends events in order after checking each room against the
	// position Postgres recorded (recorded; a room missing has none yet):
	// a bus that is not where Postgres says starts the room's new epoch.
	Publish(ctx context.Context, events []Event, recorded map[Room]Position) (PublishResult, error)
	// Sharded reports whether one part of the bus can fail while others
	// work (a Redis Cluster): failed rooms are then in PublishResult.Failed.
	Sharded() bool
	// Announce tells edges which database the events come from.
	Announce(ctx context.Context, source string) error
}
