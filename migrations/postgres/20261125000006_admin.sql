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
