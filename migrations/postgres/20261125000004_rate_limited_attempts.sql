-- Attempts answered with a rate limit: rescheduled for the time the platform
-- asked, without using up one of the delivery's attempts.
ALTER TABLE deliveries ADD COLUMN rate_limited INT NOT NULL DEFAULT 0;
