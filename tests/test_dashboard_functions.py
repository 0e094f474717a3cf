"""The dashboard's function page, search, run links, grouped steps, attempts, model-call
costs, events sent again and cancel events, in Debian's headless Chromium (Playwright),
on both backends. STEPLINE_SCREENSHOTS=docs/screenshots refreshes the README's pictures."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from stepline.testing import FakeProvider, Reply
from tests import dashboard_apps, server_apps
from tests.server_live import run_of_event, run_status, serve  # noqa: F401 - fixture
from tests.test_dashboard import browser, page, shot  # noqa: F401 - fixtures


def _send(client: httpx.Client, name: str, data: dict | None = None) -> str:
    return str(client.post("/e/dev", json={"name": name, "data": data or {}}).json()["ids"][0])


def test_search_finds_a_run_by_the_id_the_lists_show_and_a_user(serve, page: Page) -> None:  # noqa: F811
    server = serve(server_apps.app)
    with httpx.Client(base_url=server.url) as client:
        run = run_status(client, run_of_event(client, _send(client, "srv/greet", {"name": "Ann", "user_id": "u-ann"}))["id"])
    page.goto(f"{server.url}/#/runs")
    expect(page.get_by_test_id("runs")).to_contain_text(run["id"][-8:])
    search = page.get_by_test_id("search").get_by_role("searchbox")
    search.fill(run["id"][-8:])  # what the runs list shows
    search.press("Enter")
    expect(page).to_have_url(re.compile(f"#/runs/{run['id']}$"))
    expect(page.get_by_test_id("run-status")).to_have_text("completed")

    search.fill("u-ann")
    search.press("Enter")
    page.get_by_test_id("found-users").get_by_role("link", name="u-ann").click()
    expect(page.get_by_test_id("runs").locator("tbody tr")).to_have_count(1)

    search.fill("no-such-thing")
    search.press("Enter")
    expect(page.get_by_test_id("found-nothing")).to_be_visible()


def test_pause_a_function_from_its_page_resume_it_after_a_restart_and_invoke_it(serve, page: Page) -> None:  # noqa: F811
    server = serve(dashboard_apps.make_app())
    page.goto(f"{server.url}/#/functions")
    page.get_by_test_id("functions").get_by_role("link", name="child", exact=True).click()
    expect(page.get_by_test_id("flow-control")).to_contain_text("retries")
    pause_box = page.get_by_test_id("pause-box")
    pause_box.get_by_label("While paused").select_option("queue")
    pause_box.get_by_label("Reason").fill("provider outage")
    pause_box.get_by_test_id("pause").click()
    expect(pause_box.get_by_test_id("paused")).to_have_text("paused · queueing runs")
    with httpx.Client(base_url=server.url) as client:
        held = run_of_event(client, _send(client, "dash/child", {"x": 4}))
    page.goto(f"{server.url}/#/runs/{held['id']}")
    expect(page.get_by_test_id("wait-reason")).to_contain_text("function paused")
    shot(page, "run-paused")

    # Another server process on the same database: the pause is still there, and shown.
    server.stop()
    server = serve(dashboard_apps.make_app())
    page.goto(f"{server.url}/#/functions")
    expect(page.get_by_test_id("functions").locator("tr", has_text="child").get_by_test_id("paused")).to_be_visible()
    page.goto(f"{server.url}/#/functions/child")
    expect(page.get_by_test_id("pause-box")).to_contain_text("provider outage")
    page.get_by_test_id("resume").click()
    expect(page.get_by_test_id("pause")).to_be_visible()
    with httpx.Client(base_url=server.url) as client:
        assert run_status(client, held["id"])["output"] == 8
    expect(page.get_by_test_id("fn-completed")).to_have_text("1")

    invoke = page.get_by_test_id("invoke")
    invoke.get_by_label(re.compile("Data")).fill('{"x": 50}')
    invoke.get_by_role("button", name="Invoke").click()
    expect(page).to_have_url(re.compile(r"#/runs/\w+$"))
    expect(page.get_by_test_id("run-output")).to_contain_text("100")
    page.goto(f"{server.url}/#/functions/child")
    expect(page.get_by_test_id("recent-runs").locator("[data-status=completed]")).to_have_count(2)
    shot(page, "function")


def test_replay_the_failed_runs_of_a_function(serve, page: Page) -> None:  # noqa: F811
    server = serve(dashboard_apps.make_app())
    with httpx.Client(base_url=server.url) as client:
        failed = [run_status(client, run_of_event(client, _send(client, "dash/doomed"))["id"], "failed") for _ in range(2)]
        page.goto(f"{server.url}/#/functions/doomed")
        expect(page.get_by_test_id("fn-failed")).to_have_text("2")
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_test_id("replay-failed-submit").click()
        expect(page.locator("#toast")).to_contain_text("Replayed 2 of 2 failed run(s)")
        for run in failed:
            replays = client.get(f"/api/v1/runs/{run['id']}").json()["links"]["replays"]
            assert len(replays) == 1
        # The failed run's page links to its replay and to its on_failure run.
        page.goto(f"{server.url}/#/runs/{failed[0]['id']}")
        links = page.get_by_test_id("run-links")
        expect(links).to_contain_text("Replays and reruns")
        expect(links).to_contain_text("doomed-failure")
        links.get_by_role("link").filter(has_text=re.compile(r"\w{8}")).last.click()
        expect(page.get_by_test_id("run-links")).to_contain_text("Handles the failure of")


def test_a_long_run_groups_its_steps_and_shows_attempts_with_their_times(serve, page: Page) -> None:  # noqa: F811
    dashboard_apps.CALLS.clear()
    dashboard_apps.SHAKY["failures"] = 2
    server = serve(dashboard_apps.make_app())
    with httpx.Client(base_url=server.url) as client:
        crawl = run_status(client, run_of_event(client, _send(client, "dash/crawl", {"pages": 12}))["id"])
        shaky = run_status(client, run_of_event(client, _send(client, "dash/shaky"))["id"])
    assert len(crawl["steps"]) == 24
    page.goto(f"{server.url}/#/runs/{crawl['id']}")
    groups = page.get_by_test_id("step-group")
    expect(groups).to_have_count(2)
    expect(groups.first).to_contain_text("fetch-page× 12")
    expect(groups.first).to_contain_text("12 completed")
    expect(groups.first.locator(".members .step")).to_have_count(12)
    expect(groups.first.locator(".members .step").last).not_to_be_visible()  # collapsed when all went well
    groups.first.locator("summary").first.click()
    expect(groups.first.locator(".members .step").last).to_contain_text("fetch-page:11")
    shot(page, "run-grouped")

    page.goto(f"{server.url}/#/runs/{shaky['id']}")
    page.get_by_test_id("timeline").locator("summary", has_text="flaky-call").click()
    attempts = page.get_by_test_id("attempts")
    expect(attempts.locator("tbody tr")).to_have_count(3)  # two failed attempts, then the one that passed
    expect(attempts).to_contain_text("upstream 503 (attempt 1)")
    expect(attempts.locator("tbody tr").last.locator("td").last).to_have_text("—")
    expect(attempts.locator("tbody tr").first.locator("td").nth(1)).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$"))
    expect(attempts.locator("tbody tr").nth(1).locator("td").nth(4)).to_have_text(re.compile(r"^\d+ ms$|^[\d.]+ s$"))


def test_model_call_costs_below_a_cent_and_cancelled_counts(serve, page: Page, fake: FakeProvider) -> None:  # noqa: F811
    fake.script(Reply(text="hello back", prompt_tokens=40, completion_tokens=9, cost=0.000031))
    server = serve(dashboard_apps.make_app(fake.llm()))
    with httpx.Client(base_url=server.url) as client:
        ask = run_status(client, run_of_event(client, _send(client, "dash/ask"))["id"])
        watch = run_status(client, run_of_event(client, _send(client, "dash/watch", {"job": "j1"}))["id"], "sleeping")
        stop = _send(client, "dash/stop", {"job": "j1"})
        run_status(client, watch["id"], "cancelled")
    page.goto(f"{server.url}/#/runs/{ask['id']}")
    expect(page.get_by_test_id("step-usage")).to_have_text("49 tok · $0.000031")
    expect(page.get_by_test_id("run-usage")).to_contain_text("$0.000031")

    page.goto(f"{server.url}/#/metrics?window=1h")
    expect(page.get_by_test_id("usage-by-model")).to_contain_text("$0.000031")
    expect(page.get_by_test_id("cost-total")).to_have_text("$0.000031")
    expect(page.get_by_test_id("outcomes").locator("tr", has_text="watch")).to_contain_text("1")

    # The cancel event's page lists the run it cancelled, and the run links back to it.
    page.goto(f"{server.url}/#/events/{stop}")
    expect(page.get_by_test_id("why-no-runs")).to_contain_text("it cancelled 1 run(s)")
    page.get_by_test_id("cancelled-runs").get_by_role("link").click()
    expect(page.get_by_test_id("run-status")).to_have_text("cancelled")
    expect(page.get_by_test_id("cancelled-by")).to_have_text(stop[-8:])


def test_edit_an_event_and_send_it_again(serve, page: Page) -> None:  # noqa: F811
    server = serve(server_apps.app)
    with httpx.Client(base_url=server.url) as client:
        first = _send(client, "srv/greet", {"name": "Ann"})
        run_status(client, run_of_event(client, first)["id"])
    page.goto(f"{server.url}/#/events/{first}")
    page.get_by_test_id("edit-resend").click()
    form = page.get_by_test_id("resend")
    expect(form.get_by_label("Data (JSON)")).to_have_value(re.compile('"name": "Ann"'))
    form.get_by_label("Data (JSON)").fill('{"name": "Bea"}')
    form.get_by_role("button", name="Send as a new event").click()
    page.wait_for_url(re.compile(r"#/events/(?!" + first + r")\w+$"))
    expect(page.locator("main")).to_contain_text(page.url.rsplit("/", 1)[1])  # the new event's page
    page.get_by_test_id("event-runs").get_by_role("link").click()
    expect(page.get_by_test_id("run-output")).to_contain_text("Hello, Bea")


def test_a_throttled_run_says_when_it_starts_and_invoked_runs_link_both_ways(serve, page: Page) -> None:  # noqa: F811
    server = serve(dashboard_apps.make_app())
    with httpx.Client(base_url=server.url) as client:
        run_status(client, run_of_event(client, _send(client, "dash/paced"))["id"])
        later = run_of_event(client, _send(client, "dash/paced"))
        parent = run_status(client, run_of_event(client, _send(client, "dash/parent"))["id"])
    page.goto(f"{server.url}/#/runs/{later['id']}")
    expect(page.get_by_test_id("wait-reason")).to_contain_text("throttled")
    expect(page.get_by_test_id("starts-at")).to_contain_text(re.compile(r"Due to start \d{4}-\d\d-\d\d \d\d:\d\d"))
    page.goto(f"{server.url}/#/runs/{parent['id']}")
    links = page.get_by_test_id("run-links")
    expect(links).to_contain_text("Invoked")
    expect(links).to_contain_text("step call-child")
    links.get_by_role("link").first.click()
    expect(page.get_by_test_id("run-links")).to_contain_text("Invoked by")
    expect(page.get_by_test_id("run-output")).to_contain_text("42")


def test_a_function_whose_id_holds_a_slash_has_a_working_page(serve, page: Page) -> None:  # noqa: F811
    from tests.test_functions_api import slashed

    server = serve(slashed)
    page.goto(f"{server.url}/#/functions")
    page.get_by_test_id("functions").get_by_role("link", name="billing/charge", exact=True).click()
    expect(page).to_have_url(re.compile("#/functions/billing%2Fcharge$"))
    expect(page.get_by_test_id("flow-control")).to_contain_text("retries")
    page.get_by_test_id("pause-box").get_by_test_id("pause").click()
    expect(page.get_by_test_id("pause-box").get_by_test_id("paused")).to_be_visible()
    with httpx.Client(base_url=server.url) as client:
        listed = {f["id"]: f["paused"] for f in client.get("/api/v1/functions").json()["data"]}
    assert listed["billing/charge"] is not None and listed["billing/charge/pause"] is None
    page.get_by_test_id("resume").click()
    expect(page.get_by_test_id("pause")).to_be_visible()


def _set_hidden(tab: Page, hidden: bool) -> None:
    """What the browser tells a page whose tab goes out of sight (or comes back)."""
    tab.evaluate(
        """(hidden) => {
            Object.defineProperty(document, "hidden", { value: hidden, configurable: true });
            Object.defineProperty(document, "visibilityState", { value: hidden ? "hidden" : "visible", configurable: true });
            document.dispatchEvent(new Event("visibilitychange"));
        }""",
        hidden,
    )


def _until(tab: Page, done: Any) -> None:
    """Let the page run until ``done()`` (the request handler runs while the page does)."""
    for _ in range(200):
        if done():
            return
        tab.wait_for_timeout(100)
    raise AssertionError("the page never got there")


def test_a_tab_out_of_sight_asks_nothing_and_catches_up_when_shown(serve, page: Page) -> None:  # noqa: F811
    server = serve(server_apps.app, run_worker=False)
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url) if "/api/v1/functions" in request.url else None)
    page.clock.install()  # the page's timers move only as the test says once paused below
    page.goto(f"{server.url}/#/functions")
    expect(page.get_by_test_id("functions")).to_be_visible()
    page.clock.pause_at(time.time() + 3600)
    first = len(asked)
    page.clock.run_for(10_000)
    _until(page, lambda: len(asked) >= first + 3)  # polled every 3 s while in sight

    _set_hidden(page, True)
    page.wait_for_timeout(300)  # requests already under way are counted
    hidden_at = len(asked)
    page.clock.run_for(60_000)
    page.wait_for_timeout(500)
    assert len(asked) == hidden_at  # a minute out of sight: nothing asked

    with httpx.Client(base_url=server.url) as client:
        _send(client, "srv/greet", {"name": "Ann"})  # queued: no worker
    _set_hidden(page, False)
    expect(page.get_by_test_id("functions").locator("tr", has_text="greet")).to_contain_text("1")
    assert len(asked) == hidden_at + 1  # shown again: asked at once, not at the next tick
