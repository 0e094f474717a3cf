-- The unleased runs of each function in claim order (due time less priority), in place of
-- the one claim order over every function (0003). A claim with more than a batch of its
-- own runs ready read that order from its start, through every ready run of functions it
-- does not serve that sorted before its own (another app's backlog waiting for its own
-- workers: each claim read all of it, holding the writer). Now it reads each of its
-- functions' order up to its batch, and no other.
-- depends: 0024_queue_ready_by_function

CREATE INDEX IF NOT EXISTS queue_claim_by_function ON queue (function_id, (due_at - priority_ms)) WHERE lease_owner IS NULL;
DROP INDEX IF EXISTS queue_ready_by_priority;
