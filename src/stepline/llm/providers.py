"""Where models live: provider config, from code or from the environment.

A model string picks its provider with a ``name:`` prefix when ``name`` is a
configured provider (``"anthropic:claude-sonnet-4-5"``); otherwise the default
provider gets the whole string (``"deepseek/deepseek-r1"`` on OpenRouter,
``"llama3:8b"`` on Ollama).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Literal

from stepline import errors

Wire = Literal["openai", "anthropic"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Provider:
    """One endpoint speaking the OpenAI chat-completions or Anthropic Messages format.

    ``self_hosted`` models cost 0 unless a price override names them. ``pricing_id``
    is the provider id in the price table (defaults to ``name``).
    """

    name: str
    base_url: str
    api_key: str = ""
    wire: Wire = "openai"
    self_hosted: bool = False
    pricing_id: str | None = None
    max_tokens_field: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    anthropic_version: str = "2023-06-01"
    include_usage: bool = True  # ask for usage on streams (stream_options.include_usage)
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    connect_timeout: float = 10.0
    read_timeout: float = 300.0  # the longest silence between two chunks (or before the headers)

    def __post_init__(self) -> None:
        if not self.name or ":" in self.name:
            raise errors.ConfigError(f"Provider.name: expected a name without ':', got {self.name!r}")
        if not self.base_url.startswith(("http://", "https://")):
            raise errors.ConfigError(
                f"Provider {self.name!r}: base_url must start with http:// or https://, got {self.base_url!r}"
            )
        if self.wire not in ("openai", "anthropic"):
            raise errors.ConfigError(f"Provider {self.name!r}: wire must be 'openai' or 'anthropic', got {self.wire!r}")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))


@dataclasses.dataclass(frozen=True)
class _Known:
    name: str
    key_var: str
    url_var: str
    default_url: str | None  # None: the base URL must be given
    wire: Wire
    self_hosted: bool
    max_tokens_field: Literal["max_completion_tokens", "max_tokens"]


# Hosted providers need a documented default base URL; self-hosted servers are enabled
# by setting their URL variable.
KNOWN: tuple[_Known, ...] = (
    _Known("openrouter", "OPENROUTER_API_KEY", "OPENROUTER_BASE_URL", "https://openrouter.ai/api/v1", "openai", False, "max_completion_tokens"),
    _Known("openai", "OPENAI_API_KEY", "OPENAI_BASE_URL", "https://api.openai.com/v1", "openai", False, "max_completion_tokens"),
    _Known("anthropic", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "https://api.anthropic.com", "anthropic", False, "max_completion_tokens"),
    _Known("vllm", "VLLM_API_KEY", "VLLM_BASE_URL", None, "openai", True, "max_tokens"),
    _Known("ollama", "OLLAMA_API_KEY", "OLLAMA_BASE_URL", None, "openai", True, "max_tokens"),
    _Known("llamacpp", "LLAMACPP_API_KEY", "LLAMACPP_BASE_URL", None, "openai", True, "max_tokens"),
)

# Every variable stepline.llm reads, for docs and error messages.
ENV_VARS: tuple[tuple[str, str], ...] = (
    ("STEPLINE_LLM_PROVIDER", "name of the default provider (else the first configured below)"),
    ("STEPLINE_LLM_BASE_URL", "base URL of a custom OpenAI-compatible (or Anthropic) endpoint"),
    ("STEPLINE_LLM_API_KEY", "its key"),
    ("STEPLINE_LLM_NAME", "its provider name (default 'custom')"),
    ("STEPLINE_LLM_WIRE", "its format: openai (default) or anthropic"),
    ("STEPLINE_LLM_PRICING", "price it like this price-table provider (e.g. openai); unset: self-hosted, cost 0"),
    ("STEPLINE_LLM_PRICES", "path to a JSON file of price overrides (see docs/llm.md)"),
    ("STEPLINE_LLM_READ_TIMEOUT", "seconds of silence before a call fails as retryable (default 300)"),
) + tuple((k.key_var, f"{k.name} key" + (" (if the server wants one)" if k.self_hosted else "")) for k in KNOWN) + tuple(
    (k.url_var, f"{k.name} base URL" + (" (enables it)" if k.default_url is None else "")) for k in KNOWN
)


def from_env(env: Mapping[str, str] | None = None) -> tuple[list[Provider], str | None]:
    """Providers configured by environment variables, and the default one's name."""
    env = os.environ if env is None else env
    timeout = _float(env, "STEPLINE_LLM_READ_TIMEOUT", 300.0)
    providers: list[Provider] = []
    custom_url = env.get("STEPLINE_LLM_BASE_URL", "").strip()
    if custom_url:
        wire = env.get("STEPLINE_LLM_WIRE", "openai").strip() or "openai"
        if wire not in ("openai", "anthropic"):
            raise errors.ConfigError(f"STEPLINE_LLM_WIRE: expected openai or anthropic, got {wire!r}")
        pricing = env.get("STEPLINE_LLM_PRICING", "").strip() or None
        providers.append(
            Provider(
                name=env.get("STEPLINE_LLM_NAME", "").strip() or "custom",
                base_url=custom_url,
                api_key=env.get("STEPLINE_LLM_API_KEY", ""),
                wire=wire,  # type: ignore[arg-type]
                self_hosted=pricing is None,
                pricing_id=pricing,
                max_tokens_field="max_tokens" if pricing is None else "max_completion_tokens",
                read_timeout=timeout,
            )
        )
    for known in KNOWN:
        key = env.get(known.key_var, "").strip()
        url = env.get(known.url_var, "").strip()
        enabled = bool(url) if known.self_hosted else bool(key)
        if not enabled:
            continue
        providers.append(
            Provider(
                name=known.name,
                base_url=url or str(known.default_url),
                api_key=key,
                wire=known.wire,
                self_hosted=known.self_hosted,
                max_tokens_field=known.max_tokens_field,
                read_timeout=timeout,
            )
        )
    default = env.get("STEPLINE_LLM_PROVIDER", "").strip() or None
    if default is not None and default not in {p.name for p in providers}:
        raise errors.ConfigError(
            f"STEPLINE_LLM_PROVIDER={default!r} names no configured provider; configured: "
            f"{', '.join(p.name for p in providers) or 'none'} (set its key or base URL variable)"
        )
    return providers, default or (providers[0].name if providers else None)


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise errors.ConfigError(f"{name}: expected a number of seconds, got {raw!r}") from None
