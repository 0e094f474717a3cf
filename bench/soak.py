"""Soak: a steady stream of events for half an hour or more, with a short retention.

    python -m bench.soak --backend sqlite|postgres [--minutes 30] [--rate 20]
        [--retention 5m] [--retention-interval 30s] [--split] [--sample 60]

Stepline runs as it is deployed, in processes of its own started with the CLI:
``stepline start bench.soak:app`` (server and worker in one process; ``--split``: an
API server ``--no-worker`` and a ``stepline worker``). This process sends ``--rate``
events a second over HTTP (``stepline.AsyncClient``, one event per request) and every
``--sample`` seconds records:

- the database's size (SQLite: the file and its WAL; PostgreSQL: ``pg_database_size``),
- the resident memory of each Stepline process and of this one,
- W3-style latencies of the runs created in the last interval: event → run start (the
  sender's clock at ``send`` to the first step body) and event → complete (to the run's
  ``ended_at``, stored in ms), p50 and p99, from ``GET /api/v1/runs``,
- the runs stored and the rows retention has deleted so far (``/metrics``).

Each run has three steps with a 1 KB result; one in ten also sleeps 2 s (a timer and a
replay; those are left out of the latencies). With retention at a few minutes the
stored runs, the database and the processes' memory should level off once the first
runs pass the retention age. The table is printed as it grows; at the end come a
``RESULT`` line, ``bench/results/soak-<backend>.json`` and an SVG plot beside it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
import time
from typing import Any

import httpx

import stepline
from bench import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
EVENT_KEY = "soak-key"
API_TOKEN = "soak-token"
SLEEP_EVERY = 10  # one run in ten sleeps 2 s
PAYLOAD = "x" * 1024

# --- the app the Stepline processes load (``bench.soak:app``) ---------------------------

app = stepline.App("bench-soak")


async def _now() -> float:
    return time.time()


async def _work(i: int) -> dict[str, Any]:
    return {"i": i, "payload": PAYLOAD}


async def _noop() -> None:
    return None


@app.function(id="soak", trigger=stepline.TriggerEvent("bench/soak"), retries=2)
async def soak(ctx: stepline.Context) -> dict[str, Any]:
    started = await ctx.step.run("start", _now)
    await ctx.step.run("work", _work, ctx.event.data["i"])
    slept = ctx.event.data["i"] % SLEEP_EVERY == 0
    if slept:
        await ctx.step.sleep("nap", "2s")
    await ctx.step.run("finish", _noop)
    return {"sent": ctx.event.data["sent"], "started": started, "slept": slept}


# --- the processes ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stepline(*args: str) -> list[str]:
    return [sys.executable, "-m", "stepline.cli", *args]


def _env(url: str, port: int, retention: str, interval: str) -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "src"), ROOT]),  # this tree's code, also from a worktree
        STEPLINE_DB=url,
        STEPLINE_PORT=str(port),
        STEPLINE_EVENT_KEY=EVENT_KEY,
        STEPLINE_API_TOKEN=API_TOKEN,
        STEPLINE_RETENTION=retention,
        STEPLINE_RETENTION_INTERVAL=interval,
        STEPLINE_LOG_LEVEL="WARNING",
    )


def start_processes(url: str, port: int, env: dict[str, str], split: bool, log_dir: str) -> dict[str, subprocess.Popen[bytes]]:
    subprocess.run(_stepline("migrate", "--db", url), check=True, env=env, cwd=ROOT, capture_output=True)
    commands = {"server": _stepline("start", "--no-worker"), "worker": _stepline("worker", "bench.soak:app")} if split else {
        "server+worker": _stepline("start", "bench.soak:app")
    }
    procs = {}
    for name, cmd in commands.items():
        log = open(os.path.join(log_dir, f"soak-{name}.log"), "wb")  # noqa: SIM115 - closed with the process
        procs[name] = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return procs


async def wait_healthy(base: str, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} at start")
            try:
                if (await http.get(f"{base}/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the server did not answer /health within 30 s")


# --- measuring --------------------------------------------------------------------------


def database_mib(url: str) -> float:
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            return int(row[0]) / 2**20 if row else float("nan")
    return sum(os.path.getsize(url + suffix) for suffix in ("", "-wal") if os.path.exists(url + suffix)) / 2**20


def autovacuum(url: str) -> str | None:
    """PostgreSQL: whether the server's autovacuum runs (``on`` / ``off``)."""
    if not url.startswith("postgresql"):
        return None
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW autovacuum").fetchone()
        return str(row[0]) if row else None


