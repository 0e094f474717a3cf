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
        w4 = _find(results, "W4-elsewhere", "stepline", backend)
        if w4:
            out.append(f"- **W4 beside another app's backlog, {b}**: the same, with {w4['elsewhere']:,} ready runs of a function the "
                       f"claims do not serve queued before the backlog: {w4['claim_ms_backlog']:.2f} ms against {w4['claim_ms_10_queued']:.2f} "
                       f"({w4['backlog_vs_10']:.2f}×)"
                       + (f"; {w4['analyzed_vs_10']:.2f}× with fresh statistics" if "analyzed_vs_10" in w4 else "")
                       + f" (median of {w4.get('trials', 1)} pairs of databases)")
        m = _find(results, "metrics-read", "stepline", backend)
        if m:
            out.append(f"- **Metrics reads {b}**, {m['runs']:,} runs ended over {m['days']:g} days against 1,000: runs per "
                       f"function and status {m['many_status_counts_ms']:.2f} against {m['few_status_counts_ms']:.2f} ms "
                       f"({m['ratio_status_counts']:.2f}×); the last hour's outcomes {m['many_last_hour_ms']:.2f} ms; "
                       f"the dashboard's metrics page {m['many_dashboard_ms']:.2f} ms; all of `/metrics` "
                       f"{m['many_metrics_text_ms']:.2f} against {m['few_metrics_text_ms']:.2f} ms ({m['ratio_metrics_text']:.2f}×)")
        m = _find(results, "metrics-read-hour", "stepline", backend)
        if m:
            out.append(f"- **Metrics reads in a busy hour, {b}**, {m['runs']:,} runs ended in the last hour: the function list "
                       f"{m['many_function_list_ms']:.1f} ms, all of `/metrics` {m['many_metrics_text_ms']:.1f} ms; "
                       f"{m['viewers']} dashboards asking for the function list every second for {m['watch']:g} s: "
                       f"{m['many_viewer_requests']} requests answered with {m['many_viewer_reads']} reads, which kept the "
                       f"database busy {m['many_viewer_busy']:.0%} of the time")
        m = _find(results, "metrics-read-asleep", "stepline", backend)
        if m:
            out.append(f"- **Metrics reads beside unfinished runs, {b}**, {m['asleep']:,} runs asleep: the queue depth "
                       f"{m['many_queue_depth_ms']:.1f} ms against {m['few_queue_depth_ms']:.2f}, runs per function and status "
                       f"{m['many_status_counts_ms']:.1f} ms against {m['few_status_counts_ms']:.2f} (unfinished runs are read "
                       f"one by one per scrape), all of `/metrics` {m['many_metrics_text_ms']:.1f} ms")
        w5 = _find(results, "W5", "stepline", backend)
        if w5:
            out.append(f"- **W5 {b}**: {w5['steps']:,} sequential steps in {w5['total_s']:.2f} s; "
                       f"median {w5['first_ms_per_step']:.3f} ms per step over steps 100–199, {w5['last_ms_per_step']:.3f} ms over the last 100 "
                       f"({w5['last_vs_first']:.2f}×; median of {w5.get('trials', 1)} runs)")
    out += http_details(results) + timer_wait_details(results)
    scale = [r for r in results if r["workload"].startswith("SCALE-") and r["workload"] != "SCALE-latency"]
    if scale:
        parts = [f"{r['workers']} → {_num(r['runs_per_s'], 0)} jobs/s, {_num(r['steps_per_s'], 0)} steps/s" for r in scale]
        out.append("- **Scale-out, PostgreSQL, worker processes**: " + "; ".join(parts))
    lat = _find(results, "SCALE-latency", "stepline", "postgres")
    if lat:
        out.append(f"- **Idle event→start across processes, PostgreSQL** (LISTEN/NOTIFY): p50 {lat['start_p50_ms']:.2f} ms, "
                   f"p99 {lat['start_p99_ms']:.2f} ms")
    return out


