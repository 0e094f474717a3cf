"""What browsers are told about Stepline's pages, checked in a real headless Chromium:
no other site may frame them (clickjacking), and answers are read as their type."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect

from stepline.server.common import ServerOptions
from tests import server_apps
from tests.server_live import LiveServer, run_of_event, run_status, serve  # noqa: F401 - fixture
from tests.test_dashboard import browser, page  # noqa: F401 - fixtures

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # headers do not depend on the store


@pytest.fixture
def decoy() -> Iterator[dict[str, str]]:
    """Another origin on loopback serving ``decoy["html"]`` (a real server: Chromium refuses
    a page it cannot place on the network from framing a loopback address at all)."""
    content = {"html": ""}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = content["html"].encode()
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    content["url"] = f"http://127.0.0.1:{server.server_address[1]}/"
    yield content
    server.shutdown()
    server.server_close()


def _sleeping_run(server: LiveServer) -> str:
    with httpx.Client(base_url=server.url) as client:
        run = run_of_event(client, client.post("/e/dev", json={"name": "srv/nap"}).json()["ids"][0])
        return str(run_status(client, run["id"], "sleeping")["id"])


@SQLITE
def test_another_site_cannot_frame_the_dashboard(serve, page: Page, decoy: dict[str, str]) -> None:  # noqa: F811
    # Dev mode has no login: without the headers, a decoy page could frame a run's page
    # and have the visitor's click land on its Cancel button.
    server = serve(server_apps.app)
    run_id = _sleeping_run(server)
    target = f"{server.url}/#/runs/{run_id}"
    decoy["html"] = f'<button>Win</button><iframe id="f" src="{target}" width="900" height="600"></iframe>'
    page.goto(decoy["url"])  # waits for the frame's load, refused or not
    framed = next(f for f in page.frames if f is not page.main_frame)
    assert not framed.url.startswith(server.url), f"the dashboard was framed: {framed.url}"
    expect(page.frame_locator("#f").get_by_test_id("cancel")).to_have_count(0)
    # The page itself still works top-level.
    page.goto(target)
    expect(page.get_by_test_id("cancel")).to_be_visible()


@SQLITE
def test_every_answer_forbids_framing_and_type_sniffing(serve) -> None:  # noqa: F811
    server = serve(server_apps.app)
    with httpx.Client(base_url=server.url) as client:
        answers = {
            "dashboard": client.get("/"),
            "script": client.get("/static/app.js"),
            "api": client.get("/api/v1/runs"),
            "not found": client.get("/nothing-here"),
            "guard refusal": client.get("/api/v1/runs", headers={"x-big": "a" * 20_000}),
        }
    assert answers["guard refusal"].status_code == 431
    for what, answer in answers.items():
        assert answer.headers.get("x-frame-options") == "DENY", what
        assert answer.headers.get("x-content-type-options") == "nosniff", what
        # Nothing but the static files stays in a browser's cache (a run's output read with
        # a run token, on a shared computer).
        assert ("no-store" in answer.headers.get("cache-control", "")) == (what != "script"), what


def _csp_refusals(tab: Page) -> list[str]:
    refused: list[str] = []
    tab.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    return refused


@SQLITE
def test_markup_put_in_the_page_runs_no_script(serve, page: Page) -> None:  # noqa: F811
    # The pages put every value as text; should one ever reach the page as HTML, the
    # policy keeps its inline handler from running.
    server = serve(server_apps.app)
    refused = _csp_refusals(page)
    page.goto(f"{server.url}/#/runs")
    expect(page.get_by_test_id("runs")).to_be_visible()
    page.evaluate("""() => {
        const img = document.createElement("div");
        img.innerHTML = '<img src="/nothing-here.png" onerror="window.__ran = true">';
        img.firstChild.addEventListener("error", () => { document.body.dataset.imageFailed = "yes"; });
        document.body.append(img);
    }""")
    # The image failed, so its handler had its chance (a locator: the policy refuses the eval of wait_for_function).
    expect(page.locator("body[data-image-failed=yes]")).to_have_count(1)
    assert page.evaluate("window.__ran === undefined"), "an inline handler in the page ran"
    assert any("inline event handler" in text for text in refused), refused


@SQLITE
def test_the_pages_work_under_their_policy(serve, page: Page) -> None:  # noqa: F811
    server = serve(server_apps.app)
    run_id = _sleeping_run(server)
    refused = _csp_refusals(page)
    page.goto(f"{server.url}/#/runs/{run_id}")
    expect(page.get_by_test_id("run-status")).to_have_text("sleeping")
    # Widths set by the scripts (the step's bar on the timeline) still apply.
    assert page.locator(".timeline .seg").first.evaluate("el => el.style.width") != ""
    page.goto(f"{server.url}/#/metrics")
    expect(page.get_by_test_id("queue-ready")).to_be_visible()
    page.goto(f"{server.url}/login?error=1")  # dev mode sends /login on to the dashboard
    assert refused == []
    prod = serve(server_apps.app, options=ServerOptions(dev=False, event_key="ek", api_token="secret-token"))
    page.goto(f"{prod.url}/login?error=1")
    expect(page.locator("#error")).to_be_visible()  # the login page's script runs from its file
    assert refused == []


@SQLITE
def test_a_page_of_another_site_cannot_post_logins_that_hold_the_operator_back(
    serve, page: Page, decoy: dict[str, str]  # noqa: F811
) -> None:
    """Wrong logins count towards the back-off of the address they come from; a page the
    operator merely opens could post them from the operator's browser, and with a short
    token hold the right one back (429). The browser names the page's site
    (Sec-Fetch-Site): such logins are refused before they count, and curl-like clients,
    which send no such header, log in as before."""
    server = serve(server_apps.app, options=ServerOptions(dev=False, event_key="event-key-1", api_token="api-token-1"))
    decoy["html"] = f"""<script>
      window.posted = (async () => {{
        for (let i = 0; i < 6; i++) {{
          await fetch("{server.url}/login", {{method: "POST", mode: "no-cors", body: new URLSearchParams({{token: "wrong"}})}});
        }}
        return "done";
      }})();
    </script>"""
    page.goto(decoy["url"])
    assert page.evaluate("window.posted") == "done"
    with httpx.Client(base_url=server.url, follow_redirects=False) as client:
        refused = client.post("/login", data={"token": "wrong"}, headers={"sec-fetch-site": "cross-site"})
        assert refused.status_code == 403 and "another site" in refused.json()["error"]
        signed_in = client.post("/login", data={"token": "api-token-1"})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/", signed_in.status_code


@SQLITE
def test_bidi_controls_in_what_senders_sent_are_shown_as_escapes(serve, page: Page) -> None:  # noqa: F811
    """Event data may hold any text: a U+202E in it reversed what followed on the run's page
    ('Hello, x' then 'yz' read backwards), so an amount or id could read as another."""
    server = serve(server_apps.app)
    with httpx.Client(base_url=server.url) as client:
        event_id = client.post("/e/dev", json={"name": "srv/greet", "data": {"name": "pay 100\u202e001 ok 日本"}}).json()["ids"][0]
        run = run_of_event(client, event_id)
        run_status(client, run["id"], "completed")
    page.goto(f"{server.url}/#/runs/{run['id']}")
    output = page.get_by_test_id("run-output")
    expect(output).to_contain_text("pay 100\\u202e001 ok 日本")
    assert "\u202e" not in output.inner_text()
