-- Messages the agent promised for later (schedule_message), written in the
-- transaction of the turn that scheduled them and delivered when due as one more
-- part of that turn's reply (worker::maintenance).
CREATE TABLE scheduled_messages (
    id            UUID PRIMARY KEY,
    turn_id       UUID NOT NULL REFERENCES turns (id),
    session_id    UUID NOT NULL,
    identity_id   UUID,
    connector_id  TEXT NOT NULL,
    channel       TEXT NOT NULL,
    target        JSONB NOT NULL,
    text          TEXT NOT NULL,
    due_at        TIMESTAMPTZ NOT NULL,
    timezone      TEXT NOT NULL,
    -- pending | sent | cancelled
    status        TEXT NOT NULL DEFAULT 'pending',
    delivery_id   UUID,
    trace_id      TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    sent_at       TIMESTAMPTZ,
    cancelled_at  TIMESTAMPTZ,
    cancelled_by  TEXT
);
CREATE INDEX scheduled_messages_due ON scheduled_messages (due_at) WHERE status = 'pending';
CREATE INDEX scheduled_messages_identity ON scheduled_messages (identity_id, due_at);
CREATE INDEX scheduled_messages_turn ON scheduled_messages (turn_id);
