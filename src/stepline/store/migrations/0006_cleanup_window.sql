-- Bit 4 of runs.cleanup: a debounces or batches row may exist until the run starts,
-- so claims and endings touch those tables only for runs that were debounced or batched.
-- depends: 0005_run_cleanup

UPDATE runs SET cleanup = cleanup | 4
WHERE started_at IS NULL AND status NOT IN ('completed', 'failed', 'cancelled');
