-- A wait resumed by a large event names that event (output_event) instead of holding a
-- copy of it in output: one event that resumes many waiting runs is stored once, not
-- once per run. Readers take the event's body when output is NULL; retention keeps an
-- event while a step names it. Adds a column and an index: processes of the previous
-- release keep running on it (they copy, as before).
-- depends: 0015_queue_start_by

ALTER TABLE steps ADD COLUMN output_event TEXT;
CREATE INDEX steps_by_output_event ON steps (output_event) WHERE output_event IS NOT NULL;
