-- Tokens, cost and latency of each model call (one row per ai.infer step),
-- aggregated per run, user, function and day by the API.
-- depends: 0001_initial

CREATE TABLE llm_usage (
    run_id TEXT NOT NULL,
    step_key TEXT NOT NULL,
    function_id TEXT NOT NULL,
    user_id TEXT,
    provider TEXT,
    model TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    latency_ms INTEGER,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, step_key)
);
CREATE INDEX llm_usage_by_created ON llm_usage (created_at);
CREATE INDEX llm_usage_by_user ON llm_usage (user_id, created_at);
CREATE INDEX llm_usage_by_function ON llm_usage (function_id, created_at);
