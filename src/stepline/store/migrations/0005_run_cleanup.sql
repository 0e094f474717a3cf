-- Which side rows a run may leave behind, so ending it deletes only what exists:
-- bit 1, waits (cancel_on rules, wait_for_event); bit 2, a singleton key.
-- depends: 0004_runs_by_end

ALTER TABLE runs ADD COLUMN cleanup INTEGER NOT NULL DEFAULT 0;
UPDATE runs SET cleanup = 3 WHERE status NOT IN ('completed', 'failed', 'cancelled');
