-- Events by the id their sender gave them (events.external_id), for events that have one.
-- An event `id` seen in the last 24 hours de-duplicates only events of the same name: one of
-- another name that reuses it (a business id such as an order's, used for two kinds of
-- event) is an event of its own, and its own retries are found by this index. Partial: most
-- events carry no id of their sender's.
-- depends: 0026_run_counts

CREATE INDEX IF NOT EXISTS events_by_external_id ON events (external_id, name) WHERE external_id IS NOT NULL;
