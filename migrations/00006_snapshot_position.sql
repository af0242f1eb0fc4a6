-- Snapshot positions: a page that renders rows from a query subscribes from
-- the query's snapshot, and the stream delivers exactly the changes that
-- snapshot did not see (see realtime.Snapshot).
--  * Every captured change carries its transaction id ("x" in notifications
--    and WAL messages, outbox.tx), which travels in the event as "tx".
--  * rowcast.position() names the calling statement's snapshot.
--  * room_position.max_tx is the highest transaction id among a room's
--    published events: when Redis loses a room, its new history starts with
--    that floor, so a snapshot older than the lost events is told to reset.
--  * rowcast.source identifies this database in every token (a token of
--    another database is refused) and holds the floor for rooms without a
--    position after changes were lost (an invalidated WAL slot).

-- +goose Up
ALTER TABLE rowcast.outbox ADD COLUMN tx xid8;
ALTER TABLE rowcast.rejected ADD COLUMN tx xid8;
ALTER TABLE rowcast.room_position ADD COLUMN max_tx bigint NOT NULL DEFAULT 0;

CREATE TABLE rowcast.source (
    id            text   NOT NULL,
    history_floor bigint NOT NULL DEFAULT 0,
    only_row      bool   PRIMARY KEY DEFAULT true CHECK (only_row)
);
INSERT INTO rowcast.source (id) VALUES (substr(replace(gen_random_uuid()::text, '-', ''), 1, 16));

-- +goose StatementBegin
-- position() returns a token naming the snapshot of the statement that calls
-- it: call it in the same statement as the query whose rows the page shows
-- (any isolation level), or in a REPEATABLE READ transaction with it. STABLE,
-- so it sees the calling statement's snapshot. The token is
-- p1.<database>.<unix ms>.<xmin>.<xmax>.<in-progress ids joined by _>.
CREATE FUNCTION rowcast.position() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT 'p1.' || src.id || '.' || floor(extract(epoch FROM now()) * 1000)::bigint
        || '.' || pg_snapshot_xmin(s) || '.' || pg_snapshot_xmax(s) || '.'
        || coalesce((SELECT string_agg(x::text, '_' ORDER BY x) FROM pg_snapshot_xip(s) AS x), '')
    FROM rowcast.source AS src, pg_current_snapshot() AS s
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION rowcast.capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload jsonb;
    room    text;
    tbl     text;
    i       int;
    state   bigint;
    new_id  bigint;
    at      timestamptz;
    note    text := '';
    sent    int := 0;
    xid     text;
    mark    text;
BEGIN
    IF TG_NARGS < 1 THEN
        RAISE EXCEPTION 'rowcast.capture() on %.% needs the room column as its first argument',
            TG_TABLE_SCHEMA, TG_TABLE_NAME;
    END IF;
    IF TG_OP = 'DELETE' THEN
        payload := to_jsonb(OLD);
    ELSE
        payload := to_jsonb(NEW);
    END IF;
    IF NOT payload ? TG_ARGV[0] THEN
        RAISE EXCEPTION 'rowcast.capture() on %.%: no column %', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0];
    END IF;
    room := payload ->> TG_ARGV[0];
    IF room IS NULL THEN
        RETURN NULL;
    END IF;
    FOR i IN 1 .. TG_NARGS - 1 LOOP
        payload := payload - TG_ARGV[i];
    END LOOP;
    tbl := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME;
    -- The transaction id is assigned before the state is read: a listener
    -- going to sleep waits for every transaction running after its change,
    -- and this one must be among them if it read the old state.
    xid := pg_current_xact_id()::text;
    SELECT last_value INTO state FROM rowcast.capture_state;
    IF state = 2 THEN
        PERFORM pg_logical_emit_message(true, 'rowcast', json_build_object('x', xid::bigint, 'r', room, 't', tbl, 'o', TG_OP,
            'a', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, 'd', payload)::text);
        RETURN NULL;
    END IF;
    INSERT INTO rowcast.outbox (room, table_name, op, row_data, tx)
    VALUES (room, tbl, TG_OP, payload, xid::xid8)
    RETURNING id, captured_at INTO new_id, at;
    IF state = 1 THEN
        RETURN NULL; -- the listener is reading the outbox: no wake-up needed
    END IF;
    -- A transaction's first 16 rows travel in their notifications; past
    -- that, a large transaction is throughput, not latency, and one plain
    -- wake-up (Postgres folds identical notifications) lets the listener
    -- read the outbox in batches. The count lives in a session setting
    -- keyed by the transaction id (a transaction-local set_config costs
    -- about a tenth of single-row INSERT throughput).
    mark := current_setting('rowcast.notified', true);
    IF mark LIKE xid || ':%' THEN
        sent := substr(mark, length(xid) + 2)::int;
    END IF;
    IF sent < 16 THEN
        PERFORM set_config('rowcast.notified', xid || ':' || (sent + 1), false);
        note := json_build_object('i', new_id, 'x', xid::bigint, 'r', room, 't', tbl,
            'o', TG_OP, 'a', (extract(epoch FROM at) * 1000000)::bigint, 'd', payload)::text;
        -- A notification's payload must stay under 8000 bytes.
        IF octet_length(note) > 7900 THEN
            note := '';
        END IF;
    END IF;
    PERFORM pg_notify('rowcast', note);
    RETURN NULL;
