"""Production auth: event key, API token, dashboard session, and per-run browser tokens."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from stepline.server import mint_run_token
from stepline.server.common import ServerOptions
from tests import server_apps
from tests.server_live import LiveServer, run_of_event, run_status, serve  # noqa: F401 - fixture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "api-token-1"
PROD = ServerOptions(dev=False, event_key="event-key-1", api_token=TOKEN)
BEARER = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def prod(serve) -> LiveServer:  # noqa: F811
    return serve(server_apps.app, options=PROD)


def test_event_key_and_api_token_are_required_and_the_401_says_which(prod: LiveServer) -> None:
    with httpx.Client(base_url=prod.url) as client:
        wrong = client.post("/e/nope", json={"name": "srv/greet"})
        assert wrong.status_code == 401 and "/e/{STEPLINE_EVENT_KEY}" in wrong.json()["error"]
        assert client.post("/e/event-key-1", json={"name": "srv/greet"}).status_code == 200
        for path in ("/api/v1/runs", "/api/v1/events", "/api/v1/functions", "/api/v1/metrics", "/metrics"):
            denied = client.get(path)
            assert denied.status_code == 401 and "Authorization: Bearer <STEPLINE_API_TOKEN>" in denied.json()["error"]
            assert client.get(path, headers={"authorization": "Bearer wrong"}).status_code == 401
            assert client.get(path, headers=BEARER).status_code == 200
        assert client.post("/api/v1/events", json={"name": "srv/greet"}).status_code == 401
        assert client.post("/api/v1/events", json={"name": "srv/greet"}, headers=BEARER).status_code == 200
        assert client.get("/health").status_code == 200  # liveness needs no credentials


def test_a_run_token_reads_its_run_only(prod: LiveServer) -> None:
    with httpx.Client(base_url=prod.url, timeout=30) as client:
        ids = client.post("/e/event-key-1", json=[{"name": "srv/greet", "data": {"name": "A"}},
                                                  {"name": "srv/greet", "data": {"name": "B"}}]).json()["ids"]
        admin = httpx.Client(base_url=prod.url, headers=BEARER, timeout=30)
        run_a, run_b = (run_status(admin, run_of_event(admin, i)["id"], "completed") for i in ids)
        minted = admin.post(f"/api/v1/runs/{run_a['id']}/token", json={"ttl_seconds": 60})
        assert minted.status_code == 200
        token = minted.json()["token"]

        # What a browser does: read with ?token=, from any origin.
        own = client.get(f"/api/v1/runs/{run_a['id']}", params={"token": token})
        assert own.status_code == 200 and own.json()["output"] == {"greeting": "Hello, A"}
        assert own.headers["access-control-allow-origin"] == "*"
        assert client.get(f"/api/v1/runs/{run_a['id']}", headers={"authorization": f"Bearer {token}"}).status_code == 200
        with client.stream("GET", f"/api/v1/runs/{run_a['id']}/stream", params={"token": token}) as stream:
            assert stream.status_code == 200 and "event: end" in stream.read().decode()

        # Nothing else: not another run, not the lists, not an action.
        other = client.get(f"/api/v1/runs/{run_b['id']}", params={"token": token})
        assert other.status_code == 401 and "another run" in other.json()["error"]
        assert client.get(f"/api/v1/runs/{run_b['id']}/stream", params={"token": token}).status_code == 401
        assert client.get("/api/v1/runs", params={"token": token}).status_code == 401
        action = client.post(f"/api/v1/runs/{run_a['id']}/replay", headers={"authorization": f"Bearer {token}"})
        assert action.status_code == 403 and "a run token reads only its run" in action.json()["error"]
        # Without the admin's token, the minting endpoint is closed too.
        assert client.post(f"/api/v1/runs/{run_a['id']}/token").status_code == 401
        assert admin.post("/api/v1/runs/nope/token").status_code == 404
        admin.close()


def test_the_helper_mints_tokens_the_server_accepts_and_they_expire(serve) -> None:  # noqa: F811
    # The signing key, when set, is what signs (not the API token).
    server = serve(server_apps.app, options=PROD, signing_key="signing-key-1")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        event_id = client.post("/e/event-key-1", json={"name": "srv/greet"}).json()["ids"][0]
        admin = httpx.Client(base_url=server.url, headers=BEARER, timeout=30)
        run = run_of_event(admin, event_id)
        admin.close()
        good = mint_run_token(run["id"], key="signing-key-1", ttl=60)
        assert client.get(f"/api/v1/runs/{run['id']}", params={"token": good}).status_code == 200
        with_api_token = mint_run_token(run["id"], key=TOKEN, ttl=60)
        assert client.get(f"/api/v1/runs/{run['id']}", params={"token": with_api_token}).status_code == 401
        expired = mint_run_token(run["id"], key="signing-key-1", ttl=-1)
        assert client.get(f"/api/v1/runs/{run['id']}", params={"token": expired}).status_code == 401
        tampered = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
        assert client.get(f"/api/v1/runs/{run['id']}", params={"token": tampered}).status_code == 401


def test_dashboard_session_cookie(prod: LiveServer) -> None:
    with httpx.Client(base_url=prod.url, follow_redirects=False) as client:
        assert client.get("/").headers["location"] == "/login"
        assert client.post("/login", data={"token": "wrong"}).headers["location"] == "/login?error=1"
        ok = client.post("/login", data={"token": TOKEN})
        assert ok.status_code == 303 and ok.headers["location"] == "/"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
        assert client.get("/").status_code == 200
        assert client.get("/api/v1/runs").status_code == 200
        # Changes need the dashboard's header too, so a cross-site form cannot make them.
        assert client.post("/api/v1/events", json={"name": "srv/greet"}).status_code == 403
        assert client.post("/api/v1/events", json={"name": "srv/greet"}, headers={"x-stepline-dashboard": "1"}).status_code == 200
        client.cookies.set("stepline_session", "sls1.99999999999.forged")
        assert client.get("/api/v1/runs").status_code == 401


def test_stepline_start_refuses_to_run_without_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if k not in ("STEPLINE_EVENT_KEY", "STEPLINE_API_TOKEN")}
    result = subprocess.run(
        [sys.executable, "-m", "stepline.cli", "start", "--db", str(tmp_path / "x.db")],
        check=False, cwd=REPO, env={**env, "PYTHONPATH": REPO}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "STEPLINE_EVENT_KEY" in result.stderr and "STEPLINE_API_TOKEN" in result.stderr
