-- Parallel steps of a run take concurrency slots of their own (as on Inngest, where each
-- step executing counts): a leased run holds one slot on each of its keys, plus one for
-- each step beyond the first executing at once, counted here. The count belongs to the
-- lease: a claim resets it, and a run without a lease (suspended, waiting) holds none, so
-- a crashed worker's extra slots end with its lease. Adds a column with a default:
-- processes of the previous release keep running on it (counting one slot a run).
-- depends: 0020_queue_throttle_slot

ALTER TABLE queue ADD COLUMN step_slots INTEGER NOT NULL DEFAULT 0;
