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

-- Full-text search: contentless FTS5 tables kept in step by triggers. Each row
-- also indexes the scope it belongs to as one token (`s<hex session id>` for a
-- message, `p<hex identity id>` or `c<hex conversation key>` for a fact or note),
-- so a search is restricted to a session or a person inside the index instead of
-- after it. Tool steps (parts IS NOT NULL) are not indexed.
CREATE VIRTUAL TABLE messages_fts USING fts5(
    content, scope, content = '', contentless_delete = 1, tokenize = 'porter unicode61'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages WHEN new.parts IS NULL BEGIN
    INSERT INTO messages_fts (rowid, content, scope)
    VALUES (new.id, new.content, 's' || hex(new.session_id));
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    DELETE FROM messages_fts WHERE rowid = old.id;
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF content, session_id ON messages
WHEN new.parts IS NULL BEGIN
    DELETE FROM messages_fts WHERE rowid = old.id;
    INSERT INTO messages_fts (rowid, content, scope)
    VALUES (new.id, new.content, 's' || hex(new.session_id));
END;
INSERT INTO messages_fts (rowid, content, scope)
SELECT id, content, 's' || hex(session_id) FROM messages WHERE parts IS NULL;

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
    content, scope, content = '', contentless_delete = 1, tokenize = 'porter unicode61'
);
CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN
    INSERT INTO memories_fts (rowid, content, scope)
    VALUES (new.n, new.content, CASE WHEN new.scope = 'user' THEN 'p' || hex(new.identity_id)
                                     ELSE 'c' || hex(new.conversation_key) END);
END;
CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN
    DELETE FROM memories_fts WHERE rowid = old.n;
END;
CREATE TRIGGER memories_fts_update AFTER UPDATE OF content, identity_id ON memories BEGIN
    DELETE FROM memories_fts WHERE rowid = old.n;
    INSERT INTO memories_fts (rowid, content, scope)
    VALUES (new.n, new.content, CASE WHEN new.scope = 'user' THEN 'p' || hex(new.identity_id)
                                     ELSE 'c' || hex(new.conversation_key) END);
END;

-- Backfill, as on Postgres: every sender seen before identities existed becomes a
-- person with one account; their events, messages and sessions are keyed the new way.
CREATE TEMPORARY TABLE backfill_people AS
SELECT connector_id, sender_id, max(channel) AS channel, max(sender_name) AS display_name,
       min(received_at) AS first_seen, randomblob(16) AS identity_id
  FROM inbound_events
 GROUP BY connector_id, sender_id;
INSERT INTO identities (id, display_name, created_at)
SELECT identity_id, display_name, first_seen FROM backfill_people;
INSERT INTO accounts (connector_id, sender_id, channel, identity_id, display_name, created_at)
SELECT connector_id, sender_id, channel, identity_id, display_name, first_seen FROM backfill_people;
UPDATE inbound_events SET identity_id =
    (SELECT b.identity_id FROM backfill_people b
      WHERE b.connector_id = inbound_events.connector_id AND b.sender_id = inbound_events.sender_id);
UPDATE messages SET identity_id =
    (SELECT e.identity_id FROM inbound_events e WHERE e.id = messages.inbound_event_id)
 WHERE inbound_event_id IS NOT NULL;
UPDATE sessions SET identity_id =
    (SELECT e.identity_id FROM inbound_events e WHERE e.session_id = sessions.id ORDER BY e.seq LIMIT 1)
 WHERE is_group = 0;
-- The UUID's text form, as the runtime writes session keys.
UPDATE sessions SET session_key = 'direct:' || lower(
        substr(hex(identity_id), 1, 8) || '-' || substr(hex(identity_id), 9, 4) || '-' ||
        substr(hex(identity_id), 13, 4) || '-' || substr(hex(identity_id), 17, 4) || '-' ||
        substr(hex(identity_id), 21, 12))
 WHERE is_group = 0 AND identity_id IS NOT NULL;
UPDATE sessions SET conversation_key =
    (SELECT e.connector_id || ':' || e.conversation_id FROM inbound_events e
      WHERE e.session_id = sessions.id ORDER BY e.seq LIMIT 1)
 WHERE is_group = 1;
DROP TABLE backfill_people;
