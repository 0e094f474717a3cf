-- A queued run's start deadline (timeouts.start) on its queue row: a run waiting behind a
-- throttle or a full concurrency key falls due at its deadline and is cancelled then,
-- instead of when its slot came. NULL once the run has started, and on rows of the
-- previous release (checked at their claim, as before). Adds a column: processes of the
-- previous release keep running on it.
-- depends: 0014_wait_trigger_view

ALTER TABLE queue ADD COLUMN start_by BIGINT;
