-- The stranded-session sweep (worker::maintenance) starts from the pending
-- events, as on Postgres (where a predicate on the sessions' sequence numbers
-- kept every session update from being HOT): the schemas stay alike.
DROP INDEX IF EXISTS sessions_unanswered;
CREATE INDEX inbound_events_pending ON inbound_events (received_at) WHERE status = 'pending';
