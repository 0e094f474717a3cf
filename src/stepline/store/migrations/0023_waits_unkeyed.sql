-- The waits (and cancel rules) that no key narrows, by event name: an ingest asks whether a
-- name has any such wait once per transaction, and reads them all when it has. Without this
-- index SQLite answered the question through waits_by_range, every wait keyed by a match
-- having no range key, so the probe read all of a name's keyed waits (10,000 of them: about
-- 0.9 ms a transaction). Partial: only the unkeyed rows are in it.
-- depends: 0022_queue_lease_losses

CREATE INDEX IF NOT EXISTS waits_unkeyed ON waits (event_name) WHERE match_path IS NULL AND range_path IS NULL;
