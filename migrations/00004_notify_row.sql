-- The NOTIFY that wakes the listener carries the captured row itself, so
-- the listener publishes it without reading the outbox first: one round
-- trip less between a commit and the browsers. The outbox stays the
-- record: the row is written there as before and removed only once Redis
-- has it; a wake-up without a row (a row too large for a notification, the
-- rows of a transaction past its first 16, or a row the listener cannot be
-- sure it has not published) makes the listener read the outbox.

-- +goose Up
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

-- +goose Down
-- +goose StatementBegin
-- capture() records the changed row in the outbox. Trigger arguments: the
-- column holding the room, then any columns that must never leave the
-- database (they are removed before the row is stored). A row whose room is
-- NULL is not captured: no client could subscribe to it.
CREATE OR REPLACE FUNCTION rowcast.capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload jsonb;
    room    text;
    i       int;
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
    VALUES (room, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP, payload);
    -- Identical notifications within one transaction are folded into one by
    -- Postgres: one wake-up per transaction, however many rows it changes.
    PERFORM pg_notify('rowcast', '');
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
