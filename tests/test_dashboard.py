"""The dashboard end to end in a real headless Chromium (Debian's, driven by Playwright).

Set STEPLINE_SCREENSHOTS=docs/screenshots to refresh the README's screenshots.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

import stepline
from stepline.server.common import ServerOptions
from stepline.store import now_ms
from tests import server_apps
from tests.server_live import LiveServer, run_of_event, run_status, serve  # noqa: F401 - fixture

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]
UI_TIMEOUT = 20_000  # ms a page may take to show a state (never asserted as a duration)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(UI_TIMEOUT)
    expect.set_options(timeout=UI_TIMEOUT)
    yield pg
    context.close()


def shot(page: Page, name: str) -> None:
    target = os.environ.get("STEPLINE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / f"{name}.png"), full_page=True)


def test_send_an_event_from_the_page_and_watch_the_run_complete_live(serve, page: Page) -> None:  # noqa: F811
    server: LiveServer = serve(server_apps.app)
    page.goto(f"{server.url}/#/events")
    form = page.get_by_test_id("send-event")
    form.get_by_label("Name").fill("srv/chatty")
    form.get_by_label("Data (JSON)").fill('{"job": "j-live", "count": 3, "user_id": "u-live"}')
    form.get_by_role("button", name="Send event").click()
    page.get_by_test_id("sent-event").click()
    runs = page.get_by_test_id("event-runs")
    expect(runs).to_contain_text("chatty")
    runs.get_by_role("link").first.click()

    # The run waits for a go-ahead: the page shows why, and the first published message.
    expect(page.get_by_test_id("run-status")).to_have_text("waiting")
    expect(page.get_by_test_id("wait-reason")).to_contain_text("waiting for event")
    expect(page.get_by_test_id("messages")).to_contain_text('{"part":0}')
    shot(page, "run-waiting")

    # The event arrives from elsewhere; the open page follows without a reload.
    with httpx.Client(base_url=server.url) as client:
        client.post("/e/dev", json={"name": "srv/go", "data": {"job": "j-live"}}).raise_for_status()
    expect(page.get_by_test_id("run-status")).to_have_text("completed")
    expect(page.get_by_test_id("messages")).to_contain_text('{"part":2}')
    expect(page.get_by_test_id("run-output")).to_contain_text('"parts": 3')
    expect(page.get_by_test_id("timeline")).to_contain_text("go")


def test_cancel_a_sleeping_run_from_its_page(serve, page: Page) -> None:  # noqa: F811
    server = serve(server_apps.app)
    with httpx.Client(base_url=server.url) as client:
        event_id = client.post("/e/dev", json={"name": "srv/nap", "data": {}}).json()["ids"][0]
        run = run_of_event(client, event_id)
        run_status(client, run["id"], "sleeping")
        page.goto(f"{server.url}/#/runs/{run['id']}")
        expect(page.get_by_test_id("run-status")).to_have_text("sleeping")
        expect(page.get_by_test_id("wait-reason")).to_contain_text("scheduled")
        shot(page, "run-sleeping")
        page.get_by_test_id("cancel").click()
        expect(page.get_by_test_id("run-status")).to_have_text("cancelled")
        expect(page.get_by_test_id("cancel")).to_have_count(0)
        assert client.get(f"/api/v1/runs/{run['id']}").json()["status"] == "cancelled"


def test_replay_a_failed_run_and_rerun_from_the_failed_step(serve, page: Page) -> None:  # noqa: F811
    server = serve(server_apps.app)
    server_apps.FIXED["flaky"] = False
    with httpx.Client(base_url=server.url) as client:
        event_id = client.post("/e/dev", json={"name": "srv/flaky", "data": {"user_id": "u9"}}).json()["ids"][0]
        failed = run_status(client, run_of_event(client, event_id)["id"], "failed")
        page.goto(f"{server.url}/#/runs/{failed['id']}")
        expect(page.get_by_test_id("run-status")).to_have_text("failed")
        expect(page.get_by_test_id("run-error")).to_contain_text("second step broke")
        shot(page, "run-failed")

        # Replay: a new run from the start; it fails again the same way.
        page.get_by_test_id("replay").click()
        page.wait_for_url(re.compile(r"#/runs/(?!" + failed["id"] + ")"))
        replay_id = page.url.rsplit("/", 1)[1]
        expect(page.get_by_text("Replay of")).to_be_visible()  # the new run's page, not the old one's
        expect(page.get_by_test_id("run-status")).to_have_text("failed")
        assert run_status(client, replay_id, "failed")["replay_of"] == failed["id"]

        # Fix the bug, rerun from the failed step: the first step is reused, not run again.
        server_apps.FIXED["flaky"] = True
        firsts = server_apps.EXECUTIONS.get("flaky.first", 0)
        page.goto(f"{server.url}/#/runs/{failed['id']}")
        page.get_by_test_id("rerun").click()
        page.wait_for_url(re.compile(r"#/runs/(?!" + failed["id"] + ")"))
        expect(page.get_by_test_id("run-status")).to_have_text("completed")
        expect(page.get_by_test_id("timeline")).to_contain_text("reused")
        expect(page.get_by_test_id("run-output")).to_contain_text("second-result")
        assert server_apps.EXECUTIONS.get("flaky.first", 0) == firsts
        shot(page, "run-detail")


def _seed_usage(server: LiveServer, first_run_id: str = "r1") -> None:
    """Model-call rows as the LLM layer writes them, over the last few days."""
    day = 86_400_000
    now = now_ms()
    rows = [
        (first_run_id, "call-model", "greet", "u1", "openrouter", "deepseek/deepseek-r1", 1200, 900, 400, 0, 0.0121, 31000, now - 3 * day),
        ("r2", "call-model", "greet", "u2", "openrouter", "deepseek/deepseek-r1", 800, 1400, 700, 0, 0.0164, 42000, now - 2 * day),
        ("r3", "call-model", "greet", "u1", "openai", "gpt-4o-mini", 300, 120, 0, 100, 0.0003, 1800, now - day),
        ("r4", "call-model", "greet", "u3", "openrouter", "deepseek/deepseek-r1", 2100, 1600, 800, 0, 0.0233, 51000, now),
    ]

    async def insert(engine) -> None:  # type: ignore[no-untyped-def]
        def op(conn) -> None:  # type: ignore[no-untyped-def]
            conn.executemany(
                "INSERT INTO llm_usage (run_id, step_key, function_id, user_id, provider, model, prompt_tokens, "
                "completion_tokens, reasoning_tokens, cached_tokens, cost_usd, latency_ms, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        await engine.store.db.write(op)

    server.call(insert)


def test_runs_functions_and_metrics_pages_update_live(serve, page: Page) -> None:  # noqa: F811
    server = serve(server_apps.app)
    _seed_usage(server)
    with httpx.Client(base_url=server.url) as client:
        page.goto(f"{server.url}/#/runs?function_id=greet")
        expect(page.get_by_test_id("runs")).to_contain_text("No runs match")
        ids = client.post("/e/dev", json=[{"name": "srv/greet", "data": {"name": n, "user_id": f"u{i}"}}
                                          for i, n in enumerate(["Ann", "Bo", "Cy"])]).json()["ids"]
        for event_id in ids:
            run_status(client, run_of_event(client, event_id)["id"], "completed")
        client.post("/e/dev", json={"name": "srv/nap", "data": {}})
        client.post("/e/dev", json={"name": "srv/boom", "data": {}})
        # New runs appear on the open page without a reload.
        expect(page.get_by_test_id("runs").locator("[data-status=completed]")).to_have_count(3)
        page.goto(f"{server.url}/#/runs")
        expect(page.get_by_test_id("runs").locator("[data-status=failed]")).to_have_count(1)
        expect(page.get_by_test_id("runs").locator("[data-status=sleeping]")).to_have_count(1)
        shot(page, "runs")

        page.goto(f"{server.url}/#/runs?status=sleeping")
        expect(page.get_by_test_id("runs").locator("tbody tr")).to_have_count(1)

        page.goto(f"{server.url}/#/functions")
        row = page.get_by_test_id("functions").locator("tr", has_text="nap")
        expect(row).to_contain_text("srv/nap")
        shot(page, "functions")

        page.goto(f"{server.url}/#/events")
        expect(page.get_by_test_id("events")).to_contain_text("srv/greet")
        shot(page, "events")

        page.goto(f"{server.url}/#/metrics?window=1h")
        expect(page.get_by_test_id("running")).to_have_text("0")
        expect(page.get_by_test_id("chart-success")).to_contain_text("greet")
        expect(page.get_by_test_id("chart-durations")).to_contain_text("greet p95")
        expect(page.get_by_test_id("chart-cost")).to_be_visible()
        expect(page.get_by_test_id("cost-total")).to_have_text("$0.0521")
        shot(page, "metrics")


def test_an_event_that_starts_nothing_says_why(serve, page: Page) -> None:  # noqa: F811
    server = serve(server_apps.app)
    with httpx.Client(base_url=server.url) as client:
        event_id = client.post("/e/dev", json={"name": "srv/picky", "data": {"ok": False}}).json()["ids"][0]
    page.goto(f"{server.url}/#/events/{event_id}")
    expect(page.get_by_test_id("why-no-runs")).to_contain_text("picky: condition_false")


def test_production_dashboard_needs_a_login(serve, page: Page) -> None:  # noqa: F811
    server = serve(server_apps.app, options=ServerOptions(dev=False, event_key="ek", api_token="secret-token"))
    page.goto(f"{server.url}/")
    expect(page).to_have_url(re.compile(r"/login$"))
    shot(page, "login")
    page.get_by_label("API token").fill("wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#error")).to_be_visible()
    page.get_by_label("API token").fill("secret-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_test_id("runs")).to_be_visible()
    # Changes from the dashboard work with the session cookie (plus its own header).
    page.goto(f"{server.url}/#/events")
    form = page.get_by_test_id("send-event")
    form.get_by_label("Name").fill("srv/greet")
    form.get_by_role("button", name="Send event").click()
    expect(page.get_by_test_id("sent-event")).to_be_visible()
    # The cookie alone cannot change anything from another page (no dashboard header).
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    with httpx.Client(base_url=server.url, cookies=cookies) as client:
        assert client.get("/api/v1/runs").status_code == 200
        assert client.post("/api/v1/events", json={"name": "srv/greet"}).status_code == 403
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login$"))


def test_bulk_cancel_from_the_runs_page(serve, page: Page) -> None:  # noqa: F811
    server = serve(server_apps.app)
    with httpx.Client(base_url=server.url) as client:
        naps = [run_of_event(client, send_id) for send_id in
                client.post("/e/dev", json=[{"name": "srv/nap"}] * 3).json()["ids"]]
        for run in naps:
            run_status(client, run["id"], "sleeping")
        page.goto(f"{server.url}/#/runs?function_id=nap")
        expect(page.get_by_test_id("runs").locator("[data-status=sleeping]")).to_have_count(3)
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_test_id("bulk-cancel").click()
        expect(page.get_by_test_id("runs").locator("[data-status=cancelled]")).to_have_count(3)
        assert {client.get(f"/api/v1/runs/{r['id']}").json()["status"] for r in naps} == {"cancelled"}


def test_sdk_steps_show_their_names(serve, page: Page, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """An Inngest SDK app's steps are keyed by hashed ids; the page shows the names."""
    from tests.inngest_apps import py_app
    from tests.inngest_apps.harness import ThreadServer, free_port

    server: LiveServer = serve(server_apps.app)  # a worker, which takes on the SDK app's functions once it syncs
    monkeypatch.setenv("INNGEST_DEV", server.url)
    port = free_port()
    with ThreadServer(py_app.build(py_app.Recorder()), port), httpx.Client(base_url=server.url, timeout=30) as client:
        client.post("/api/v1/inngest/apps", json={"url": f"http://127.0.0.1:{port}/api/inngest"}).raise_for_status()
        event_id = client.post("/e/dev", json={"name": "py/steps", "data": {"name": "ada"}}).json()["ids"][0]
        run = run_status(client, run_of_event(client, event_id)["id"])
        page.goto(f"{server.url}/#/runs/{run['id']}")
        names = page.get_by_test_id("timeline").locator(".step-name")
        expect(names).to_have_count(2)
        expect(names.first).to_have_text("first")
        expect(names.nth(1)).to_have_text("second")
        expect(names.first).to_have_attribute("title", re.compile(r"^[0-9a-f]{40}$"))  # the hashed id, on hover


