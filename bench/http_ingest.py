"""HTTP ingest: events posted one per request to ``stepline start``, beside an empty endpoint.

    python -m bench.http_ingest --backend sqlite|postgres [--seconds 5] [--rounds 3]

The events trigger nothing (the server's one function listens for another name), so
each request is the HTTP path and the ingest transaction alone: request head and body
through the guard, the event key checked, the body parsed and validated, the event
stored and committed, the ids answered. The floor is ``bench.http_floor``: an empty
Starlette endpoint on uvicorn and the same loop, in its own process, twice: on uvicorn's
choice of HTTP implementation (httptools, which Stepline serves on) and on its pure-Python
h11 protocol (``h11_`` figures: the floor as first measured, before either had httptools).

wrk (one thread) posts from 1 and from 16 keep-alive connections. The loads alternate
between the floors and Stepline (each floor, then Stepline, at 1 connection, then at 16,
and again for each round), so all see the same minutes of a shared machine; each figure
is the median over the rounds, and each ratio the median of the rounds' ratios.
"""

from __future__ import annotations

import json
import os

from bench import common, http_load

BODY = json.dumps({"name": "bench/none", "data": {"order": 1234, "user_id": "u-1"}})
CONNECTIONS = (1, 16)


def measure(backend: str, seconds: float, rounds: int) -> dict[str, float]:
    path = f"/e/{http_load.EVENT_KEY}"
    runs: dict[tuple[str, int], list[http_load.Load]] = {}
    with common.fresh_db(backend, "http") as url, http_load.stepline_server("bench.http_apps:ingest", url) as ours, \
            http_load.floor_server() as floor, http_load.floor_server("h11") as floor_h11:
        for server in (floor, floor_h11, ours):  # warm up: connections, caches, the first statements
            http_load.wrk(server, path, BODY, 16, 1)
        for _ in range(rounds):
            for connections in CONNECTIONS:
                for name, server in (("floor", floor), ("h11_floor", floor_h11), ("stepline", ours)):
                    load = http_load.wrk(server, path, BODY, connections, seconds)
                    if load.non_2xx or load.socket_errors:
                        raise SystemExit(f"{name}: {load.non_2xx} non-2xx answers, {load.socket_errors} socket errors")
                    runs.setdefault((name, connections), []).append(load)
    out: dict[str, float] = {"seconds": seconds, "rounds": rounds, "load_avg": round(os.getloadavg()[0], 2)}
    for connections in CONNECTIONS:
        ours_runs, floor_runs = runs[("stepline", connections)], runs[("floor", connections)]
        out[f"c{connections}_per_s"] = round(common.median([x.per_s for x in ours_runs]), 1)
        out[f"floor_c{connections}_per_s"] = round(common.median([x.per_s for x in floor_runs]), 1)
        out[f"c{connections}_vs_floor"] = round(common.median([a.per_s / b.per_s for a, b in zip(ours_runs, floor_runs)]), 3)
        out[f"c{connections}_p50_ms"] = round(common.median([x.p50_ms for x in ours_runs]), 3)
        out[f"c{connections}_p99_ms"] = round(common.median([x.p99_ms for x in ours_runs]), 3)
        out[f"c{connections}_cpu_us"] = round(common.median([x.server_cpu_us_per_request for x in ours_runs]), 1)
        out[f"floor_c{connections}_cpu_us"] = round(common.median([x.server_cpu_us_per_request for x in floor_runs]), 1)
        h11_runs = runs[("h11_floor", connections)]
        out[f"h11_floor_c{connections}_per_s"] = round(common.median([x.per_s for x in h11_runs]), 1)
        out[f"c{connections}_vs_h11_floor"] = round(common.median([a.per_s / b.per_s for a, b in zip(ours_runs, h11_runs)]), 3)
    return out


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    common.emit("HTTP-ingest", "stepline", args.backend, **measure(args.backend, args.seconds, args.rounds))


if __name__ == "__main__":
    main()
