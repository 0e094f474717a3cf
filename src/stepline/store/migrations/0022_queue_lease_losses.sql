-- How many times in a row a run's lease ran out (its worker crashed, stalled, or could not
-- save what it did) without the run saving anything in between, and the run's progress mark
-- (its steps and their attempts) when it last did: a run that takes down every worker that
-- claims it (a step that exhausts memory or kills the process) is failed after
-- STEPLINE_MAX_LEASE_LOSSES of them instead of crash-looping the fleet for ever. Adds
-- columns: processes of the previous release keep running on it.
-- depends: 0021_queue_step_slots

ALTER TABLE queue ADD COLUMN lease_losses INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queue ADD COLUMN lost_at_mark BIGINT;
