-- Flow control: priority and concurrency keys on queue rows, runs parked while
-- their concurrency key is saturated, and the state behind throttle, rate limit,
-- debounce, batching and singleton.
-- depends: 0001_initial

ALTER TABLE queue ADD COLUMN priority_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE queue ADD COLUMN ck1 TEXT;
ALTER TABLE queue ADD COLUMN cl1 INTEGER;
ALTER TABLE queue ADD COLUMN ck2 TEXT;
ALTER TABLE queue ADD COLUMN cl2 INTEGER;
ALTER TABLE queue ADD COLUMN parked_on TEXT;

-- Claims take ready rows in priority order: a run with priority p seconds sorts as if due p s earlier.
CREATE INDEX queue_ready_by_priority ON queue ((due_at - priority_ms)) WHERE lease_owner IS NULL;
CREATE INDEX queue_ck1_leased ON queue (ck1) WHERE lease_owner IS NOT NULL AND ck1 IS NOT NULL;
CREATE INDEX queue_ck2_leased ON queue (ck2) WHERE lease_owner IS NOT NULL AND ck2 IS NOT NULL;
CREATE INDEX queue_parked ON queue (parked_on, run_id) WHERE parked_on IS NOT NULL;

-- GCRA state ("theoretical arrival time") for throttle and rate limit keys, and a
-- row per concurrency key that claims lock to count slots without races.
CREATE TABLE flow_state (
    key TEXT PRIMARY KEY,
    tat BIGINT NOT NULL
);

CREATE TABLE debounces (
    function_id TEXT NOT NULL,
    key TEXT NOT NULL,
    run_id TEXT NOT NULL,
    first_at BIGINT NOT NULL,
    PRIMARY KEY (function_id, key)
);
CREATE INDEX debounces_by_run ON debounces (run_id);

CREATE TABLE batches (
    function_id TEXT NOT NULL,
    key TEXT NOT NULL,
    run_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (function_id, key)
);
CREATE INDEX batches_by_run ON batches (run_id);

CREATE TABLE singletons (
    function_id TEXT NOT NULL,
    key TEXT NOT NULL,
    run_id TEXT NOT NULL,
    PRIMARY KEY (function_id, key)
);
CREATE INDEX singletons_by_run ON singletons (run_id);
