-- Finished runs by status and end time: the API's "failed in the last hour" counts
-- and the metrics window read a range of this index instead of every finished run.
-- depends: 0003_flow_control

CREATE INDEX runs_by_status_end ON runs (status, ended_at);
