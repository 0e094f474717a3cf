"""The public faces of stepline.llm and stepline.testing stay pinned to their __all__."""

from __future__ import annotations

import types

import stepline
import stepline.cli_dev_models
import stepline.fakes.loopback
import stepline.fakes.provider
import stepline.llm
import stepline.testing


def _public(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and getattr(value, "__module__", module.__name__).startswith("stepline")
    }


def test_llm_exports_match_all() -> None:
    assert set(stepline.llm.__all__) == _public(stepline.llm) | {"errors"}
    assert "ai" in stepline.Step.extensions  # importing stepline registers ctx.step.ai


def test_testing_exports_match_all() -> None:
    # stepline.testing defines nothing itself: it is the face of stepline.fakes and of its own test-kit modules.
    public = {
        name
        for name, value in vars(stepline.testing).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }
    assert public == set(stepline.testing.__all__)
    documented = {"FakeProvider", "Reply", "Fail", "Truncate", "Reset", "StreamError", "LoopbackServer", "Request",
                  "rate_limited", "server_error", "insufficient_quota", "overloaded",
                  "TestEngine", "SyncTestEngine", "TestClock", "RunResult", "StepRecord", "ErrorInfo", "SentEvent", "StepMock"}
    assert documented <= public
    assert stepline.testing.FakeProvider is stepline.fakes.provider.FakeProvider
    assert stepline.testing.LoopbackServer is stepline.fakes.loopback.LoopbackServer


def test_the_dev_command_owns_its_simulated_models() -> None:
    assert not hasattr(stepline.testing, "start_dev_provider")  # the CLI starts them (stepline.cli_dev_models)
    assert callable(stepline.cli_dev_models.start)
