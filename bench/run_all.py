"""``make bench``: every workload on Stepline and its peers, a table with ratios.

    python -m bench.run_all [--quick] [--only W1 W3 ...] [--no-peers]

Each workload runs in its own process: Stepline's with this interpreter, the peers'
with ``bench/.venv-peers`` (created here on first use, from ``bench/requirements-peers.txt``;
the peers never enter the project's own environment). Results go to
``bench/results/latest.json`` and, as Markdown, ``bench/results/latest.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench import common, http_load
from bench.report import render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS_VENV = os.path.join(ROOT, "bench", ".venv-peers")
PEERS_PY = os.path.join(PEERS_VENV, "bin", "python")
REQUIREMENTS = os.path.join(ROOT, "bench", "requirements-peers.txt")


@dataclass
class Job:
    tag: str  # which workload group it belongs to, for --only
    module: str
    args: list[str]
    peer: bool = False
    timeout: float = 300.0


def jobs(quick: bool) -> list[Job]:
    trials = "1" if quick else "3"
    out: list[Job] = []
    for backend in ("sqlite", "postgres"):
        b = ["--backend", backend]
        out += [
            Job("W1", "bench.w1_throughput", b + ["--trials", trials if backend == "postgres" or quick else "5"]),
            Job("W2", "bench.w2_fanin", b + ["--runs", "500", "5000"]),
            Job("W2", "bench.w2_fanin", b + ["--runs", "500", "5000", "--call", "sleep"]),
            Job("W3", "bench.w3_latency", b),
            Job("W3", "bench.w3_latency", b + ["--no-handoff"]),
            Job("W4", "bench.w4_backlog", b + ["--trials", trials] + (["--backlog", "20000"] if quick else [])),
            Job("W4", "bench.w4_backlog", b + ["--trials", trials, "--elsewhere", "20000" if quick else "200000"] + (["--backlog", "20000"] if quick else []), timeout=900),
            Job("W5", "bench.w5_long", b),
            Job("METRICS", "bench.metrics_read", b + ["--runs", "100000" if quick else "1000000"], timeout=900),
            Job("METRICS", "bench.metrics_read", b + ["--runs", "1000", "--asleep", "100000" if quick else "1000000"], timeout=900),
            Job("METRICS", "bench.metrics_read", b + ["--runs", "100000" if quick else "300000", "--hour"], timeout=900),
        ]
    out.append(Job("SCALE", "bench.scaleout", ["--runs", "1000" if quick else "2000"], timeout=600))
    for backend in ("sqlite", "postgres"):
        b = ["--backend", backend]
        http = ["--seconds", "2", "--rounds", "1"] if quick else []
        out += [
            Job("HTTP", "bench.http_ingest", b + http),
            Job("HTTP", "bench.w1_http", b + http),
            Job("HTTP", "bench.w1_http", b + ["--batch"] + (["--trials", "1"] if quick else [])),
            Job("W6", "bench.w6_timers", b + (["--runs", "10000", "--spread", "10", "--lead", "10"] if quick else []), timeout=900),
            Job("W6", "bench.w6_timers", b + ["--backlog"] + (["--sleepers", "50000", "--w3-runs", "100"] if quick else []), timeout=3600),
            Job("W7", "bench.w7_waits", b + (["--waiters", "2000", "--samples", "100"] if quick else []), timeout=900),
        ]
    for backend in ("sqlite", "postgres"):
        b = ["--backend", backend]
        out += [
            Job("W1", "bench.peers.dbos_bench", b + ["--workload", "w1", "--runs", "500" if quick else "1000"], peer=True),
            Job("W2", "bench.peers.dbos_bench", b + ["--workload", "w2", "--runs", "500"], peer=True),
            Job("W3", "bench.peers.dbos_bench", b + ["--workload", "w3", "--runs", "20" if quick else "30"], peer=True),
        ]
    out += [
        Job("W1", "bench.peers.procrastinate_bench", ["--workload", "w1"], peer=True),
        Job("W2", "bench.peers.procrastinate_bench", ["--workload", "w2", "--runs", "500"], peer=True),
        Job("W3", "bench.peers.procrastinate_bench", ["--workload", "w3"], peer=True),
    ]
    return out


def ensure_peers_env() -> bool:
    if os.path.exists(PEERS_PY):
        return True
    print(f"creating the peers' environment in {PEERS_VENV} ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", PEERS_VENV], check=True)
        subprocess.run([PEERS_PY, "-m", "pip", "install", "-q", "-r", REQUIREMENTS], check=True)
    except subprocess.CalledProcessError as exc:
        print(f"could not create the peers' environment ({exc}); peers are skipped", flush=True)
        return False
    return True


def run_job(job: Job) -> list[dict[str, Any]]:
    python = PEERS_PY if job.peer else sys.executable
    cmd = [python, "-m", job.module, *job.args]
    print(f"$ {' '.join(cmd[1:])}", flush=True)
    started = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "src"), ROOT]))  # this tree's code, also from a worktree
    try:
        proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=job.timeout, env=env)
    except subprocess.TimeoutExpired:
        print(f"  timed out after {job.timeout:.0f} s", flush=True)
        return []
    records = [json.loads(line[len(common.RESULT_PREFIX):]) for line in proc.stdout.splitlines() if line.startswith(common.RESULT_PREFIX)]
    for record in records:
        shown = {k: v for k, v in record.items() if k not in ("workload", "system", "backend")}
        print(f"  {record['workload']} {record['system']}/{record['backend']}: {shown}", flush=True)
    if proc.returncode != 0 or not records:
        print(f"  failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)
    print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)
    return records


def versions(peers: bool) -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform(), "cpus": str(os.cpu_count())}
    try:
        import sqlite3

        out["sqlite"] = sqlite3.sqlite_version
        import psycopg

        with psycopg.connect(common.PG_ADMIN_URL) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            out["postgresql"] = str(row[0]) if row else "?"
    except Exception as exc:  # noqa: BLE001 - versions are informative only
        out["postgresql"] = f"unavailable ({exc})"
    from importlib.metadata import version

    out["stepline"] = version("stepline")
    if peers:
        probe = "from importlib.metadata import version as v; print(v('dbos'), v('procrastinate'))"
        got = subprocess.run([PEERS_PY, "-c", probe], check=False, capture_output=True, text=True).stdout.split()
        if len(got) == 2:
            out["dbos"], out["procrastinate"] = got
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    out["cpu"] = names[0] if names else "?"
    out["load_at_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return out


DOCS = os.path.join(ROOT, "docs", "performance.md")
DOCS_BEGIN = "<!-- bench:latest (written by make bench) -->"
DOCS_END = "<!-- /bench:latest -->"


def write_docs(table: str) -> bool:
    """Put the latest full run's figures between the markers in docs/performance.md."""
    try:
        with open(DOCS) as f:
            text = f.read()
    except FileNotFoundError:
        return False
    start, end = text.find(DOCS_BEGIN), text.find(DOCS_END)
    if start < 0 or end < start:
        return False
    with open(DOCS, "w") as f:
        f.write(text[: start + len(DOCS_BEGIN)] + "\n\n" + table.strip() + "\n\n" + text[end:])
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer trials and smaller sizes (about 5 minutes)")
    p.add_argument("--only", nargs="+", default=[], help="workload groups to run: W1 W2 W3 W4 W5 SCALE HTTP W6 W7")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--docs", action=argparse.BooleanOptionalAction, default=None,
                   help="write the figures into docs/performance.md (default: only after a full run)")
    args = p.parse_args()
    selected = [j for j in jobs(args.quick) if not args.only or j.tag in args.only]
    peers = not args.no_peers and any(j.peer for j in selected) and ensure_peers_env()
    if any(j.tag == "HTTP" for j in selected):
        http_load.ensure_wrk()
    meta = versions(peers)
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    for job in selected:
        if job.peer and not peers:
            continue
        results.extend(run_job(job))
    meta["total_seconds"] = f"{time.perf_counter() - started:.0f}"
    meta["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "latest.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    table = render(meta, results)
    with open(os.path.join(ROOT, "bench", "results", "latest.md"), "w") as f:
        f.write(table)
    print()
    print(table)
    full = not (args.quick or args.only or args.no_peers)
    if (args.docs if args.docs is not None else full) and write_docs(table):
        print(f"figures written to {os.path.relpath(DOCS, ROOT)}")


if __name__ == "__main__":
    main()
