-- Dashboard sessions, kept server-side so that logging out ends one on every server
-- process at once. The browser's cookie holds a random id; only its keyed hash is stored.
-- depends: 0006_cleanup_window

CREATE TABLE dashboard_sessions (
    id_hash TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_by_expiry ON dashboard_sessions (expires_at);