def _talkative_app() -> stepline.App:
    app = stepline.App("talkative")

    @app.function(id="talkative", trigger=stepline.TriggerEvent("srv/talkative"))
    async def talkative(ctx: stepline.Context) -> int:
        for i in range(600):
            await ctx.publish({"part": i})
        await ctx.publish("z" * 5000, topic="long")
        return 601

    return app


def test_a_run_page_keeps_the_newest_messages_and_cuts_long_ones(serve, page: Page) -> None:  # noqa: F811
    """A run publishing thousands of messages (a model's tokens) kept adding to its page for
    as long as it was open; the page now keeps the newest 500, each cut at 2,000 characters."""
    server: LiveServer = serve(_talkative_app())
    with httpx.Client(base_url=server.url, timeout=30) as client:
        event_id = client.post("/e/dev", json={"name": "srv/talkative"}).json()["ids"][0]
        run = run_status(client, run_of_event(client, event_id)["id"], "completed")
    page.goto(f"{server.url}/#/runs/{run['id']}")
    expect(page.get_by_test_id("messages-hidden")).to_have_text("101 earlier messages not shown (the newest 500 are)")
    items = page.get_by_test_id("messages").locator("li")
    expect(items).to_have_count(500)
    expect(items.first).to_contain_text('#102 default {"part":101}')
    expect(items.last).to_contain_text("(5,002 characters in all)")
    assert len(items.last.inner_text()) < 2100