def http_details(results: list[Result]) -> list[str]:
    out: list[str] = []
    for backend in ("sqlite", "postgres"):
        b = BACKENDS[backend]
        h = _find(results, "HTTP-ingest", "stepline", backend)
        if h:
            h11 = "h11_floor_c16_per_s" in h
            out.append(
                f"- **HTTP ingest {b}** (one event per request, triggering nothing; wrk): 1 connection "
                f"{_num(h['c1_per_s'], 0)} req/s against the empty endpoint's {_num(h['floor_c1_per_s'], 0)} "
                f"({h['c1_vs_floor'] * 100:.0f} %"
                + (f"; on h11 {_num(h['h11_floor_c1_per_s'], 0)}, {h['c1_vs_h11_floor'] * 100:.0f} %" if h11 else "")
                + f"), p50 {h['c1_p50_ms']:.2f} ms; 16 connections {_num(h['c16_per_s'], 0)} "
                f"against {_num(h['floor_c16_per_s'], 0)} ({h['c16_vs_floor'] * 100:.0f} %"
                + (f"; on h11 {_num(h['h11_floor_c16_per_s'], 0)}, {h['c16_vs_h11_floor'] * 100:.0f} %" if h11 else "")
                + f"), p50 {h['c16_p50_ms']:.2f} / p99 {h['c16_p99_ms']:.2f} ms; server CPU per request "
                f"{h['c16_cpu_us']:.0f} µs (the floor's {h['floor_c16_cpu_us']:.0f} µs); median of {h['rounds']} rounds, "
                f"load average {h['load_avg']}"
            )
        w = _find(results, "W1-http", "stepline", backend)
        if w:
            out.append(
                f"- **W1 over HTTP {b}** (one event per request, 16 connections, a 3-step run each): "
                f"{_num(w['steps_per_s'], 0)} durable steps/s ({_num(w['runs_per_s'], 0)} runs/s; wrk's "
                f"{_num(w['requests_per_s'], 0)} req/s, p50 {w['p50_ms']:.2f} ms, p99 {w['p99_ms']:.2f} ms; drained "
                f"{w['drain_s']:.2f} s after the load); server CPU per run {w['server_cpu_us_per_run']:.0f} µs "
                f"(median of {w.get('trials', 1)})"
            )
        w = _find(results, "W1-http-batch", "stepline", backend)
        if w:
            out.append(
                f"- **W1 over HTTP, POSTs of 100 events, {b}**: {_num(w['steps_per_s'], 0)} steps/s against "
                f"{_num(w['in_process_steps_per_s'], 0)} in process ({w['vs_in_process']:.2f}×; median of {w.get('trials', 1)} pairs)"
            )
    return out


def timer_wait_details(results: list[Result]) -> list[str]:
    out: list[str] = []
    for backend in ("sqlite", "postgres"):
        b = BACKENDS[backend]
        w = _find(results, "W6", "stepline", backend)
        if w:
            out.append(
                f"- **W6 {b}**: {w['runs']:,} runs sleeping until their own instants over {w['spread_s']:.0f} s: "
                f"late p50 {w['late_p50_ms']:.1f} ms, p99 {w['late_p99_ms']:.1f} ms, max {w['late_max_ms']:.0f} ms; "
                f"worker peak RSS {w['peak_rss_mib']:.0f} MiB (all asleep {w['setup_s']:.1f} s after the first send, "
                f"{w['due_before_setup']} due before that)"
            )
        w = _find(results, "W6-backlog", "stepline", backend)
        if w:
            out.append(
                f"- **W6 backlog {b}**: W3 with {w['sleepers']:,} runs asleep in the database against an empty one: "
                f"event→start p50 {w['handoff_start_p50_ms_sleepers']:.2f} against {w['handoff_start_p50_ms_empty']:.2f} ms "
                f"({w['handoff_p50_vs_empty']:.2f}×); through the queue {w['queue_start_p50_ms_sleepers']:.2f} against "
                f"{w['queue_start_p50_ms_empty']:.2f} ms ({w['queue_p50_vs_empty']:.2f}×)"
                + (f"; the sleepers another app's, not served by W3's worker: {w['other_handoff_start_p50_ms_sleepers']:.2f} "
                   f"against {w['other_handoff_start_p50_ms_empty']:.2f} ms ({w['other_handoff_p50_vs_empty']:.2f}×), through the "
                   f"queue {w['other_queue_start_p50_ms_sleepers']:.2f} against {w['other_queue_start_p50_ms_empty']:.2f} ms "
                   f"({w['other_queue_p50_vs_empty']:.2f}×)" if "other_queue_p50_vs_empty" in w else "")
            )
        w = _find(results, "W7", "stepline", backend)
        if w:
            out.append(
                f"- **W7 {b}**: {w['waiters']:,} runs waiting, each for its own key: a matching event resumes one in "
                f"p50 {w['resume_p50_ms']:.2f} ms, p99 {w['resume_p99_ms']:.2f} ms; events of that name matching nothing "
                f"ingest at {w['unmatched_us_all_waiting']:.0f} µs each against {w['unmatched_us_10_waiting']:.0f} µs with "
                f"10 waiting ({w['unmatched_vs_10']:.2f}×)"
                + (
                    f"; as many more waiting on a comparison of numbers (`async.data.price <= event.data.target`): "
                    f"events priced above every target ingest at {w['compare_unmatched_us_all_waiting']:.0f} µs each "
                    f"against {w['compare_unmatched_us_10_waiting']:.0f} µs with 10 ({w['compare_unmatched_vs_10']:.2f}×)"
                    if "compare_unmatched_vs_10" in w else ""
                )
            )
    return out


