-- As migrations/postgres/20261125000008_tool_results.sql.
CREATE TABLE tool_results (
    call_key    TEXT PRIMARY KEY,
    tool        TEXT NOT NULL,
    content     TEXT NOT NULL,
    is_error    BOOLEAN NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX tool_results_created ON tool_results (created_at);

CREATE INDEX inbound_events_direct_sender ON inbound_events (connector_id, sender_id, received_at DESC)
    WHERE is_group = 0;
