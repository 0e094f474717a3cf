-- Retention: a background sweep (engine/retention.py) deletes finished runs with their
-- steps, attempts and messages, the events nobody needs any more, and expired de-dup and
-- idempotency rows, after a configurable age. LLM usage outlives the runs as daily sums.
-- Only adds tables and indexes: processes of the previous release keep running on it.
-- On a large PostgreSQL database, build the runs index beforehand without blocking writes
-- (docs/deployment.md, "Upgrading"); IF NOT EXISTS then skips it here.
-- depends: 0008_sessions

-- Finished runs per function in the order they ended: the sweep reads each function's
-- oldest in keyset batches (ended_at, id), and finds the functions in one probe each.
CREATE INDEX IF NOT EXISTS runs_finished_by_function ON runs (function_id, ended_at, id) WHERE ended_at IS NOT NULL;
-- Invoked runs by their parent: a finished run whose invoked run has not finished is kept.
CREATE INDEX IF NOT EXISTS runs_by_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS event_ids_seen_by_expiry ON event_ids_seen (expires_at);
CREATE INDEX IF NOT EXISTS idempotency_keys_by_expiry ON idempotency_keys (expires_at);

-- Model calls of pruned runs, summed per UTC day (its start, epoch ms), function, user,
-- provider and model; '' stands for "none" in the key columns.
CREATE TABLE usage_daily (
    day_start BIGINT NOT NULL,
    function_id TEXT NOT NULL,
    user_id TEXT NOT NULL DEFAULT '',
    provider TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL,
    calls BIGINT NOT NULL DEFAULT 0,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens BIGINT NOT NULL DEFAULT 0,
    cached_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (day_start, function_id, user_id, provider, model)
);

-- Background chores that one process at a time does (the retention sweep): a lease with
-- an epoch, as runs have, so a sweeper that stalled past its lease commits nothing more;
-- and what the last sweeps did (state: JSON), for /metrics and `stepline admin stats`.
CREATE TABLE maintenance (
    task TEXT PRIMARY KEY,
    owner TEXT,
    epoch BIGINT NOT NULL DEFAULT 0,
    expires_at BIGINT,
    last_started_at BIGINT,
    last_finished_at BIGINT,
    state TEXT NOT NULL DEFAULT '{}'
);
INSERT INTO maintenance (task) VALUES ('retention');
