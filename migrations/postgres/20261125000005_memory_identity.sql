-- People and what the agent remembers about them.
--
-- An identity is a person; every platform account (connector, sender id) maps to
-- exactly one identity, created on first contact. Linking two accounts merges the
-- younger identity into the older one. A direct-message session belongs to
-- (agent, identity): its key is "direct:<identity id>".

CREATE TABLE identities (
    id            UUID PRIMARY KEY,
    display_name  TEXT,
    created_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE accounts (
    connector_id  TEXT NOT NULL,
    sender_id     TEXT NOT NULL,
    channel       TEXT NOT NULL,
    identity_id   UUID NOT NULL REFERENCES identities (id),
    display_name  TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (connector_id, sender_id)
);
CREATE INDEX accounts_identity ON accounts (identity_id);

-- One-time link codes: single use, expiring (unix milliseconds).
CREATE TABLE link_codes (
    code          TEXT PRIMARY KEY,
    identity_id   UUID NOT NULL REFERENCES identities (id),
    -- "<connector>:<sender id>" that asked for the code, and that redeemed it
    created_by    TEXT NOT NULL,
    expires_ms    BIGINT NOT NULL,
    used_by       TEXT,
    used_ms       BIGINT
);
CREATE INDEX link_codes_identity ON link_codes (identity_id);

-- Failed redemptions per account, for the attempt limit.
CREATE TABLE link_failures (
    account  TEXT NOT NULL,
    at_ms    BIGINT NOT NULL
);
CREATE INDEX link_failures_account ON link_failures (account, at_ms);

-- Direct sessions name their person, group sessions their conversation
-- ("<connector>:<conversation id>"). A session merged into another (two linked
-- people's direct sessions with one agent) writes its transcript there.
ALTER TABLE sessions ADD COLUMN identity_id UUID;
ALTER TABLE sessions ADD COLUMN conversation_key TEXT;
ALTER TABLE sessions ADD COLUMN merged_into UUID;
-- The rolling summary of every message up to `summarized_through` (a message id);
-- the context holds the summary plus the messages after it.
ALTER TABLE sessions ADD COLUMN summary TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN summarized_through BIGINT NOT NULL DEFAULT 0;
CREATE INDEX sessions_identity ON sessions (identity_id);

ALTER TABLE inbound_events ADD COLUMN identity_id UUID;
CREATE INDEX inbound_events_identity ON inbound_events (identity_id);
-- The author of a user message.
ALTER TABLE messages ADD COLUMN identity_id UUID;
CREATE INDEX messages_identity ON messages (identity_id);
-- Long-term memory: the whole transcript is searchable.
ALTER TABLE messages ADD COLUMN search tsvector
    GENERATED ALWAYS AS (to_tsvector('english', content)) STORED;
CREATE INDEX messages_search ON messages USING GIN (search);
CREATE INDEX messages_created ON messages (created_at);

-- Stored facts: about one person (scope 'user') or one group conversation
-- (scope 'conversation').
CREATE TABLE memories (
    id                UUID PRIMARY KEY,
    scope             TEXT NOT NULL,
    identity_id       UUID REFERENCES identities (id),
    conversation_key  TEXT,
    content           TEXT NOT NULL,
    turn_id           UUID,
    created_at        TIMESTAMPTZ NOT NULL,
    search            tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    CHECK ((scope = 'user' AND identity_id IS NOT NULL)
        OR (scope = 'conversation' AND conversation_key IS NOT NULL))
);
CREATE INDEX memories_identity ON memories (identity_id, created_at);
CREATE INDEX memories_conversation ON memories (conversation_key, created_at);
CREATE INDEX memories_search ON memories USING GIN (search);

-- Backfill: every sender seen before identities existed becomes a person with one
-- account; their events, messages and sessions are keyed the new way, so history
-- continues and `identity forget` reaches it.
CREATE TEMPORARY TABLE backfill_people AS
SELECT connector_id, sender_id, max(channel) AS channel, max(sender_name) AS display_name,
       min(received_at) AS first_seen, gen_random_uuid() AS identity_id
  FROM inbound_events
 GROUP BY connector_id, sender_id;
INSERT INTO identities (id, display_name, created_at)
SELECT identity_id, display_name, first_seen FROM backfill_people;
INSERT INTO accounts (connector_id, sender_id, channel, identity_id, display_name, created_at)
SELECT connector_id, sender_id, channel, identity_id, display_name, first_seen FROM backfill_people;
UPDATE inbound_events e SET identity_id = b.identity_id
  FROM backfill_people b
 WHERE b.connector_id = e.connector_id AND b.sender_id = e.sender_id;
UPDATE messages m SET identity_id = e.identity_id
  FROM inbound_events e
 WHERE e.id = m.inbound_event_id;
UPDATE sessions s SET identity_id = first.identity_id, session_key = 'direct:' || first.identity_id::text
  FROM (SELECT DISTINCT ON (session_id) session_id, identity_id
          FROM inbound_events ORDER BY session_id, seq) AS first
 WHERE first.session_id = s.id AND NOT s.is_group;
UPDATE sessions s SET conversation_key = first.connector_id || ':' || first.conversation_id
  FROM (SELECT DISTINCT ON (session_id) session_id, connector_id, conversation_id
          FROM inbound_events ORDER BY session_id, seq) AS first
 WHERE first.session_id = s.id AND s.is_group;
DROP TABLE backfill_people;
