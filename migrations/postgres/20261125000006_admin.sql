-- The admin queue: a dead delivery an operator discarded keeps why and when.
ALTER TABLE deliveries ADD COLUMN discard_reason TEXT;
ALTER TABLE deliveries ADD COLUMN discarded_at TIMESTAMPTZ;
CREATE INDEX deliveries_status_created ON deliveries (status, created_at DESC);

-- Bulk admin actions by Idempotency-Key: a request sent twice acts once and
-- answers the second time with the first answer.
CREATE TABLE admin_requests (
    key         TEXT PRIMARY KEY,
    response    TEXT,
    created_at  TIMESTAMPTZ NOT NULL
);

-- A failed turn (the person got the apology) an operator acted on: `rerun` (its
-- messages were answered again) or `discarded`, with why and when.
ALTER TABLE turns ADD COLUMN resolution TEXT;
ALTER TABLE turns ADD COLUMN resolution_reason TEXT;
ALTER TABLE turns ADD COLUMN resolved_at TIMESTAMPTZ;
CREATE INDEX turns_failed ON turns (finished_at DESC) WHERE status = 'failed';
