-- The demo table, watched by rowcast with "room" as its room column.

-- +goose Up
CREATE TABLE public.chat_message (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room       text        NOT NULL,
    author     text        NOT NULL,
    body       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
SELECT rowcast.watch('public.chat_message', 'room');

-- +goose Down
DROP TABLE public.chat_message;
