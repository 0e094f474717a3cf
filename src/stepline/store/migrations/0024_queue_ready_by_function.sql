-- The unleased runs of each function by due time. A claim serves some functions; the other
-- queue indexes lead with the due time, so learning when its own next run falls due, or
-- which of its own few are ready, read every row of functions it does not serve that sorted
-- before them (another app's runs asleep for hours: 1,000,000 of them cost 60-80 ms a claim,
-- holding the writer). Partial, as the due-time index is: a leased run is in neither.
-- depends: 0023_waits_unkeyed

CREATE INDEX IF NOT EXISTS queue_ready_by_function ON queue (function_id, due_at) WHERE lease_owner IS NULL;
