"""Production credentials under attack: guessing keys and tokens backs off (per client and
for all clients together), blank keys are refused at start, and logout ends a session
on every server process."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from stepline.server.common import ServerOptions
from tests import server_apps
from tests.cli_server import API_TOKEN, EVENT_KEY, REPO, CliServer, cli_server  # noqa: F401 - fixture
from tests.server_live import serve, wait_for  # noqa: F401 - fixture

BEARER = {"authorization": f"Bearer {API_TOKEN}"}


def login(client: httpx.Client, token: str, **headers: str) -> httpx.Response:
    return client.post("/login", data={"token": token}, headers=headers)


def test_wrong_logins_back_off_exponentially_and_the_right_token_works_once_it_passed(cli_server) -> None:  # noqa: F811
    server = cli_server("start", env={"STEPLINE_AUTH_FAILURES": "3"})
    with httpx.Client(base_url=server.url, follow_redirects=False, timeout=30) as client:
        for _ in range(3):
            assert login(client, "wrong").headers["location"] == "/login?error=1"
        blocked = [login(client, "wrong") for _ in range(20)]  # well within the 1 s wait, even under load
        assert {r.status_code for r in blocked} == {429}
        assert blocked[0].headers["retry-after"] == "1" and "STEPLINE_AUTH_FAILURES" in blocked[0].json()["error"]
        # While it lasts the right token is not even checked...
        assert login(client, API_TOKEN).status_code == 429
        # ...and once it has passed, the next wrong one doubles it.
        fourth = wait_for(lambda: (r := login(client, "wrong")).status_code != 429 and r, what="the back-off to pass")
        assert fourth.headers["location"] == "/login?error=1"
        assert login(client, API_TOKEN).headers["retry-after"] == "2"
        right = wait_for(lambda: (r := login(client, API_TOKEN)).status_code != 429 and r, what="the back-off to pass")
        assert right.status_code == 303 and right.headers["location"] == "/"
        assert client.get("/api/v1/runs").status_code == 200


def test_wrong_bearer_tokens_and_event_keys_back_off_each_on_its_own(cli_server) -> None:  # noqa: F811
    server = cli_server("start", env={"STEPLINE_AUTH_FAILURES": "2"})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        wrong = {"authorization": "Bearer nope"}
        assert [client.get("/api/v1/runs", headers=wrong).status_code for _ in range(4)] == [401, 401, 429, 429]
        assert client.get("/api/v1/runs", headers=BEARER).status_code == 429
        # The event key is another secret: its senders are not held up by token guessing.
        assert client.post(f"/e/{EVENT_KEY}", json={"name": "srv/greet"}).status_code == 200
        assert [client.post("/e/nope", json={"name": "srv/greet"}).status_code for _ in range(3)] == [401, 401, 429]
        refused = client.post(f"/e/{EVENT_KEY}", json={"name": "srv/greet"})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        wait_for(lambda: client.post(f"/e/{EVENT_KEY}", json={"name": "srv/greet"}).status_code == 200, what="the event key back-off")
        wait_for(lambda: client.get("/api/v1/runs", headers=BEARER).status_code == 200, what="the token back-off")


def test_forged_forwarded_for_meets_the_bucket_all_clients_share(cli_server) -> None:  # noqa: F811
    # X-Forwarded-For is believed from 127.0.0.1, so each guess may pose as a new client.
    server = cli_server("start", env={"STEPLINE_AUTH_FAILURES": "1000", "STEPLINE_AUTH_GLOBAL_FAILURES": "10"})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        known = {**BEARER, "x-forwarded-for": "198.51.100.7"}
        assert client.get("/api/v1/runs", headers=known).status_code == 200  # a client known good before the flood
        statuses = [
            client.get("/api/v1/runs", headers={"authorization": "Bearer nope", "x-forwarded-for": f"10.0.{i // 250}.{i % 250}"}).status_code
            for i in range(200)
        ]
        assert statuses.count(401) <= 12 and statuses[-1] == 429
        fresh = {**BEARER, "x-forwarded-for": "192.0.2.1"}
        held = client.get("/api/v1/runs", headers=fresh)
        assert held.status_code == 429 and "STEPLINE_AUTH_GLOBAL_FAILURES" in held.json()["error"]
        # Nobody can stop the senders known good by flooding wrong values under made-up addresses.
        assert client.get("/api/v1/runs", headers=known).status_code == 200
        assert client.get("/api/v1/runs", headers={"authorization": "Bearer nope", "x-forwarded-for": "198.51.100.7"}).status_code == 401
        wait_for(lambda: client.get("/api/v1/runs", headers=fresh).status_code == 200, what="the bucket to refill")


def test_logout_ends_the_session_on_every_server_process(cli_server) -> None:  # noqa: F811
    first = cli_server("start")
    second = cli_server("start", extra_args=("--no-worker",))  # another API process on the same database
    with httpx.Client(base_url=first.url, follow_redirects=False, timeout=30) as browser:
        assert login(browser, API_TOKEN).status_code == 303
        cookie = browser.cookies["stepline_session"]
        assert API_TOKEN not in cookie
        stolen = {"cookie": f"stepline_session={cookie}"}
        assert httpx.get(f"{second.url}/api/v1/runs", headers=stolen, timeout=30).status_code == 200
        assert browser.get("/").status_code == 200

        assert browser.post("/logout").headers["location"] == "/login"
        for server in (first, second):
            assert httpx.get(f"{server.url}/api/v1/runs", headers=stolen, timeout=30).status_code == 401
            assert httpx.get(f"{server.url}/", headers=stolen, timeout=30).headers["location"] == "/login"


def test_blank_keys_are_refused_at_start_in_one_line(db_url: str) -> None:
    for blank in (("STEPLINE_EVENT_KEY", "   "), ("STEPLINE_API_TOKEN", "\t ")):
        env = {**os.environ, "PYTHONPATH": REPO, "STEPLINE_EVENT_KEY": "ek", "STEPLINE_API_TOKEN": "tok", blank[0]: blank[1]}
        result = subprocess.run(
            [sys.executable, "-m", "stepline.cli", "start", "--db", db_url],
            check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and blank[0] in lines[0] and "whitespace" in lines[0], result.stderr


def test_a_blank_key_set_in_code_matches_nothing(serve) -> None:  # noqa: F811
    server = serve(server_apps.app, options=ServerOptions(dev=False, event_key="   ", api_token=" "))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/e/%20%20%20", json={"name": "srv/greet"}).status_code == 401
        assert client.post("/login", data={"token": " "}, follow_redirects=False).headers["location"] == "/login?error=1"


STRONG_KEY = "k" * 8 + "0123456789abcdef0123456789abcdef"  # 40 characters
STRONG_TOKEN = "t" * 8 + "fedcba9876543210fedcba9876543210"


def test_a_strong_secret_is_let_in_while_strangers_at_its_address_keep_it_backing_off(cli_server) -> None:  # noqa: F811
    """Behind a proxy every client is one address: a stranger sending wrong values held the
    right event key and token back for up to 15 min. A strong secret (32+ characters) is
    checked during the back-off and let in; wrong values still wait."""
    server = cli_server("start", env={"STEPLINE_AUTH_FAILURES": "2", "STEPLINE_EVENT_KEY": STRONG_KEY,
                                      "STEPLINE_API_TOKEN": STRONG_TOKEN})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert [client.post("/e/wrong", json={"name": "a/x"}).status_code for _ in range(4)] == [401, 401, 429, 429]
        sent = client.post(f"/e/{STRONG_KEY}", json={"name": "a/x"})
        assert sent.status_code == 200 and len(sent.json()["ids"]) == 1, sent.text
        assert client.post("/e/wrong", json={"name": "a/x"}).status_code == 429  # the stranger still waits
        wrong = {"authorization": "Bearer nope"}
        assert [client.get("/api/v1/runs", headers=wrong).status_code for _ in range(3)] == [401, 401, 429]
        assert client.get("/api/v1/runs", headers={"authorization": f"Bearer {STRONG_TOKEN}"}).status_code == 200
        assert client.get("/api/v1/runs", headers=wrong).status_code == 429


def test_start_warns_of_a_key_too_short_to_be_let_in_during_a_back_off(cli_server) -> None:  # noqa: F811
    server = cli_server("start", env={"STEPLINE_EVENT_KEY": "short-key", "STEPLINE_API_TOKEN": STRONG_TOKEN})
    said = wait_for(lambda: "STEPLINE_EVENT_KEY has" in server.log() and server.log(), what="the warning")
    assert "STEPLINE_EVENT_KEY has 9 characters" in said and "openssl rand -hex 16" in said, said
    assert "STEPLINE_API_TOKEN has" not in said


WEAK_SIGNING_KEY = "signkey-prod-abcd1234"


def test_wrong_sdk_signing_keys_back_off_like_the_other_secrets(cli_server) -> None:  # noqa: F811
    """The SDK routes (/fn/register, /v1/realtime/publish, /v1/signals, /v1/runs) checked the
    signing key without any back-off: a guesser could try keys as fast as it could send them."""
    server = cli_server("start", env={"STEPLINE_AUTH_FAILURES": "2", "STEPLINE_INNGEST_SIGNING_KEY": WEAK_SIGNING_KEY})
    right = {"authorization": f"Bearer {WEAK_SIGNING_KEY}"}
    register = {"appName": "a", "url": "http://127.0.0.1:9/api/inngest", "functions": []}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        guesser = {"x-forwarded-for": "198.51.100.1"}
        replies = [client.post("/fn/register", json=register, headers={**guesser, "authorization": f"Bearer k{i}"})
                   for i in range(4)]
        assert [r.status_code for r in replies] == [401, 401, 429, 429]
        held = replies[2]  # in the SDKs' shape, with the wait and the setting that sets it
        assert held.json()["status"] == 429 and "STEPLINE_AUTH_FAILURES" in held.json()["error"]
        assert held.headers["retry-after"] == "1" and "x-inngest-server-kind" in held.headers
        publish = "/v1/realtime/publish?channel=c&topic=t&run_id=r"
        assert client.post(publish, json={}, headers={**guesser, **right}).status_code == 429  # a short key waits too
        assert client.post("/v1/signals", json={"signal": "s"}, headers={**guesser, **right}).status_code == 429

        # Stepline's API token on the REST routes is no wrong signing key...
        api_user = {"x-forwarded-for": "198.51.100.2"}
        for _ in range(4):
            assert client.get("/v1/runs/nope", headers={**api_user, **BEARER}).status_code == 404
        assert client.post("/v1/signals", json={"signal": "s"}, headers={**api_user, **right}).status_code == 404
        # ...and a value that is neither counts against the API token too.
        other = {"x-forwarded-for": "198.51.100.3"}
        assert [client.get("/v1/runs/nope", headers={**other, "authorization": "Bearer x"}).status_code
                for _ in range(3)] == [401, 401, 429]
        assert client.get("/api/v1/runs", headers={**other, **BEARER}).status_code == 429
        assert client.get("/api/v1/runs", headers={**api_user, **BEARER}).status_code == 200


def test_a_run_token_sent_where_the_api_token_is_needed_is_a_403_not_a_wrong_token(cli_server) -> None:  # noqa: F811
    """A page holding a run token that called another route with it was answered 401 'wrong API
    token', and each call counted as a guess: after a few its address (every client, behind a
    proxy) waited up to 15 min for the right token too."""
    server = cli_server("start", env={"STEPLINE_AUTH_FAILURES": "2"})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        event_id = client.post(f"/e/{EVENT_KEY}", json={"name": "srv/nap"}).json()["ids"][0]
        run_id = wait_for(lambda: (client.get(f"/api/v1/events/{event_id}", headers=BEARER).json()["runs"] or [{}])[0].get("id"),
                          what="the run")
        token = client.post(f"/api/v1/runs/{run_id}/token", headers=BEARER, json={}).json()["token"]
        page = {"authorization": f"Bearer {token}", "x-forwarded-for": "198.51.100.4"}
        assert client.get(f"/api/v1/runs/{run_id}", headers=page).status_code == 200
        replies = [client.post(f"/api/v1/runs/{run_id}/cancel", headers=page) for _ in range(4)]
        assert [r.status_code for r in replies] == [403] * 4
        assert "a run token reads only its run" in replies[0].json()["error"]
        assert client.get("/api/v1/runs", headers={**BEARER, "x-forwarded-for": "198.51.100.4"}).status_code == 200
        forged = {"authorization": f"Bearer {token[:-4]}AAAA", "x-forwarded-for": "198.51.100.5"}
        assert [client.get("/api/v1/runs", headers=forged).status_code for _ in range(3)] == [401, 401, 429]