END;
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION rowcast.capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload jsonb;
    room    text;
    tbl     text;
    i       int;
    state   bigint;
    new_id  bigint;
    at      timestamptz;
    note    text := '';
    sent    int := 0;
    xid     text;
    mark    text;
BEGIN
    IF TG_NARGS < 1 THEN
        RAISE EXCEPTION 'rowcast.capture() on %.% needs the room column as its first argument',
            TG_TABLE_SCHEMA, TG_TABLE_NAME;
    END IF;
    IF TG_OP = 'DELETE' THEN
        payload := to_jsonb(OLD);
    ELSE
        payload := to_jsonb(NEW);
    END IF;
    IF NOT payload ? TG_ARGV[0] THEN
        RAISE EXCEPTION 'rowcast.capture() on %.%: no column %', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0];
    END IF;
    room := payload ->> TG_ARGV[0];
    IF room IS NULL THEN
        RETURN NULL;
    END IF;
    FOR i IN 1 .. TG_NARGS - 1 LOOP
        payload := payload - TG_ARGV[i];
    END LOOP;
    tbl := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME;
    -- The transaction id is assigned before the state is read: a listener
    -- going to sleep waits for every transaction running after its change,
    -- and this one must be among them if it read the old state.
    xid := pg_current_xact_id()::text;
    SELECT last_value INTO state FROM rowcast.capture_state;
    IF state = 2 THEN
        PERFORM pg_logical_emit_message(true, 'rowcast', json_build_object('r', room, 't', tbl, 'o', TG_OP,
            'a', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, 'd', payload)::text);
        RETURN NULL;
    END IF;
    INSERT INTO rowcast.outbox (room, table_name, op, row_data)
    VALUES (room, tbl, TG_OP, payload)
    RETURNING id, captured_at INTO new_id, at;
    IF state = 1 THEN
        RETURN NULL; -- the listener is reading the outbox: no wake-up needed
    END IF;
    -- A transaction's first 16 rows travel in their notifications; past
    -- that, a large transaction is throughput, not latency, and one plain
    -- wake-up (Postgres folds identical notifications) lets the listener
    -- read the outbox in batches. The count lives in a session setting
    -- keyed by the transaction id (a transaction-local set_config costs
    -- about a tenth of single-row INSERT throughput).
    mark := current_setting('rowcast.notified', true);
    IF mark LIKE xid || ':%' THEN
        sent := substr(mark, length(xid) + 2)::int;
    END IF;
    IF sent < 16 THEN
        PERFORM set_config('rowcast.notified', xid || ':' || (sent + 1), false);
        note := json_build_object('i', new_id, 'r', room, 't', tbl,
            'o', TG_OP, 'a', (extract(epoch FROM at) * 1000000)::bigint, 'd', payload)::text;
        -- A notification's payload must stay under 8000 bytes.
        IF octet_length(note) > 7900 THEN
            note := '';
        END IF;
    END IF;
    PERFORM pg_notify('rowcast', note);
    RETURN NULL;
END;
$$;
-- +goose StatementEnd

DROP FUNCTION rowcast.position();
DROP TABLE rowcast.source;
ALTER TABLE rowcast.room_position DROP COLUMN max_tx;
ALTER TABLE rowcast.rejected DROP COLUMN tx;
ALTER TABLE rowcast.outbox DROP COLUMN tx;
