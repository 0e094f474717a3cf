-- Cost budgets (docs/llm.md "Budgets"): what each budget key spent per period, the
-- worst cases reserved by calls in flight, operators' limit overrides, and the runs
-- paused until a budget has room again. Reserved money is summed from live
-- reservations (never kept as a running total), so a reservation left by a crashed
-- worker stops counting as soon as its run's lease is gone.
-- depends: 0008_sessions

CREATE TABLE budget_spend (
    budget_id TEXT NOT NULL,
    key TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    period_end BIGINT NOT NULL,
    spent_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    spent_tokens BIGINT NOT NULL DEFAULT 0,
    calls INTEGER NOT NULL DEFAULT 0,
    limit_usd DOUBLE PRECISION,
    limit_tokens BIGINT,
    on_exceeded TEXT NOT NULL DEFAULT 'pause',
    exceeded_sent INTEGER NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (budget_id, key, period_start)
);
CREATE INDEX budget_spend_by_end ON budget_spend (period_end);

-- One row per budget a call attempt reserved against. A run's row names the lease it
-- was made under (it stops counting once that lease is gone); a direct call's row
-- (no run: lease_owner NULL) stops counting at expires_at.
CREATE TABLE budget_reservations (
    run_id TEXT NOT NULL,
    step_key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    budget_id TEXT NOT NULL,
    key TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    usd DOUBLE PRECISION NOT NULL,
    tokens BIGINT NOT NULL,
    lease_owner TEXT,
    lease_epoch BIGINT,
    expires_at BIGINT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, step_key, attempt, budget_id)
);
CREATE INDEX budget_reservations_by_budget ON budget_reservations (budget_id, key, period_start);

CREATE TABLE budget_overrides (
    budget_id TEXT NOT NULL,
    key TEXT NOT NULL,
    limit_usd DOUBLE PRECISION,
    limit_tokens BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (budget_id, key)
);

CREATE TABLE budget_pauses (
    run_id TEXT PRIMARY KEY,
    budget_id TEXT NOT NULL,
    key TEXT NOT NULL,
    step_key TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    period_end BIGINT NOT NULL,
    need_usd DOUBLE PRECISION NOT NULL,
    need_tokens BIGINT NOT NULL,
    limit_usd DOUBLE PRECISION,
    limit_tokens BIGINT,
    paused_at BIGINT NOT NULL
);
CREATE INDEX budget_pauses_by_budget ON budget_pauses (budget_id, key);
