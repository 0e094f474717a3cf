-- Runs parked behind a concurrency limit keep the place they had in the ready queue:
-- parked_score is their claim order when parked (due time minus priority), so when a
-- slot frees the next run woken is the one a claim would have taken first.
-- depends: 0008_sessions

ALTER TABLE queue ADD COLUMN parked_score BIGINT;
UPDATE queue SET parked_score = 0 - priority_ms WHERE parked_on IS NOT NULL;
DROP INDEX queue_parked;
CREATE INDEX queue_parked ON queue (parked_on, parked_score, run_id) WHERE parked_on IS NOT NULL;
