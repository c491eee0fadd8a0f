-- Results of tools that act outside a turn's transaction (HTTP functions),
-- recorded as each call completes, so a turn rerun after a crash reuses them
-- instead of calling again (tools::Toolbox::run).
CREATE TABLE tool_results (
    call_key    TEXT PRIMARY KEY,
    tool        TEXT NOT NULL,
    content     TEXT NOT NULL,
    is_error    BOOLEAN NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX tool_results_created ON tool_results (created_at);

-- Where a person last wrote to us directly on a connector: send_message replies
-- there (tools::send).
CREATE INDEX inbound_events_direct_sender ON inbound_events (connector_id, sender_id, received_at DESC)
    WHERE is_group = false;
