-- The part of a run's event that a wait's expression reads (store/wait_keys.py): an
-- incoming event's candidates are evaluated on it instead of on the whole event, whose
-- size any sender chooses. NULL (older rows, an expression that reads the event whole):
-- the whole event, as before. Adds a column: processes of the previous release keep
-- running on it.
-- depends: 0013_wait_match_keys

ALTER TABLE waits ADD COLUMN trigger_view TEXT;
