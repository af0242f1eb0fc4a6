-- Postgres is the record, Redis a cache of it: the listener keeps each
-- room's durable position here, written in the same transaction that deletes
-- the outbox rows it published, so a Redis that comes back with less than it
-- had (a snapshot restore, a failover to a lagging replica, evicted keys) is
-- noticed before the next event of the room is given an id.

-- +goose Up
CREATE TABLE rowcast.room_position (
    room        text        PRIMARY KEY,
    -- The room's epoch and its last offset that Redis accepted ('' and 0
    -- until the room's first publish is recorded).
    epoch       text        NOT NULL DEFAULT '',
    last_offset bigint      NOT NULL DEFAULT 0,
    -- run_id of the Redis server that accepted that publish: another run
    -- means Redis restarted (or failed over) since.
    redis_run   text        NOT NULL DEFAULT '',
    -- The relay session that claimed the room's rows and may have published
    -- past last_offset without recording it; kept while that session lives,
    -- NULL after it stopped cleanly. A new leader that finds another session
    -- here knows that Redis may hold (or may have lost) a publish that
    -- Postgres never saw.
    inflight    text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE rowcast.room_position;
