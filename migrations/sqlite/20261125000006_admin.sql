-- The admin queue, as migrations/postgres/20261125000006_admin.sql.
ALTER TABLE deliveries ADD COLUMN discard_reason TEXT;
ALTER TABLE deliveries ADD COLUMN discarded_at TEXT;
CREATE INDEX deliveries_status_created ON deliveries (status, created_at DESC);

CREATE TABLE admin_requests (
    key         TEXT PRIMARY KEY,
    response    TEXT,
    created_at  TEXT NOT NULL
);

ALTER TABLE turns ADD COLUMN resolution TEXT;
ALTER TABLE turns ADD COLUMN resolution_reason TEXT;
ALTER TABLE turns ADD COLUMN resolved_at TEXT;
CREATE INDEX turns_failed ON turns (finished_at DESC) WHERE status = 'failed';

-- A delivery waits for earlier pending replies of its conversation
-- (worker::delivery), and the stranded-session sweep looks for sessions with
-- unanswered messages (worker::maintenance): both run often, so both use an index.
CREATE INDEX deliveries_pending_by_session ON deliveries (session_id, connector_id, id)
    WHERE status = 'pending';
CREATE INDEX sessions_unanswered ON sessions (id) WHERE last_inbound_seq > processed_seq;
-- A turn's inbound messages and transcript (admin, rerun, forget).
CREATE INDEX inbound_events_turn ON inbound_events (turn_id);
CREATE INDEX messages_turn ON messages (turn_id);
