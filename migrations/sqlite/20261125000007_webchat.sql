-- The web chat's mailbox, as migrations/postgres/20261125000007_webchat.sql.
CREATE TABLE webchat_messages (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    connector_id  TEXT NOT NULL,
    visitor_id    TEXT NOT NULL,
    role          TEXT NOT NULL,
    message_key   TEXT NOT NULL,
    text          TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    UNIQUE (connector_id, visitor_id, message_key)
);
CREATE INDEX webchat_messages_visitor ON webchat_messages (connector_id, visitor_id, seq);
CREATE INDEX webchat_messages_created ON webchat_messages (created_at);
