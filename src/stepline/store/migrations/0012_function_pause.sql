-- Pausing a function (stepline functions pause, the dashboard, POST
-- /api/v1/functions/{id}/pause): one row per paused function, kept until it is resumed,
-- so a pause outlives restarts and holds on every process. mode 'queue': its runs are
-- created and wait (claims set them aside, parked on 'pause:<function id>'); 'skip':
-- events and cron ticks start none (the event says why). A run already executing goes on
-- until it next suspends.
-- And what ties runs together for their pages: the event that cancelled a run (a cancel_on
-- rule), so a cancel event's page can list the runs it cancelled, and replays by the run
-- they replay (also how a bulk replay starts each failed run's replay once).
-- Only adds a table, a nullable column and indexes: processes of the previous release keep
-- running on it (they do not honour pauses).
-- depends: 0011_parked_priority

CREATE TABLE function_pauses (
    function_id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    reason TEXT,
    paused_at BIGINT NOT NULL
);

ALTER TABLE runs ADD COLUMN cancelled_by TEXT;
CREATE INDEX IF NOT EXISTS runs_by_canceller ON runs (cancelled_by) WHERE cancelled_by IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_by_replay_of ON runs (replay_of) WHERE replay_of IS NOT NULL;
