-- Fencing: every lease of a run (a claim, a reclaim of an expired lease, a hand-off)
-- takes the next epoch, and every write for the run names the epoch it holds, so a
-- worker whose lease was taken over (it stalled past expiry) can commit nothing more.
-- depends: 0006_cleanup_window

ALTER TABLE queue ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;
