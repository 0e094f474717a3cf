"""What a model call may cost, for cost budgets (``stepline.Budget``).

The worst case of one call is its estimated prompt (the script-aware estimate, +25%)
at the input price plus ``max_tokens`` at the output price, priced by the same
sources as the call's recorded cost (``pricing.PriceTable``: overrides, self-hosted,
the bundled ``genai-prices`` table). A call without ``max_tokens`` is reserved as
``DEFAULT_MAX_TOKENS`` of output. What it did cost is its result's ``cost_usd`` and
tokens; what a failed attempt was billed is the ``billed`` record the client put on
its error (a stream cut after output began).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stepline import budgets
from stepline.budgets import Charge, Spend
from stepline.llm import tokens
from stepline.llm.client import LLM, normalise_messages
from stepline.llm.types import Usage

DEFAULT_MAX_TOKENS = 4096  # output reserved for a call that sets no max_tokens


def max_output(params: Mapping[str, Any]) -> int:
    """The output limit a call asks for (``max_tokens`` or ``max_completion_tokens``)."""
    for name in ("max_tokens", "max_completion_tokens"):
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return DEFAULT_MAX_TOKENS


def actual(result: Any) -> Charge:
    """The cost of a completed call, from its result (``Completion.to_dict()``)."""
    usage = result.get("usage") or {} if isinstance(result, Mapping) else {}
    tokens_used = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
    return Charge(float(result.get("cost_usd") or 0.0) if isinstance(result, Mapping) else 0.0, tokens_used)


def billed(error: BaseException) -> Charge:
    """What a failed call was billed all the same (``NOTHING`` when no output came)."""
    record = getattr(error, "billed", None)
    if not isinstance(record, Mapping):
        return budgets.NOTHING
    return actual(record)


def spend(llm: LLM, model: str, messages: Any, provider: str | None, params: Mapping[str, Any]) -> Spend:
    """The ``Spend`` of one call: its worst case (priced only when a budget asks), and how
    to read its actual and billed cost."""

    def estimate() -> tuple[Charge, str]:
        target, model_name = llm.resolve(model, provider)
        prompt = tokens.reserve(normalise_messages(messages))
        output = max_output(params)
        usd, source = llm.prices.cost(target, model_name, Usage(prompt_tokens=prompt, completion_tokens=output), None)
        return Charge(usd, prompt + output), f"~{prompt} prompt + {output} max_tokens of {target.name}:{model_name}, priced by {source}"

    return Spend(estimate=estimate, actual=actual, billed=billed)
