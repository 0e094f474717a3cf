"""LLM calls as durable steps: provider client, costs, routing.

- ``LLM``: one async client for OpenAI-compatible servers (OpenAI, OpenRouter, vLLM,
  Ollama, llama.cpp) and Anthropic Messages; one HTTP attempt per call, failures
  mapped to retryable / wait-exactly / do-not-retry (``stepline.llm.errors``).
- ``ctx.step.ai.infer(id, model=, messages=, stream=, **params)``: a call as a
  checkpointed step; tokens, cost and latency land in the run's usage.
- ``Router``: quick models inline, slow / reasoning / large calls queued.
- ``Price``: per-model price overrides; the rest comes from ``genai-prices``.

Imports only the SDK: never the engine or the store.
"""

from stepline.llm import errors
from stepline.llm.client import LLM, default_llm, set_default
from stepline.llm.errors import ProviderError, ProviderRejected, RateLimited, TruncatedResponse
from stepline.llm.pricing import Price, PriceTable
from stepline.llm.providers import ENV_VARS, Provider
from stepline.llm.router import Route, Router, is_reasoning_model
from stepline.llm.step import AI
from stepline.llm.step import register as _register
from stepline.llm.tokens import estimate_messages, estimate_text
from stepline.llm.types import Completion, Usage

_register()

__all__ = [
    "AI",
    "ENV_VARS",
    "LLM",
    "Completion",
    "Price",
    "PriceTable",
    "Provider",
    "ProviderError",
    "ProviderRejected",
    "RateLimited",
    "Route",
    "Router",
    "TruncatedResponse",
    "Usage",
    "default_llm",
    "errors",
    "estimate_messages",
    "estimate_text",
    "is_reasoning_model",
    "set_default",
]