def targets(results: list[Result]) -> list[str]:
    def check(name: str, value: float | None, ok: bool, shown: str) -> str:
        if value is None:
            return f"| {name} | not measured | – |"
        return f"| {name} | {shown} | {'met' if ok else '**not met**'} |"

    def s(workload: str, backend: str) -> Result | None:
        return _find(results, workload, "stepline", backend)
    rows = ["| target | measured | |", "| --- | --- | --- |"]
    for backend, floor in (("sqlite", 20_000), ("postgres", 8_000)):
        v = _get(s("W1", backend), "steps_per_s")
        rows.append(check(f"W1 ≥ {floor:,} steps/s on {BACKENDS[backend]}", v, bool(v and v >= floor), f"{_num(v, 0)} steps/s"))
    rows += http_targets(results) + timer_wait_targets(results)
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
        w4 = s("W4-elsewhere", backend)
        v = _get(w4, "backlog_vs_10")
        rows.append(check(f"W4 flat within 2× beside {_num(_get(w4, 'elsewhere'), 0)} ready runs of another app ({BACKENDS[backend]})", v,
                          bool(v is not None and v <= 2.0), f"{_num(v, 2)}×"))
        m = s("metrics-read", backend)
        v, ms = _get(m, "ratio_status_counts"), _get(m, "many_status_counts_ms")
        rows.append(check(f"Runs per function and status beside {_num(_get(m, 'runs'), 0)} stored runs: within 2× of 1,000, "
                          f"or under 1 ms ({BACKENDS[backend]})", v, bool(v is not None and (v <= 2.0 or ms <= 1.0)),
                          f"{_num(v, 2)}× ({_num(ms, 2)} ms)"))
        v = _get(s("W5", backend), "last_vs_first")
        rows.append(check(f"W5 linear: last 100 steps ≤ 1.5 × steps 100–199 ({BACKENDS[backend]})", v, bool(v is not None and v <= 1.5), f"{_num(v, 2)}×"))
    rss = [r["peak_rss_mib"] for r in results if r["workload"] == "W2-5000" and r["system"] == "stepline"]
    v = max(rss) if rss else None
    rows.append(check("worker < 500 MiB RSS with 5,000 in-flight runs", v, bool(v is not None and v < 500), f"{_num(v, 0)} MiB"))
    return rows


def _check(name: str, value: float | None, ok: bool, shown: str) -> str:
    if value is None:
        return f"| {name} | not measured | – |"
    return f"| {name} | {shown} | {'met' if ok else '**not met**'} |"


