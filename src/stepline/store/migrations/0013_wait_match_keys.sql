-- Waits keyed by the value they need: a wait whose expression says "this field of the
-- incoming event equals that value" stores the field (match_path) and the value, encoded
-- (match_value), when it is registered, so an event finds the waits it can resolve by
-- one index lookup instead of evaluating every wait of its name (store/wait_keys.py).
-- Waits without a key (older rows, other expressions) are evaluated as before. Adds
-- columns and swaps an index: processes of the previous release keep running on it.
-- depends: 0011_parked_priority

ALTER TABLE waits ADD COLUMN match_path TEXT;
ALTER TABLE waits ADD COLUMN match_value TEXT;
CREATE INDEX waits_by_match ON waits (event_name, match_path, match_value);
DROP INDEX waits_by_event;
