-- Waits keyed by a comparison: a wait whose expression has no equality to key it but
-- compares an incoming field with a number ("async.data.price <= event.data.target")
-- stores the field with the direction it needs (range_path) and the run's number
-- (range_value), so an event reads the waits its value can satisfy by a range scan
-- instead of evaluating every wait of its name (store/wait_keys.py). Their match_path
-- stays NULL, so processes of the previous release evaluate them as before; the partial
-- index keeps the waits with neither key, which every event of the name reads, apart.
-- Adds columns and indexes: processes of the previous release keep running on it.
-- depends: 0016_step_output_event

ALTER TABLE waits ADD COLUMN range_path TEXT;
ALTER TABLE waits ADD COLUMN range_value DOUBLE PRECISION;
CREATE INDEX IF NOT EXISTS waits_by_range ON waits (event_name, range_path, range_value);
CREATE INDEX IF NOT EXISTS waits_unkeyed ON waits (event_name) WHERE match_path IS NULL AND range_path IS NULL;
