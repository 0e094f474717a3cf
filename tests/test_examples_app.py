"""The default `stepline dev` app: the four examples together, on SIMULATED models when no key is set."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import stepline.llm
from stepline import cli_dev_models, testing
from stepline.cli import DEFAULT_APP, load_apps
from stepline.llm import providers
from tests.helpers import send_and_wait


@pytest.fixture
def dev_provider(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[testing.FakeProvider]:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STEPLINE_EXAMPLES_DB", str(tmp_path / "examples.db"))
    for name, _ in providers.ENV_VARS:
        monkeypatch.setenv(name, "")  # no provider configured; restored after the test
    dev_models = cli_dev_models.start(os.environ)
    assert dev_models is not None
    assert "SIMULATED" in dev_models.notice and "OPENROUTER_API_KEY" in dev_models.notice
    assert os.environ["STEPLINE_LLM_BASE_URL"] == dev_models.provider.openai_base_url
    assert cli_dev_models.start(os.environ) is None  # started once: the environment now names a provider
    stepline.llm.set_default(None)  # ctx.step.ai reads the environment the dev command set
    yield dev_models.provider
    dev_models.stop()


def test_a_configured_provider_keeps_the_fake_away() -> None:
    env = {"OPENROUTER_API_KEY": "sk-or-test"}
    assert cli_dev_models.start(env) is None
    assert env == {"OPENROUTER_API_KEY": "sk-or-test"}


async def test_readme_tour_runs_on_the_default_app(make_engine, dev_provider: testing.FakeProvider) -> None:
    apps = load_apps([DEFAULT_APP])
    assert {f.id for a in apps for f in a.functions} >= {"llm-generate", "screen-generation", "analyze-repo", "execute-query"}
    dev_provider.on_model("fake-slow", testing.Reply(text="hello from the dev model"))  # no 2 s wait in a test
    engine = await make_engine(*apps)
    chat = await send_and_wait(engine, {"name": "llm/generate.requested", "data": {"user_id": "u1", "prompt": "hello there"}})
    assert chat["status"] == "completed", chat["error"]
    assert chat["output"]["text"] == "hello from the dev model" and chat["output"]["cost_usd"] > 0
    assert next(s for s in chat["steps"] if s["id"] == "call-model")["meta"]["provider"] == "fake"
    crawl = await send_and_wait(engine, {"name": "crawl/requested", "data": {"pages": 2, "pause": "50ms"}})
    assert crawl["status"] == "completed" and crawl["output"]["rows"] == 6
