-- A run waiting for its throttle slot keeps the slot's key and time on its queue row, so
-- that a run cancelled before its slot comes gives it back: the runs behind it on the
-- same key move up one slot each, as if it had never been queued (Inngest counts a
-- throttled run when it starts, so a cancelled one holds nobody up). '' marks a run that
-- takes its slot only when it may start (dated ahead, debounced), whatever it meets
-- first (a paused function, a full concurrency key). NULL on rows with no reservation
-- still ahead, and on rows of the previous release (their slot is kept, as before). Adds columns and a partial index: processes of the previous release keep running on it.
-- depends: 0019_cancellations_by_age

ALTER TABLE queue ADD COLUMN throttle_key TEXT;
ALTER TABLE queue ADD COLUMN throttle_slot BIGINT;
CREATE INDEX IF NOT EXISTS queue_by_throttle_slot ON queue (throttle_key, throttle_slot) WHERE throttle_key IS NOT NULL;
