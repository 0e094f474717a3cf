"""Markdown tables from benchmark results: Stepline beside its peers, ratios, targets."""

from __future__ import annotations

from typing import Any

Result = dict[str, Any]
NAMES = {"stepline": "Stepline", "dbos": "DBOS", "procrastinate": "Procrastinate"}
BACKENDS = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


def _find(results: list[Result], workload: str, system: str, backend: str) -> Result | None:
    for r in results:
        if r["workload"] == workload and r["system"] == system and r["backend"] == backend:
            return r
    return None


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and value >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _ratio(ours: float | None, theirs: float | None, higher_is_better: bool) -> str:
    if not ours or not theirs:
        return ""
    x = ours / theirs if higher_is_better else theirs / ours
    return f" (**{x:.1f}×**)" if x >= 1 else f" ({x:.2f}×)"


def _get(r: Result | None, key: str) -> Any:
    return None if r is None else r.get(key)


def peers_table(results: list[Result]) -> list[str]:
    lines = [
        "| system | W1 steps/s (durable?) | W1 CPU ms/run | W2 500 × 1 s calls, makespan | W3 idle event→start p50 / p99 ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    rows = [("stepline", "sqlite"), ("stepline", "postgres"), ("dbos", "sqlite"), ("dbos", "postgres"), ("procrastinate", "postgres")]
    for system, backend in rows:
        w1 = _find(results, "W1", system, backend)
        w2 = _find(results, "W2-500", system, backend)
        w3 = _find(results, "W3", system, backend)
        if not (w1 or w2 or w3):
            continue
        ours = {k: _find(results, k, "stepline", backend) for k in ("W1", "W2-500", "W3")}
        peer = system != "stepline"
        durable = "durable" if system != "procrastinate" else "no steps"
        steps = _get(w1, "steps_per_s")
        cell1 = f"{_num(steps, 0)} ({durable})" + (" ← Stepline " + _ratio(_get(ours["W1"], "steps_per_s"), steps, True).strip() if peer and ours["W1"] else "")
        cpu = _get(w1, "cpu_ms_per_run")
        cell_cpu = _num(cpu, 2) + (_ratio(_get(ours["W1"], "cpu_ms_per_run"), cpu, False) if peer else "")
        span = _get(w2, "makespan_s")
        cell2 = (f"{_num(span, 2)} s" if span else "–") + (_ratio(_get(ours["W2-500"], "makespan_s"), span, False) if peer else "")
        p50, p99 = _get(w3, "start_p50_ms"), _get(w3, "start_p99_ms")
        cell3 = f"{_num(p50, 1)} / {_num(p99, 1)}" + (_ratio(_get(ours["W3"], "start_p50_ms"), p50, False) if peer else "")
        lines.append(f"| {NAMES[system]}, {BACKENDS[backend]} | {cell1} | {cell_cpu} | {cell2} | {cell3} |")
    return lines


def details(results: list[Result]) -> list[str]:
    out: list[str] = []
    for backend in ("sqlite", "postgres"):
        b = BACKENDS[backend]
        w1 = _find(results, "W1", "stepline", backend)
        if w1:
            out.append(f"- **W1 {b}**: {_num(w1['runs_per_s'], 0)} runs/s, {_num(w1['steps_per_s'], 0)} steps/s, "
                       f"{_num(w1['cpu_ms_per_run'], 3)} CPU ms per run (median of {w1.get('trials', 1)})")
        for n in (500, 5000):
            w2 = _find(results, f"W2-{n}", "stepline", backend)
            bare = _find(results, f"W2-{n}-floor", "harness", backend)
            if w2:
                floor = (f"; the same calls with no engine take {bare['makespan_s']:.2f} s, so the engine's share is "
                         f"{w2['makespan_s'] - bare['makespan_s']:.2f} s" if bare else "")
                out.append(f"- **W2 {b}, {n} calls**: makespan {w2['makespan_s']:.2f} s against an ideal of {w2['ideal_s']:.2f} s "
                           f"({w2['vs_ideal']:.3f}×, +{w2['over_ideal_s']:.2f} s){floor}; peak {w2['peak_in_flight']:,} calls in flight; "
                           f"worker peak RSS {w2['peak_rss_mib']:.0f} MiB, {w2.get('worker_cpu_s', 0):.2f} s of worker CPU")
        for n in (500, 5000):
            w2 = _find(results, f"W2-{n}-engine", "stepline", backend)
            if w2:
                out.append(f"- **W2 {b}, {n} runs, a 1 s sleep in place of the call** (the engine alone): makespan "
                           f"{w2['makespan_s']:.2f} s against {w2['ideal_s']:.2f} s ({w2['vs_ideal']:.3f}×, +{w2['over_ideal_s']:.2f} s)")
        for workload, how in (("W3", "taken at ingest by the idle worker"), ("W3-queue", "through the queue and a claim")):
            w3 = _find(results, workload, "stepline", backend)
            if w3:
                out.append(f"- **{workload} {b}** ({how}): event→start p50 {w3['start_p50_ms']:.2f} ms, p99 {w3['start_p99_ms']:.2f} ms; "
                           f"event→complete p50 {w3['complete_p50_ms']:.2f} ms, p99 {w3['complete_p99_ms']:.2f} ms")
        w4 = _find(results, "W4", "stepline", backend)
        if w4:
            out.append(f"- **W4 {b}**: a claim of {w4['claimed_per_call']} runs takes {w4['claim_ms_10_queued']:.2f} ms with 10 queued, "
                       f"{w4['claim_ms_backlog']:.2f} ms with {w4['backlog']:,} queued over {w4['keys']:,} concurrency keys "
                       f"({w4['backlog_vs_10']:.2f}×)"
                       + (f"; {w4['claim_ms_backlog_analyzed']:.2f} ms ({w4['analyzed_vs_10']:.2f}×) once the planner's "
                          "statistics are fresh (ANALYZE)" if "claim_ms_backlog_analyzed" in w4 else "")
                       + f" (median of {w4.get('trials', 1)} pairs of databases)")
        w5 = _find(results, "W5", "stepline", backend)
        if w5:
            out.append(f"- **W5 {b}**: {w5['steps']:,} sequential steps in {w5['total_s']:.2f} s; "
                       f"median {w5['first_ms_per_step']:.3f} ms per step over steps 100–199, {w5['last_ms_per_step']:.3f} ms over the last 100 "
                       f"({w5['last_vs_first']:.2f}×; median of {w5.get('trials', 1)} runs)")
    scale = [r for r in results if r["workload"].startswith("SCALE-") and r["workload"] != "SCALE-latency"]
    if scale:
        parts = [f"{r['workers']} → {_num(r['runs_per_s'], 0)} jobs/s, {_num(r['steps_per_s'], 0)} steps/s" for r in scale]
        out.append("- **Scale-out, PostgreSQL, worker processes**: " + "; ".join(parts))
    lat = _find(results, "SCALE-latency", "stepline", "postgres")
    if lat:
        out.append(f"- **Idle event→start across processes, PostgreSQL** (LISTEN/NOTIFY): p50 {lat['start_p50_ms']:.2f} ms, "
                   f"p99 {lat['start_p99_ms']:.2f} ms")
    return out


def targets(results: list[Result]) -> list[str]:
    def check(name: str, value: float | None, ok: bool, shown: str) -> str:
        if value is None:
            return f"| {name} | not measured | – |"
        return f"| {name} | {shown} | {'met' if ok else '**not met**'} |"

    def s(workload: str, backend: str) -> Result | None:
        return _find(results, workload, "stepline", backend)
    rows = ["| target | measured | |", "| --- | --- | --- |"]
    for backend, floor in (("sqlite", 10_000), ("postgres", 5_000)):
        v = _get(s("W1", backend), "steps_per_s")
        rows.append(check(f"W1 ≥ {floor:,} steps/s on {BACKENDS[backend]}", v, bool(v and v >= floor), f"{_num(v, 0)} steps/s"))
    for backend in ("sqlite", "postgres"):
        w = s("W2-500", backend)
        v = _get(w, "vs_ideal")
        rows.append(check(f"W2 500 calls ≤ 1.05 × ideal ({BACKENDS[backend]})", v, bool(v and v <= 1.05), f"{_num(v, 3)}×"))
        w = s("W2-5000", backend)
        v = _get(w, "over_ideal_s")
        rows.append(check(f"W2 5,000 calls within 0.5 s of ideal ({BACKENDS[backend]})", v, v is not None and v <= 0.5, f"+{_num(v, 2)} s"))
    for backend, p50, p99 in (("sqlite", 1.5, 3.0), ("postgres", 3.0, 6.0)):
        w = s("W3", backend)
        a, b = _get(w, "start_p50_ms"), _get(w, "start_p99_ms")
        rows.append(check(f"W3 p50 ≤ {p50} ms, p99 ≤ {p99} ms ({BACKENDS[backend]})", a,
                          bool(a is not None and b is not None and a <= p50 and b <= p99), f"{_num(a, 2)} / {_num(b, 2)} ms"))
    for backend in ("sqlite", "postgres"):
        w4 = s("W4", backend)
        v = _get(w4, "backlog_vs_10")
        shown = f"{_num(v, 2)}×"
        if _get(w4, "analyzed_vs_10") is not None:
            shown += f" right after the burst, {_num(w4['analyzed_vs_10'], 2)}× with fresh statistics"
        rows.append(check(f"W4 flat within 2× ({BACKENDS[backend]})", v, bool(v is not None and v <= 2.0), shown))
        v = _get(s("W5", backend), "last_vs_first")
        rows.append(check(f"W5 linear: last 100 steps ≤ 1.5 × steps 100–199 ({BACKENDS[backend]})", v, bool(v is not None and v <= 1.5), f"{_num(v, 2)}×"))
    rss = [r["peak_rss_mib"] for r in results if r["workload"] == "W2-5000" and r["system"] == "stepline"]
    v = max(rss) if rss else None
    rows.append(check("worker < 500 MiB RSS with 5,000 in-flight runs", v, bool(v is not None and v < 500), f"{_num(v, 0)} MiB"))
    return rows


def render(meta: dict[str, str], results: list[Result]) -> str:
    lines = ["### Stepline beside its peers", ""]
    lines += peers_table(results)
    lines += ["", "Ratios in parentheses: how many times Stepline on the same backend is ahead (Procrastinate runs on PostgreSQL only).", ""]
    lines += ["### Every figure", ""] + details(results)
    lines += ["", "### Targets", ""] + targets(results)
    machine = ", ".join(f"{k} {v}" for k, v in meta.items())
    lines += ["", f"Machine and versions: {machine}.", ""]
    return "\n".join(lines)
