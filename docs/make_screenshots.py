"""Refresh docs/screenshots/*.png: `stepline dev` with the bundled examples (models
simulated), a few events, then headless Chromium over the dashboard's pages.

    .venv/bin/python docs/make_screenshots.py
"""

from __future__ import annotations

import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from stepline.store import migrate

HERE = Path(__file__).resolve().parent
OUT = HERE / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]
EVENTS = [
    {"name": "llm/generate.requested", "data": {"user_id": "ana", "prompt": "Summarise the release notes", "model": "fake-slow"}},
    {"name": "llm/generate.requested", "data": {"user_id": "ben", "prompt": "Draft a reply to the customer", "model": "fake-slow"}},
    {"name": "llm/generate.requested", "data": {"user_id": "ana", "prompt": "Explain durable steps"}},
    {"name": "studio/generate.screens", "data": {"user_id": "cy", "branding": {"name": "Acme"}, "screens": ["home", "pricing", "about"], "include_theme": True}},
    {"name": "repo/analyze.requested", "data": {"job_id": "j1", "user_id": "ben", "repo": "acme/web"}},
    {"name": "query/execute.requested", "data": {"query_id": "q1", "pages": 6}},
    {"name": "llm/generate.requested", "data": {"user_id": "dee", "prompt": ""}},  # fails: no prompt
    *({"name": "query/execute.requested", "data": {"query_id": f"q{i}", "pages": 30}} for i in range(2, 5)),
    {"name": "crawl/requested", "data": {"pages": 40}},
]


def seed_history(db: str) -> None:
    """SAMPLE model-call history for the six days before today, so the cost charts
    show a trend; today's rows come from the runs above."""
    day, now = 86_400_000, int(time.time() * 1000)
    rng = random.Random(7)
    rows = []
    for back in range(6, 0, -1):
        for i in range(rng.randint(20, 60)):
            prompt, completion = rng.randint(200, 3000), rng.randint(100, 2500)
            rows.append((f"sample-{back}-{i}", "call-model", "llm-generate", rng.choice(["ana", "ben", "cy", "dee"]),
                         "openrouter", "deepseek/deepseek-r1", prompt, completion, completion // 3, 0,
                         round((prompt * 0.55 + completion * 2.19) / 1e6, 6), rng.randint(8000, 60000), now - back * day))
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO llm_usage (run_id, step_key, function_id, user_id, provider, model, prompt_tokens, "
            "completion_tokens, reasoning_tokens, cached_tokens, cost_usd, latency_ms, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    work = tempfile.mkdtemp()  # the examples keep their own job table: not in the repository
    db = os.path.join(work, "shots.db")
    migrate.apply(db)
    seed_history(db)
    env = {**os.environ, "STEPLINE_LOG_LEVEL": "WARNING", "STEPLINE_EXAMPLES_DB": os.path.join(work, "examples.db")}
    server = subprocess.Popen([sys.executable, "-m", "stepline.cli", "dev", "--port", str(port), "--db", db],
                              cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            for _ in range(100):
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            ids = client.post("/e/dev", json=EVENTS).json()["ids"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # until the quick ones are done
                runs = client.get("/api/v1/runs").json()["data"]
                if sum(r["status"] in ("completed", "failed") for r in runs) >= 4:
                    break
                time.sleep(0.5)
            crawl = None
            while crawl is None and time.monotonic() < deadline + 30:  # a run mid-way, between pages
                live = [r for r in client.get("/api/v1/runs", params={"status": "sleeping"}).json()["data"]
                        if (r["progress"] or 0) > 0]
                crawl = live[0]["id"] if live else None
                time.sleep(0.2)
            crawl = crawl or client.get(f"/api/v1/events/{ids[5]}").json()["runs"][0]["id"]
            detail = client.get(f"/api/v1/events/{ids[0]}").json()["runs"][0]["id"]
        OUT.mkdir(exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1360, "height": 860})
            # A function paused for the pictures: the functions list and its page say so.
            httpx.post(f"{url}/api/v1/functions/analyze-repo/pause", json={"mode": "queue", "reason": "provider maintenance"})
            for name, path, wait in [
                ("runs", "#/runs", "[data-testid=runs] tbody tr"),
                ("run-detail", f"#/runs/{detail}", "[data-testid=timeline] details"),
                ("run-waiting", f"#/runs/{crawl}", "[data-testid=timeline] details"),
                ("events", "#/events", "[data-testid=events] tbody tr"),
                ("functions", "#/functions", "[data-testid=functions] tbody tr"),
                ("function", "#/functions/execute-query", "[data-testid=recent-runs] tbody tr"),
                ("metrics", "#/metrics?window=1h", "[data-testid=chart-success]"),
            ]:
                page.goto(f"{url}/{path}")
                page.wait_for_selector(wait)
                page.wait_for_timeout(600)  # let live refreshes settle before the picture
                page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)
                print("wrote", OUT / f"{name}.png")
            browser.close()
    finally:
        server.terminate()
        server.wait(15)


if __name__ == "__main__":
    main()
