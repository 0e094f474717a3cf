-- Stepline schema, version 1. Times are integer milliseconds since the epoch;
-- JSON is stored as text so both backends share one set of domain queries.

CREATE TABLE functions (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    config TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE triggers (
    function_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    event_name TEXT NOT NULL,
    expression TEXT,
    PRIMARY KEY (function_id, position)
);
CREATE INDEX triggers_by_event ON triggers (event_name);

CREATE TABLE cron_schedules (
    function_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    next_tick BIGINT NOT NULL,
    PRIMARY KEY (function_id, position)
);

CREATE TABLE events (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    external_id TEXT,
    user_id TEXT,
    ts BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    outcome TEXT
);
CREATE INDEX events_by_received ON events (received_at);
CREATE INDEX events_by_name ON events (name, received_at);

CREATE TABLE event_ids_seen (
    external_id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    function_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    batch_event_ids TEXT,
    status TEXT NOT NULL,
    wait_reason TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    user_id TEXT,
    progress DOUBLE PRECISION,
    progress_message TEXT,
    output TEXT,
    error TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    ended_at BIGINT,
    updated_at BIGINT NOT NULL,
    start_deadline_at BIGINT,
    finish_timeout_ms BIGINT,
    parent_run_id TEXT,
    parent_step_key TEXT,
    replay_of TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_by_created ON runs (created_at);
CREATE INDEX runs_by_function ON runs (function_id, created_at);
CREATE INDEX runs_by_status ON runs (status, created_at);
CREATE INDEX runs_by_event ON runs (event_id);
CREATE INDEX runs_by_user ON runs (user_id, created_at);

CREATE TABLE steps (
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    seq INTEGER NOT NULL,
    output TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    started_at BIGINT,
    ended_at BIGINT,
    wake_at BIGINT,
    meta TEXT,
    PRIMARY KEY (run_id, key)
);

CREATE TABLE step_attempts (
    run_id TEXT NOT NULL,
    step_key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    error TEXT,
    started_at BIGINT NOT NULL,
    ended_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, step_key, attempt)
);

-- One row per unfinished run: when it may next execute, and who holds it.
CREATE TABLE queue (
    run_id TEXT PRIMARY KEY,
    function_id TEXT NOT NULL,
    due_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_expires_at BIGINT
);
CREATE INDEX queue_ready ON queue (due_at) WHERE lease_owner IS NULL;
CREATE INDEX queue_leased ON queue (lease_expires_at) WHERE lease_owner IS NOT NULL;
CREATE INDEX queue_by_owner ON queue (lease_owner) WHERE lease_owner IS NOT NULL;

-- Events a run is waiting for: a step's wait_for_event, or a cancel_on rule.
CREATE TABLE waits (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    step_key TEXT,
    event_name TEXT NOT NULL,
    expression TEXT,
    expires_at BIGINT
);
CREATE INDEX waits_by_event ON waits (event_name);
CREATE INDEX waits_by_run ON waits (run_id);

CREATE TABLE idempotency_keys (
    function_id TEXT NOT NULL,
    key TEXT NOT NULL,
    run_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (function_id, key)
);

CREATE TABLE run_messages (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
