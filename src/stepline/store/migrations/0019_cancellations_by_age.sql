-- The retention sweep deletes cancellations (the record of POST /v1/cancellations) once
-- they are older than STEPLINE_RETENTION, oldest first: an index on created_at lets each
-- batch start there rather than read the whole table. Only adds an index: processes of
-- the previous release keep running (they never prune the table).
-- depends: 0018_cancellations

CREATE INDEX IF NOT EXISTS cancellations_by_age ON cancellations (created_at);
