-- Cancellations made through Inngest's REST API (POST /v1/cancellations): each cancels at
-- once the unfinished runs of one function started in a window (and whose event meets its
-- CEL `if`); the row keeps what was asked, and how many runs it cancelled, for
-- GET /v1/cancellations. Only adds a table: processes of the previous release keep running.
-- depends: 0017_wait_range_keys

CREATE TABLE cancellations (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    function_id TEXT NOT NULL,
    started_after BIGINT,
    started_before BIGINT NOT NULL,
    expression TEXT,
    cancelled INTEGER NOT NULL,
    created_at BIGINT NOT NULL
);