def http_targets(results: list[Result]) -> list[str]:
    rows: list[str] = []
    for backend in ("sqlite",):  # the targets are SQLite's; PostgreSQL's figures are in the details
        h = _find(results, "HTTP-ingest", "stepline", backend)
        for conns, share in ((16, 0.8), (1, 0.6)):
            for floor, which in (("floor", "on uvicorn's own choice, httptools"), ("h11_floor", "on h11, the floor first measured")):
                v = _get(h, f"c{conns}_vs_{floor}")
                shown = f"{v * 100:.0f} % ({_num(_get(h, f'c{conns}_per_s'), 0)} of {_num(_get(h, f'{floor}_c{conns}_per_s'), 0)} req/s)" if v else ""
                rows.append(_check(f"HTTP ingest, {conns} connection{'s' if conns > 1 else ''}, ≥ {share * 100:.0f} % of the empty "
                                   f"endpoint {which} ({BACKENDS[backend]})", v, bool(v and v >= share), shown))
    for backend, floor in (("sqlite", 8_000), ("postgres", 4_000)):
        v = _get(_find(results, "W1-http", "stepline", backend), "steps_per_s")
        rows.append(_check(f"W1 over HTTP ≥ {floor:,} steps/s ({BACKENDS[backend]})", v, bool(v and v >= floor), f"{_num(v, 0)} steps/s"))
    for backend in ("sqlite", "postgres"):
        v = _get(_find(results, "W1-http-batch", "stepline", backend), "vs_in_process")
        rows.append(_check(f"W1 over HTTP in POSTs of 100 within 20 % of in process ({BACKENDS[backend]})", v,
                           bool(v and v >= 0.8), f"{_num(v, 2)}×"))
    return rows


def timer_wait_targets(results: list[Result]) -> list[str]:
    rows: list[str] = []
    for backend in ("sqlite",):  # the targets are SQLite's; PostgreSQL's figures are in the details
        w = _find(results, "W6", "stepline", backend)
        a, b, rss = _get(w, "late_p50_ms"), _get(w, "late_p99_ms"), _get(w, "peak_rss_mib")
        rows.append(_check(f"W6 wake lateness p50 ≤ 20 ms, p99 ≤ 100 ms, RSS ≤ 500 MiB ({BACKENDS[backend]})", a,
                           bool(a is not None and a <= 20 and b <= 100 and rss <= 500),
                           f"{_num(a, 1)} / {_num(b, 1)} ms, {_num(rss, 0)} MiB"))
        w = _find(results, "W6-backlog", "stepline", backend)
        x, y = _get(w, "handoff_p50_vs_empty"), _get(w, "queue_p50_vs_empty")
        rows.append(_check(f"W3 with {_num(_get(w, 'sleepers'), 0)} runs asleep ≤ 1.5× W3 on an empty database ({BACKENDS[backend]})", x,
                           bool(x is not None and x <= 1.5 and y <= 1.5), f"{_num(x, 2)}× (through the queue {_num(y, 2)}×)"))
        x, y = _get(w, "other_handoff_p50_vs_empty"), _get(w, "other_queue_p50_vs_empty")
        rows.append(_check(f"The same, the sleepers another app's function, not served by W3's worker ({BACKENDS[backend]})", x,
                           bool(x is not None and x <= 1.5 and y <= 1.5), f"{_num(x, 2)}× (through the queue {_num(y, 2)}×)"))
    for backend, p50 in (("sqlite", 5.0), ("postgres", 10.0)):
        w = _find(results, "W7", "stepline", backend)
        v, ratio = _get(w, "resume_p50_ms"), _get(w, "unmatched_vs_10")
        rows.append(_check(f"W7 resume p50 ≤ {p50:g} ms ({BACKENDS[backend]})", v, bool(v is not None and v <= p50), f"{_num(v, 2)} ms"))
        rows.append(_check(f"W7 unmatched ingest ≤ 1.5× with 10 waiting ({BACKENDS[backend]})", ratio,
                           bool(ratio is not None and ratio <= 1.5), f"{_num(ratio, 2)}×"))
        ratio = _get(w, "compare_unmatched_vs_10")
        rows.append(_check(f"W7 unmatched ingest ≤ 1.5× with 10 waiting, waits comparing numbers ({BACKENDS[backend]})", ratio,
                           bool(ratio is not None and ratio <= 1.5), f"{_num(ratio, 2)}×"))
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
