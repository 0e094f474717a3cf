"""The chat example's web side (`uvicorn stepline.examples.chat_api:api`) next to `stepline
dev`, each a process of its own, with no provider configured: the web side finds the dev
server's SIMULATED models, answers a quick model inline and queues a slow one."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.cli_server import REPO, cli_server, free_port  # noqa: F401 - fixture
from tests.helpers import wait_for

PROVIDER_VARS = ("OPENROUTER_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")


@pytest.fixture
def chat_web(tmp_path: Any) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(stepline_url: str, examples_db: str) -> str:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARS and not k.startswith("STEPLINE_LLM_")}
        env.update(PYTHONPATH=REPO, STEPLINE_URL=stepline_url, STEPLINE_EXAMPLES_DB=examples_db)
        log = open(tmp_path / "chat-web.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen([sys.executable, "-m", "uvicorn", "stepline.examples.chat_api:api", "--port", str(port)],
                                      cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert procs[-1].poll() is None, (tmp_path / "chat-web.log").read_text()
            try:
                return httpx.get(f"{url}/", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=60, what="the chat example's web side")
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(15)


def test_the_chat_web_side_uses_the_dev_servers_simulated_models(cli_server, chat_web, tmp_path: Any) -> None:  # noqa: F811
    examples_db = str(tmp_path / "examples.db")
    dev = cli_server(mode="dev", app="stepline.examples.app:app",
                     env={"STEPLINE_EXAMPLES_DB": examples_db, **dict.fromkeys(PROVIDER_VARS, "")})
    assert "other processes find it at /api/v1/dev/models" in dev.log()
    web = chat_web(dev.url, examples_db)
    with httpx.Client(base_url=web, timeout=30) as client:
        quick = client.post("/chat", json={"user_id": "u1", "model": "fake-quick", "prompt": "hi"})
        assert quick.status_code == 200, quick.text
        assert quick.json()["status"] == "completed" and quick.json()["text"]
        slow = client.post("/chat", json={"user_id": "u1", "model": "fake-slow", "prompt": "think hard"}).json()
        assert slow["status"] == "pending"
        done = wait_for(lambda: (client.get(f"/chat/jobs/{slow['job_id']}").json()
                                 if client.get(f"/chat/jobs/{slow['job_id']}").json()["status"] == "completed" else None),
                        timeout=60, what="the queued chat job to complete")
        assert done["output"]["text"]
