-- Sessions are updated by every inbound message (the receiver bumps
-- `last_inbound_seq`) and by every turn (its lease, `processed_seq`). An update
-- that changes no column an index depends on is HOT: the new row version stays
-- on its page, no index gets a new entry, and the page prunes the dead version
-- itself. `sessions_unanswered`'s predicate (`last_inbound_seq > processed_seq`)
-- made every bump and every turn's commit write a new entry into each of the
-- table's four indexes; under load a session's row piled up versions that every
-- upsert's conflict check had to walk.
--
-- The stranded-session sweep (worker::maintenance) now starts from the pending
-- events instead: they are inserted pending and leave this index when a turn
-- marks them answered or failed, an update that was never HOT (`turn_id` is
-- indexed). Free space on each page keeps the bumps on their page.
DROP INDEX IF EXISTS sessions_unanswered;
CREATE INDEX inbound_events_pending ON inbound_events (received_at) WHERE status = 'pending';
ALTER TABLE sessions SET (fillfactor = 80);
