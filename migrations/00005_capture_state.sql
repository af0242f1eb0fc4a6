-- Capture costs the primary as little as possible. One non-transactional
-- value, read by the trigger on every row, tells it what to do:
--   0  NOTIFY mode, the listener sleeps on LISTEN: write the outbox row and
--      notify (the notification carries the row, see 00004);
--   1  NOTIFY mode, the listener is draining the outbox: write the row and
--      skip pg_notify, whose database-wide lock at commit serializes every
--      notifying transaction (the listener reads the row anyway);
--   2  WAL mode: emit a transactional logical decoding message instead of
--      an outbox row; the leader reads it from a replication slot.
-- A sequence, because its value is not versioned: a change is seen by the
-- next read in every session, whatever snapshot that session holds. Only the
-- leading listener sets it (see listener/relay): before it sleeps it sets 0,
-- waits until every transaction that may have read 1 has ended, and drains
-- once more, so no wake-up is lost.

-- +goose Up
CREATE SEQUENCE rowcast.capture_state MINVALUE 0 MAXVALUE 2 START 0 NO CYCLE;

-- WAL mode streams the slot through pgoutput, which needs a publication; the
-- messages need no table in it.
CREATE PUBLICATION rowcast_wal;

-- WAL mode's progress inside a transaction: the slot's confirmed position
-- moves only at commits, so after a restart in the middle of a large
-- transaction its messages come again, and the ones up to (commit_lsn,
-- msg_lsn) were published already. Written with the room positions.
CREATE TABLE rowcast.wal_progress (
    slot       text   PRIMARY KEY,
    commit_lsn bigint NOT NULL,
    msg_lsn    bigint NOT NULL
);

-- +goose StatementBegin
-- set_state() changes the capture state and returns a fence: a transaction
-- id above every transaction that may have read the old state (a writer's
-- id is assigned before it reads the state, see capture()). Every
-- transaction below the fence has ended once the oldest running one is at
-- or past it (pg_snapshot_xmin of a new snapshot).
CREATE FUNCTION rowcast.set_state(st bigint) RETURNS xid8
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM setval('rowcast.capture_state', st, true);
    RETURN pg_current_xact_id();
END;
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

-- +goose Down
-- Back to 00004's trigger, which knows no state.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION rowcast.capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload jsonb;
    room    text;
    i       int;
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
    INSERT INTO rowcast.outbox (room, table_name, op, row_data)
    VALUES (room, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP, payload)
    RETURNING id, captured_at INTO new_id, at;
    -- A transaction's first 16 rows travel in their notifications; past
    -- that, a large transaction is throughput, not latency, and one plain
    -- wake-up (Postgres folds identical notifications) lets the listener
    -- read the outbox in batches. The count lives in a session setting
    -- keyed by the transaction id: a transaction-local set_config costs
    -- about a tenth of single-row INSERT throughput; this measured within
    -- pgbench's run-to-run noise.
    xid := pg_current_xact_id()::text;
    mark := current_setting('rowcast.notified', true);
    IF mark LIKE xid || ':%' THEN
        sent := substr(mark, length(xid) + 2)::int;
    END IF;
    IF sent < 16 THEN
        PERFORM set_config('rowcast.notified', xid || ':' || (sent + 1), false);
        note := json_build_object('i', new_id, 'r', room, 't', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME,
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

DROP TABLE rowcast.wal_progress;
DROP PUBLICATION rowcast_wal;
DROP FUNCTION rowcast.set_state(bigint);
DROP SEQUENCE rowcast.capture_state;