def vacuum(url: str) -> None:
    """``VACUUM (ANALYZE)`` of the soak's database: what autovacuum would do, where it is off."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")


def _ms(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


async def latencies(http: httpx.AsyncClient, base: str, since_ms: int, until_ms: int) -> dict[str, float]:
    """p50/p99 of event→start and event→complete of the runs created in [since, until)
    (the newest 500 that completed; sleepers left out)."""
    reply = await http.get(
        f"{base}/api/v1/runs",
        params={"function_id": "soak", "status": "completed", "since": str(since_ms), "until": str(until_ms), "limit": "500"},
    )
    reply.raise_for_status()
    to_start, to_complete = [], []
    for run in reply.json()["data"]:
        out = run["output"] or {}
        if out.get("slept") or run["ended_at"] is None:
            continue
        to_start.append((out["started"] - out["sent"]) * 1000)
        to_complete.append(_ms(run["ended_at"]) - out["sent"] * 1000)
    return {
        "samples": len(to_start),
        "start_p50_ms": round(common.percentile(to_start, 50), 2),
        "start_p99_ms": round(common.percentile(to_start, 99), 2),
        "complete_p50_ms": round(common.percentile(to_complete, 50), 2),
        "complete_p99_ms": round(common.percentile(to_complete, 99), 2),
    }


_STORED = re.compile(r'^stepline_runs\{function="soak",status="\w+"\} (\S+)$')
_DELETED = re.compile(r'^stepline_retention_deleted_rows_total\{table="runs"\} (\S+)$')


async def stored_and_deleted(http: httpx.AsyncClient, base: str) -> tuple[int, int]:
    """Runs stored now (every status), and runs retention has deleted so far (from ``/metrics``)."""
    text = (await http.get(f"{base}/metrics")).text
    stored = deleted = 0
    for line in text.splitlines():
        if found := _STORED.match(line):
            stored += int(float(found.group(1)))
        elif found := _DELETED.match(line):
            deleted = int(float(found.group(1)))
    return stored, deleted


# --- the load ---------------------------------------------------------------------------


class Sender:
    """Sends ``rate`` events a second on a fixed schedule; counts what fell behind it."""

    def __init__(self, base: str, rate: float) -> None:
        self.client = stepline.AsyncClient(base, EVENT_KEY)
        self.rate = rate
        self.sent = 0
        self.errors = 0
        self.late = 0  # sends that started over a second behind their slot

    async def run(self, until: float) -> None:
        slot = time.perf_counter()
        while slot < until:
            delay = slot - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1:
                self.late += 1
            try:
                await self.client.send({"name": "bench/soak", "data": {"i": self.sent, "sent": time.time()}})
                self.sent += 1
            except stepline.SteplineError:
                self.errors += 1
            slot += 1 / self.rate
        await self.client.aclose()


async def soak_run(args: Any, url: str) -> dict[str, Any]:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    os.makedirs(RESULTS, exist_ok=True)
    procs = start_processes(url, port, _env(url, port, args.retention, args.retention_interval), args.split, RESULTS)
    rows: list[dict[str, Any]] = []
    try:
        await wait_healthy(base, procs)
        sender = Sender(base, args.rate)
        t0 = time.perf_counter()
        load = asyncio.create_task(sender.run(t0 + args.minutes * 60))
        headers = {"authorization": f"Bearer {API_TOKEN}"}
        async with httpx.AsyncClient(headers=headers, timeout=30) as http:
            minute = 0
            while not load.done():
                await asyncio.wait({load}, timeout=max(0.0, t0 + (minute + 1) * args.sample - time.perf_counter()))
                minute += 1
                if args.vacuum:
                    await asyncio.to_thread(vacuum, url)
                now_ms = int(time.time() * 1000)
                row: dict[str, Any] = {"minute": round((time.perf_counter() - t0) / 60, 1), "sent": sender.sent}
                row["db_mib"] = round(database_mib(url), 2)
                if not url.startswith("postgresql"):  # of which the WAL (truncated only when the writer idles)
                    row["wal_mib"] = round(os.path.getsize(url + "-wal") / 2**20 if os.path.exists(url + "-wal") else 0.0, 2)
                for name, proc in procs.items():
                    row[f"rss_{name}_mib"] = round(common.rss_mib(proc.pid), 1)
                row["rss_sender_mib"] = round(common.rss_mib(), 1)
                row.update(await latencies(http, base, now_ms - int(args.sample * 1000) - 5000, now_ms - 5000))
                row["runs_stored"], row["runs_deleted"] = await stored_and_deleted(http, base)
                row["late_sends"], row["send_errors"] = sender.late, sender.errors
                row["load"] = round(os.getloadavg()[0], 2)
                rows.append(row)
                print_row(row, header=len(rows) == 1)
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        raise RuntimeError(f"{name} exited with {proc.returncode}; see {RESULTS}/soak-{name}.log")
        await load
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {"rows": rows, "processes": list(procs)}


# --- showing ----------------------------------------------------------------------------

COLUMNS = ("minute", "sent", "runs_stored", "runs_deleted", "db_mib", "wal_mib", "start_p50_ms", "start_p99_ms", "complete_p50_ms", "complete_p99_ms", "load")


def _columns(row: dict[str, Any]) -> list[str]:
    return [c for c in COLUMNS if c in row] + [c for c in row if c.startswith("rss_")]


def print_row(row: dict[str, Any], header: bool) -> None:
    cols = _columns(row)
    if header:
        print(" ".join(f"{c:>16}" for c in cols), flush=True)
    print(" ".join(f"{row[c]!s:>16}" for c in cols), flush=True)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    cols = _columns(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def svg_plot(rows: list[dict[str, Any]], title: str) -> str:
    """Four panels against minutes: database MiB, RSS MiB per process, event→start and
    event→complete (p50, p99), each from 0 to its own maximum."""
    panels = [
        ("database (MiB)", ["db_mib"]),
        ("RSS (MiB)", [c for c in rows[0] if c.startswith("rss_")]),
        ("event → start (ms)", ["start_p50_ms", "start_p99_ms"]),
        ("event → complete (ms)", ["complete_p50_ms", "complete_p99_ms"]),
    ]
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    w, h, pad = 420, 220, 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{2 * h + 30}" font-family="sans-serif" font-size="11">']
    out.append(f'<text x="10" y="18" font-size="14">{title}</text>')
    x_max = max(r["minute"] for r in rows) or 1
    for n, (name, series) in enumerate(panels):
        ox, oy = (n % 2) * w, 30 + (n // 2) * h
        values = [r[s] for r in rows for s in series if isinstance(r.get(s), (int, float)) and r[s] == r[s]]
        y_max = max(values, default=1) or 1
        out.append(f'<rect x="{ox + pad}" y="{oy + 10}" width="{w - 2 * pad}" height="{h - 2 * pad}" fill="none" stroke="#999"/>')
        out.append(f'<text x="{ox + pad}" y="{oy + 8}">{name}, max {y_max:.4g}; x: minutes 0..{x_max:.0f}</text>')
        for i, s in enumerate(series):
            pts = [
                f"{ox + pad + r['minute'] / x_max * (w - 2 * pad):.1f},{oy + 10 + (1 - r[s] / y_max) * (h - 2 * pad):.1f}"
                for r in rows
                if isinstance(r.get(s), (int, float)) and r[s] == r[s]
            ]
            colour = colours[i % len(colours)]
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(pts)}"/>')
            out.append(f'<text x="{ox + pad + 5}" y="{oy + h - pad + 22 + 0 * i}" dx="{i * 130}" fill="{colour}">{s}</text>')
    out.append("</svg>")
    return "\n".join(out)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Plateau check: each figure's maximum over the middle third against the last third."""
    third = max(1, len(rows) // 3)
    middle, last = rows[third : 2 * third] or rows, rows[-third:]
    out: dict[str, Any] = {"minutes": rows[-1]["minute"], "events": rows[-1]["sent"], "runs_deleted": rows[-1]["runs_deleted"]}
    for key in ["db_mib", "runs_stored", "complete_p99_ms"] + [c for c in rows[0] if c.startswith("rss_")]:
        out[f"{key}_middle_max"] = max(r[key] for r in middle)
        out[f"{key}_last_max"] = max(r[key] for r in last)
    return out


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=20.0, help="events a second")
    p.add_argument("--retention", default="5m", help="STEPLINE_RETENTION")
    p.add_argument("--retention-interval", default="30s", help="STEPLINE_RETENTION_INTERVAL")
    p.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    p.add_argument(
        "--vacuum", action="store_true",
        help="PostgreSQL: VACUUM (ANALYZE) the database at every sample, standing in for autovacuum where the server has it off",
    )
    p.add_argument("--split", action="store_true", help="an API server and a worker process instead of one of both")
    args = p.parse_args()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with common.fresh_db(args.backend, "soak") as url:
        vacuuming = autovacuum(url)
        result = asyncio.run(soak_run(args, url))
    rows = result["rows"]
    print()
    print(markdown_table(rows))
    name = f"soak-{args.backend}{'-split' if args.split else ''}{'-vacuum' if args.vacuum else ''}"
    title = f"Stepline soak, {args.backend}, {args.rate:g} events/s, retention {args.retention}, {'split' if args.split else 'one process'}"
    with open(os.path.join(RESULTS, f"{name}.svg"), "w") as f:
        f.write(svg_plot(rows, title))
    meta = {
        "rate": args.rate, "retention": args.retention, "retention_interval": args.retention_interval, "split": args.split,
        "load_before": load_before, "autovacuum": vacuuming, "vacuum_every_sample": args.vacuum,
    }
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump({"meta": meta, **result}, f, indent=1)
    common.emit("SOAK", "stepline", args.backend, **meta, **summary(rows))


if __name__ == "__main__":
    main()
