"""The public faces of stepline.llm and stepline.testing stay pinned to their __all__."""

from __future__ import annotations

import types

import stepline
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
    exported = set(stepline.testing.__all__)
    defined = {
        name
        for name, value in vars(stepline.testing).items()
        if not name.startswith("_") and isinstance(value, type | types.FunctionType) and value.__module__ == "stepline.testing"
    }
    assert defined <= exported
    assert {"FakeProvider", "Reply", "Fail", "Truncate", "Reset", "StreamError", "LoopbackServer", "start_dev_provider"} <= exported
