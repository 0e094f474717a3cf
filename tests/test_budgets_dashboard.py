"""The dashboard's budget views in a real headless Chromium: a paused run says which budget
it waits on, the Budgets page shows spend against limits and raises one key's limit
(resuming its paused run), the Metrics page shows cost per model."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect

from stepline.testing import FakeProvider
from tests.server_live import LiveServer, run_of_event, run_status, serve  # noqa: F401 - fixture
from tests.test_budgets_api import (
    BUDGET,
    MODEL,
    generate_app,
    generate_event,
    one_call_per_period,
    priced,
)
from tests.test_dashboard import browser, page, shot  # noqa: F401 - fixtures


def test_budgets_page_a_paused_run_and_cost_per_model(serve, page: Page, fake: FakeProvider) -> None:  # noqa: F811
    llm = priced(fake)
    budget = one_call_per_period(fake, llm)
    server: LiveServer = serve(generate_app(llm, budget))
    with httpx.Client(base_url=server.url) as client:
        first = run_of_event(client, client.post("/api/v1/events", json=generate_event("u1")).json()["ids"][0])
        run_status(client, first["id"])
        second = run_of_event(client, client.post("/api/v1/events", json=generate_event("u1")).json()["ids"][0])
        run_status(client, second["id"], "waiting")

    page.goto(f"{server.url}/#/runs/{second['id']}")
    expect(page.get_by_test_id("run-status")).to_have_text("waiting")
    expect(page.get_by_test_id("wait-reason")).to_contain_text(f"budget exceeded (budget {BUDGET} for key u1")
    expect(page.get_by_test_id("wait-reason")).to_contain_text("or until the limit is raised")

    page.goto(f"{server.url}/#/budgets")
    expect(page.get_by_test_id("declared-budgets")).to_contain_text(f"{BUDGET} — fn budget per event.data.user_id")
    expect(page.get_by_test_id("declared-budgets")).to_contain_text("per 1d, on exceeded pause (generate)")
    row = page.locator(f'[data-budget-key="{BUDGET}/u1"]')
    expect(row).to_contain_text(f"of {budget.limit_tokens} tok")
    expect(row).to_contain_text("exceeded")
    expect(row.locator("td").nth(5)).to_have_text("1")  # one paused run
    shot(page, "budgets")

    row.get_by_role("button", name="Set limit…").click()
    form = page.get_by_test_id("budget-override")
    expect(form.get_by_label("Key")).to_have_value("u1")
    form.get_by_label("Limit (tokens)").fill(str(budget.limit_tokens * 3))  # type: ignore[operator]
    form.get_by_role("button", name="Set limit").click()
    expect(page.locator("#toast")).to_contain_text("1 paused run(s) resumed")
    expect(row).to_contain_text("override")
    with httpx.Client(base_url=server.url) as client:
        assert run_status(client, second["id"])["status"] == "completed"
    expect(row.locator("td").nth(5)).to_have_text("·")  # nothing paused any more

    page.goto(f"{server.url}/#/metrics")
    expect(page.get_by_test_id("usage-by-model")).to_contain_text(MODEL)
