-- A capture function per watched table. The generic rowcast.capture() reads
-- the row through jsonb to find its room column by name, serializes it again
-- for every message, and reads the capture state with a query (its cost:
-- docs/benchmarks.md, issue 11, part 4). watch() now writes a function for the table with its room
-- column and hidden columns spelled out, which reads NEW.room directly,
-- sends to_json(NEW) (no jsonb round trip) in WAL mode, builds messages by
-- concatenation and reads the state with pg_sequence_last_value(), a plain
-- expression that PL/pgSQL evaluates without the executor.
-- rowcast.capture() stays, unchanged, for triggers attached by hand.
--
-- The generated function is rowcast.capture_<table oid>; the trigger keeps
-- its arguments (room column, hidden columns) so that the function can be
-- written again (watch, or the Down migration) from the trigger alone. After
-- renaming the room column or a hidden column, call watch() again.

-- +goose Up
-- +goose StatementBegin
-- generated_capture returns the function watch() wrote for the table's
-- rowcast_capture trigger, NULL when it runs another (rowcast.capture).
CREATE FUNCTION rowcast.generated_capture(tbl regclass) RETURNS regproc
LANGUAGE sql STABLE AS $$
    SELECT p.oid::regproc
    FROM pg_trigger AS t
    JOIN pg_proc AS p ON p.oid = t.tgfoid
    JOIN pg_namespace AS n ON n.oid = p.pronamespace
    WHERE t.tgrelid = tbl AND t.tgname = 'rowcast_capture'
      AND n.nspname = 'rowcast' AND p.proname ~ '^capture_[0-9]+$'
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION rowcast.watch(tbl regclass, room_column text, VARIADIC hidden text[] DEFAULT '{}')
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    fn       text := format('rowcast.%I', 'capture_' || tbl::oid);
    previous regproc;
    args     text := quote_literal(room_column);
    h        text;
    strip    text := '';  -- removes the hidden columns from a jsonb row
    wal_new  text;        -- the row as JSON text for WAL messages
    wal_old  text;
    room_new text := 'NEW.' || quote_ident(room_column);
    room_old text := 'OLD.' || quote_ident(room_column);
BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = tbl AND attname = room_column AND attnum > 0 AND NOT attisdropped) THEN
        RAISE EXCEPTION 'rowcast.watch(%): no column %', tbl, room_column;
    END IF;
    FOREACH h IN ARRAY hidden LOOP
        IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = tbl AND attname = h AND attnum > 0 AND NOT attisdropped) THEN
            RAISE EXCEPTION 'rowcast.watch(%): no column % to hide', tbl, h;
        END IF;
        args := args || ', ' || quote_literal(h);
    END LOOP;
    IF cardinality(hidden) > 0 THEN
        strip := ' - ' || quote_literal(hidden::text) || '::text[]';
        wal_new := '(to_jsonb(NEW)' || strip || ')::text';
        wal_old := '(to_jsonb(OLD)' || strip || ')::text';
    ELSE
        -- to_json writes the row as text directly; jsonb would build a
        -- binary form only to print it.
        wal_new := 'to_json(NEW)::text';
        wal_old := 'to_json(OLD)::text';
    END IF;

    -- The states and the fence are explained in 00005; the notification's
    -- 16 rows per transaction in 00004. The JSON of messages and
    -- notifications is concatenated: json_build_object would print the
    -- jsonb row a second time.
    EXECUTE format($f$
CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger
LANGUAGE plpgsql AS $body$
DECLARE
    room    text;
    tbl     text;
    payload jsonb;
    state   bigint;
    xid     xid8;
    new_id  bigint;
    at      timestamptz;
    sent    int := 0;
    mark    text;
    note    text := '';
    body    text;
    lsn     pg_lsn;
BEGIN
    IF TG_OP = 'DELETE' THEN
        room := %2$s;
    ELSE
        room := %3$s;
    END IF;
    IF room IS NULL THEN
        RETURN NULL; -- no client could subscribe to it
    END IF;
    tbl := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME;
    -- The transaction id is assigned before the state is read (see 00005).
    xid := pg_current_xact_id();
    state := coalesce(pg_sequence_last_value('rowcast.capture_state'), 0);
    IF state = 2 THEN
        IF TG_OP = 'DELETE' THEN
            body := %4$s;
        ELSE
            body := %5$s;
        END IF;
        lsn := pg_logical_emit_message(true, 'rowcast', '{"x":' || xid || ',"r":' || to_json(room) || ',"t":' || to_json(tbl)
            || ',"o":"' || TG_OP || '","a":' || (date_part('epoch', clock_timestamp()) * 1000000)::bigint
            || ',"d":' || body || '}');
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        payload := to_jsonb(OLD)%6$s;
    ELSE
        payload := to_jsonb(NEW)%6$s;
    END IF;
    IF state = 1 THEN
        -- The listener is reading the outbox: no wake-up needed.
        INSERT INTO rowcast.outbox (room, table_name, op, row_data, tx) VALUES (room, tbl, TG_OP, payload, xid);
        RETURN NULL;
    END IF;
    INSERT INTO rowcast.outbox (room, table_name, op, row_data, tx) VALUES (room, tbl, TG_OP, payload, xid)
    RETURNING id, captured_at INTO new_id, at;
    mark := current_setting('rowcast.notified', true);
    IF mark LIKE xid || ':%%' THEN
        sent := substr(mark, length(xid::text) + 2)::int;
    END IF;
    IF sent < 16 THEN
        PERFORM set_config('rowcast.notified', xid || ':' || (sent + 1), false);
        note := '{"i":' || new_id || ',"x":' || xid || ',"r":' || to_json(room) || ',"t":' || to_json(tbl)
            || ',"o":"' || TG_OP || '","a":' || (date_part('epoch', at) * 1000000)::bigint
            || ',"d":' || payload || '}';
        -- A notification's payload must stay under 8000 bytes.
        IF octet_length(note) > 7900 THEN
            note := '';
        END IF;
    END IF;
    PERFORM pg_notify('rowcast', note);
    RETURN NULL;
END;
$body$
$f$, fn, room_old, room_new, wal_old, wal_new, strip);
    EXECUTE format('COMMENT ON FUNCTION %s() IS %L', fn,
        format('rowcast capture for %s, written by rowcast.watch(); room column %s', tbl, room_column));

    previous := rowcast.generated_capture(tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS rowcast_capture ON %s', tbl);
    EXECUTE format('CREATE TRIGGER rowcast_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION %s(%s)', tbl, fn, args);
    -- A function written for the same table under an older oid (a restored
    -- dump) is no longer used.
    IF previous IS NOT NULL AND previous <> to_regproc(fn) THEN
        EXECUTE format('DROP FUNCTION %s()', previous);
    END IF;
END;
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- unwatch() stops capturing a table's changes.
CREATE FUNCTION rowcast.unwatch(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    previous regproc;
BEGIN
    previous := rowcast.generated_capture(tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS rowcast_capture ON %s', tbl);
    IF previous IS NOT NULL THEN
        EXECUTE format('DROP FUNCTION %s()', previous);
    END IF;
END;
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- rowcast.trigger_args lists a trigger's arguments, which pg_trigger keeps
-- as NUL-terminated bytes.
CREATE FUNCTION rowcast.trigger_args(raw bytea, n int) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    args text[] := '{}';
    k    int;
BEGIN
    FOR i IN 1 .. n LOOP
        k := position('\x00'::bytea IN raw);
        args := args || convert_from(substring(raw FROM 1 FOR k - 1), getdatabaseencoding());
        raw := substring(raw FROM k + 1);
    END LOOP;
    RETURN args;
END;
$$;
-- +goose StatementEnd

-- Tables watched before: their own function.
-- +goose StatementBegin
DO $$
DECLARE
    t    pg_trigger;
    args text[];
BEGIN
    FOR t IN SELECT * FROM pg_trigger WHERE tgname = 'rowcast_capture' AND tgfoid = 'rowcast.capture'::regproc LOOP
        args := rowcast.trigger_args(t.tgargs, t.tgnargs);
        BEGIN
            PERFORM rowcast.watch(t.tgrelid::regclass, args[1], VARIADIC coalesce(args[2:], '{}'));
        EXCEPTION WHEN OTHERS THEN
            -- A trigger whose columns are gone (it fails at every write)
            -- must not hold back the migration.
            RAISE WARNING 'rowcast: % keeps the generic capture trigger: %', t.tgrelid::regclass, SQLERRM;
        END;
    END LOOP;
END;
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
DO $$
DECLARE
    t    pg_trigger;
    args text[];
    fn   regproc;
BEGIN
    FOR t IN SELECT * FROM pg_trigger WHERE tgname = 'rowcast_capture' LOOP
        fn := rowcast.generated_capture(t.tgrelid::regclass);
        CONTINUE WHEN fn IS NULL;
        args := rowcast.trigger_args(t.tgargs, t.tgnargs);
        EXECUTE format('DROP TRIGGER rowcast_capture ON %s', t.tgrelid::regclass);
        EXECUTE format('CREATE TRIGGER rowcast_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
                       'FOR EACH ROW EXECUTE FUNCTION rowcast.capture(%s)', t.tgrelid::regclass,
                       (SELECT string_agg(quote_literal(a), ', ') FROM unnest(args) AS a));
        EXECUTE format('DROP FUNCTION %s()', fn);
    END LOOP;
END;
$$;
-- +goose StatementEnd
DROP FUNCTION rowcast.trigger_args(bytea, int);
DROP FUNCTION rowcast.unwatch(regclass);
DROP FUNCTION rowcast.generated_capture(regclass);
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION rowcast.watch(tbl regclass, room_column text, VARIADIC hidden text[] DEFAULT '{}')
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
