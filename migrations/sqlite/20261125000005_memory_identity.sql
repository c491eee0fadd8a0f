-- People and what the agent remembers about them: the tables of
-- migrations/postgres/20261125000005_memory_identity.sql in SQLite's types, with
-- full-text search through FTS5 tables kept in step by triggers.

CREATE TABLE identities (
    id            BLOB PRIMARY KEY,
    display_name  TEXT,
    created_at    TEXT NOT NULL
);

CREATE TABLE accounts (
    connector_id  TEXT NOT NULL,
    sender_id     TEXT NOT NULL,
    channel       TEXT NOT NULL,
    identity_id   BLOB NOT NULL REFERENCES identities (id),
    display_name  TEXT,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (connector_id, sender_id)
);
CREATE INDEX accounts_identity ON accounts (identity_id);

CREATE TABLE link_codes (
    code          TEXT PRIMARY KEY,
    identity_id   BLOB NOT NULL REFERENCES identities (id),
    created_by    TEXT NOT NULL,
    expires_ms    INTEGER NOT NULL,
    used_by       TEXT,
    used_ms       INTEGER
);
CREATE INDEX link_codes_identity ON link_codes (identity_id);

CREATE TABLE link_failures (
    account  TEXT NOT NULL,
    at_ms    INTEGER NOT NULL
);
CREATE INDEX link_failures_account ON link_failures (account, at_ms);

ALTER TABLE sessions ADD COLUMN identity_id BLOB;
ALTER TABLE sessions ADD COLUMN conversation_key TEXT;
ALTER TABLE sessions ADD COLUMN merged_into BLOB;
ALTER TABLE sessions ADD COLUMN summary TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN summarized_through INTEGER NOT NULL DEFAULT 0;
CREATE INDEX sessions_identity ON sessions (identity_id);

ALTER TABLE inbound_events ADD COLUMN identity_id BLOB;
CREATE INDEX inbound_events_identity ON inbound_events (identity_id);
ALTER TABLE messages ADD COLUMN identity_id BLOB;
CREATE INDEX messages_identity ON messages (identity_id);
CREATE INDEX messages_created ON messages (created_at);

-- messages.id is an INTEGER PRIMARY KEY, a stable rowid for the index.
CREATE VIRTUAL TABLE messages_fts USING fts5(
    content, content = 'messages', content_rowid = 'id', tokenize = 'porter unicode61'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
END;
INSERT INTO messages_fts (messages_fts) VALUES ('rebuild');

-- `n` is the stable rowid the search index refers to (a BLOB primary key leaves
-- the implicit rowid free to change on VACUUM).
CREATE TABLE memories (
    n                 INTEGER PRIMARY KEY AUTOINCREMENT,
    id                BLOB NOT NULL UNIQUE,
    scope             TEXT NOT NULL,
    identity_id       BLOB REFERENCES identities (id),
    conversation_key  TEXT,
    content           TEXT NOT NULL,
    turn_id           BLOB,
    created_at        TEXT NOT NULL,
    CHECK ((scope = 'user' AND identity_id IS NOT NULL)
        OR (scope = 'conversation' AND conversation_key IS NOT NULL))
);
CREATE INDEX memories_identity ON memories (identity_id, created_at);
CREATE INDEX memories_conversation ON memories (conversation_key, created_at);
CREATE VIRTUAL TABLE memories_fts USING fts5(
    content, content = 'memories', content_rowid = 'n', tokenize = 'porter unicode61'
);
CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN
    INSERT INTO memories_fts (rowid, content) VALUES (new.n, new.content);
END;
CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN
    INSERT INTO memories_fts (memories_fts, rowid, content) VALUES ('delete', old.n, old.content);
END;
CREATE TRIGGER memories_fts_update AFTER UPDATE OF content ON memories BEGIN
    INSERT INTO memories_fts (memories_fts, rowid, content) VALUES ('delete', old.n, old.content);
    INSERT INTO memories_fts (rowid, content) VALUES (new.n, new.content);
END;
