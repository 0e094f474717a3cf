"""The CLI a person uses all day, as a real process against a real server on both backends:
`stepline send` (the runs it started, --wait), `runs show` (an event id, model calls,
function retries, full wait reasons, when a queued run starts, no None dates),
`stepline functions`, and `stepline dev` logging each run's end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import httpx

from stepline import cli_show
from stepline.testing import FakeProvider, rate_limited
from tests import dashboard_apps
from tests.cli_server import cli_server  # noqa: F401 - fixture
from tests.helpers import wait_for
from tests.server_live import run_of_event, run_status, serve  # noqa: F401 - fixture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stepline(url: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": REPO}
    env.pop("STEPLINE_API_TOKEN", None)
    result = subprocess.run([sys.executable, "-m", "stepline.cli", *args, "--url", url], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def test_send_prints_the_runs_it_started_and_waits_for_their_outcomes(serve) -> None:  # noqa: F811
    dashboard_apps.CALLS.clear()
    server = serve(dashboard_apps.make_app())
    sent = stepline(server.url, "send", "dash/child", "--data", '{"x": 4}')
    event_id = sent.stdout.strip()  # stdout is the event id alone, for scripts
    assert re.fullmatch(r"[0-9A-Z]{26}", event_id)
    with httpx.Client(base_url=server.url) as client:
        run = run_of_event(client, event_id)
    assert f"run {run['id']} child" in sent.stderr

    waited = stepline(server.url, "send", "dash/child", "--data", '{"x": 21}', "--wait")
    lines = waited.stdout.splitlines()
    assert re.fullmatch(r"[0-9A-Z]{26}", lines[0])
    assert re.match(r"run \w{26} child completed in ", lines[1])
    assert lines[2] == "  output: 42"

    failed = stepline(server.url, "send", "dash/doomed", "--wait", ok=False)
    assert failed.returncode == 1
    assert "doomed failed in " in failed.stdout
    assert "error: StepError: step 'explode' failed: NonRetriableError: doomed (simulated failure)" in failed.stdout

    nothing = stepline(server.url, "send", "dash/nobody-listens", "--wait", ok=False)
    assert nothing.returncode == 1
    assert "started no runs: no registered function has a trigger on 'dash/nobody-listens'" in nothing.stderr

    # The id comes before the wait, so a wait that runs out still says which event it was.
    slow = stepline(server.url, "send", "dash/watch", "--data", '{"job": "j-slow"}', "--wait", "--timeout", "1", ok=False)
    assert slow.returncode == 1 and re.fullmatch(r"[0-9A-Z]{26}", slow.stdout.strip()), slow
    assert "still sleeping after 1 s" in slow.stderr

    as_json = json.loads(stepline(server.url, "send", "dash/child", "--json", "--wait").stdout)
    assert [(r["function_id"], r["status"], r["output"]) for r in as_json["runs"]] == [("child", "completed", 2)]


def test_runs_show_given_an_event_id_lists_its_runs(serve) -> None:  # noqa: F811
    server = serve(dashboard_apps.make_app())
    event_id = stepline(server.url, "send", "dash/parent").stdout.strip()
    with httpx.Client(base_url=server.url) as client:
        run = run_status(client, run_of_event(client, event_id)["id"])
    shown = stepline(server.url, "runs", "show", event_id).stdout
    assert f"{event_id} is an event id (dash/parent" in shown
    assert "It started 1 run(s):" in shown and f"  {run['id']}  parent" in shown
    assert f"Show one with: stepline runs show {run['id']}" in shown
    missing = stepline(server.url, "runs", "show", "01NOTHINGHERE0000000000000", ok=False)
    assert missing.returncode == 1 and "no run with id" in missing.stderr
    for command in ("cancel", "replay", "rerun"):  # acting on an event id says what to act on instead
        refused = stepline(server.url, "runs", command, event_id, ok=False)
        assert refused.returncode == 1
        assert f"{event_id} is an event id (dash/parent), not a run id: its runs are {run['id']}" in refused.stderr
        assert f"stepline runs {command} {run['id']}" in refused.stderr


def test_runs_show_tells_model_calls_function_retries_wait_reasons_and_start_times(serve, fake: FakeProvider) -> None:  # noqa: F811
    dashboard_apps.CALLS.clear()
    server = serve(dashboard_apps.make_app(fake.llm()))
    with httpx.Client(base_url=server.url) as client:
        fake.script(*[rate_limited(retry_after_ms=5)] * 10)  # every attempt of the model call is refused
        ask = run_status(client, run_of_event(client, stepline(server.url, "send", "dash/ask").stdout.strip())["id"])
        wobbly = run_status(client, run_of_event(client, stepline(server.url, "send", "dash/wobbly").stdout.strip())["id"])
        run_status(client, run_of_event(client, stepline(server.url, "send", "dash/paced").stdout.strip())["id"])
        paced = run_of_event(client, stepline(server.url, "send", "dash/paced").stdout.strip())
        first_solo = run_of_event(client, stepline(server.url, "send", "dash/solo", "--data", '{"hold": 60}').stdout.strip())
        run_status(client, first_solo["id"], "running")
        second_solo = run_of_event(client, stepline(server.url, "send", "dash/solo").stdout.strip())
        wait_for(lambda: client.get(f"/api/v1/runs/{second_solo['id']}").json()["wait_reason"] == "concurrency_limited",
                 what="the second run to wait for the concurrency slot")

    shown = stepline(server.url, "runs", "show", ask["id"]).stdout
    assert ask["status"] == "failed"
    assert "None" not in shown
    assert re.search(r"model fake-quick \(fake\): \d+ in / \d+ out tokens", shown) is None  # a refused call bills nothing
    final = [line for line in shown.splitlines() if line.startswith("error: ")]
    assert final and "the provider asked for a 0.005s wait (retry-after)" in final[0]
    assert "retrying in" not in shown

    shown = stepline(server.url, "runs", "show", wobbly["id"]).stdout
    assert "function retries (the whole function ran again):" in shown
    assert "attempt 1 failed at 20" in shown and "RuntimeError: the function body broke (outside any step)" in shown
    assert "output: \"steady\"" in shown

    shown = stepline(server.url, "runs", "show", paced["id"]).stdout
    assert "status queued (throttled: waiting for its throttle slot)" in shown
    assert re.search(r"starts at \d{4}-\d\d-\d\dT[\d:.]+Z \(in 59m \d+s\)", shown)
    assert "started —  ended —" in shown and "None" not in shown

    listed = stepline(server.url, "runs", "list", "--function", "solo").stdout
    assert re.search(rf"{second_solo['id']}\s+solo\s+queued\s+concurrency_limited\s", listed)
    shown = stepline(server.url, "runs", "show", second_solo["id"]).stdout
    assert "(concurrency_limited: waiting for a concurrency slot)" in shown


def test_runs_show_gives_each_model_call_its_tokens_and_cost(serve, fake: FakeProvider) -> None:  # noqa: F811
    from stepline.testing import Reply

    fake.script(Reply(text="hi", prompt_tokens=40, completion_tokens=9, cost=0.000031))
    server = serve(dashboard_apps.make_app(fake.llm()))
    with httpx.Client(base_url=server.url) as client:
        ask = run_status(client, run_of_event(client, stepline(server.url, "send", "dash/ask").stdout.strip())["id"])
    shown = stepline(server.url, "runs", "show", ask["id"]).stdout
    assert "model fake-quick (fake): 40 in / 9 out tokens, $0.000031" in shown
    assert "usage 1 model call(s), 49 tokens, $0.000031" in shown


def test_functions_commands_pause_resume_invoke_and_replay(serve) -> None:  # noqa: F811
    server = serve(dashboard_apps.make_app())
    paused = stepline(server.url, "functions", "pause", "child", "--mode", "skip", "--reason", "maintenance").stdout
    assert paused.startswith("child: paused (skip: maintenance) since ")
    listed = stepline(server.url, "functions", "list").stdout
    assert re.search(r"FUNCTION\s+QUEUED\s+RUNNING\s+SLEEPING\s+WAITING\s+FAILED 1H\s+STATE", listed), listed
    assert re.search(r"child\s+0\s+0\s+0\s+0\s+0\s+paused \(skip: maintenance\)", listed), listed
    skipped = stepline(server.url, "send", "dash/child")
    assert "started no runs: child: function_paused" in skipped.stderr
    assert stepline(server.url, "functions", "resume", "child").stdout.strip() == "child: resumed; 0 held run(s) go on"
    run_id = stepline(server.url, "functions", "invoke", "child", "--data", '{"x": 8}').stdout.strip()
    with httpx.Client(base_url=server.url) as client:
        assert run_status(client, run_id)["output"] == 16
        failed = run_status(client, run_of_event(client, stepline(server.url, "send", "dash/doomed").stdout.strip())["id"])
    replayed = stepline(server.url, "functions", "replay-failed", "doomed").stdout
    assert replayed.startswith("replayed 1 of 1 failed run(s); 0 had a replay already")
    assert f"(replays {failed['id']})" in replayed
    shown = stepline(server.url, "functions", "show", "child", "--window", "1h").stdout
    assert "last 1h: 1 completed, 0 failed, 0 cancelled" in shown
    bad = stepline(server.url, "functions", "pause", "nope", ok=False)
    assert bad.returncode == 1 and "no function with id 'nope'" in bad.stderr


def test_dev_logs_each_run_end_as_it_happens(cli_server) -> None:  # noqa: F811
    server = cli_server(mode="dev", app="tests.dashboard_apps:app", env={"STEPLINE_LOG_LEVEL": "INFO"})
    done = stepline(server.url, "send", "dash/child", "--data", '{"x": 2}', "--wait").stdout.splitlines()[1].split()[1]
    wait_for(lambda: re.search(rf"stepline.runs: run {done} child completed in [\d.]+ m?s", server.log()), what="the completed line")
    failed = stepline(server.url, "send", "dash/doomed", "--wait", ok=False).stdout.splitlines()[1].split()[1]
    wait_for(lambda: f"stepline.runs: run {failed} doomed failed in" in server.log(), what="the failed line")
    assert re.search(rf"run {failed} doomed failed in [\d.]+ m?s: StepError: step .explode. failed: NonRetriableError: doomed \(simulated failure\)", server.log())
    event_id = stepline(server.url, "send", "dash/watch", "--data", '{"job": "j1"}').stdout.strip()
    with httpx.Client(base_url=server.url) as client:
        sleeper = run_status(client, run_of_event(client, event_id)["id"], "sleeping")
        stepline(server.url, "runs", "cancel", sleeper["id"])
    wait_for(lambda: re.search(rf"run {sleeper['id']} watch cancelled in [\d.]+ m?s: Cancelled: cancelled through the API",
                               server.log()), what="the cancelled line")


def test_text_from_apps_and_senders_is_written_escaped_one_line_each() -> None:
    """An error message quoting an event's data ('\\x1b[2J' clears the screen, a line break forges a
    line, U+202E reverses what follows) reached the terminal as it was."""
    hostile = "bad \x1b[2Jinput\n2026 run 01X completed\u202eexe"
    error = {"name": "ValueError", "message": hostile}
    step = {"id": "s\x1b]0;t\x07", "name": "s\x1b]0;t\x07", "kind": "run", "status": "failed", "attempts": 1,
            "duration_ms": 3, "error": error, "attempt_history": [{"attempt": 0, "error": error, "ended_at": None}]}
    run = {"id": "01RUN", "function_id": "f", "status": "failed", "wait_reason": None, "event_id": "01EV", "event": {"name": "a/b"},
           "created_at": None, "started_at": None, "ended_at": None, "duration_ms": 5, "progress": 50.0,
           "progress_message": "50%\r\x1b[K done", "steps": [step], "output": None, "error": error}
    shown = [*cli_show.run_lines(run), *cli_show.outcome_lines(run)]
    assert not any(re.search("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", line) for line in shown), shown
    assert "error: ValueError: bad \\x1b[2Jinput\\n2026 run 01X completed\\u202eexe" in shown
    assert "progress 50% 50%\\r\\x1b[K done" in shown
    assert cli_show.outcome_lines({**run, "status": "completed", "output": "é 日本 🙂"})[1] == '  output: "\\u00e9 \\u65e5\\u672c \\ud83d\\ude42"'
    assert cli_show.error_text({"name": "E", "message": "josé 日本 🙂"}) == "E: josé 日本 🙂"  # kept as it is


def test_budget_keys_and_pause_reasons_are_written_escaped() -> None:
    """A budget's key is its key expression's value (an event's data, as sent), and a pause reason
    is free text: both reached the terminal as they were."""
    from stepline import cli_budgets, cli_functions

    state = {"budget": "b:1d", "key": "acme\x1b[2J\nforged", "spent_usd": 0.0, "spent_tokens": 0, "reserved_usd": 0.0,
             "reserved_tokens": 0, "limit_usd": 1.0, "limit_tokens": None, "override": False, "period_end": 1_767_225_600_000,
             "paused_runs": 0}
    row = cli_budgets._row(state)
    assert "acme\\x1b[2J\\nforg" in row and "\x1b" not in row and "\n" not in row
    paused = cli_functions._paused({"mode": "queue", "reason": "deploy\u202e", "paused_at": "2026-01-01T00:00:00Z"})
    assert paused == "paused (queue: deploy\\u202e) since 2026-01-01T00:00:00Z"
