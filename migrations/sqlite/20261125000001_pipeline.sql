-- The durable pipeline on the embedded store (`microclaw dev`): the same tables as
-- migrations/postgres, in SQLite's types. UUIDs are 16-byte BLOBs, timestamps
-- RFC 3339 text, lease expiry unix milliseconds. The queue's tables (Jobs, Workers)
-- live in the same file so a job is written in the same transaction as its state.

CREATE TABLE sessions (
    id                BLOB PRIMARY KEY,
    agent             TEXT NOT NULL,
    session_key       TEXT NOT NULL,
    is_group          INTEGER NOT NULL,
    last_inbound_seq  INTEGER NOT NULL DEFAULT 0,
    processed_seq     INTEGER NOT NULL DEFAULT 0,
    lease_owner       TEXT,
    lease_epoch       INTEGER NOT NULL DEFAULT 0,
    lease_expires_ms  INTEGER,
    created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (agent, session_key),
    CHECK (processed_seq <= last_inbound_seq)
);

CREATE TABLE inbound_events (
    id                   BLOB PRIMARY KEY,
    connector_id         TEXT NOT NULL,
    channel              TEXT NOT NULL,
    platform_message_id  TEXT NOT NULL,
    session_id           BLOB NOT NULL REFERENCES sessions (id),
    seq                  INTEGER NOT NULL,
    sender_id            TEXT NOT NULL,
    sender_name          TEXT,
    conversation_id      TEXT NOT NULL,
    thread_id            TEXT,
    is_group             INTEGER NOT NULL,
    text                 TEXT NOT NULL,
    attachments          TEXT NOT NULL DEFAULT '[]',
    sent_at              TEXT,
    received_at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    trace_id             TEXT NOT NULL,
    status               TEXT NOT NULL DEFAULT 'pending',
    turn_id              BLOB,
    UNIQUE (connector_id, platform_message_id),
    UNIQUE (session_id, seq)
);

CREATE TABLE turns (
    id              BLOB PRIMARY KEY,
    session_id      BLOB NOT NULL REFERENCES sessions (id),
    first_seq       INTEGER NOT NULL,
    last_seq        INTEGER NOT NULL,
    status          TEXT NOT NULL,
    model           TEXT,
    error           TEXT,
    model_attempts  INTEGER NOT NULL DEFAULT 0,
    trace_id        TEXT NOT NULL,
    started_at      TEXT NOT NULL,
    finished_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (session_id, last_seq)
);

CREATE TABLE messages (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id        BLOB NOT NULL REFERENCES sessions (id),
    turn_id           BLOB NOT NULL REFERENCES turns (id),
    role              TEXT NOT NULL,
    content           TEXT NOT NULL,
    inbound_event_id  BLOB REFERENCES inbound_events (id),
    sender_name       TEXT,
    model             TEXT,
    created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX messages_session_recent ON messages (session_id, id DESC);

CREATE TABLE deliveries (
    id                BLOB PRIMARY KEY,
    turn_id           BLOB NOT NULL REFERENCES turns (id),
    session_id        BLOB NOT NULL REFERENCES sessions (id),
    connector_id      TEXT NOT NULL,
    channel           TEXT NOT NULL,
    target            TEXT NOT NULL,
    part              INTEGER NOT NULL DEFAULT 1,
    text              TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'pending',
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL,
    next_attempt_at   TEXT,
    error_class       TEXT,
    last_error        TEXT,
    trace_id          TEXT NOT NULL,
    created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    delivered_at      TEXT,
    dead_at           TEXT,
    UNIQUE (turn_id, connector_id, part)
);
CREATE INDEX deliveries_dead ON deliveries (dead_at) WHERE status = 'dead';

CREATE TABLE delivery_attempts (
    delivery_id   BLOB NOT NULL REFERENCES deliveries (id),
    attempt       INTEGER NOT NULL,
    started_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at   TEXT,
    outcome       TEXT,
    status_code   INTEGER,
    error         TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
