-- rowcast's capture machinery: an outbox filled by a generic trigger in the
-- same transaction as the change, and a NOTIFY that wakes the listener.

-- +goose Up
CREATE SCHEMA IF NOT EXISTS rowcast;

CREATE TABLE rowcast.outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room        text        NOT NULL,
    table_name  text        NOT NULL,
    op          text        NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE')),
    row_data    jsonb       NOT NULL,
    captured_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Rows the listener could not publish (e.g. a room name outside the allowed
-- characters) are moved here with the reason, never silently dropped.
CREATE TABLE rowcast.rejected (
    LIKE rowcast.outbox,
    reason      text        NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT now()
);

-- +goose StatementBegin
-- capture() records the changed row in the outbox. Trigger arguments: the
-- column holding the room, then any columns that must never leave the
-- database (they are removed before the row is stored). A row whose room is
-- NULL is not captured: no client could subscribe to it.
CREATE FUNCTION rowcast.capture() RETURNS trigger
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

-- +goose StatementBegin
-- watch() attaches capture() to a table: SELECT rowcast.watch('public.t', 'room');
-- Extra arguments name columns never published, e.g. 'password_hash'.
CREATE FUNCTION rowcast.watch(tbl regclass, room_column text, VARIADIC hidden text[] DEFAULT '{}')
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    args text := quote_literal(room_column);
    h    text;
BEGIN
    FOREACH h IN ARRAY hidden LOOP
        args := args || ', ' || quote_literal(h);
    END LOOP;
    EXECUTE format('DROP TRIGGER IF EXISTS rowcast_capture ON %s', tbl);
    EXECUTE format('CREATE TRIGGER rowcast_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION rowcast.capture(%s)', tbl, args);
END;
$$;
-- +goose StatementEnd

-- +goose Down
DROP SCHEMA rowcast CASCADE;
