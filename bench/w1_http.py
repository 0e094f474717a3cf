"""W1 over HTTP: each event posted to ``stepline start`` starts a run of 3 no-op steps.

    python -m bench.w1_http --backend sqlite|postgres [--seconds 5] [--rounds 3]
    python -m bench.w1_http --backend sqlite|postgres --batch [--runs 2000] [--trials 5]

One event per request: wrk (one thread) posts from 16 keep-alive connections for
``--seconds``; the server (one process: HTTP, ingest and the worker at default settings)
runs every run to its end, every step checkpointed. Durable steps/s counts the runs'
steps over the span from the first run's creation to the last one's end, both as the
database recorded them, so the figure includes draining what was accepted.

``--batch``: the in-process W1 (2,000 runs, events in ``POST``s of 100 sent one after
another from one connection) over HTTP, from before the first ``POST`` to the last run's
end, alternating trial by trial with the same W1 run in this process
(``bench.w1_throughput``), so the ratio between them comes from the same minutes.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from bench import common, harness, http_load, w1_throughput

STEPS = 3
BODY = json.dumps({"name": "bench/w1", "data": {"i": 1}})


def _query(url: str, sql: str) -> dict[str, Any]:
    if url.startswith("postgresql"):
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            return dict(conn.execute(sql).fetchone() or {})
    import sqlite3

    conn = sqlite3.connect(f"file:{url}?mode=ro", uri=True, timeout=30)
    try:
        conn.row_factory = sqlite3.Row
        return dict(conn.execute(sql).fetchone())
    finally:
        conn.close()


def wait_finished(url: str, expected: int, timeout: float = 300.0) -> dict[str, Any]:
    """Once ``expected`` runs of W1 have ended: how many completed, the first creation and the last end (ms)."""
    deadline = time.monotonic() + timeout
    while True:
        row = _query(url, "SELECT COUNT(*) AS runs, COUNT(ended_at) AS ended, "
                          "SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS completed, "
                          "MIN(created_at) AS first_created, MAX(ended_at) AS last_ended FROM runs WHERE function_id = 'w1'")
        if row["ended"] >= expected:
            return row
        if time.monotonic() > deadline:
            raise SystemExit(f"only {row['ended']} of {expected} runs ended within {timeout:.0f} s")
        time.sleep(0.05)


def per_request(backend: str, seconds: float) -> dict[str, float]:
    path = f"/e/{http_load.EVENT_KEY}"
    with common.fresh_db(backend, "w1http") as url, http_load.stepline_server("bench.http_apps:w1", url) as server:
        http_load.post(server, path, BODY.encode())  # warm up the first statements
        wait_finished(url, 1)
        load = http_load.wrk(server, path, BODY, 16, seconds)
        if load.non_2xx or load.socket_errors:
            raise SystemExit(f"{load.non_2xx} non-2xx answers, {load.socket_errors} socket errors")
        row = wait_finished(url, load.requests + 1)
        created = _query(url, "SELECT MIN(created_at) AS t FROM runs WHERE function_id = 'w1' AND created_at > "
                              "(SELECT MIN(created_at) FROM runs WHERE function_id = 'w1')")["t"]
    span = (row["last_ended"] - created) / 1000
    runs = row["runs"] - 1
    return {
        "runs": runs,
        "completed": row["completed"] - 1,
        "requests_per_s": round(load.per_s, 1),
        "span_s": round(span, 3),
        "runs_per_s": round(runs / span, 1),
        "steps_per_s": round(runs * STEPS / span, 1),
        "drain_s": round(span - load.seconds, 3),
        "p50_ms": round(load.p50_ms, 3),
        "p99_ms": round(load.p99_ms, 3),
        "server_cpu_us_per_run": round(load.server_cpu_us_per_request, 1),
    }


def batch_trial(backend: str, runs: int) -> dict[str, float]:
    path = f"/e/{http_load.EVENT_KEY}"
    with common.fresh_db(backend, "w1batch") as url, http_load.stepline_server("bench.http_apps:w1", url) as server:
        http_load.post(server, path, BODY.encode())
        wait_finished(url, 1)
        time.sleep(0.3)
        bodies = [json.dumps([{"name": "bench/w1", "data": {"i": i}} for i in range(j, min(runs, j + 100))]).encode()
                  for j in range(0, runs, 100)]
        cpu0 = http_load.cpu_seconds_of(server.pid)
        t0 = time.time() * 1000
        for body in bodies:
            http_load.post(server, path, body)
        row = wait_finished(url, runs + 1)
        cpu = http_load.cpu_seconds_of(server.pid) - cpu0
    span = (row["last_ended"] - t0) / 1000
    return {"runs": runs, "seconds": round(span, 3), "runs_per_s": round(runs / span, 1),
            "steps_per_s": round(runs * STEPS / span, 1), "server_cpu_ms_per_run": round(cpu * 1000 / runs, 3)}


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", action="store_true", help="POSTs of 100 events, against W1 in this process")
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--trials", type=int, default=0, help="batch trials (default 5 on SQLite, 3 on PostgreSQL)")
    args = p.parse_args()
    if args.batch:
        trials = args.trials or (5 if args.backend == "sqlite" else 3)
        over_http, in_process = [], []
        for _ in range(trials):
            over_http.append(batch_trial(args.backend, args.runs))
            in_process.append(harness.run(w1_throughput.trial(args.backend, args.runs)))
        record = common.median_record(over_http)
        record["in_process_steps_per_s"] = common.median([r["steps_per_s"] for r in in_process])
        record["vs_in_process"] = round(common.median([a["steps_per_s"] / b["steps_per_s"] for a, b in zip(over_http, in_process)]), 3)
        record["load_avg"] = round(os.getloadavg()[0], 2)
        common.emit("W1-http-batch", "stepline", args.backend, **record)
        return
    records = [per_request(args.backend, args.seconds) for _ in range(args.rounds)]
    record = common.median_record(records)
    record["load_avg"] = round(os.getloadavg()[0], 2)
    common.emit("W1-http", "stepline", args.backend, **record)


if __name__ == "__main__":
    main()
