-- As migrations/postgres/20261125000009_scheduled_messages.sql.
CREATE TABLE scheduled_messages (
    id            TEXT PRIMARY KEY,
    turn_id       TEXT NOT NULL REFERENCES turns (id),
    session_id    TEXT NOT NULL,
    identity_id   TEXT,
    connector_id  TEXT NOT NULL,
    channel       TEXT NOT NULL,
    target        TEXT NOT NULL,
    text          TEXT NOT NULL,
    due_at        TEXT NOT NULL,
    timezone      TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'pending',
    delivery_id   TEXT,
    trace_id      TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    sent_at       TEXT,
    cancelled_at  TEXT,
    cancelled_by  TEXT
);
CREATE INDEX scheduled_messages_due ON scheduled_messages (due_at) WHERE status = 'pending';
CREATE INDEX scheduled_messages_identity ON scheduled_messages (identity_id, due_at);
CREATE INDEX scheduled_messages_turn ON scheduled_messages (turn_id);
