-- Every model call of a turn: see migrations/postgres/20261125000003_model_calls.sql.
CREATE TABLE model_calls (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    turn_id        BLOB NOT NULL REFERENCES turns (id),
    agent          TEXT NOT NULL,
    user_key       TEXT NOT NULL,
    candidate      TEXT NOT NULL,
    provider       TEXT NOT NULL,
    model          TEXT NOT NULL,
    key_id         TEXT,
    outcome        TEXT NOT NULL,
    error          TEXT,
    latency_ms     INTEGER NOT NULL,
    input_tokens   INTEGER,
    output_tokens  INTEGER,
    cost_usd       REAL NOT NULL DEFAULT 0,
    started_at     TEXT NOT NULL
);
CREATE INDEX model_calls_turn ON model_calls (turn_id);
CREATE INDEX model_calls_agent_day ON model_calls (agent, started_at);
CREATE INDEX model_calls_user_day ON model_calls (agent, user_key, started_at);
