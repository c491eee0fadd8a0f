-- Every model call (attempt) of a turn: which candidate, provider, model and key
-- (its id, never the key), the outcome class, tokens, cost and latency. Budgets
-- sum tokens per agent and per user per day from here.
CREATE TABLE model_calls (
    id             BIGSERIAL PRIMARY KEY,
    turn_id        UUID NOT NULL REFERENCES turns (id),
    agent          TEXT NOT NULL,
    -- "<connector>:<sender id>" of the person the turn answered
    user_key       TEXT NOT NULL,
    candidate      TEXT NOT NULL,
    provider       TEXT NOT NULL,
    model          TEXT NOT NULL,
    key_id         TEXT,
    -- ok | rate_limited | overloaded | server_error | timeout | quota_exhausted | auth
    --    | bad_request | context_window | content_policy | malformed
    outcome        TEXT NOT NULL,
    error          TEXT,
    latency_ms     BIGINT NOT NULL,
    input_tokens   BIGINT,
    output_tokens  BIGINT,
    cost_usd       DOUBLE PRECISION NOT NULL DEFAULT 0,
    started_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX model_calls_turn ON model_calls (turn_id);
CREATE INDEX model_calls_agent_day ON model_calls (agent, started_at);
CREATE INDEX model_calls_user_day ON model_calls (agent, user_key, started_at);
