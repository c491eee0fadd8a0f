-- The web chat's mailbox: what each visitor sent and the replies delivered to
-- them, in order (`seq`). A visitor's page reads it after a cursor (poll or
-- server-sent events). `message_key` makes each write idempotent: `in:<client
-- message id>` for a visitor's message, `out:<delivery id>` for a reply part.
CREATE TABLE webchat_messages (
    seq           BIGSERIAL PRIMARY KEY,
    connector_id  TEXT NOT NULL,
    visitor_id    TEXT NOT NULL,
    -- visitor | agent
    role          TEXT NOT NULL,
    message_key   TEXT NOT NULL,
    text          TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (connector_id, visitor_id, message_key)
);
CREATE INDEX webchat_messages_visitor ON webchat_messages (connector_id, visitor_id, seq);
CREATE INDEX webchat_messages_created ON webchat_messages (created_at);
