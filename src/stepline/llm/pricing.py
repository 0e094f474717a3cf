"""What a call cost, in USD.

In order: the provider's own figure (OpenRouter's ``usage.cost``); a user override
for ``provider:model`` or ``model``; 0 for a self-hosted provider; the price table
of the ``genai-prices`` package (bundled data, no network unless its updater is
started); else 0 with ``cost_source="unknown"`` and one warning per model.
The table is refreshed by upgrading ``genai-prices`` (see docs/llm.md).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Mapping
from typing import Any

import orjson

from stepline import errors
from stepline.llm.providers import Provider
from stepline.llm.types import Usage

log = logging.getLogger("stepline.llm")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Price:
    """USD per million tokens. Cached and cache-write input default to the input price."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None

    def cost(self, usage: Usage) -> float:
        cached = usage.cached_tokens
        written = usage.cache_write_tokens
        fresh = max(0, usage.prompt_tokens - cached - written)
        total = (
            fresh * self.input_per_mtok
            + cached * (self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok)
            + written * (self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok)
            + usage.completion_tokens * self.output_per_mtok
        )
        return round(total / 1_000_000, 10)


class PriceTable:
    """Prices with user overrides, keyed ``"provider:model"`` or ``"model"``."""

    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        self.overrides = dict(overrides or {})
        for key, price in self.overrides.items():
            if not isinstance(price, Price):
                raise errors.ConfigError(f"price override {key!r}: expected stepline.llm.Price, got {price!r}")
        self._warned: set[tuple[str, str]] = set()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PriceTable:
        path = (os.environ if env is None else env).get("STEPLINE_LLM_PRICES", "").strip()
        return cls.from_file(path) if path else cls()

    @classmethod
    def from_file(cls, path: str) -> PriceTable:
        """``{"openai:gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}, ...}``."""
        try:
            with open(path, "rb") as handle:
                raw = orjson.loads(handle.read())
            return cls({key: Price(**value) for key, value in raw.items()})
        except (OSError, orjson.JSONDecodeError, TypeError, AttributeError) as exc:
            raise errors.ConfigError(
                f"STEPLINE_LLM_PRICES={path!r}: cannot read price overrides ({exc}); write a JSON object of "
                '"provider:model" -> {"input_per_mtok": ..., "output_per_mtok": ...}'
            ) from exc

    def cost(self, provider: Provider, model: str, usage: Usage, reported: float | None) -> tuple[float, str]:
        """(USD, source) for one call."""
        if reported is not None:
            return reported, "provider"
        override = self.overrides.get(f"{provider.name}:{model}") or self.overrides.get(model)
        if override is not None:
            return override.cost(usage), "override"
        if provider.self_hosted and provider.pricing_id is None:
            return 0.0, "self-hosted"
        table_cost = _table_cost(provider.pricing_id or provider.name, model, usage)
        if table_cost is not None:
            return table_cost, "genai-prices"
        if (provider.name, model) not in self._warned:
            self._warned.add((provider.name, model))
            log.warning(
                "no price known for %s model %r: its cost is recorded as 0; add a price override "
                "(stepline.llm.Price or STEPLINE_LLM_PRICES)",
                provider.name,
                model,
            )
        return 0.0, "unknown"


def _table_cost(provider_id: str, model: str, usage: Usage) -> float | None:
    calc = _genai_prices()
    if calc is None:
        return None
    calc_price, genai_usage = calc
    try:
        price: Any = calc_price(
            genai_usage(
                input_tokens=usage.prompt_tokens,
                cache_read_tokens=usage.cached_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                output_tokens=usage.completion_tokens,
            ),
            model_ref=model,
            provider_id=provider_id,
        )
    except LookupError:
        return None
    return float(price.total_price)


@functools.cache
def _genai_prices() -> tuple[Any, Any] | None:
    # Imported on first use: it takes ~0.3 s and most processes never price a call.
    try:
        from genai_prices import Usage as GenaiUsage
        from genai_prices import calc_price
    except ImportError:  # pragma: no cover - it is a dependency; tolerate a trimmed install
        log.warning("genai-prices is not installed: costs come only from providers and overrides")
        return None
    return calc_price, GenaiUsage
