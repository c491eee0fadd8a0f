-- See migrations/postgres/20261125000004_rate_limited_attempts.sql.
ALTER TABLE deliveries ADD COLUMN rate_limited INTEGER NOT NULL DEFAULT 0;
