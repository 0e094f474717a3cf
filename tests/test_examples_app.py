"""The default `stepline dev` app: the four examples together, on SIMULATED models when no key is set."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import stepline.llm
from stepline import testing
from stepline.cli import DEFAULT_APP, load_apps
from stepline.llm import providers
from tests.helpers import send_and_wait


@pytest.fixture
def dev_provider(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[testing.FakeProvider]:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STEPLINE_EXAMPLES_DB", str(tmp_path / "examples.db"))
    for name, _ in providers.ENV_VARS:
        monkeypatch.setenv(name, "")  # no provider configured; restored after the test
    monkeypatch.setattr(testing, "_dev_provider", None)
    notice = testing.start_dev_provider()
    assert notice is not None and "SIMULATED" in notice and "OPENROUTER_API_KEY" in notice
    assert testing.start_dev_provider() is None  # once per process
    fake = testing._dev_provider
    assert fake is not None
    stepline.llm.set_default(None)  # ctx.step.ai reads the environment the dev command set
    yield fake
    fake.stop()


def test_a_configured_provider_keeps_the_fake_away(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(testing, "_dev_provider", None)
    monkeypatch.setenv("STEPLINE_LLM_PROVIDER", "")
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-test")
    assert testing.start_dev_provider() is None


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
