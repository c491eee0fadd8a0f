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
