-- The durable pipeline: sessions with their ordering lease, inbound events,
-- the transcript, turns, and outbound deliveries with their attempt history.
-- The job queue itself lives in the `apalis` schema (apalis-postgres migrations).

CREATE TABLE sessions (
    id                UUID PRIMARY KEY,
    agent             TEXT NOT NULL,
    -- "direct:<connector>:<sender>" or "group:<connector>:<conversation>"
    session_key       TEXT NOT NULL,
    is_group          BOOLEAN NOT NULL,
    -- Bumped by the receiver in the transaction that records an inbound event.
    last_inbound_seq  BIGINT NOT NULL DEFAULT 0,
    -- Advanced by the turn that answers events up to this sequence number.
    processed_seq     BIGINT NOT NULL DEFAULT 0,
    -- The ordering lease: one turn of a session runs at a time. lease_epoch is the
    -- fencing token a turn's commit checks.
    lease_owner       TEXT,
    lease_epoch       BIGINT NOT NULL DEFAULT 0,
    lease_expires_at  TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (agent, session_key),
    CHECK (processed_seq <= last_inbound_seq)
);

CREATE TABLE inbound_events (
    id                   UUID PRIMARY KEY,
    connector_id         TEXT NOT NULL,
    channel              TEXT NOT NULL,
    -- The platform's stable id for the event; platform retries reuse it.
    platform_message_id  TEXT NOT NULL,
    session_id           UUID NOT NULL REFERENCES sessions (id),
    seq                  BIGINT NOT NULL,
    sender_id            TEXT NOT NULL,
    sender_name          TEXT,
    conversation_id      TEXT NOT NULL,
    thread_id            TEXT,
    is_group             BOOLEAN NOT NULL,
    text                 TEXT NOT NULL,
    attachments          JSONB NOT NULL DEFAULT '[]',
    sent_at              TIMESTAMPTZ,
    received_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    trace_id             TEXT NOT NULL,
    -- pending | answered | failed (failed: the turn gave up and sent the apology)
    status               TEXT NOT NULL DEFAULT 'pending',
    turn_id              UUID,
    UNIQUE (connector_id, platform_message_id),
    UNIQUE (session_id, seq)
);

CREATE TABLE turns (
    id              UUID PRIMARY KEY,
    session_id      UUID NOT NULL REFERENCES sessions (id),
    first_seq       BIGINT NOT NULL,
    last_seq        BIGINT NOT NULL,
    -- completed | failed
    status          TEXT NOT NULL,
    model           TEXT,
    error           TEXT,
    model_attempts  INT NOT NULL DEFAULT 0,
    trace_id        TEXT NOT NULL,
    started_at      TIMESTAMPTZ NOT NULL,
    finished_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (session_id, last_seq)
);

CREATE TABLE messages (
    id                BIGSERIAL PRIMARY KEY,
    session_id        UUID NOT NULL REFERENCES sessions (id),
    turn_id           UUID NOT NULL REFERENCES turns (id),
    -- user | assistant
    role              TEXT NOT NULL,
    content           TEXT NOT NULL,
    inbound_event_id  UUID REFERENCES inbound_events (id),
    sender_name       TEXT,
    model             TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX messages_session_recent ON messages (session_id, id DESC);

CREATE TABLE deliveries (
    id                UUID PRIMARY KEY,
    turn_id           UUID NOT NULL REFERENCES turns (id),
    session_id        UUID NOT NULL REFERENCES sessions (id),
    connector_id      TEXT NOT NULL,
    channel           TEXT NOT NULL,
    -- Where the reply goes: conversation, thread, recipient, reply-to ids.
    target            JSONB NOT NULL,
    part              INT NOT NULL DEFAULT 1,
    text              TEXT NOT NULL,
    -- pending | delivered | dead
    status            TEXT NOT NULL DEFAULT 'pending',
    attempts          INT NOT NULL DEFAULT 0,
    max_attempts      INT NOT NULL,
    next_attempt_at   TIMESTAMPTZ,
    -- retryable | rate_limited | permanent | exhausted
    error_class       TEXT,
    last_error        TEXT,
    trace_id          TEXT NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at      TIMESTAMPTZ,
    dead_at           TIMESTAMPTZ,
    UNIQUE (turn_id, connector_id, part)
);
CREATE INDEX deliveries_dead ON deliveries (dead_at) WHERE status = 'dead';

CREATE TABLE delivery_attempts (
    delivery_id   UUID NOT NULL REFERENCES deliveries (id),
    attempt       INT NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at   TIMESTAMPTZ,
    -- delivered | retryable | rate_limited | permanent | interrupted
    outcome       TEXT,
    status_code   INT,
    error         TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
